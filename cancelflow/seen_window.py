"""What was read within a window of event time: the event ids a reader of the log has seen (as a service's
inbox holds them, bounded like it), or what a request left that a later event may still need. Bounded by the
window, so a year of records is read without holding every id: `cancelflow rebuild`, `cancelflow report`."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any


class SeenWindow:
    """Keys (each with a value) put within `window` of event time of the newest put; older ones are forgotten.
    A key put without a time is kept."""

    def __init__(self, window: timedelta) -> None:
        self.window = window
        self.items: dict[Any, tuple[datetime | None, Any]] = {}
        self.order: deque[tuple[datetime, Any]] = deque()
        self.newest: datetime | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: Any) -> bool:
        return key in self.items

    def get(self, key: Any, default: Any = None) -> Any:
        return self.items[key][1] if key in self.items else default

    def pop(self, key: Any, default: Any = None) -> Any:
        return self.items.pop(key)[1] if key in self.items else default

    def put(self, key: Any, value: Any, at: datetime | None) -> None:
        self.items[key] = (at, value)
        if at is None:
            return
        self.order.append((at, key))
        self.newest = at if self.newest is None or at > self.newest else self.newest
        while self.order[0][0] < self.newest - self.window:
            old_at, old = self.order.popleft()
            if old in self.items and self.items[old][0] == old_at:  # not put again since
                del self.items[old]

    def first(self, key: Any, at: datetime | None) -> bool:
        """True the first time `key` is seen within the window of its last sighting (and remembers it)."""
        if key in self.items:
            last = self.items[key][0]
            if at is None or last is None or at - last <= self.window:
                return False
        self.put(key, None, at)
        return True
