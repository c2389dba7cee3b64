"""The soak's results: per tenth of the run (throughput, latency, mails, CPU, the state at its end), the
summary (last tenth against the first, growth), the curves (docs/soak.png) and the table of
docs/performance.md."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from phases import pct


def tenths(snaps: list[dict], order: list[str], sent: dict[str, float], collector, boundaries: list[int]) -> list[dict]:
    """Per tenth (requests by when they were sent): latencies; completions per second over the tenth's own
    wall time; the state at its end (the next snapshot)."""
    done_at = sorted(t for t in (collector.completed(s) for s in order) if t is not None)
    out = []
    for k in range(10):
        sids = order[boundaries[k]:boundaries[k + 1]]
        lat = sorted((collector.completed(s) - sent[s]) * 1000 for s in sids if collector.completed(s) is not None)
        t_a, t_b = snaps[k]["wall"], snaps[k + 1]["wall"] if k < 9 else sent[sids[-1]]
        completions = sum(1 for t in done_at if t_a <= t < t_b)
        out.append({"tenth": k + 1, "requests": len(sids), "completed": len(lat), "unfinished": len(sids) - len(lat),
                    "throughput": round(completions / (t_b - t_a), 1) if t_b > t_a else 0.0,
                    "p50_ms": round(pct(lat, 50)), "p99_ms": round(pct(lat, 99)),
                    "mails": dict(Counter(snaps[k + 1]["mails"]) - Counter(snaps[k]["mails"])),
                    "cpu_cores": {n: round((snaps[k + 1]["cpu_s"][n] - snaps[k]["cpu_s"][n]) / (t_b - t_a), 2)
                                  for n in snaps[k]["cpu_s"]} if t_b > t_a else {},
                    "snapshot": snaps[k + 1]})
    return out


def summarize(results: dict) -> dict:
    t = results["tenths"]
    if len(t) < 2:
        return {}
    first, last = t[0], t[-1]
    snaps = [r["snapshot"] for r in t]
    inbox = [sum(v for k, v in s["rows"].items() if k.endswith(".processed_events")) for s in snaps]
    return {
        "throughput_first_last": [first["throughput"], last["throughput"]],
        "throughput_last_to_first": round(last["throughput"] / first["throughput"], 3) if first["throughput"] else None,
        "p99_first_last_ms": [first["p99_ms"], last["p99_ms"]],
        "p99_last_to_first": round(last["p99_ms"] / first["p99_ms"], 3) if first["p99_ms"] else None,
        "p50_last_to_first": round(last["p50_ms"] / first["p50_ms"], 3) if first["p50_ms"] else None,
        "rss_growth_mib": {n: round(snaps[-1]["rss_mib"][n] - snaps[0]["rss_mib"][n], 1) for n in snaps[-1]["rss_mib"]},
        "inbox_rows_per_tenth": inbox,
        "unfinished": sum(r["unfinished"] for r in t),
        "rejections": results["snapshots"][-1]["mails"].get("rejection", 0),
        "topic_bytes_per_cancellation": round(sum(snaps[-1]["topic_bytes"].values()) / (results["n"] + results["warmup"])),
        "db_bytes_per_cancellation": round(snaps[-1]["db_bytes"] / (results["n"] + results["warmup"])),
    }


def plot(results: dict, path: Path) -> None:
    """Four small panels, each as a ratio to the first tenth (or absolute rows): the curves of docs/performance.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results["tenths"]
    x = [r["tenth"] for r in t]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), dpi=80)
    ax = axes[0]
    for key, label in (("throughput", "throughput"), ("p50_ms", "p50"), ("p99_ms", "p99")):
        ax.plot(x, [r[key] / t[0][key] for r in t], marker="o", label=label)
    ax.axhspan(0.9, 1.1, color="0.9")
    ax.set_title("ratio to the first tenth")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name in ("intake", "eligibility", "billing", "notifier"):
        ax.plot(x, [r["snapshot"]["rss_mib"][name] for r in t], label=name)
    ax.set_title("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax = axes[2]
    inbox = [sum(v for k, v in r["snapshot"]["rows"].items() if k.endswith(".processed_events")) / 1000 for r in t]
    business = [sum(v for k, v in r["snapshot"]["rows"].items() if not k.endswith((".processed_events", ".outbox",
                ".schema_migrations"))) / 1000 for r in t]
    ax.plot(x, inbox, label="inbox (4 services)")
    ax.plot(x, business, label="business tables")
    ax.plot(x, [r["snapshot"]["db_bytes"] / 2**20 for r in t], label="DB MiB")
    ax.set_title("rows (thousands), DB size")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("tenth of the run")
    fig.tight_layout()
    fig.savefig(path)


def markdown(results: dict) -> str:
    """The per-tenth table of docs/performance.md, from a results JSON (ratios to the first tenth)."""
    t = results["tenths"]
    first = t[0]
    lines = ["| tenth | clock (end) | req/s (ratio) | p50 / p99 ms (ratio) | RSS MiB: intake / eligibility / billing /"
             " notifier / Kafka | inbox rows (4 services) | outbox | business rows | mails: immediate + reminders |"
             " completed | DB MiB | topics MiB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in t:
        snap = r["snapshot"]
        rows = snap["rows"]
        inbox = sum(v for k, v in rows.items() if k.endswith(".processed_events"))
        outbox = sum(v for k, v in rows.items() if k.endswith(".outbox"))
        business = sum(v for k, v in rows.items() if not k.endswith((".processed_events", ".outbox", ".schema_migrations")))
        rss = snap["rss_mib"]
        reminders = sum(v for k, v in r["mails"].items() if k.endswith("_reminder"))
        immediate = sum(r["mails"].values()) - reminders
        lines.append(
            f"| {r['tenth']} | {snap['clock'][:10]} | {r['throughput']:.1f} ({r['throughput'] / first['throughput']:.2f})"
            f" | {r['p50_ms']:,} / {r['p99_ms']:,} ({r['p50_ms'] / first['p50_ms']:.2f} / {r['p99_ms'] / first['p99_ms']:.2f})"
            f" | {rss['intake']:.0f} / {rss['eligibility']:.0f} / {rss['billing']:.0f} / {rss['notifier']:.0f} / {rss['kafka']:.0f}"
            f" | {inbox:,} | {outbox} | {business:,} | {immediate:,} + {reminders:,}"
            f" | {snap['states'].get('cancellations completed', 0):,} | {snap['db_bytes'] / 2**20:.0f}"
            f" | {sum(snap['topic_bytes'].values()) / 2**20:.0f} | {snap['load']:.0f} |")
    return "\n".join(lines)
