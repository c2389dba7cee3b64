"""A database of a test's own on the harness's PostgreSQL server (exact row counts; no running stack's relay
sees its outbox rows), dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg


async def _as_admin(infra, statement: str) -> None:
    admin = await asyncpg.connect(infra.admin_url())
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@asynccontextmanager
async def own_database(infra, prefix: str) -> AsyncIterator[str]:
    """A new database named `prefix_<random>`: its URL, for the block; dropped (connections and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await _as_admin(infra, f'CREATE DATABASE "{name}"')
    try:
        yield infra.admin_url(name)
    finally:
        await _as_admin(infra, f'DROP DATABASE "{name}" WITH (FORCE)')


async def wal_fsyncs(conn: asyncpg.Connection) -> int:
    """How many times this connection's backend waited for its WAL to reach the disk (PostgreSQL 18's
    per-backend I/O statistics)."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")  # the statement after the one that asked publishes the counts
    return await conn.fetchval("SELECT sum(fsyncs) FROM pg_stat_get_backend_io(pg_backend_pid())"
                               " WHERE object = 'wal'")
