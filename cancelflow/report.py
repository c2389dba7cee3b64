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

import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.table import Table

from shared import topics
from shared.calendar import tokyo_date
from shared.vocabulary import Offer, Reason

from .retention_report import RetentionFigures, compute_retention, retention_html, retention_json, retention_tables

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


def compute_report(envelopes: Iterable[Mapping[str, Any]], generated_at: datetime | None = None) -> Figures:
    envelopes = list(envelopes)  # read twice: here and by compute_retention
    seen: set[Any] = set()
    received_at: dict[str, datetime] = {}
    requested_reason: dict[str, str] = {}
    decided: dict[str, tuple[datetime | None, str]] = {}  # request -> (decided_at, "accepted"/"rejected")
    accepted: dict[str, dict[str, Any]] = {}
    rejected_codes: Counter[str] = Counter()
    rejected: set[str] = set()
    withdrawn: set[str] = set()
    completed: set[str] = set()
    issued: dict[str, int] = {}
    voided: set[str] = set()
    kinds: Counter[str] = Counter()
    for env in envelopes:
        if not isinstance(env, Mapping) or not isinstance(env.get("data"), Mapping):
            continue
        key = env.get("event_id") or id(env)
        if key in seen:  # the outbox may publish an event twice; the log counts it once
            continue
        seen.add(key)
        t, d = env.get("event_type"), env["data"]
        rid = d.get("request_id")
        if not isinstance(rid, str):
            continue
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
        retention=compute_retention(envelopes),
    )


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


async def collect_envelopes(bootstrap: str, timeout: float = 30) -> list[dict]:
    """The envelopes now on the report's topics, read with `client.read_topic`."""
    import asyncio

    import orjson

    from .client import read_topic

    async def one(topic: str) -> list:
        try:
            return await read_topic(bootstrap, topic, timeout=timeout)
        except ValueError:
            return []

    out = []
    for batch in await asyncio.gather(*(one(t) for t in REPORT_TOPICS)):
        for record in batch:
            try:
                obj = orjson.loads(record.value) if record.value else None
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


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
    reasons = sorted({r for c in f.by_day_reason.values() for r in c})
    by_day = Table(title="cancellations by reason per day (Tokyo)", title_justify="left")
    by_day.add_column("day")
    for r in reasons:
        by_day.add_column(r, justify="right")
    by_day.add_column("total", justify="right")
    for day, counts in f.by_day_reason.items():
        by_day.add_row(day, *(str(counts.get(r, 0)) for r in reasons), str(sum(counts.values())))
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
    return [summary, by_day, offers, pending, *(retention_tables(f.retention) if f.retention else ())]


# --- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans JP',sans-serif;margin:2rem auto;max-width:960px;
color:#1f2933;background:#fff;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e4e7eb;
padding-bottom:.3rem}.muted{color:#616e7c;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin-top:1rem}.card{border:1px solid #e4e7eb;border-radius:8px;
padding:.7rem 1rem;min-width:140px}.card .v{font-size:1.5rem;font-weight:600}.card .l{color:#616e7c;font-size:.85rem}
table{border-collapse:collapse;margin-top:.5rem;font-size:.9rem}th,td{border:1px solid #e4e7eb;padding:.3rem .6rem}
th{background:#f5f7fa;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg text{font-family:inherit}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def bar_chart(values: Mapping[str, int], *, notes: Mapping[str, str] | None = None, width: int = 860,
              bar: int = 24, gap: int = 16, label_width: int = 320, color: str = "#3e7bfa") -> str:
    """Horizontal bars, one per key: the key (and a grey note under it) on the left, the value after the bar."""
    notes = notes or {}
    items = list(values.items())
    row = bar + gap
    height = max(1, len(items)) * row + gap
    top = max([v for _, v in items] + [1])
    span = width - label_width - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="cancellations by reason">']
    for i, (label, v) in enumerate(items):
        y = gap + i * row
        w = max(round(span * v / top), 1) if v else 1
        note = notes.get(label)
        label_y = y + (bar * 0.45 if note else bar * 0.68)
        parts.append(f'<text x="{label_width - 10}" y="{label_y:.1f}" text-anchor="end" font-size="13" '
                     f'font-weight="600" fill="#1f2933">{_e(label)}</text>')
        if note:
            parts.append(f'<text x="{label_width - 10}" y="{y + bar + 4:.1f}" text-anchor="end" font-size="11" '
                         f'fill="#616e7c">{_e(note)}</text>')
        parts.append(f'<rect class="bar" x="{label_width}" y="{y}" width="{w}" height="{bar}" rx="3" '
                     f'fill="{color if v else "#cbd2d9"}"><title>{_e(label)}: {v}</title></rect>')
        parts.append(f'<text x="{label_width + w + 6}" y="{y + bar * 0.68:.1f}" font-size="13" '
                     f'fill="#1f2933">{v}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(points: Sequence[tuple[str, float | None]], *, overall: float | None = None, width: int = 860,
               height: int = 280, color: str = "#e8590c") -> str:
    """A line of rates (0..1) over labelled points, with a 0-100% axis and the overall rate dashed; points
    without a rate are skipped."""
    left, right, top, bottom = 60, 60, 28, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="line" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="save rate by day">']
    for pct in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e7eb"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="#616e7c">'
                     f'{pct}%</text>')
    n = len(points)
    xy = []
    for i, (label, rate) in enumerate(points):
        x = left + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))
        step = max(1, math.ceil(n / 12))
        if i % step == 0 or i == n - 1:
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 20}" text-anchor="middle" font-size="12" '
                         f'fill="#616e7c">{_e(label)}</text>')
        if rate is not None:
            xy.append((x, top + plot_h * (1 - rate), label, rate))
    if len(xy) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in xy)
        parts.append(f'<polyline class="rate" points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
    if overall is not None:
        y = top + plot_h * (1 - overall)
        parts.append(f'<line class="overall" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#616e7c" stroke-dasharray="5,4"/>')
        parts.append(f'<text x="{width - right}" y="{y - 6:.1f}" text-anchor="end" font-size="12" fill="#616e7c">'
                     f'overall {percent(overall)}</text>')
    for x, y, label, rate in xy:
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                     f'<title>{_e(label)}: {percent(rate)}</title></circle>')
        if n <= 16:
            parts.append(f'<text x="{x:.1f}" y="{y - 10:.1f}" text-anchor="middle" font-size="12" '
                         f'fill="{color}" stroke="#fff" stroke-width="3" paint-order="stroke">{percent(rate)}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#9aa5b1"/>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= numeric_from else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(f: Figures) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched."""
    cards = "".join(f'<div class="card"><div class="v">{_e(v)}</div><div class="l">{_e(label)}</div></div>' for label, v in (
        ("accepted cancellations", f.accepted), ("withdrawn (saved)", f.withdrawn),
        ("save rate", percent(f.save_rate.rate)), ("first answer p50", duration(f.answer_p50_s)),
        ("first answer p95", duration(f.answer_p95_s)), ("pending", sum(f.pending_by_effective_date.values())),
        ("rejected requests", f.rejected)))
    reasons = sorted({r for c in f.by_day_reason.values() for r in c})
    by_day = _table(["day (Tokyo)", *reasons, "total"],
                    ([day, *(c.get(r, 0) for r in reasons), sum(c.values())] for day, c in f.by_day_reason.items()))
    offers = _table(["offer", "accepted", "withdrawn", "save rate"],
                    ([o, r.accepted, r.withdrawn, percent(r.rate)] for o, r in f.save_rate_by_offer.items()))
    days = _table(["day of acceptance (Tokyo)", "accepted", "withdrawn", "save rate"],
                  ([d, r.accepted, r.withdrawn, percent(r.rate)] for d, r in f.save_rate_by_day.items()))
    pending = _table(["effective date", "pending"], f.pending_by_effective_date.items())
    codes = _table(["rejection code", "requests"], f.rejected_by_code.items())
    kinds = _table(["notification kind", "sent"], f.notifications_by_kind.items())
    line = line_chart([(d, r.rate) for d, r in f.save_rate_by_day.items()], overall=f.save_rate.rate)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cancelflow report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>Cancellations report</h1>
<div class="muted">generated {_e(f.generated_at)} from the event log (cancellation.requests, cancellation.decisions,
billing.settlements, notifications.sent, retention.offers); days are Tokyo dates.</div>
<div class="cards">{cards}</div>
<h2>Cancellations by reason</h2>
<div class="muted">accepted cancellations, all days</div>
{bar_chart(f.by_reason, notes=REASON_WORDING)}
<h2>Save rate by day of acceptance</h2>
<div class="muted">withdrawn / accepted among the cancellations accepted that day</div>
{line}
{days}
<h2>Cancellations by reason per day</h2>
{by_day}
<h2>Save rate per offer</h2>
<div class="muted">among the accepted cancellations that carried the offer; overall {percent(f.save_rate.rate)}
({f.withdrawn} of {f.accepted})</div>
{offers}
{retention_html(f.retention) if f.retention else ""}
<h2>Time from request to first answer</h2>
<p>{len(f.answer_seconds)} answered requests: p50 {_e(duration(f.answer_p50_s))}, p95 {_e(duration(f.answer_p95_s))}
(nearest rank).</p>
<h2>Pending cancellations by effective date</h2>
{pending}
<h2>Other figures</h2>
<p>Settlements issued (not voided): {f.settlements_issued}, ¥{f.settlements_total_jpy:,} in final charges.</p>
{codes}
{kinds}
</body></html>
"""
