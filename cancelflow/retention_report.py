"""What the retention loop learns (SPEC section 6), computed from the event log alone; `cancelflow report`
shows it as tables, `--html` with two charts, `--json` as figures.

`compute_retention()` is pure: envelopes in (decoded JSON objects, any order, duplicates allowed), figures out.

- **per offer**: *offered* = accepted cancellations that carried the offer; *taken* = those withdrawn with it
  (`cancellation.withdrawn.taken_offer`, or `retention.offer_taken`); take rate = taken / offered.
- **saves without an offer**: withdrawn cancellations that took none, split by what they were shown.
- **offered vs holdout**: among the acceptances that carried offers (the *offered* group) and those held out
  (`holdout: true`, shown none), the save rate = withdrawn (with an offer or not) / accepted; the lift = the
  difference in percentage points, with its 95 % interval (Newcombe's hybrid score interval, sound with small
  and extreme counts). Below `MIN_GROUP` acceptances in either group the verdict is "too small to tell"; an
  interval that spans 0 is "no clear difference yet".
- **feedback**: the form's free text per reason, newest first, e-mail addresses, phone numbers and the
  customer's own name masked.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shared.contract_calendar import TOKYO
from shared.pii import mask_pii
from shared.vocabulary import Offer, Reason

MIN_GROUP = 30  # acceptances per group below which a difference in save rates tells nothing
FEEDBACK_PER_REASON = 20  # the newest, per reason
Z95 = 1.959963984540054


@dataclass(frozen=True)
class OfferFigures:
    offered: int
    taken: int

    @property
    def take_rate(self) -> float | None:
        return self.taken / self.offered if self.offered else None


@dataclass(frozen=True)
class Group:
    accepted: int
    saved: int

    @property
    def save_rate(self) -> float | None:
        return self.saved / self.accepted if self.accepted else None


@dataclass(frozen=True)
class Lift:
    """Offered save rate minus holdout save rate (a fraction: 0.05 is 5 percentage points)."""

    offered: Group
    holdout: Group
    difference: float | None
    low: float | None  # the 95 % interval of the difference
    high: float | None
    verdict: str


@dataclass(frozen=True)
class Feedback:
    received_at: str
    request_id: str
    text: str


@dataclass(frozen=True)
class RetentionFigures:
    by_offer: dict[str, OfferFigures]  # every offer of the vocabulary, in its order
    taken_total: int
    saves_without_offer: dict[str, int]  # "offered" (shown offers, took none), "no offers", "holdout"
    lift: Lift
    feedback: dict[str, list[Feedback]] = field(default_factory=dict)  # reason -> newest first


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def lift_between(offered: Group, holdout: Group, min_group: int = MIN_GROUP) -> Lift:
    """The lift with its 95 % interval (Newcombe 1998, method 10) and a verdict in words."""
    if not offered.accepted or not holdout.accepted:
        return Lift(offered, holdout, None, None, None,
                    f"too small to tell: {offered.accepted} offered, {holdout.accepted} held out "
                    f"(at least {min_group} in each group)")
    p1, p2 = offered.save_rate or 0.0, holdout.save_rate or 0.0
    (l1, u1), (l2, u2) = wilson(offered.saved, offered.accepted), wilson(holdout.saved, holdout.accepted)
    d = p1 - p2
    # Clamped: at 0 % vs 100 % rounding would put the bound a hair outside [-1, 1].
    low = max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    high = min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    if offered.accepted < min_group or holdout.accepted < min_group:
        verdict = (f"too small to tell: {offered.accepted} offered, {holdout.accepted} held out "
                   f"(at least {min_group} in each group)")
    elif low > 0:
        verdict = "the offers save more customers than no offer"
    elif high < 0:
        verdict = "the offers save fewer customers than no offer"
    else:
        verdict = "no clear difference yet (the 95 % interval spans 0)"
    return Lift(offered, holdout, d, low, high, verdict)


# Full-width digits and signs, as Japanese keyboards type phone numbers: read as ASCII so mask_pii finds them.
_FULL_WIDTH = str.maketrans({**{chr(0xFF10 + i): str(i) for i in range(10)}, "＋": "+", "－": "-"})


def mask_feedback(text: str, personal: Iterable[str] = ()) -> str:
    """The free text with e-mail addresses, phone numbers and the customer's own details masked."""
    for value in sorted({v.strip() for v in personal if v and len(v.strip()) >= 2}, key=len, reverse=True):
        text = text.replace(value, "***")
    return mask_pii(text.translate(_FULL_WIDTH))


class RetentionBuilder:
    """The retention figures' state, fed one envelope at a time (the report streams a year of topics): per
    request only what the figures need, the feedback masked as it comes."""

    def __init__(self, *, min_group: int = MIN_GROUP, feedback_per_reason: int = FEEDBACK_PER_REASON) -> None:
        self.min_group, self.feedback_per_reason = min_group, feedback_per_reason
        self.seen: set[Any] = set()
        self.accepted: dict[str, tuple[tuple[str, ...], bool]] = {}  # request -> (offers, holdout)
        self.withdrawn: set[str] = set()
        self.taken: dict[str, str] = {}
        self.feedback: dict[str, dict[str, Feedback]] = defaultdict(dict)  # reason -> request -> feedback

    def add(self, env: Any) -> None:
        if not isinstance(env, Mapping) or not isinstance(env.get("data"), Mapping):
            return
        key = env.get("event_id") or id(env)
        if key in self.seen:  # the outbox may publish an event twice
            return
        self.seen.add(key)
        t, d = env.get("event_type"), env["data"]
        rid = d.get("request_id")
        if not isinstance(rid, str):
            return
        if t == "cancellation.accepted" and rid not in self.accepted:
            self.accepted[rid] = (tuple(str(o) for o in d.get("offers") or ()), d.get("holdout") is True)
        elif t == "cancellation.withdrawn":
            self.withdrawn.add(rid)
            if d.get("taken_offer"):
                self.taken[rid] = str(d["taken_offer"])
        elif t == "retention.offer_taken" and d.get("offer"):
            self.taken.setdefault(rid, str(d["offer"]))
        elif t == "cancellation.requested":
            text = d.get("feedback")
            if isinstance(text, str) and text.strip():
                customer = d.get("customer") if isinstance(d.get("customer"), Mapping) else {}
                # The name as given; e-mail addresses and phone numbers in any spelling are found by mask_pii.
                kept = self.feedback[str(d.get("reason") or "(unknown)")]
                kept[rid] = Feedback(str(d.get("received_at") or ""), rid,
                                     mask_feedback(text.strip(), [str(customer.get("name") or "")]))
                if len(kept) > 2 * self.feedback_per_reason:  # only the newest are shown: memory stays bounded
                    for old in sorted(kept.values(), key=_newest)[self.feedback_per_reason:]:
                        del kept[old.request_id]

    def figures(self) -> RetentionFigures:
        offered_n: dict[str, int] = defaultdict(int)
        taken_n: dict[str, int] = defaultdict(int)
        without = {"offered": 0, "no offers": 0, "holdout": 0}
        groups = {"offered": [0, 0], "holdout": [0, 0]}
        for rid, (offers, holdout) in self.accepted.items():
            saved = rid in self.withdrawn
            for offer in offers:
                offered_n[offer] += 1
            if rid in self.taken and self.taken[rid] in offers:
                taken_n[self.taken[rid]] += 1
            if saved and rid not in self.taken:
                without["holdout" if holdout else "offered" if offers else "no offers"] += 1
            group = "holdout" if holdout else "offered" if offers else None
            if group is not None:
                groups[group][0] += 1
                groups[group][1] += saved
        order = [o.value for o in Offer] + sorted(set(offered_n) - {o.value for o in Offer})
        by_offer = {o: OfferFigures(offered_n.get(o, 0), taken_n.get(o, 0)) for o in order}
        return RetentionFigures(
            by_offer=by_offer, taken_total=sum(taken_n.values()), saves_without_offer=without,
            lift=lift_between(Group(*groups["offered"]), Group(*groups["holdout"]), self.min_group),
            feedback=self._newest_feedback())

    def _newest_feedback(self) -> dict[str, list[Feedback]]:
        reasons = [r.value for r in Reason] + sorted(set(self.feedback) - {r.value for r in Reason})
        return {r: sorted(self.feedback[r].values(), key=_newest)[:self.feedback_per_reason]
                for r in reasons if self.feedback.get(r)}


def compute_retention(envelopes: Iterable[Mapping[str, Any]], *, min_group: int = MIN_GROUP,
                      feedback_per_reason: int = FEEDBACK_PER_REASON) -> RetentionFigures:
    builder = RetentionBuilder(min_group=min_group, feedback_per_reason=feedback_per_reason)
    for env in envelopes:
        builder.add(env)
    return builder.figures()


def _newest(f: Feedback) -> tuple:
    """Sort key: newest first (by the instant received, then the request id)."""
    at = _instant(f.received_at)
    return (-at.timestamp(), tuple(-ord(c) for c in f.request_id))


def _instant(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def tokyo_time(instant: str) -> str:
    """An RFC 3339 instant as Tokyo wall-clock time to the minute ("" when it is not one)."""
    parsed = _instant(instant)
    return "" if parsed.year == 1 else parsed.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M")


def retention_json(r: RetentionFigures) -> dict[str, Any]:
    """The figures as JSON-ready values (rates as fractions, null when there is nothing to divide by)."""
    lift = r.lift
    return {
        "offers": {o: {"offered": f.offered, "taken": f.taken, "take_rate": f.take_rate} for o, f in r.by_offer.items()},
        "offers_taken": r.taken_total,
        "saves_without_offer": dict(r.saves_without_offer),
        "holdout": {
            "offered": {"accepted": lift.offered.accepted, "saved": lift.offered.saved,
                        "save_rate": lift.offered.save_rate},
            "holdout": {"accepted": lift.holdout.accepted, "saved": lift.holdout.saved,
                        "save_rate": lift.holdout.save_rate},
            "lift": lift.difference, "lift_95_low": lift.low, "lift_95_high": lift.high, "verdict": lift.verdict,
            "min_group": MIN_GROUP,
        },
        "feedback": {reason: [{"received_at": f.received_at, "request_id": f.request_id, "text": f.text}
                              for f in items] for reason, items in r.feedback.items()},
    }


# --- text ---------------------------------------------------------------------------------------------------

def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pp"


def lift_sentence(lift: Lift) -> str:
    if lift.difference is None:
        return lift.verdict
    return (f"lift {_pp(lift.difference)} (95 % interval {_pp(lift.low)} to {_pp(lift.high)}): {lift.verdict}")


def retention_tables(r: RetentionFigures) -> list[Any]:
    from rich.table import Table

    offers = Table(title="offers: offered, taken, take rate", title_justify="left")
    for col in ("offer", "offered", "taken", "take rate"):
        offers.add_column(col, justify="left" if col == "offer" else "right")
    for offer, f in r.by_offer.items():
        offers.add_row(offer, str(f.offered), str(f.taken), _pct(f.take_rate))
    lift = Table(title="save rate: offered vs holdout", title_justify="left", caption=lift_sentence(r.lift),
                 caption_justify="left")
    for col in ("group", "accepted", "saved", "save rate"):
        lift.add_column(col, justify="left" if col == "group" else "right")
    for name, g in (("offered", r.lift.offered), ("holdout", r.lift.holdout)):
        lift.add_row(name, str(g.accepted), str(g.saved), _pct(g.save_rate))
    without = Table(title="saves without an offer (withdrawn, none taken)", title_justify="left")
    without.add_column("shown")
    without.add_column("saves", justify="right")
    for shown, n in r.saves_without_offer.items():
        without.add_row(shown, str(n))
    feedback = Table(title=f"feedback per reason (newest first, up to {FEEDBACK_PER_REASON}; personal data masked)",
                     title_justify="left")
    for col in ("reason", "received (Tokyo)", "feedback"):
        feedback.add_column(col)
    for reason, items in r.feedback.items():
        for i, f in enumerate(items):
            feedback.add_row(reason if i == 0 else "", tokyo_time(f.received_at), f.text)
    return [offers, lift, without, feedback]


# --- HTML ---------------------------------------------------------------------------------------------------

OFFERED_GREEN, HOLDOUT_GREY, TAKEN_PURPLE, OFFERED_LILAC = "#2f9e44", "#868e96", "#7048e8", "#d0bfff"


def _e(value: Any) -> str:
    import html

    return html.escape(str(value), quote=True)


def lift_chart(lift: Lift, *, width: int = 860) -> str:
    """Two bars, the offered and the holdout group's save rates on a 0-100 % scale, each with its 95 % interval
    as a whisker and its sample size in the label."""
    left, right, bar, gap, top = 220, 80, 30, 26, 30
    span = width - left - right
    height = top + 2 * (bar + gap) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lift" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="save rate, offered vs holdout">']
    for pct in (0, 25, 50, 75, 100):
        x = left + span * pct / 100
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 8}" y2="{height - 24}" stroke="#e4e7eb"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" font-size="12" fill="#616e7c">'
                     f'{pct}%</text>')
    for i, (name, group, color) in enumerate((("offered", lift.offered, OFFERED_GREEN),
                                              ("holdout", lift.holdout, HOLDOUT_GREY))):
        y = top + i * (bar + gap)
        rate = group.save_rate
        parts.append(f'<text x="{left - 10}" y="{y + bar * 0.45:.1f}" text-anchor="end" font-size="13" '
                     f'font-weight="600" fill="#1f2933">{name}</text>')
        parts.append(f'<text x="{left - 10}" y="{y + bar + 2:.1f}" text-anchor="end" font-size="11" fill="#616e7c">'
                     f'n = {group.accepted}, {group.saved} saved</text>')
        w = max(round(span * (rate or 0)), 1)
        parts.append(f'<rect class="group" x="{left}" y="{y}" width="{w}" height="{bar}" rx="3" fill="{color}">'
                     f'<title>{name}: {_pct(rate)} of {group.accepted}</title></rect>')
        if group.accepted:
            lo, hi = wilson(group.saved, group.accepted)
            x1, x2, mid = left + span * lo, left + span * hi, y + bar / 2
            parts.append(f'<path class="interval" d="M{x1:.1f},{mid - 7:.1f}v14M{x1:.1f},{mid:.1f}H{x2:.1f}'
                         f'M{x2:.1f},{mid - 7:.1f}v14" stroke="#1f2933" stroke-width="1.5" fill="none"/>')
        parts.append(f'<text x="{left + span + 8}" y="{y + bar * 0.68:.1f}" font-size="13" fill="#1f2933">'
                     f'{_pct(rate)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def takes_chart(by_offer: Mapping[str, OfferFigures], *, width: int = 860) -> str:
    """Per offer, how often it was offered (light bar) and taken (dark bar over it), with the take rate."""
    left, right, bar, gap = 220, 150, 24, 14
    items = list(by_offer.items())
    height = gap + max(1, len(items)) * (bar + gap)
    span = width - left - right
    most = max([f.offered for _, f in items] + [1])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="takes" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="offers offered and taken">']
    for i, (offer, f) in enumerate(items):
        y = gap + i * (bar + gap)
        parts.append(f'<text x="{left - 10}" y="{y + bar * 0.68:.1f}" text-anchor="end" font-size="13" '
                     f'font-weight="600" fill="#1f2933">{_e(offer)}</text>')
        offered_w = round(span * f.offered / most) if f.offered else 1
        taken_w = round(span * f.taken / most)
        parts.append(f'<rect class="offered" x="{left}" y="{y}" width="{offered_w}" height="{bar}" rx="3" '
                     f'fill="{OFFERED_LILAC if f.offered else "#e4e7eb"}"><title>{_e(offer)}: offered {f.offered}'
                     f'</title></rect>')
        if taken_w:
            parts.append(f'<rect class="taken" x="{left}" y="{y}" width="{taken_w}" height="{bar}" rx="3" '
                         f'fill="{TAKEN_PURPLE}"><title>{_e(offer)}: taken {f.taken}</title></rect>')
        parts.append(f'<text x="{left + offered_w + 8}" y="{y + bar * 0.68:.1f}" font-size="13" fill="#1f2933">'
                     f'{f.taken} of {f.offered} ({_pct(f.take_rate)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rows(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= numeric_from else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def retention_html(r: RetentionFigures) -> str:
    lift = r.lift
    offers = _rows(["offer", "offered", "taken", "take rate"],
                   ([o, f.offered, f.taken, _pct(f.take_rate)] for o, f in r.by_offer.items()))
    groups = _rows(["group", "accepted", "saved", "save rate"],
                   ([n, g.accepted, g.saved, _pct(g.save_rate)] for n, g in (("offered", lift.offered),
                                                                             ("holdout", lift.holdout))))
    without = _rows(["shown", "saves without an offer"], r.saves_without_offer.items())
    feedback = "".join(
        f'<h3>{_e(reason)}</h3><ul class="feedback" style="overflow-wrap:anywhere">' + "".join(
            f"<li><span class=muted>{_e(tokyo_time(f.received_at))}</span> {_e(f.text)}</li>" for f in items) + "</ul>"
        for reason, items in r.feedback.items()) or "<p class=muted>no feedback given</p>"
    return f"""<h2>Offers: offered, taken, take rate</h2>
<div class="muted">{r.taken_total} offers taken; an offer counts as offered for every accepted cancellation that
carried it</div>
{takes_chart(r.by_offer)}
{offers}
<h2>Save rate: offered vs holdout</h2>
<div class="muted">withdrawn / accepted among the acceptances that carried offers and those held out (shown none);
whiskers: 95 % intervals</div>
<p class="lift-verdict"><strong>{_e(lift_sentence(lift))}</strong></p>
{lift_chart(lift)}
{groups}
<h2>Saves without an offer</h2>
{without}
<h2>Feedback per reason</h2>
<div class="muted">newest first, up to {FEEDBACK_PER_REASON} per reason; e-mail addresses, phone numbers and the
customer's name masked</div>
{feedback}
"""
