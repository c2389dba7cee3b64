"""The business report: exact figures from a known event log, and the HTML page as a browser renders it."""

from __future__ import annotations

import re

import pytest

from cancelflow.report import Rate, compute_report, nearest_rank
from cancelflow.report_page import render_html
from tests.unit.report_pages import env, most_held, overflow, pixels_by_color, screenshot


def requested(rid: str, at: str, reason: str) -> dict:
    return env("cancellation.requested", {"request_id": rid, "received_at": at, "reason": reason}, at)


def accepted(rid: str, at: str, reason: str, offers: list[str], effective: str) -> dict:
    return env("cancellation.accepted", {"request_id": rid, "contract_id": "C-" + rid, "decided_at": at,
                                         "reason": reason, "offers": offers, "effective_date": effective}, at)


def log() -> list[dict]:
    """Six requests over three Tokyo days; R2 is decided at 00:00:30 Tokyo on the next day."""
    r1_accepted = accepted("R1", "2025-03-01T00:00:10Z", "TOO_DIFFICULT", ["guided_training"], "2025-04-20")
    return [
        # decisions before their requests, as cross-topic reading order allows
        r1_accepted,
        requested("R1", "2025-03-01T00:00:00Z", "TOO_DIFFICULT"),
        dict(r1_accepted),  # the outbox published it twice: counted once
        requested("R2", "2025-03-01T14:59:00Z", "SWITCHING_TOOL"),
        accepted("R2", "2025-03-01T15:00:30Z", "SWITCHING_TOOL", ["consultation", "discount"], "2025-04-20"),
        requested("R3", "2025-03-02T01:00:00Z", "SWITCHING_TOOL"),
        accepted("R3", "2025-03-02T01:00:05Z", "SWITCHING_TOOL", ["consultation", "discount"], "2025-05-01"),
        requested("R4", "2025-03-02T02:00:00Z", "BUSINESS_CLOSED"),
        accepted("R4", "2025-03-02T02:01:00+00:00", "BUSINESS_CLOSED", [], "2025-04-16"),
        requested("R5", "2025-03-03T00:00:00Z", "NO_LONGER_USED"),
        env("cancellation.rejected", {"request_id": "R5", "contract_id": "C-R5", "codes": ["NOTICE_PERIOD"],
                                      "reason": "NO_LONGER_USED", "decided_at": "2025-03-03T00:00:02Z"}),
        requested("R6", "2025-03-03T00:00:00Z", "NO_LONGER_USED"),
        accepted("R6", "2025-03-03T09:00:20+09:00", "NO_LONGER_USED", ["downgrade"], "2025-05-01"),
        env("cancellation.withdrawn", {"request_id": "R1"}),
        env("cancellation.withdrawn", {"request_id": "R3"}),
        env("cancellation.completed", {"request_id": "R4", "effective_date": "2025-04-16"}),
        env("settlement.issued", {"request_id": "R1", "total_jpy": 16000}),
        env("settlement.issued", {"request_id": "R2", "total_jpy": 12000}),
        env("settlement.issued", {"request_id": "R4", "total_jpy": 5000}),
        env("settlement.voided", {"request_id": "R1"}),
        env("notification.sent", {"request_id": "R1", "kind": "acknowledgement"}),
        env("notification.sent", {"request_id": "R2", "kind": "acknowledgement"}),
        env("notification.sent", {"request_id": "R5", "kind": "rejection"}),
        env("contract.signed", {"contract_id": "C-9"}),  # not about a request: ignored
        {"not": "an envelope"},
    ]


def test_the_figures_of_a_known_log():
    f = compute_report(log())
    assert (f.accepted, f.rejected, f.withdrawn, f.completed) == (5, 1, 2, 1)
    assert f.by_day_reason == {
        "2025-03-01": {"TOO_DIFFICULT": 1},
        "2025-03-02": {"BUSINESS_CLOSED": 1, "SWITCHING_TOOL": 2},  # R2: 15:00:30 UTC is the 2nd in Tokyo
        "2025-03-03": {"NO_LONGER_USED": 1},
    }
    assert f.by_reason == {"INITIAL_SETUP_FAILED": 0, "TOO_DIFFICULT": 1, "BUSINESS_CLOSED": 1,
                           "LINE_ACCOUNT_UNAVAILABLE": 0, "NOT_USEFUL_FOR_BUSINESS": 0, "SWITCHING_TOOL": 2,
                           "NO_LONGER_USED": 1}
    assert f.save_rate == Rate(5, 2) and f.save_rate.rate == 0.4
    assert f.save_rate_by_offer == {"guided_training": Rate(1, 1), "consultation": Rate(2, 1),
                                    "downgrade": Rate(1, 0), "discount": Rate(2, 1), "(none)": Rate(1, 0)}
    assert list(f.save_rate_by_offer) == ["guided_training", "consultation", "downgrade", "discount", "(none)"]
    assert f.save_rate_by_day == {"2025-03-01": Rate(1, 1), "2025-03-02": Rate(3, 1), "2025-03-03": Rate(1, 0)}
    # request -> first answer: R1 10 s, R2 90 s, R3 5 s, R4 60 s, R5 2 s (a rejection is an answer), R6 20 s
    assert f.answer_seconds == [2, 5, 10, 20, 60, 90]
    assert (f.answer_p50_s, f.answer_p95_s) == (10, 90)
    assert f.pending_by_effective_date == {"2025-04-20": 1, "2025-05-01": 1}  # R2 and R6
    assert f.rejected_by_code == {"NOTICE_PERIOD": 1}
    assert (f.settlements_issued, f.settlements_total_jpy) == (2, 17000)  # R1's was voided
    assert f.notifications_by_kind == {"acknowledgement": 2, "rejection": 1}


def test_an_empty_log_has_no_rates_rather_than_a_division_by_zero():
    f = compute_report([])
    assert f.accepted == 0 and f.save_rate.rate is None and f.answer_p50_s is None
    assert "save rate" in render_html(f)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1, 2, 3, 4], 0.5, 2), ([1, 2, 3, 4], 0.95, 4), ([7], 0.5, 7), ([7], 0.95, 7),
    (list(range(1, 101)), 0.95, 95), (list(range(1, 101)), 0.5, 50), (list(range(1, 21)), 0.95, 19)])
def test_nearest_rank(values, q, expected):
    assert nearest_rank(values, q) == expected


def test_the_page_is_self_contained_with_one_bar_per_reason_and_a_save_rate_line():
    page = render_html(compute_report(log()))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must fetch nothing"
    assert "<script" not in page
    bars = re.search(r'<svg[^>]*class="bars".*?</svg>', page, re.S).group(0)
    assert bars.count('class="bar"') == 7
    assert ">SWITCHING_TOOL</text>" in bars and ">moving to another tool</text>" in bars
    line = re.search(r'<svg[^>]*class="line".*?</svg>', page, re.S).group(0)
    assert line.count('class="point"') == 3 and 'class="rate"' in line
    assert ">overall 40.0%</text>" in line
    assert "p50 10.0 s, p95 90.0 s" in page


def test_html_escapes_what_comes_from_the_log():
    hostile = log() + [accepted("R9", "2025-03-04T00:00:00Z", "<script>x</script>", [], "2025-05-01")]
    page = render_html(compute_report(hostile))
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_the_page_renders_in_headless_chromium(tmp_path):
    """The page as a browser draws it: the bars in their blue and the save-rate line in its orange are on
    the screenshot (so the SVG rendered, not just parsed), and the text is there around them."""
    image = screenshot(render_html(compute_report(log())), tmp_path, 1200, 1600)
    assert image.size == (1200, 1600)
    colors = pixels_by_color(image)
    bar_blue, line_orange, white = (0x3E, 0x7B, 0xFA), (0xE8, 0x59, 0x0C), (255, 255, 255)
    # 5 bars of 24 px height, 160 to 320 px long: about 20,000 pixels of the bars' blue.
    assert colors.get(bar_blue, 0) > 10_000, "the reason bars were not drawn"
    assert colors.get(line_orange, 0) > 300, "the save-rate line was not drawn"
    assert colors.get(white, 0) < 0.97 * 1200 * 1600, "the page is (nearly) blank"
    dark_text = sum(n for rgb, n in colors.items() if max(rgb) < 80)
    assert dark_text > 5_000, "no text was drawn"


def month_of_every_reason() -> list[dict]:
    """A busy month: every reason of the form accepted on each of 31 Tokyo days."""
    from shared.vocabulary import Reason

    out = []
    for day in range(1, 32):
        for n, reason in enumerate(Reason):
            at = f"2025-03-{day:02d}T0{n}:00:00Z"
            rid = f"R{day}-{n}"
            out += [requested(rid, at, reason.value), accepted(rid, at, reason.value, [], "2025-05-01")]
    return out


@pytest.mark.parametrize("width", [1280, 1024])
def test_no_element_of_the_page_is_wider_than_the_window(tmp_path, width):
    """A month of every reason, in Debian's chromium driven by Playwright: nothing runs past the right edge,
    and the page needs no horizontal scrolling."""
    found, table_rows = overflow(render_html(compute_report(month_of_every_reason())), tmp_path, width,
                                 "table.by-day tbody tr")
    assert found["wide"] == [] and found["scrollWidth"] <= found["width"], found
    assert table_rows >= 8 * 5, "every reason (and the total) in a row, for each block of days"


def year_in_time_order(n_per_day: int = 8, days: int = 365) -> list[dict]:
    """A year of cancellations, as the topics hold them: requested, accepted (effective 45 days later),
    settled, mailed; two a day withdrawn 10 days later (settlement voided), the rest completed."""
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    timed = []
    for day in range(days):
        for k in range(n_per_day):
            rid, at = f"Y{day}-{k}", t0 + timedelta(days=day, minutes=k)
            iso = lambda t: t.isoformat()  # noqa: E731
            eff = (at + timedelta(days=45)).date().isoformat()
            timed += [(at, requested(rid, iso(at), "SWITCHING_TOOL")),
                      (at + timedelta(seconds=3), accepted(rid, iso(at + timedelta(seconds=3)), "SWITCHING_TOOL",
                                                           ["consultation"], eff)),
                      (at + timedelta(seconds=4), env("settlement.issued", {"request_id": rid, "total_jpy": 1000},
                                                      iso(at + timedelta(seconds=4)))),
                      (at + timedelta(seconds=5), env("notification.sent", {"request_id": rid, "kind": "acknowledgement"},
                                                      iso(at + timedelta(seconds=5))))]
            if k % 5 == 0:
                w = at + timedelta(days=10)
                timed += [(w, env("cancellation.withdrawn", {"request_id": rid}, iso(w))),
                          (w + timedelta(seconds=1), env("settlement.voided", {"request_id": rid}, iso(w)))]
            else:
                c = at + timedelta(days=45)
                timed.append((c, env("cancellation.completed", {"request_id": rid, "effective_date": eff}, iso(c))))
    return [e for _, e in sorted(timed, key=lambda x: x[0])]


def test_a_year_read_in_time_order_holds_only_the_open_requests_and_gives_the_same_figures():
    from cancelflow.report import ReportBuilder

    events = year_in_time_order()
    builder = ReportBuilder()
    most = most_held(builder, events,
                     lambda b: len(b.open) + len(b.received) + len(b.issued_open) + len(b.reader.seen))
    f = builder.figures(generated_at=None)
    n, w = 8 * 365, 2 * 365  # k = 0 and 5 of each day withdrawn
    assert (f.accepted, f.withdrawn, f.completed) == (n, w, n - w)
    assert f.settlements_issued == n - w and f.settlements_total_jpy == (n - w) * 1000
    assert sum(f.pending_by_effective_date.values()) == 0 and len(f.answer_seconds) == n
    # What it holds at most: the requests open at once (45 days of 8 a day, plus a week of event ids),
    # not the year's 2,920 requests and 12,000 events.
    assert builder.open == {} and builder.received == {} and builder.issued_open == {}
    assert most < 45 * 8 * 2 + 7 * 8 * 6
    # Read in any other order (the topics one after another, reversed), the figures are the same.
    shuffled = compute_report(list(reversed(events)), generated_at=None)
    assert shuffled.accepted == f.accepted and shuffled.withdrawn == f.withdrawn
    assert {k: v for k, v in shuffled.__dict__.items() if k != "generated_at"} == \
           {k: v for k, v in f.__dict__.items() if k != "generated_at"}
