"""Injectable time. Services read "now" only through a Clock so tests and the demo can move it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class FileClock:
    """The instant written in a file (RFC 3339), else the system time.

    Every process of a stack shares one file (CANCELFLOW_CLOCK_FILE), so moving the clock moves it for
    all four services at once. Meant for tests and the demo, never set in production.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return datetime.now(timezone.utc)
        if not text:
            return datetime.now(timezone.utc)
        value = datetime.fromisoformat(text)
        if value.tzinfo is None:
            raise ValueError(f"clock file {self.path} holds a naive time: {text!r}")
        return value.astimezone(timezone.utc)

    def set(self, instant: datetime) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(instant.isoformat())
        tmp.replace(self.path)


def clock_from(path: str | None) -> Clock:
    return FileClock(Path(path)) if path else SystemClock()
