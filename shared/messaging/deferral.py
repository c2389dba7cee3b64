"""Deferred writes: a store queues a write whose result nobody reads (`defer`), and the queue is sent
before anything else goes to the connection, a run of the same statement as one executemany round trip.
Every statement still runs in the order it was written, so deferring never changes what a read sees.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class BatchConnection:
    """The batch's connection as the handlers see it: `defer()` queues a write whose result nobody reads;
    every other use of the connection first sends what is queued (a run of the same statement as one
    executemany round trip), so the statements run in exactly the order they were written."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.raw = conn
        self._queue: list[tuple[str, tuple]] = []

    def defer(self, sql: str, *args: Any) -> None:
        self._queue.append((sql, args))

    def discard(self) -> None:
        """Forget what is queued (its record's savepoint was rolled back)."""
        self._queue.clear()

    async def flush(self) -> None:
        queue, self._queue = self._queue, []
        i = 0
        while i < len(queue):
            sql, j = queue[i][0], i + 1
            while j < len(queue) and queue[j][0] == sql:
                j += 1
            if j - i == 1:
                await self.raw.execute(sql, *queue[i][1])
            else:
                await self.raw.executemany(sql, [args for _, args in queue[i:j]])
            i = j

    async def _queue_first(self, send: Any, args: tuple, kwargs: dict) -> Any:
        if self._queue:
            await self.flush()
        return await send(*args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        return await self._queue_first(self.raw.execute, args, kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> None:
        return await self._queue_first(self.raw.executemany, args, kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> list:
        return await self._queue_first(self.raw.fetch, args, kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._queue_first(self.raw.fetchrow, args, kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._queue_first(self.raw.fetchval, args, kwargs)

    def transaction(self, **kwargs: Any) -> "_FlushFirst":
        return _FlushFirst(self, self.raw.transaction(**kwargs))

    def is_in_transaction(self) -> bool:
        return self.raw.is_in_transaction()

    def is_closed(self) -> bool:
        return self.raw.is_closed()


class _FlushFirst:
    """A savepoint opened after the queued statements were sent (they must not be inside it)."""

    def __init__(self, conn: BatchConnection, transaction: Any) -> None:
        self.conn = conn
        self.transaction = transaction

    async def __aenter__(self) -> Any:
        await self.conn.flush()
        return await self.transaction.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        if exc[0] is None:
            try:
                await self.conn.flush()  # what the block deferred belongs inside it
            except BaseException as error:
                await self.transaction.__aexit__(type(error), error, error.__traceback__)
                raise
        return await self.transaction.__aexit__(*exc)
