"""A transaction's NOTIFYs heard in its own process the moment it commits.

A NOTIFY reaches a LISTEN connection of the same process only after PostgreSQL has woken that connection's
backend and it has written the message back: on a busy machine, a round of wake-ups on the way to, say, the
dispatcher of the process whose consumer just scheduled a mail. So the outbox rings this process's listeners
itself once the transaction committed, and still NOTIFYs, for the other processes, with this process's token
as the payload: a listener here skips a notification that carries its own token (already rung).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable


class Doorbell:
    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self._listeners: dict[str, list[Callable[[], None]]] = {}

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        self._listeners.setdefault(channel, []).append(callback)

    def unlisten(self, channel: str, callback: Callable[[], None]) -> None:
        if callback in self._listeners.get(channel, ()):
            self._listeners[channel].remove(callback)

    def ring(self, channels: Iterable[str]) -> None:
        """The channels a transaction of this process NOTIFYed, now that it committed."""
        for channel in channels:
            for callback in list(self._listeners.get(channel, ())):
                callback()

    def rung_here(self, payload: str) -> bool:
        """Whether a NOTIFY with this payload came from this process (its listeners were rung at commit)."""
        return payload == self.token
