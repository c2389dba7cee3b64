"""The local stack's processes: spawned with their logs, waited healthy, stopped (one, or all in order),
killed; and why one exited (its log's cause line)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from . import stack_cluster as cluster
from .infra.errors import InfraError, PortTaken, bind_failed, cause_line
from .stack_config import REPO_ROOT


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


class StackProcesses:
    """The processes of a stack (a mixin of `cancelflow.stack.Stack`, whose `procs`, `adopted`, `logs`, `record`,
    `port_of` and `_save` it uses): each spawned with its log, waited healthy, stopped, killed, and all of
    them stopped in order."""

    procs: dict[str, subprocess.Popen]
    adopted: dict[str, int]
    logs: Path

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO_ROOT, start_new_session=True, **kwargs)
        self.procs[name] = proc
        self._save()
        return proc

    def wait_healthy(self, names: list[str], timeout: float = 180) -> None:
        # As long as a broker gets: at load 80 on two cores, four services starting at once took over 90 s.
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    self._raise_if_exited(name)
                try:
                    r = httpx.get(f"http://127.0.0.1:{self.port_of(name)}/ready", timeout=2)
                    if r.status_code == 200:
                        pending.remove(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        if pending:
            raise InfraError(f"not healthy after {timeout:.0f}s: {', '.join(pending)} (see {self.logs})")

    def _raise_if_exited(self, name: str) -> None:
        """If `name` has exited: its log's cause line, as `PortTaken` when it could not bind its port."""
        raise_if_exited(name, self.procs.get(name), self.logs / f"{name}.log")

    def stop_process(self, name: str, pid: int, timeout: float = 20) -> None:
        terminate(name, pid, timeout)
        popen = self.procs.pop(name, None)
        self.adopted.pop(name, None)
        if popen is not None:
            popen.wait(timeout=5)

    def pid_of(self, name: str) -> int:
        return self.procs[name].pid if name in self.procs else (self.adopted | self.recorded_pids())[name]

    def kill(self, name: str) -> None:
        """kill -9, for chaos tests."""
        os.kill(self.pid_of(name), signal.SIGKILL)
        self.adopted.pop(name, None)
        if name in self.procs:
            self.procs.pop(name).wait(timeout=10)

    def down(self) -> list[str]:
        """Stop exactly what `up` (and `scale`) started, services first, then the infrastructure."""
        pids = self.recorded_pids() | self.adopted | {n: p.pid for n, p in self.procs.items()}
        kinds = {"service": 0, "smtp": 1, "broker": 2, "database": 3}
        order = sorted(pids, key=lambda n: (kinds[cluster.Process(n).kind], n))
        stopped = []
        for name in order:
            self.stop_process(name, pids[name])
            stopped.append(name)
        self.record.remove()
        return stopped
