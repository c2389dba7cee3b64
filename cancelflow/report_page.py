"""The report as one self-contained HTML page (inline CSS and SVG, no script, nothing fetched) that fits
the window: no table or chart wider than a 1024 px screen."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .report import REASON_WORDING, Figures, reason_day_blocks
from .report_text import duration, lift_sentence, percent
from .retention_report import FEEDBACK_PER_REASON, Lift, OfferFigures, RetentionFigures, tokyo_time, wilson

# Days per table of "cancellations by reason per day": a week of columns next to the reason fits any window.
DAYS_PER_TABLE = 7

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans JP',sans-serif;margin:2rem auto;max-width:960px;
color:#1f2933;background:#fff;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e4e7eb;
padding-bottom:.3rem}.muted{color:#616e7c;font-size:.9rem}
.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin-top:1rem}.card{border:1px solid #e4e7eb;border-radius:8px;
padding:.7rem 1rem;min-width:140px}.card .v{font-size:1.5rem;font-weight:600}.card .l{color:#616e7c;font-size:.85rem}
table{border-collapse:collapse;margin-top:.5rem;font-size:.9rem}th,td{border:1px solid #e4e7eb;padding:.3rem .6rem}
th{background:#f5f7fa;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg text{font-family:inherit}svg{max-width:100%;height:auto}
table.by-day caption{text-align:left;color:#616e7c;font-size:.85rem;padding:.2rem 0}table.by-day{margin-bottom:1rem}
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


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1, *, css: str = "",
           caption: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i >= numeric_from else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- the retention loop -----------------------------------------------------------------------------------

OFFERED_GREEN, HOLDOUT_GREY, TAKEN_PURPLE, OFFERED_LILAC = "#2f9e44", "#868e96", "#7048e8", "#d0bfff"


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
                     f'<title>{name}: {percent(rate)} of {group.accepted}</title></rect>')
        if group.accepted:
            lo, hi = wilson(group.saved, group.accepted)
            x1, x2, mid = left + span * lo, left + span * hi, y + bar / 2
            parts.append(f'<path class="interval" d="M{x1:.1f},{mid - 7:.1f}v14M{x1:.1f},{mid:.1f}H{x2:.1f}'
                         f'M{x2:.1f},{mid - 7:.1f}v14" stroke="#1f2933" stroke-width="1.5" fill="none"/>')
        parts.append(f'<text x="{left + span + 8}" y="{y + bar * 0.68:.1f}" font-size="13" fill="#1f2933">'
                     f'{percent(rate)}</text>')
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
                     f'{f.taken} of {f.offered} ({percent(f.take_rate)})</text>')
    parts.append("</svg>")
    return "".join(parts)


def retention_html(r: RetentionFigures) -> str:
    lift = r.lift
    offers = _table(["offer", "offered", "taken", "take rate"],
                   ([o, f.offered, f.taken, percent(f.take_rate)] for o, f in r.by_offer.items()))
    groups = _table(["group", "accepted", "saved", "save rate"],
                   ([n, g.accepted, g.saved, percent(g.save_rate)] for n, g in (("offered", lift.offered),
                                                                             ("holdout", lift.holdout))))
    without = _table(["shown", "saves without an offer"], r.saves_without_offer.items())
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


def render_html(f: Figures) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched."""
    cards = "".join(f'<div class="card"><div class="v">{_e(v)}</div><div class="l">{_e(label)}</div></div>' for label, v in (
        ("accepted cancellations", f.accepted), ("withdrawn (saved)", f.withdrawn),
        ("save rate", percent(f.save_rate.rate)), ("first answer p50", duration(f.answer_p50_s)),
        ("first answer p95", duration(f.answer_p95_s)), ("pending", sum(f.pending_by_effective_date.values())),
        ("rejected requests", f.rejected)))
    by_day = "".join(
        _table(["reason", *(d[5:] for d in block.days), "total"], ([label, *counts] for label, counts in block.rows),
               css="by-day", caption=f"{block.days[0]} to {block.days[-1]}")
        for block in reason_day_blocks(f, DAYS_PER_TABLE)) or "<p>none yet</p>"
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
