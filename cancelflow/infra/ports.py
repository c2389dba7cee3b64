"""Ports for the local stack and the tests: never the same one twice in a run, and a retry with new ones
when another process takes a port between the choice and the bind."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import InfraError, PortTaken

T = TypeVar("T")

_handed_out: set[int] = set()
_lock = threading.Lock()


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def require_free(port: int, what: str) -> None:
    if not port_is_free(port):
        raise PortTaken(f"port {port} ({what}) is busy: free it or choose another port")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different ports that are free now and were never handed out before in this process.

    They are taken below the kernel's ephemeral range, where no outgoing connection (of a Kafka client, say)
    can be given one of them as its source port before the intended server binds it."""
    low, high = 10_000, max(_ephemeral_low() - 1, 10_001)
    picked: list[int] = []
    with _lock:
        for _ in range(count * 200):
            if len(picked) == count:
                break
            port = random.randint(low, high)
            if port in _handed_out or not port_is_free(port, host):
                continue
            _handed_out.add(port)
            picked.append(port)
    if len(picked) < count:
        raise InfraError(f"no {count} free ports found between {low} and {high}")
    return picked


def free_port() -> int:
    return free_ports(1)[0]


def with_fresh_ports(start: Callable[[], T], attempts: int = 3) -> T:
    """Run `start` (which picks its ports with `free_ports`) again, on new ports, when a port it chose was
    taken before its process could bind it."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def wait_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports, none handed out before (for CANCELFLOW_PORT_BASE)."""
    low, high = 10_000, max(_ephemeral_low() - count, 10_001)
    with _lock:
        for _ in range(500):
            base = random.randint(low, high)
            block = range(base, base + count)
            if any(p in _handed_out for p in block) or not all(port_is_free(p, host) for p in block):
                continue
            _handed_out.update(block)
            return base
    raise InfraError(f"no {count} consecutive free ports found between {low} and {high}")
