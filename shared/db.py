"""PostgreSQL access: one pool per service, confined to the service's own schema, and versioned
SQL migrations that each service owns (plus the shared messaging tables every service has)."""

from __future__ import annotations

import asyncio
import logging
import zlib
from pathlib import Path

import asyncpg
import orjson

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"

# A CTE's body: the statement's own transaction commits without waiting for its WAL to reach the disk. Only
# for writes whose loss in a crash of PostgreSQL repeats work that is safe to repeat (a claim, a delete of
# rows already published).
UNFLUSHED = "SELECT set_config('synchronous_commit', 'off', true)"

def is_lost(conn: asyncpg.Connection) -> bool:
    """True when a pooled connection is closed, or was taken back by its pool: asyncpg does that when the
    server closes it (a PostgreSQL restart), and a kept proxy then refuses every call. Acquire a new one."""
    try:
        return conn.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return True


# Errors after which the same work can succeed later: the database restarting, a dropped
# connection, a serialization conflict. Anything else is a property of the message.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


# Server pids of pooled connections that took a session-level advisory lock or a LISTEN (the relay, the
# notifier's wake-up): only those get asyncpg's full reset query when they go back to the pool. Every other
# release would pay a round trip (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) for state it never had;
# open transactions and listener callbacks are cleared by the pool either way.
_SESSION_STATE: set[int] = set()


def keeps_session_state(conn: asyncpg.Connection) -> None:
    """Mark a pooled connection that will hold a session-level lock or LISTEN: reset in full on release."""
    _SESSION_STATE.add(conn.get_server_pid())


async def _reset_if_marked(conn: asyncpg.Connection) -> None:
    pid = conn.get_server_pid()
    if pid in _SESSION_STATE:
        _SESSION_STATE.discard(pid)
        await conn.execute(conn.get_reset_query())


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
                              schema="pg_catalog")


# A service's statements read by key, each with an index to serve it (tests/integration/test_plans.py).
# asyncpg keeps every statement prepared, and PostgreSQL keeps the generic plan it made on a statement's first
# executions: made while a table was still nearly empty (a fresh start, before autovacuum's first analyze),
# that plan is a sequential scan, and it stays one as the table grows until an analyze replans it (the
# dispatcher's confirmation read every notification so). With sequential scans off the plan takes the index
# whatever the table's size; a statement that no index serves is still planned, as a sequential scan.
_BY_KEY = {"enable_seqscan": "off"}


async def create_pool(url: str, schema: str, *, max_size: int = 10, by_key: bool = False) -> asyncpg.Pool:
    """A pool whose connections see only `schema` (and public) by default. `by_key`: for a service's own
    statements, planned through their indexes (`_BY_KEY`); not for whole-table copies such as a rebuild's."""
    return await asyncpg.create_pool(
        url, min_size=1, max_size=max_size, init=_init_connection, reset=_reset_if_marked,
        server_settings={"search_path": schema, "application_name": f"cancelflow-{schema}",
                         **(_BY_KEY if by_key else {})},
        command_timeout=30,
    )


def _migration_files(schema: str, service_dir: Path) -> list[tuple[str, str]]:
    files = [(f"shared/{p.name}", p.read_text()) for p in sorted(SHARED_MIGRATIONS.glob("*.sql"))]
    files += [(f"{schema}/{p.name}", p.read_text()) for p in sorted((service_dir / "migrations").glob("*.sql"))]
    return files


async def migrate(url: str, schema: str, service_dir: Path, *, service: str | None = None) -> list[str]:
    """Apply the service's migrations that are not applied yet; returns the ones applied now. `service`:
    the name its versions are recorded under when the schema has another (a rebuild's new schema).

    An advisory lock per schema makes two processes of one service starting at once safe.
    """
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    applied_now = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(schema.encode()))
            # A service's own role owns its schema and may not create others: made only where it is missing.
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in _migration_files(service or schema, service_dir):
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied_now.append(version)
    finally:
        await conn.close()
    if applied_now:
        log.info("migrations applied", extra={"topic": None})
    return applied_now
