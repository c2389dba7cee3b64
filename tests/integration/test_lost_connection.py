"""A pooled connection kept between batches (consumers, the notifier's LISTEN connection, the outbox relay)
whose server side went away, as in a PostgreSQL restart: asyncpg hands it back to its pool and the kept proxy
then refuses every call, `is_closed()` included. `is_lost` says so, and the holder acquires a new one (the
chaos run on the cluster found consumers and the notifier's dispatch stuck on that after a restart)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import is_lost

pytestmark = pytest.mark.integration


async def test_a_kept_connection_the_server_closed_is_lost_not_an_error(infra):
    # command_timeout as in shared.db.create_pool: a query sent while the backend is dying may never be
    # answered, and asyncpg then waits for as long as it is told to.
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=2, command_timeout=5)
    try:
        kept = await pool.acquire()
        assert not is_lost(kept)
        pid = kept.get_server_pid()
        async with pool.acquire() as other:
            await other.execute("SELECT pg_terminate_backend($1)", pid)
            # The server side is gone only once its process is: wait for that, as a restart would.
            for _ in range(100):
                if not await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.05)
        for _ in range(100):
            try:
                await kept.execute("SELECT 1")
            except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, ConnectionError,
                    asyncio.TimeoutError):
                break
            await asyncio.sleep(0.1)
        assert is_lost(kept)
        await pool.release(kept, timeout=5)  # a no-op for a proxy the pool took back
        async with pool.acquire() as fresh:
            assert await fresh.fetchval("SELECT 1") == 1
    finally:
        pool.terminate()  # close() would wait for a connection a failed assertion left acquired
