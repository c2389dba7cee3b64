"""What the retention loop learns (SPEC section 6), computed from the event log alone; `cancelflow report`
shows it as tables (cancelflow.report_text), `--html` with two charts (cancelflow.report_page), `--json` as
figures.

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

from .report_events import WINDOW, EnvelopeReader, Event, parse_instant
from .seen_window import SeenWindow

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


@dataclass
class _Accepted:
    """An accepted cancellation, as the retention figures need it until it closes."""

    offers: tuple[str, ...]
    holdout: bool
    taken: str | None = None  # the offer taken (retention.offer_taken or the withdrawal's taken_offer)
    saved: bool = False

    @property
    def group(self) -> str | None:
        return "holdout" if self.holdout else "offered" if self.offers else None

    @property
    def shown(self) -> str:
        return "holdout" if self.holdout else "offered" if self.offers else "no offers"


class RetentionBuilder:
    """The retention figures' state, fed one event at a time (the report streams a year of topics). As
    ReportBuilder does, a request closed (withdrawn or completed) is folded into counters and forgotten, so
    read in time order a year costs the memory of the requests open at once, plus a week of closed ones (an
    `offer_taken` may come after its withdrawal); the feedback is masked as it comes, the newest kept. Any
    other order gives the same figures: what comes early waits for its acceptance."""

    def __init__(self, *, min_group: int = MIN_GROUP, feedback_per_reason: int = FEEDBACK_PER_REASON) -> None:
        self.min_group, self.feedback_per_reason = min_group, feedback_per_reason
        self.reader = EnvelopeReader()
        self.open: dict[str, _Accepted] = {}
        self.closed = SeenWindow(WINDOW)  # request -> _Accepted, folded within the window: a late offer_taken still counts
        self.closed_early: dict[str, tuple[bool, str | None]] = {}  # (saved, taken) read before the acceptance
        self.taken_early = SeenWindow(WINDOW)  # request -> offer, read before the acceptance
        self.offered_n: dict[str, int] = defaultdict(int)
        self.taken_n: dict[str, int] = defaultdict(int)
        self.without = {"offered": 0, "no offers": 0, "holdout": 0}
        self.groups = {"offered": [0, 0], "holdout": [0, 0]}
        self.feedback: dict[str, dict[str, Feedback]] = defaultdict(dict)  # reason -> request -> feedback

    def add(self, env: Any) -> None:
        """One envelope (decoded JSON); a duplicate counts once."""
        if (event := self.reader.read(env)) is not None:
            self.fold(event)

    def fold(self, e: Event) -> None:
        """One event, already decoded and deduplicated (ReportBuilder reads the log once for both)."""
        t, d, rid = e.type, e.data, e.request_id
        if t == "cancellation.accepted" and rid not in self.open and rid not in self.closed:
            entry = _Accepted(tuple(str(o) for o in d.get("offers") or ()), d.get("holdout") is True,
                              self.taken_early.pop(rid))
            for offer in entry.offers:
                self.offered_n[offer] += 1
            if entry.group is not None:
                self.groups[entry.group][0] += 1
            self.open[rid] = entry
            if rid in self.closed_early:
                saved, taken = self.closed_early.pop(rid)
                self._close(rid, saved, taken, e.occurred_at)
        elif t in ("cancellation.withdrawn", "cancellation.completed"):
            saved = t == "cancellation.withdrawn"
            taken = str(d["taken_offer"]) if saved and d.get("taken_offer") else None
            if rid in self.open:
                self._close(rid, saved, taken, e.occurred_at)
            elif rid not in self.closed:
                self.closed_early.setdefault(rid, (saved, taken))
        elif t == "retention.offer_taken" and d.get("offer"):
            self._taken(rid, str(d["offer"]), e.occurred_at)
        elif t == "cancellation.requested":
            self._feedback(rid, d)

    def _close(self, rid: str, saved: bool, taken: str | None, at: Any) -> None:
        entry = self.open.pop(rid)
        entry.saved, entry.taken = saved, taken or entry.taken  # the withdrawal's own offer comes first
        if entry.group is not None:
            self.groups[entry.group][1] += saved
        if entry.taken in entry.offers:
            self.taken_n[entry.taken] += 1
        if saved and entry.taken is None:
            self.without[entry.shown] += 1
        self.closed.put(rid, entry, at)

    def _taken(self, rid: str, offer: str, at: Any) -> None:
        if rid in self.open:
            self.open[rid].taken = self.open[rid].taken or offer
        elif rid in self.closed_early:
            saved, taken = self.closed_early[rid]
            self.closed_early[rid] = (saved, taken or offer)
        elif (entry := self.closed.get(rid)) is not None:
            if entry.taken is None:  # folded as a save without an offer: it had one after all
                entry.taken = offer
                if offer in entry.offers:
                    self.taken_n[offer] += 1
                if entry.saved:
                    self.without[entry.shown] -= 1
        elif rid not in self.taken_early:
            self.taken_early.put(rid, offer, at)

    def _feedback(self, rid: str, d: Mapping[str, Any]) -> None:
        text = d.get("feedback")
        if not isinstance(text, str) or not text.strip():
            return
        customer = d.get("customer") if isinstance(d.get("customer"), Mapping) else {}
        # The name as given; e-mail addresses and phone numbers in any spelling are found by mask_pii.
        kept = self.feedback[str(d.get("reason") or "(unknown)")]
        kept[rid] = Feedback(str(d.get("received_at") or ""), rid,
                             mask_feedback(text.strip(), [str(customer.get("name") or "")]))
        if len(kept) > 2 * self.feedback_per_reason:  # only the newest are shown: memory stays bounded
            for old in sorted(kept.values(), key=_newest)[self.feedback_per_reason:]:
                del kept[old.request_id]

    def figures(self) -> RetentionFigures:
        taken_n = defaultdict(int, self.taken_n)
        for entry in self.open.values():  # taken, not withdrawn yet
            if entry.taken in entry.offers:
                taken_n[entry.taken] += 1
        order = [o.value for o in Offer] + sorted(set(self.offered_n) - {o.value for o in Offer})
        by_offer = {o: OfferFigures(self.offered_n.get(o, 0), taken_n.get(o, 0)) for o in order}
        return RetentionFigures(
            by_offer=by_offer, taken_total=sum(taken_n.values()), saves_without_offer=dict(self.without),
            lift=lift_between(Group(*self.groups["offered"]), Group(*self.groups["holdout"]), self.min_group),
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
    return parse_instant(value) or datetime.min.replace(tzinfo=timezone.utc)


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
