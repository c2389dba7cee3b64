"""The business report (SPEC section 3: "the save rate, reasons over time and the time from request to first
answer are reported"), computed from the event log alone.

`compute_report()` is pure: envelopes in (as decoded JSON objects, any order, duplicates allowed), figures
out. Definitions:

- **cancellations by reason per day**: accepted cancellations, by the Tokyo date of the decision's
  `decided_at` (a rejected request is not a cancellation: an `ALREADY_PENDING` duplicate would count twice);
- **save rate** = withdrawn / accepted, overall, per offer (among the accepted cancellations that carried the
  offer; `(none)` for those that carried none) and per day of acceptance;
- **time to first answer**: from the request's `received_at` (`cancellation.requested`) to the decision's
  `decided_at` (accepted or rejected), p50 and p95 by the nearest-rank method (the smallest value with at
  least p% of the values at or below it);
- **pending**: accepted and neither withdrawn nor completed, by effective date.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shared import topics
from shared.contract_calendar import tokyo_date
from shared.vocabulary import Offer, Reason

from .report_events import EnvelopeReader, parse_instant
from .retention_report import RetentionBuilder, RetentionFigures, retention_json

REPORT_TOPICS = (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS, topics.RETENTION)
REASON_WORDING = {
    "INITIAL_SETUP_FAILED": "could not complete the initial setup",
    "TOO_DIFFICULT": "the tool was hard to use",
    "BUSINESS_CLOSED": "closed my business",
    "LINE_ACCOUNT_UNAVAILABLE": "the LINE official account can no longer be used",
    "NOT_USEFUL_FOR_BUSINESS": "could not make use of it in my business",
    "SWITCHING_TOOL": "moving to another tool",
    "NO_LONGER_USED": "no longer using it",
}
NO_OFFER = "(none)"


@dataclass(frozen=True)
class Rate:
    accepted: int
    withdrawn: int

    @property
    def rate(self) -> float | None:
        return self.withdrawn / self.accepted if self.accepted else None


@dataclass(frozen=True)
class Figures:
    accepted: int
    rejected: int
    withdrawn: int
    completed: int
    by_day_reason: dict[str, dict[str, int]]  # Tokyo day -> reason -> accepted cancellations
    by_reason: dict[str, int]  # every reason of the form, zero included, in the form's order
    save_rate: Rate
    save_rate_by_offer: dict[str, Rate]
    save_rate_by_day: dict[str, Rate]
    answer_seconds: list[float]  # sorted
    answer_p50_s: float | None
    answer_p95_s: float | None
    pending_by_effective_date: dict[str, int]
    rejected_by_code: dict[str, int]
    settlements_issued: int
    settlements_total_jpy: int
    notifications_by_kind: dict[str, int] = field(default_factory=dict)
    generated_at: str = ""
    retention: RetentionFigures | None = None  # the retention loop: see cancelflow.retention_report


def nearest_rank(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in (0, 1]) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[rank - 1]


@dataclass
class _Open:
    """An accepted cancellation not yet withdrawn nor completed: what its figures need when it closes."""

    day: str
    reason: str | None
    offers: tuple[str, ...]
    effective_date: str | None


class ReportBuilder:
    """The report's state, fed one envelope at a time. Closed requests are folded into counters at once and
    forgotten, so read in time order (`stream_figures`) a year costs the memory of the requests open at once
    (a cancellation is open from its request to its effective date), not of the year. Any other order gives
    the same figures: what comes early (a decision before its request, a withdrawal before its acceptance)
    waits for what it belongs to."""

    def __init__(self) -> None:
        self.reader = EnvelopeReader()
        self.received: dict[str, tuple[datetime | None, str | None]] = {}  # requested, not yet answered
        self.answered_early: dict[str, datetime] = {}  # first answer read before its request
        self.answers = array("d")
        self.open: dict[str, _Open] = {}
        self.closed_early: dict[str, str] = {}  # withdrawn/completed read before the acceptance
        self.by_day_reason: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_reason: Counter[str] = Counter()
        self.by_offer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.counts: Counter[str] = Counter()
        self.rejected_codes: Counter[str] = Counter()
        self.issued_open: dict[str, int] = {}  # settlement of a request not completed: may still be voided
        self.voided_early: set[str] = set()
        self.settled = [0, 0]  # settlements final (their request completed): count, total yen
        self.kinds: Counter[str] = Counter()
        self.retention = RetentionBuilder()

    def add(self, env: Any) -> None:
        """One envelope (decoded JSON); a duplicate (same event_id, within a week) counts once."""
        if (event := self.reader.read(env)) is None:
            return
        self.retention.fold(event)
        t, d, rid = event.type, event.data, event.request_id
        when = parse_instant(d.get("decided_at")) or event.occurred_at
        if t == "cancellation.requested":
            self._requested(rid, parse_instant(d.get("received_at")), d.get("reason"))
        elif t == "cancellation.accepted":
            requested_reason = self._answered(rid, when)
            reason = d.get("reason") or requested_reason
            self.counts["accepted"] += 1
            entry = _Open(tokyo_date(when).isoformat() if when else "(unknown)", reason,
                          tuple(d.get("offers") or ()), d.get("effective_date"))
            day = entry.day
            self.by_day[day][0] += 1
            for offer in entry.offers or (NO_OFFER,):
                self.by_offer[offer][0] += 1
            if reason:
                self._count_reason(day, reason)
            self.open[rid] = entry
            if rid in self.closed_early:
                self._close(rid, self.closed_early.pop(rid))
        elif t == "cancellation.rejected":
            self._answered(rid, when)
            self.counts["rejected"] += 1
            self.rejected_codes.update(d.get("codes") or ())
        elif t in ("cancellation.withdrawn", "cancellation.completed"):
            how = "withdrawn" if t == "cancellation.withdrawn" else "completed"
            if rid in self.open:
                self._close(rid, how)
            else:
                self.closed_early.setdefault(rid, how)
            if how == "completed" and rid in self.issued_open:  # its settlement can no longer be voided
                self.settled[0] += 1
                self.settled[1] += self.issued_open.pop(rid)
        elif t == "settlement.issued":
            if rid in self.voided_early:
                self.voided_early.discard(rid)
            else:
                self.issued_open[rid] = int(d.get("total_jpy") or 0)
        elif t == "settlement.voided":
            if self.issued_open.pop(rid, None) is None:
                self.voided_early.add(rid)
        elif t == "notification.sent":
            self.kinds[str(d.get("kind"))] += 1

    def _requested(self, rid: str, at: datetime | None, reason: str | None) -> None:
        if rid in self.answered_early:  # the answer came first (any-order input)
            first = self.answered_early.pop(rid)
            if at is not None:
                self.answers.append((first - at).total_seconds())
            if reason and rid in self.open and self.open[rid].reason is None:
                self.open[rid].reason = reason
                self._count_reason(self.open[rid].day, reason)
        else:
            self.received[rid] = (at, reason)

    def _answered(self, rid: str, when: datetime | None) -> str | None:
        """The request's first answer (accepted or rejected): the time to it, once; the request's reason."""
        if rid in self.received:
            at, reason = self.received.pop(rid)
            if when is not None and at is not None:
                self.answers.append((when - at).total_seconds())
            return reason
        if when is not None and rid not in self.answered_early:
            self.answered_early[rid] = when
        return None

    def _count_reason(self, day: str, reason: str) -> None:
        self.by_day_reason[day][reason] += 1
        self.by_reason[reason] += 1

    def _close(self, rid: str, how: str) -> None:
        entry = self.open.pop(rid)
        if entry.reason is None:
            self._count_reason(entry.day, "(unknown)")
        saved = how == "withdrawn"
        self.counts[how] += 1
        if saved:
            self.by_day[entry.day][1] += 1
            for offer in entry.offers or (NO_OFFER,):
                self.by_offer[offer][1] += 1

    def figures(self, generated_at: datetime | None = None) -> Figures:
        by_day_reason = defaultdict(Counter, {d: Counter(c) for d, c in self.by_day_reason.items()})
        by_reason = Counter(self.by_reason)
        pending: Counter[str] = Counter()
        for entry in self.open.values():
            if entry.reason is None:
                by_day_reason[entry.day]["(unknown)"] += 1
                by_reason["(unknown)"] += 1
            pending[entry.effective_date or "(unknown)"] += 1
        answers = sorted(self.answers)
        offer_order = [o.value for o in Offer] + [NO_OFFER]
        reasons = {r.value: by_reason.get(r.value, 0) for r in Reason} | {
            r: n for r, n in sorted(by_reason.items()) if r not in Reason.__members__}
        by_offer = self.by_offer
        return Figures(
            accepted=self.counts["accepted"], rejected=self.counts["rejected"], withdrawn=self.counts["withdrawn"],
            completed=self.counts["completed"],
            by_day_reason={day: dict(sorted(c.items())) for day, c in sorted(by_day_reason.items()) if c},
            by_reason=reasons,
            save_rate=Rate(self.counts["accepted"], self.counts["withdrawn"]),
            save_rate_by_offer={o: Rate(*by_offer[o]) for o in sorted(by_offer, key=offer_order.index)
                                if o in offer_order} | {o: Rate(*by_offer[o]) for o in sorted(by_offer)
                                                        if o not in offer_order},
            save_rate_by_day={day: Rate(*v) for day, v in sorted(self.by_day.items())},
            answer_seconds=answers, answer_p50_s=nearest_rank(answers, 0.50), answer_p95_s=nearest_rank(answers, 0.95),
            pending_by_effective_date=dict(sorted(pending.items())),
            rejected_by_code=dict(sorted(self.rejected_codes.items())),
            settlements_issued=self.settled[0] + len(self.issued_open),
            settlements_total_jpy=self.settled[1] + sum(self.issued_open.values()),
            notifications_by_kind=dict(sorted(self.kinds.items())),
            generated_at=(generated_at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
            retention=self.retention.figures(),
        )


def compute_report(envelopes: Iterable[Mapping[str, Any]], generated_at: datetime | None = None) -> Figures:
    builder = ReportBuilder()
    for env in envelopes:
        builder.add(env)
    return builder.figures(generated_at)


def report_json(f: Figures) -> dict[str, Any]:
    """The report's figures as JSON-ready values (`cancelflow report --json`); rates are fractions, null when
    there is nothing to divide by."""
    def rate(r: Rate) -> dict[str, Any]:
        return {"accepted": r.accepted, "withdrawn": r.withdrawn, "save_rate": r.rate}

    return {
        "generated_at": f.generated_at, "accepted": f.accepted, "rejected": f.rejected, "withdrawn": f.withdrawn,
        "completed": f.completed, "save_rate": rate(f.save_rate), "by_reason": f.by_reason,
        "by_day_reason": f.by_day_reason, "save_rate_by_offer": {o: rate(r) for o, r in f.save_rate_by_offer.items()},
        "save_rate_by_day": {d: rate(r) for d, r in f.save_rate_by_day.items()},
        "time_to_first_answer_s": {"count": len(f.answer_seconds), "p50": f.answer_p50_s, "p95": f.answer_p95_s},
        "pending_by_effective_date": f.pending_by_effective_date, "rejected_by_code": f.rejected_by_code,
        "settlements": {"issued": f.settlements_issued, "total_jpy": f.settlements_total_jpy},
        "notifications_by_kind": f.notifications_by_kind,
        "retention": retention_json(f.retention) if f.retention is not None else None,
    }


async def stream_figures(target: Any = None, since: datetime | None = None,
                         generated_at: datetime | None = None) -> Figures:
    """The figures of the report's topics up to their end now, from the first record at or after `since` (by
    record timestamp, Kafka's offset-for-time) or from the beginning, read in time order across the topics
    so that each request is folded into the counters once it closed (ReportBuilder)."""
    import orjson

    from . import kafka_clients

    conn = kafka_clients.as_connection(target)
    builder = ReportBuilder()
    start_ms = int(since.timestamp() * 1000) if since is not None else None
    existing = await kafka_clients.topic_partitions(conn, REPORT_TOPICS)
    async for record in kafka_clients.stream_in_time_order(conn, [t for t in REPORT_TOPICS if t in existing],
                                                           start_ms=start_ms):
        try:
            builder.add(orjson.loads(record.value))
        except (orjson.JSONDecodeError, TypeError):
            continue  # not an event: the consumers dead-lettered it, the report skips it
    return builder.figures(generated_at)


@dataclass(frozen=True)
class ReasonDayBlock:
    """Cancellations by reason over a run of at most `size` days: a row per reason (then the total), a count
    per day and the block's total in each row. Reasons are rows so that the table never grows wider than a
    block of days, however many reasons the form has."""

    days: list[str]
    rows: list[tuple[str, list[int]]]


def reason_day_blocks(f: Figures, size: int = 7) -> list[ReasonDayBlock]:
    days = list(f.by_day_reason)
    seen = {r for counts in f.by_day_reason.values() for r in counts}
    reasons = [r for r in f.by_reason if r in seen] + sorted(seen - f.by_reason.keys())
    blocks = []
    for start in range(0, len(days), size):
        chunk = days[start:start + size]
        rows = []
        for reason in [*reasons, "total"]:
            counts = [sum(f.by_day_reason[d].values()) if reason == "total" else f.by_day_reason[d].get(reason, 0)
                      for d in chunk]
            rows.append((reason, [*counts, sum(counts)]))
        blocks.append(ReasonDayBlock(chunk, rows))
    return blocks
