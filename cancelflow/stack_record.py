"""The running stack's record, `stack.json` under its state directory: the pids, ports, security, layout and
Kafka client settings it was started with, written on each change so that `status`, `scale` and `down` from
another shell act on exactly what runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

from .stack_cluster import Process
from .stack_config import Ports


class StackRecord:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 from its creation: it holds the intake key, the webhook secret and the operator's password.
        with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(state, indent=2))
        self.path.chmod(0o600)  # made by an older version with other modes

    def read(self) -> dict | None:
        """The recorded state (None when no stack is recorded)."""
        return json.loads(self.path.read_text()) if self.path.exists() else None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def security(self) -> str | None:
        """The security the recorded stack runs with (None when none is recorded)."""
        state = self.read()
        return None if state is None else state.get("security", "plaintext")

    def client_settings(self) -> dict[str, str]:
        """The running stack's Kafka client settings as it recorded them (the bootstrap address included)."""
        return (self.read() or {}).get("client", {})

    def ports(self) -> Ports | None:
        ports = (self.read() or {}).get("ports")
        return Ports(**ports) if ports else None

    def layout(self) -> tuple[int, dict[str, int]] | None:
        """(brokers, instances per service) of the recorded stack."""
        state = self.read()
        return None if state is None else (state.get("brokers", 1), state.get("instances", {}))

    def holdout_percent(self) -> int:
        """The holdout the running stack's eligibility was started with (0 when unknown)."""
        return int((self.read() or {}).get("offer_holdout_percent") or 0)

    def pids(self) -> dict[str, int]:
        return (self.read() or {}).get("pids", {})

    def alive(self, root: Path) -> dict[str, int]:
        """Recorded processes still running and still ours (a recycled pid is not)."""
        out = {}
        for name, pid in self.pids().items():
            try:
                proc = psutil.Process(pid)
                service = Process(name).service
                cmdline = " ".join(proc.cmdline())
                if proc.status() != psutil.STATUS_ZOMBIE and (
                        str(root) in cmdline or service is not None and f"services.{service}.app" in cmdline):
                    out[name] = pid
            except psutil.Error:
                continue
        return out
