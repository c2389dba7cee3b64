"""A service's state as a projection of the log (SPEC section 8, `cancelflow rebuild`): the topics to read,
in order, and for each event type what it writes. A projection writes state only: it emits nothing and
sends nothing. It reads the service's inputs it merely records (contracts) and the service's own outputs,
which carry what it decided, so a rebuild records the decisions taken, never takes them again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.events import Envelope, EventData

Apply = Callable[[Any, Envelope, Any], Awaitable[None]]  # (connection, envelope, event data)


class _Silent:
    """The outbox a projection's store gets: a rebuild publishes nothing and wakes nobody."""

    def notify(self, channel: str) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a projection publishes nothing (outbox.{name} called)")


SILENT: Any = _Silent()


def through(handler: Any, store: Callable[[Any, Any], Any], service: str) -> Apply:
    """A consumer's own handler as a projection's step, for a handler that only writes state: the same
    statements the service runs, on a store whose outbox publishes nothing. A handler that reads the clock
    or emits fails here (its state is not the log's)."""
    from .consumer import Context

    async def apply(conn: Any, envelope: Envelope, data: Any) -> None:
        await handler(Context(store=store(conn, SILENT), envelope=envelope, clock=None, outbox=SILENT,  # type: ignore[arg-type]
                              producer=service), data)
    return apply


@dataclass(frozen=True)
class Projection:
    service: str
    topics: tuple[str, ...]  # read one after another, each partition in offset order
    apply: Mapping[str, Apply]
    # The service's own outputs: applied only when the service itself published them (another producer's
    # copy on the same topic is nothing the service decided).
    own: frozenset[str] = frozenset()
    # Columns that are bookkeeping (when a row was last written, a surrogate id), not state: left out of
    # comparisons.
    bookkeeping: Mapping[str, tuple[str, ...]] = ()  # type: ignore[assignment]
    # Tables no topic holds (intake's data keys, the signatures it saw): copied from the service's own schema
    # before the topics are read; rebuilt without them, every sealed customer would be shredded and a signed
    # call seen within the tolerance could be replayed.
    carried: tuple[str, ...] = ()

    async def __call__(self, conn: Any, envelope: Envelope, data: EventData) -> None:
        apply = self.apply.get(envelope.event_type)
        if apply is not None and (envelope.event_type not in self.own or envelope.producer == self.service):
            await apply(conn, envelope, data)
