"""Stopping one process of the local stack, and telling why one exited (its log's cause line)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil

from .infra.errors import InfraError, PortTaken, bind_failed, cause_line


def terminate(name: str, pid: int, timeout: float = 20) -> None:
    """SIGTERM (PostgreSQL: SIGINT, its "fast" shutdown: SIGTERM waits for every client to leave), SIGKILL
    after `timeout`, and its children killed if they outlived it."""
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
        proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _exited(proc):
            proc.kill()
        for child in children:  # e.g. postgres' backends, if the postmaster died first
            if not _exited(child):
                child.kill()
    except psutil.NoSuchProcess:
        pass


def _exited(proc: psutil.Process) -> bool:
    """Gone, or a zombie: a process that exited but whose parent (not us, e.g. the test that started the stack)
    has not reaped it yet. Waiting for a zombie to disappear would wait the whole timeout."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def raise_if_exited(name: str, proc: subprocess.Popen | None, log: Path) -> None:
    """If `proc` has exited: its log's cause line, as `PortTaken` when it could not bind its port."""
    if proc is None or proc.poll() is None:
        return
    output = log.read_text(errors="replace")[-20_000:] if log.exists() else ""
    error = PortTaken if bind_failed(output) else InfraError
    raise error(f"{name} exited with {proc.returncode}: {cause_line(output)} (log: {log})")
