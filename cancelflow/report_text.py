"""The report's figures in words: percentages, durations, the lift's sentence, and the tables
`cancelflow report` prints (the HTML page, cancelflow.report_page, uses the same words)."""

from __future__ import annotations

from rich.table import Table

from .report import Figures, reason_day_blocks
from .retention_report import FEEDBACK_PER_REASON, Lift, RetentionFigures, tokyo_time


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


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pp"


def lift_sentence(lift: Lift) -> str:
    """The lift and its interval in percentage points, then the verdict."""
    if lift.difference is None:
        return lift.verdict
    return (f"lift {_pp(lift.difference)} (95 % interval {_pp(lift.low)} to {_pp(lift.high)}): {lift.verdict}")


def retention_tables(r: RetentionFigures) -> list[Table]:
    offers = Table(title="offers: offered, taken, take rate", title_justify="left")
    for col in ("offer", "offered", "taken", "take rate"):
        offers.add_column(col, justify="left" if col == "offer" else "right")
    for offer, f in r.by_offer.items():
        offers.add_row(offer, str(f.offered), str(f.taken), percent(f.take_rate))
    lift = Table(title="save rate: offered vs holdout", title_justify="left", caption=lift_sentence(r.lift),
                 caption_justify="left")
    for col in ("group", "accepted", "saved", "save rate"):
        lift.add_column(col, justify="left" if col == "group" else "right")
    for name, g in (("offered", r.lift.offered), ("holdout", r.lift.holdout)):
        lift.add_row(name, str(g.accepted), str(g.saved), percent(g.save_rate))
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
