"""`bench/pipeline.py --profile`: py-spy on every service during a phase, and what its raw stacks say (the
busy share, the own time per function and per library, the time under each of the project's modules)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


async def start_profilers(stack, seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    from cancelflow.stack import SERVICES

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not found: `.venv/bin/pip install py-spy`; profiling skipped)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in SERVICES:
        procs.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(stack.procs[name].pid), "--duration", str(int(seconds)), "--rate", "97",
             "--nonblocking", "--format", "raw", "--output", str(out_dir / f"{name}.raw")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def finish_profilers(procs: list[subprocess.Popen], seconds: float, name: str) -> dict:
    from cancelflow.stack import SERVICES

    for p in procs:
        try:
            await asyncio.to_thread(p.wait, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
    out = REPO / "bench" / "results" / name
    return {svc: summarize_profile(out / f"{svc}.raw") for svc in SERVICES if (out / f"{svc}.raw").exists()}


IDLE_FRAMES = ("EpollSelector.select", "select (selectors.py")


def summarize_profile(raw: Path, top: int = 15) -> dict:
    """From py-spy's raw (collapsed) stacks: the share of samples the process was busy; of the busy
    samples, the own time per function, the own time per library (the innermost frame's), and the share
    spent under each of the project's modules (inclusive)."""
    own: Counter = Counter()
    own_area: Counter = Counter()
    through: Counter = Counter()
    total = busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if leaf.startswith(IDLE_FRAMES) or "Condition.wait" in leaf or "_worker (concurrent/futures" in leaf:
            continue  # waiting for I/O, or an idle helper thread
        busy += n
        own[leaf] += n
        own_area[_area(leaf) or "other"] += n
        for label in {PROJECT_MODULES[m] for f in frames for m in PROJECT_MODULES if m in f}:
            through[label] += n  # once per label, however many of its modules the stack passes

    def share(counter: Counter, k: int | None = None) -> list:
        return [(f, round(100 * n / busy, 1)) for f, n in counter.most_common(k)] if busy else []

    return {"samples": total, "busy_pct": round(100 * busy / total, 1) if total else 0.0,
            "own": share(own, top), "own_by_library": share(own_area), "under": share(through)}


PROJECT_MODULES = {"(shared/messaging/consumer.py": "shared.messaging (consumer)",
                   "(shared/messaging/deferral.py": "shared.messaging (consumer)",
                   "(shared/messaging/inbox.py": "shared.messaging (consumer)",
                   "(shared/messaging/outbox.py": "shared.messaging (outbox + relay)",
                   "(shared/messaging/relay.py": "shared.messaging (outbox + relay)",
                   "(shared/events.py": "shared.events (decode/encode)",
                   **{f"(services/{s}/{m}.py": "service handlers and stores"
                      for s in ("intake", "eligibility", "billing", "notifier") for m in ("handlers", "store", "domain")},
                   **{f"(services/notifier/{m}.py": "notifier dispatch" for m in ("dispatch", "smtp_client", "mime")},
                   "(services/notifier/texts.py": "notifier mail texts", "(services/notifier/templates/": "notifier mail texts"}


def _area(frame: str) -> str | None:
    for marker, area in (("_SelectorSocketTransport.write", "socket send (syscall)"),
                         ("asyncpg/", "asyncpg"), ("aiokafka/", "aiokafka"), ("faststream/", "faststream"),
                         ("pydantic", "pydantic"), ("aiosmtplib/", "aiosmtplib"), ("(email/", "email (stdlib)"),
                         ("jinja2/", "jinja2"), ("(logging/", "logging"), ("prometheus_client/", "prometheus"), ("(asyncio/", "asyncio"),
                         ("(shared/", "project code"), ("(services/", "project code"), ("uuid", "uuid")):
        if marker in frame:
            return area
    return None
