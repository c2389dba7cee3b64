"""The report's figures in words: percentages, durations, the lift's sentence, and the tables
`cancelflow report` prints (the HTML page, cancelflow.report_page, uses the same words)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]], *, numeric_from: int = 1,
          caption: str | None = None, header: bool = True) -> Table:
    """A table of the report: the title (and caption) on the left, the columns from `numeric_from` on
    right-aligned."""
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left", show_header=header)
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if i >= numeric_from else "left")
    for row in rows:
        t.add_row(*map(str, row))
    return t


def report_tables(f: Figures) -> list[Table]:
    summary = table("summary", ("", ""), (
        ("accepted cancellations", f.accepted), ("rejected requests", f.rejected), ("withdrawn (saved)", f.withdrawn),
        ("completed", f.completed), ("save rate", percent(f.save_rate.rate)),
        ("time to first answer p50", duration(f.answer_p50_s)), ("time to first answer p95", duration(f.answer_p95_s)),
        ("settlements issued", f"{f.settlements_issued} (¥{f.settlements_total_jpy:,})")), header=False)
    by_days = [table(f"cancellations by reason per day (Tokyo), {block.days[0]} to {block.days[-1]}",
                     ["reason", *(day[5:] for day in block.days), "total"],  # MM-DD: the title says the year
                     ([label, *counts] for label, counts in block.rows))
               for block in reason_day_blocks(f)]
    offers = table("save rate per offer", ("offer", "accepted", "withdrawn", "save rate"),
                   ((o, r.accepted, r.withdrawn, percent(r.rate)) for o, r in f.save_rate_by_offer.items()))
    pending = table("pending cancellations by effective date", ("effective date", "pending"),
                    f.pending_by_effective_date.items())
    return [summary, *by_days, offers, pending, *(retention_tables(f.retention) if f.retention else ())]


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f} pp"


def lift_sentence(lift: Lift) -> str:
    """The lift and its interval in percentage points, then the verdict."""
    if lift.difference is None:
        return lift.verdict
    return (f"lift {_pp(lift.difference)} (95 % interval {_pp(lift.low)} to {_pp(lift.high)}): {lift.verdict}")


def retention_tables(r: RetentionFigures) -> list[Table]:
    offers = table("offers: offered, taken, take rate", ("offer", "offered", "taken", "take rate"),
                   ((o, f.offered, f.taken, percent(f.take_rate)) for o, f in r.by_offer.items()))
    lift = table("save rate: offered vs holdout", ("group", "accepted", "saved", "save rate"),
                 ((name, g.accepted, g.saved, percent(g.save_rate))
                  for name, g in (("offered", r.lift.offered), ("holdout", r.lift.holdout))),
                 caption=lift_sentence(r.lift))
    without = table("saves without an offer (withdrawn, none taken)", ("shown", "saves"),
                    r.saves_without_offer.items())
    feedback = table(f"feedback per reason (newest first, up to {FEEDBACK_PER_REASON}; personal data masked)",
                     ("reason", "received (Tokyo)", "feedback"),
                     ((reason if i == 0 else "", tokyo_time(f.received_at), f.text)
                      for reason, items in r.feedback.items() for i, f in enumerate(items)), numeric_from=3)
    return [offers, lift, without, feedback]
