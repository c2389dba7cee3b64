"""What the report learns from the retention loop: exact figures from a known log, the lift's interval and
verdict, masked feedback, the JSON, and the two charts as headless Chromium draws them."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cancelflow.report import compute_report, report_json
from cancelflow.report_page import render_html, retention_html
from cancelflow.retention_report import (Group, OfferFigures, RetentionBuilder, compute_retention, lift_between,
                                         mask_feedback, retention_json, wilson)
from tests.unit.report_pages import env, most_held, overflow, pixels_by_color, screenshot


def requested(rid: str, at: str, reason: str, feedback: str = "", name: str = "山田 太郎",
              email: str = "taro@example.jp", phone: str = "090-1234-5678") -> dict:
    return env("cancellation.requested", {"request_id": rid, "received_at": at, "reason": reason,
                                          "feedback": feedback,
                                          "customer": {"name": name, "email": email, "phone": phone}}, at)


def accepted(rid: str, reason: str, offers: list[str], holdout: bool = False) -> dict:
    return env("cancellation.accepted", {"request_id": rid, "contract_id": "C-" + rid, "reason": reason,
                                         "offers": offers, "holdout": holdout, "effective_date": "2025-05-01",
                                         "decided_at": "2025-03-01T00:00:05Z"})


def withdrawn(rid: str, taken_offer: str | None = None) -> dict:
    return env("cancellation.withdrawn", {"request_id": rid, "contract_id": "C-" + rid, "taken_offer": taken_offer})


def taken(rid: str, offer: str) -> dict:
    return env("retention.offer_taken", {"request_id": rid, "contract_id": "C-" + rid, "account_id": "@a",
                                         "offer": offer, "reason": "SWITCHING_TOOL", "plan": "pro",
                                         "taken_at": "2025-03-02T00:00:00Z"})


def log() -> list[dict]:
    t2 = withdrawn("R2", "discount")
    return [
        accepted("R1", "SWITCHING_TOOL", ["consultation", "discount"]),
        accepted("R2", "SWITCHING_TOOL", ["consultation", "discount"]),
        t2, dict(t2),  # published twice: counted once
        taken("R2", "discount"),
        accepted("R3", "NO_LONGER_USED", ["downgrade"]),
        taken("R3", "downgrade"),  # the offer_taken event seen before (or without) the withdrawal
        withdrawn("R3"),
        accepted("R4", "NOT_USEFUL_FOR_BUSINESS", ["consultation", "downgrade"]),
        withdrawn("R4"),  # shown offers, took none: a save without an offer
        accepted("R5", "BUSINESS_CLOSED", []),
        withdrawn("R5"),  # shown none
        accepted("R6", "SWITCHING_TOOL", [], holdout=True),
        withdrawn("R6"),  # held out and saved anyway
        accepted("R7", "TOO_DIFFICULT", [], holdout=True),
        requested("R1", "2025-03-01T00:00:00Z", "SWITCHING_TOOL", "高すぎる。taro@example.jp まで連絡を 090-1234-5678"),
        requested("R2", "2025-03-02T00:00:00Z", "SWITCHING_TOOL", "山田 太郎です。他社の方が安い"),
        requested("R3", "2025-03-01T12:00:00Z", "NO_LONGER_USED", "  "),  # blank: not feedback
        requested("R4", "2025-03-01T13:00:00+09:00", "SWITCHING_TOOL", "機能が足りない"),
        {"not": "an envelope"},
    ]


def test_the_retention_figures_of_a_known_log():
    r = compute_retention(log(), min_group=2)
    assert r.by_offer == {"setup_support": OfferFigures(0, 0), "guided_training": OfferFigures(0, 0),
                          "consultation": OfferFigures(3, 0), "downgrade": OfferFigures(2, 1),
                          "discount": OfferFigures(2, 1)}
    assert r.by_offer["discount"].take_rate == 0.5 and r.by_offer["setup_support"].take_rate is None
    assert r.taken_total == 2
    assert r.saves_without_offer == {"offered": 1, "no offers": 1, "holdout": 1}
    # offered group: R1-R4 (carried offers), saved R2 R3 R4; holdout: R6 R7, saved R6; R5 had nothing to offer
    assert (r.lift.offered, r.lift.holdout) == (Group(4, 3), Group(2, 1))
    assert r.lift.difference == pytest.approx(0.25)
    assert r.lift.low < 0 < r.lift.high and r.lift.verdict.startswith("no clear difference yet")
    feedback = r.feedback["SWITCHING_TOOL"]
    assert [f.request_id for f in feedback] == ["R2", "R4", "R1"]  # newest first (R4: 04:00 UTC, after R1)
    assert feedback[0].text == "***です。他社の方が安い"  # the customer's own name
    assert feedback[2].text == "高すぎる。t***@example.jp まで連絡を ***78"
    assert "NO_LONGER_USED" not in r.feedback


def test_with_the_default_minimum_the_same_log_is_too_small_to_tell():
    r = compute_retention(log())
    assert r.lift.verdict == "too small to tell: 4 offered, 2 held out (at least 30 in each group)"


def test_no_holdout_at_all_has_no_lift():
    r = compute_retention([e for e in log() if not e.get("data", {}).get("holdout")])
    assert r.lift.holdout == Group(0, 0) and r.lift.difference is None and r.lift.low is None
    assert r.lift.verdict.startswith("too small to tell: 4 offered, 0 held out")


def test_wilson_and_newcombe_against_published_values():
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II: 56/70 vs 48/80 -> 0.0524 to 0.3339.
    lift = lift_between(Group(70, 56), Group(80, 48))
    assert lift.difference == pytest.approx(0.2)
    assert (round(lift.low, 4), round(lift.high, 4)) == (0.0524, 0.3339)
    assert lift.verdict == "the offers save more customers than no offer"
    assert [round(x, 4) for x in wilson(0, 10)] == [0.0, 0.2775]
    assert [round(x, 4) for x in wilson(5, 10)] == [0.2366, 0.7634]


@pytest.mark.parametrize(("offered", "holdout", "verdict"), [
    (Group(100, 40), Group(100, 10), "the offers save more customers than no offer"),
    (Group(100, 10), Group(100, 40), "the offers save fewer customers than no offer"),
    (Group(100, 20), Group(100, 18), "no clear difference yet (the 95 % interval spans 0)"),
    (Group(29, 29), Group(100, 0), "too small to tell: 29 offered, 100 held out (at least 30 in each group)"),
    (Group(100, 90), Group(29, 0), "too small to tell: 100 offered, 29 held out (at least 30 in each group)"),
    (Group(0, 0), Group(0, 0), "too small to tell: 0 offered, 0 held out (at least 30 in each group)"),
])
def test_lift_verdicts(offered, holdout, verdict):
    assert lift_between(offered, holdout).verdict == verdict


groups = st.integers(1, 500).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n)))


@given(a=groups, b=groups)
def test_the_interval_holds_the_difference_and_stays_within_bounds(a, b):
    lift = lift_between(Group(*a), Group(*b))
    assert -1 <= lift.low <= lift.difference <= lift.high <= 1
    if lift.verdict.startswith("the offers save more"):
        assert lift.low > 0 and min(a[0], b[0]) >= 30


@pytest.mark.parametrize(("text", "personal", "expected"), [
    ("call me on 090-1234-5678", (), "call me on ***78"),
    ("mail hanako.s@example.co.jp please", (), "mail h***@example.co.jp please"),
    ("私は山田 太郎です", ("山田 太郎", "", "x"), "私は***です"),
    ("０９０-１２３４-５６７８まで", (), "***78まで"),
    ("the 2025-03-01 invoice was ¥12,000", (), "the 2025-03-01 invoice was ¥12,000"),
])
def test_feedback_is_masked(text, personal, expected):
    assert mask_feedback(text, personal) == expected


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(log()))))
def test_any_reading_order_gives_the_same_figures(order):
    """Across topics the log is read in any order: what comes early (a withdrawal, an offer taken) waits for
    its acceptance, and an offer taken read after its request was folded still counts."""
    events = log()
    assert compute_retention([events[i] for i in order], min_group=2) == compute_retention(events, min_group=2)


def test_an_offer_taken_read_after_the_withdrawal_it_belongs_to_still_counts():
    late = [accepted("R1", "SWITCHING_TOOL", ["discount"]), withdrawn("R1"), taken("R1", "discount")]
    r = compute_retention(late)
    assert r.by_offer["discount"] == OfferFigures(1, 1) and r.saves_without_offer["offered"] == 0


def year_of_offers(days: int = 365, per_day: int = 8) -> list[dict]:
    """A year in time order, as the topics hold it: eight acceptances a day, seven with offers and one held out;
    withdrawn 10 days later are k = 0 (its offer in the withdrawal, retention.offer_taken a second after), k = 1
    (offer_taken a second before a withdrawal that names none), k = 2 (none taken) and, every other day, the
    held-out k = 7; the others complete 45 days after their acceptance."""
    from datetime import datetime, timedelta, timezone

    t0, iso = datetime(2026, 1, 1, 1, tzinfo=timezone.utc), lambda t: t.isoformat()
    timed = []
    for day in range(days):
        for k in range(per_day):
            rid, at = f"Y{day}-{k}", t0 + timedelta(days=day, minutes=k)
            held = k == 7
            timed.append((at, env("cancellation.accepted", {
                "request_id": rid, "contract_id": "C-" + rid, "offers": [] if held else ["consultation", "discount"],
                "holdout": held, "decided_at": iso(at)}, iso(at))))
            w, s = at + timedelta(days=10), timedelta(seconds=1)
            if k in (0, 1, 2) or (held and day % 2 == 0):
                timed.append((w, withdrawn(rid, "discount" if k == 0 else None) | {"occurred_at": iso(w)}))
            else:
                done = at + timedelta(days=45)
                timed.append((done, env("cancellation.completed", {"request_id": rid}, iso(done))))
            if k in (0, 1):
                when = w + s if k == 0 else w - s
                timed.append((when, taken(rid, "discount") | {"occurred_at": iso(when)}))
    return [e for _, e in sorted(timed, key=lambda x: x[0])]


def test_a_year_read_in_time_order_holds_only_the_open_requests_and_a_week_of_closed_ones():
    events = year_of_offers()
    builder = RetentionBuilder()
    most = most_held(builder, events,
                     lambda b: len(b.open) + len(b.closed) + len(b.closed_early) + len(b.taken_early))
    r = builder.figures()
    days, even_days = 365, 183
    assert r.by_offer["consultation"] == OfferFigures(7 * days, 0)
    assert r.by_offer["discount"] == OfferFigures(7 * days, 2 * days)
    assert r.saves_without_offer == {"offered": days, "no offers": 0, "holdout": even_days}
    assert (r.lift.offered, r.lift.holdout) == (Group(7 * days, 3 * days), Group(days, even_days))
    # What it holds at most: the requests open at once (45 days of 8 a day) and a week of closed ones, not the
    # year's 2,920 requests; at the end only the last week's closed ones.
    assert builder.open == {} and builder.closed_early == {} and len(builder.taken_early) == 0
    assert most < 45 * 8 + 7 * 8 * 2 and len(builder.closed) <= 8 * 8
    # Read in any other order (the topics one after another, reversed), the figures are the same.
    assert compute_retention(list(reversed(events))) == r


def test_report_json_has_the_same_figures_as_the_tables():
    f = compute_report(log())
    doc = orjson.loads(orjson.dumps(report_json(f)))
    assert doc["accepted"] == f.accepted == 7 and doc["withdrawn"] == f.withdrawn == 5
    assert doc["retention"] == orjson.loads(orjson.dumps(retention_json(f.retention)))
    assert doc["retention"]["offers"]["discount"] == {"offered": 2, "taken": 1, "take_rate": 0.5}
    assert doc["retention"]["holdout"]["offered"] == {"accepted": 4, "saved": 3, "save_rate": 0.75}
    assert doc["retention"]["holdout"]["holdout"] == {"accepted": 2, "saved": 1, "save_rate": 0.5}
    assert doc["retention"]["holdout"]["verdict"].startswith("too small to tell")
    assert [x["request_id"] for x in doc["retention"]["feedback"]["SWITCHING_TOOL"]] == ["R2", "R4", "R1"]
    assert "taro@example.jp" not in orjson.dumps(doc).decode()


def test_the_page_has_the_lift_and_the_takes_charts_and_escapes_the_feedback():
    hostile = log() + [requested("R9", "2025-03-03T00:00:00Z", "TOO_DIFFICULT", "<script>alert(1)</script>")]
    page = render_html(compute_report(hostile))
    lift = re.search(r'<svg[^>]*class="lift".*?</svg>', page, re.S).group(0)
    assert lift.count('class="group"') == 2 and lift.count('class="interval"') == 2
    assert ">n = 4, 3 saved</text>" in lift and ">75.0%</text>" in lift
    takes = re.search(r'<svg[^>]*class="takes".*?</svg>', page, re.S).group(0)
    assert takes.count('class="offered"') == 5 and takes.count('class="taken"') == 2
    assert ">1 of 2 (50.0%)</text>" in takes
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "taro@example.jp" not in page and "t***@example.jp" in page
    assert "2025-03-02 09:00</span> ***です。他社の方が安い" in page  # R2, received at 00:00 UTC: Tokyo time


def test_the_retention_charts_render_in_headless_chromium(tmp_path):
    """The lift's green and grey bars and the takes' purple bars are on the screenshot."""
    many = [accepted(f"O{n}", "SWITCHING_TOOL", ["consultation", "discount"]) for n in range(40)]
    many += [withdrawn(f"O{n}", "discount") for n in range(20)]
    many += [accepted(f"H{n}", "SWITCHING_TOOL", [], holdout=True) for n in range(40)]
    many += [withdrawn(f"H{n}") for n in range(8)]
    # Only the retention part, at the top of a page of its own, so it is on the screenshot.
    image = screenshot(f"<!DOCTYPE html><html><body>{retention_html(compute_retention(many))}</body></html>",
                       tmp_path, 1000, 1400)
    colors = pixels_by_color(image)
    green, grey, purple = (0x2F, 0x9E, 0x44), (0x86, 0x8E, 0x96), (0x70, 0x48, 0xE8)
    # offered 50 % and holdout 20 % of a 560 px scale, 30 px high: ~8,400 and ~3,400 pixels
    assert colors.get(green, 0) > 5_000, "the offered bar was not drawn"
    assert colors.get(grey, 0) > 2_000, "the holdout bar was not drawn"
    # discount taken 20 of 40 (half of the 490 px span, 24 px high): ~5,900 pixels
    assert colors.get(purple, 0) > 3_000, "the takes bar was not drawn"


@pytest.mark.parametrize("width", [1280, 1024])
def test_the_retention_part_fits_the_window_whatever_the_feedback(tmp_path, width):
    """Long unbroken feedback (a URL, a pasted log line) and every chart, in Debian's chromium driven by
    Playwright: nothing runs past the right edge of the window."""
    long = [requested(f"L{n}", f"2025-03-0{n + 1}T00:00:00Z", "SWITCHING_TOOL", "https://example.jp/" + "x" * 400)
            for n in range(3)]
    found, shown = overflow(render_html(compute_report(log() + long)), tmp_path, width, "ul.feedback li")
    assert found["wide"] == [] and found["scrollWidth"] <= found["width"], found
    assert shown == 6  # SWITCHING_TOOL: R1, R2, R4 and the three long ones
