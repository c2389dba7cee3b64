"""The pipeline bench's results: the table printed (and kept in docs/performance.md) and the plot of
throughput and latency against the offered load (docs/performance.png)."""

from __future__ import annotations

from pathlib import Path


def full_speed(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["offered"] is None), None)


def report(results: dict) -> str:
    m = results["machine"]
    lines = [f"## {results['label']} ({results['started']}, code {results.get('code', '?')}, {results['wall_s']} s)", "",
             f"machine: {m['cpus']} CPUs, load before {', '.join(f'{x:.1f}' for x in m['load_before'])},"
             f" calibration {m.get('calibration_ms')} / {m.get('calibration_ms_after')} ms (lower is faster)", "",
             "| load | pipeline req/s | e2e p50 | p95 | p99 | requested->notified p99 | relay req/s | relay p99 |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["phase"]: r for r in results["baseline"]}
    for r in results["pipeline"]:
        b = base.get(r["phase"])
        sat = " (saturated)" if r.get("saturated") else ""
        inc = "" if r["completed"] == r["requests"] else f" ({r['requests'] - r['completed']} unfinished)"
        e, q = r["e2e_ms"], r["requested_ms"]
        row = (f"| {r['phase']} | {r['throughput']:.0f}{sat}{inc} | {e['p50']:.0f} ms | {e['p95']:.0f} ms |"
               f" {e['p99']:.0f} ms | {q['p99']:.0f} ms |")
        row += f" {b['throughput']:.0f} | {b['e2e_ms']['p99']:.0f} ms |" if b else " - | - |"
        lines.append(row)
    if results.get("skipped"):
        lines.append(f"| {', '.join(f'{r}/s' for r in results['skipped'])} | not run: saturated at a lower rate"
                     " | | | | | | |")
    p, b = full_speed(results["pipeline"]), full_speed(results["baseline"])
    if p and b:
        lines += ["", f"Full speed: pipeline {p['throughput']:.0f} req/s, bare relay {b['throughput']:.0f} req/s,"
                      f" ratio {p['throughput'] / b['throughput']:.2f}"]
    lines += ["", "Peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in results.get("peak_rss_mb", {}).items())]
    if p:
        lines += ["CPU ms per request at full speed: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(p["cpu_s_per_1k"].items(), key=lambda kv: -kv[1]))]
    if writes := results.get("table_writes_per_request"):
        lines += ["", "| table | inserted / req | updated / req | HOT share | deleted / req | seq scans / req"
                      " | rows they read / req |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {t} | {w['ins']} | {w['upd']} | {'-' if w['hot_share'] is None else w['hot_share']} | {w['del']}"
                  f" | {w.get('seq_scans', '-')} | {w.get('seq_rows_read', '-')} |" for t, w in writes.items()]
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    """Throughput and latency against the offered load: the last run drawn solid, earlier runs (--compare)
    faint and dotted; the bare relay of the last run in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    last = len(runs) - 1
    for i, res in enumerate(runs):
        now = i == last
        style = dict(ls="-" if now else ":", alpha=1.0 if now else 0.45, marker="o" if now else "x")
        label = res["label"]
        fixed = [r for r in res["pipeline"] if r["offered"]]
        x = [r["offered"] for r in fixed]
        ax1.plot(x, [r["throughput"] for r in fixed], color="C0", label=f"pipeline ({label})", **style)
        fs = full_speed(res["pipeline"])
        if fs:
            ax1.axhline(fs["throughput"], color="C0", lw=1, ls="--", alpha=style["alpha"] * 0.7)
            ax1.annotate(f"pipeline at full speed: {fs['throughput']:.0f}/s ({label})", (0.01, fs["throughput"]),
                         xycoords=("axes fraction", "data"), fontsize=7, color="C0", va="bottom")
        for q, color in ((50, "C2"), (95, "C1"), (99, "C4")):
            ax2.plot(x, [r["e2e_ms"][f"p{q}"] for r in fixed], color=color, label=f"p{q} ({label})", **style)
        if now:
            bfixed = [r for r in res["baseline"] if r["offered"]]
            if bfixed:
                bx = [r["offered"] for r in bfixed]
                ax1.plot(bx, [r["throughput"] for r in bfixed], color="C3", marker="s", alpha=0.7,
                         label="bare relay")
                ax2.plot(bx, [r["e2e_ms"]["p99"] for r in bfixed], color="C3", marker="s", alpha=0.7,
                         label="bare relay p99")
            bfs = full_speed(res["baseline"])
            if bfs:
                ax1.axhline(bfs["throughput"], color="C3", lw=1, ls="--", alpha=0.6)
                ax1.annotate(f"bare relay at full speed: {bfs['throughput']:.0f}/s", (0.01, bfs["throughput"]),
                             xycoords=("axes fraction", "data"), fontsize=7, color="C3", va="bottom")
    all_rates = sorted({r["offered"] for res in runs for part in ("pipeline", "baseline") for r in res[part]
                        if r["offered"]})
    ax1.plot(all_rates, all_rates, color="grey", lw=0.8, label="achieved = offered")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(all_rates, [str(r) for r in all_rates])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered load (requests/s)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("completed requests/s")
    ax1.set_title("Throughput (a request is complete at its 3rd notification.sent)")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms, submission -> last notification.sent")
    ax2.axhline(100, color="grey", lw=0.8, ls="--")
    ax2.annotate("target: p99 <= 100 ms at 100 req/s", (0.01, 100), xycoords=("axes fraction", "data"),
                 fontsize=7, color="grey", va="bottom")
    ax2.set_title("Latency (phases that saturated included)")
    ax1.legend(fontsize=7, loc="center right")
    ax2.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
