"""What the benches measure beside the messages: the peak RSS and CPU seconds of the stack's processes
(sampled in the background), how fast the shared machine was (a calibration), and which code ran."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


class Monitor:
    """Peak RSS and CPU seconds of the processes that matter, sampled in the background."""

    def __init__(self) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.phase_peak: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task | None = None

    def watch(self, name: str, pid: int) -> None:
        try:
            self.procs[name] = psutil.Process(pid)
        except psutil.Error:
            pass

    def unwatch(self, name: str) -> None:
        self.procs.pop(name, None)

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each process, with its children (reaped ones included);
        the bench itself without its children (the stack's processes are its children)."""
        out = {}
        for name, proc in self.procs.items():
            total = 0.0
            for p in ([proc] if name == "bench" else self._tree(proc)):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                    if name != "bench":
                        total += t.children_user + t.children_system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def sample(self) -> None:
        for name, proc in self.procs.items():
            if name in ("kafka", "postgres", "bench"):
                procs = [proc]  # PostgreSQL's backends share memory: the sum would overcount
            else:
                procs = self._tree(proc)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss[name] = max(self.peak_rss[name], rss)
            self.phase_peak[name] = max(self.phase_peak[name], rss)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def calibrate() -> float:
    """Milliseconds a fixed piece of pure Python takes here and now: the machine is shared, so its speed
    varies from run to run; this number says how fast it was (lower is faster)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_TABLE_COUNTS = """
SELECT schemaname || '.' || relname AS name, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       seq_scan, seq_tup_read
FROM pg_stat_user_tables
"""


async def table_counts(database_url: str) -> dict[str, tuple[int, ...]]:
    """Rows inserted, updated, updated HOT (no index touched) and deleted so far, and the sequential scans and
    the rows they read, per schema.table.
    PostgreSQL's backends publish their counts at most once a second: take it after a pause."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return {r["name"]: (r["n_tup_ins"], r["n_tup_upd"], r["n_tup_hot_upd"], r["n_tup_del"], r["seq_scan"] or 0,
                            r["seq_tup_read"] or 0) for r in await conn.fetch(_TABLE_COUNTS)}
    finally:
        await conn.close()


def counts_per_request(before: dict, after: dict, requests: int) -> dict[str, dict[str, float]]:
    """What each table was written per request between two `table_counts`, the share of its updates that
    were HOT, and the rows sequential scans read per request; tables neither written nor scanned left out."""
    out = {}
    for name, now in sorted(after.items()):
        ins, upd, hot, dele, scans, scanned = (a - b for a, b in zip(now, before.get(name, (0,) * len(now))))
        if ins or upd or dele or scans:
            out[name] = {"ins": round(ins / requests, 2), "upd": round(upd / requests, 2),
                         "del": round(dele / requests, 2), "hot_share": round(hot / upd, 2) if upd else None,
                         "seq_scans": round(scans / requests, 2), "seq_rows_read": round(scanned / requests, 1)}
    return out
