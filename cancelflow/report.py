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
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.table import Table

from shared import topics
from shared.contract_calendar import tokyo_date
from shared.vocabulary import Offer, Reason

from .retention_report import RetentionBuilder, RetentionFigures, retention_json, retention_tables

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


def parse_instant(value: Any) -> datetime | None:
    """An RFC 3339 string from an event -> aware datetime (UTC if it had no offset); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class ReportBuilder:
    """The report's state, fed one envelope at a time: a year of topics is read through it, never held."""

    def __init__(self) -> None:
        self.seen: set[Any] = set()
        self.received_at: dict[str, datetime] = {}
        self.requested_reason: dict[str, str] = {}
        self.decided: dict[str, tuple[datetime | None, str]] = {}  # request -> (decided_at, "accepted"/"rejected")
        self.accepted: dict[str, dict[str, Any]] = {}
        self.rejected_codes: Counter[str] = Counter()
        self.rejected: set[str] = set()
        self.withdrawn: set[str] = set()
        self.completed: set[str] = set()
        self.issued: dict[str, int] = {}
        self.voided: set[str] = set()
        self.kinds: Counter[str] = Counter()
        self.retention = RetentionBuilder()

    def add(self, env: Any) -> None:
        """One envelope (decoded JSON), in any order; a duplicate (same event_id) counts once."""
        self.retention.add(env)
        (seen, received_at, requested_reason, decided, accepted, rejected_codes, rejected, withdrawn, completed,
         issued, voided, kinds) = self._state()
        if not isinstance(env, Mapping) or not isinstance(env.get("data"), Mapping):
            return
        key = env.get("event_id") or id(env)
        if key in seen:  # the outbox may publish an event twice; the log counts it once
            return
        seen.add(key)
        t, d = env.get("event_type"), env["data"]
        rid = d.get("request_id")
        if not isinstance(rid, str):
            return
        when = parse_instant(d.get("decided_at")) or parse_instant(env.get("occurred_at"))
        if t == "cancellation.requested":
            if (at := parse_instant(d.get("received_at"))) is not None:
                received_at[rid] = at
            if d.get("reason"):
                requested_reason[rid] = d["reason"]
        elif t == "cancellation.accepted" and rid not in accepted:
            accepted[rid] = {"at": when, "reason": d.get("reason"), "offers": tuple(d.get("offers") or ()),
                             "effective_date": d.get("effective_date")}
            decided.setdefault(rid, (when, "accepted"))
        elif t == "cancellation.rejected" and rid not in rejected:
            rejected.add(rid)
            rejected_codes.update(d.get("codes") or ())
            decided.setdefault(rid, (when, "rejected"))
        elif t == "cancellation.withdrawn":
            withdrawn.add(rid)
        elif t == "cancellation.completed":
            completed.add(rid)
        elif t == "settlement.issued":
            issued[rid] = int(d.get("total_jpy") or 0)
        elif t == "settlement.voided":
            voided.add(rid)
        elif t == "notification.sent":
            kinds[str(d.get("kind"))] += 1

    def _state(self) -> tuple:
        return (self.seen, self.received_at, self.requested_reason, self.decided, self.accepted, self.rejected_codes,
                self.rejected, self.withdrawn, self.completed, self.issued, self.voided, self.kinds)

    def figures(self, generated_at: datetime | None = None) -> Figures:
        (_seen, received_at, requested_reason, decided, accepted, rejected_codes, rejected, withdrawn, completed,
         issued, voided, kinds) = self._state()
        by_day_reason: dict[str, Counter[str]] = defaultdict(Counter)
        by_reason: Counter[str] = Counter()
        by_offer: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        pending: Counter[str] = Counter()
        for rid, a in accepted.items():
            reason = a["reason"] or requested_reason.get(rid) or "(unknown)"
            saved = rid in withdrawn
            day = tokyo_date(a["at"]).isoformat() if a["at"] else "(unknown)"
            by_day_reason[day][reason] += 1
            by_reason[reason] += 1
            for offer in a["offers"] or (NO_OFFER,):
                by_offer[offer][0] += 1
                by_offer[offer][1] += saved
            by_day[day][0] += 1
            by_day[day][1] += saved
            if not saved and rid not in completed:
                pending[a["effective_date"] or "(unknown)"] += 1

        answers = sorted((at - received_at[rid]).total_seconds()
                         for rid, (at, _) in decided.items() if at is not None and rid in received_at)
        offer_order = [o.value for o in Offer] + [NO_OFFER]
        reasons = {r.value: by_reason.get(r.value, 0) for r in Reason} | {
            r: n for r, n in sorted(by_reason.items()) if r not in Reason.__members__}
        saved_total = len(withdrawn & accepted.keys())
        return Figures(
            accepted=len(accepted), rejected=len(rejected), withdrawn=saved_total,
            completed=len(completed & accepted.keys()),
            by_day_reason={day: dict(sorted(c.items())) for day, c in sorted(by_day_reason.items())},
            by_reason=reasons,
            save_rate=Rate(len(accepted), saved_total),
            save_rate_by_offer={o: Rate(*by_offer[o]) for o in sorted(by_offer, key=offer_order.index)
                                if o in offer_order} | {o: Rate(*by_offer[o]) for o in sorted(by_offer)
                                                        if o not in offer_order},
            save_rate_by_day={day: Rate(*v) for day, v in sorted(by_day.items())},
            answer_seconds=answers, answer_p50_s=nearest_rank(answers, 0.50), answer_p95_s=nearest_rank(answers, 0.95),
            pending_by_effective_date=dict(sorted(pending.items())),
            rejected_by_code=dict(sorted(rejected_codes.items())),
            settlements_issued=len(issued.keys() - voided),
            settlements_total_jpy=sum(v for rid, v in issued.items() if rid not in voided),
            notifications_by_kind=dict(sorted(kinds.items())),
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
    """The figures of the report's topics read a fetch at a time up to their end now, from the first record
    at or after `since` (by record timestamp, Kafka's offset-for-time) or from the beginning."""
    import orjson

    from . import kafka_clients

    conn = kafka_clients.as_connection(target)
    builder = ReportBuilder()
    start_ms = int(since.timestamp() * 1000) if since is not None else None
    existing = await kafka_clients.topic_partitions(conn, REPORT_TOPICS)
    for topic in REPORT_TOPICS:
        if topic not in existing:
            continue
        async for records in kafka_clients.stream_topic(conn, topic, start_ms=start_ms):
            for record in records:
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


# --- text -------------------------------------------------------------------------------------------------

def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if abs(seconds) < 1:
        return f"{seconds * 1000:.0f} ms"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def report_tables(f: Figures) -> list[Table]:
    summary = Table(title="summary", title_justify="left", show_header=False)
    summary.add_column()
    summary.add_column(justify="right")
    for label, value in (("accepted cancellations", str(f.accepted)), ("rejected requests", str(f.rejected)),
                         ("withdrawn (saved)", str(f.withdrawn)), ("completed", str(f.completed)),
                         ("save rate", percent(f.save_rate.rate)),
                         ("time to first answer p50", duration(f.answer_p50_s)),
                         ("time to first answer p95", duration(f.answer_p95_s)),
                         ("settlements issued", f"{f.settlements_issued} (¥{f.settlements_total_jpy:,})")):
        summary.add_row(label, value)
    by_days = []
    for block in reason_day_blocks(f):
        t = Table(title=f"cancellations by reason per day (Tokyo), {block.days[0]} to {block.days[-1]}",
                  title_justify="left")
        t.add_column("reason")
        for day in block.days:
            t.add_column(day[5:], justify="right")  # MM-DD: the title says the year
        t.add_column("total", justify="right")
        for label, counts in block.rows:
            t.add_row(label, *map(str, counts))
        by_days.append(t)
    offers = Table(title="save rate per offer", title_justify="left")
    for col in ("offer", "accepted", "withdrawn", "save rate"):
        offers.add_column(col, justify="left" if col == "offer" else "right")
    for offer, rate in f.save_rate_by_offer.items():
        offers.add_row(offer, str(rate.accepted), str(rate.withdrawn), percent(rate.rate))
    pending = Table(title="pending cancellations by effective date", title_justify="left")
    pending.add_column("effective date")
    pending.add_column("pending", justify="right")
    for day, n in f.pending_by_effective_date.items():
        pending.add_row(day, str(n))
    return [summary, *by_days, offers, pending, *(retention_tables(f.retention) if f.retention else ())]
