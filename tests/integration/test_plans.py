"""Query plans that must not grow with the year (issue 15's soak found three that did): on the real
PostgreSQL, every statement of every store, the dispatcher and the messaging layer is planned (its generic
plan, the one a prepared statement ends up with) with sequential scans disabled; a `Seq Scan` left in the
plan means no index can serve it, so at a year of rows it reads every row, once a batch or once a pass."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import asyncpg
import pytest

from shared.db import migrate
from tests.integration.own_database import own_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "eligibility", "billing", "notifier")
# The modules whose statements run per batch, per pass or per request (not the rebuild's whole-table copies),
# with the schema they run in (the messaging layer's tables are the same in every service's schema).
MODULES = [(s, f"services.{s}.store") for s in SERVICES] + [("notifier", "services.notifier.dispatch")] + [
    ("eligibility", f"shared.messaging.{m}") for m in ("inbox", "outbox", "relay")]
_SQL = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b")


def statements() -> list[tuple[str, str, str]]:
    """(schema, module.NAME, SQL) of every module-level SQL constant of MODULES."""
    found = []
    for schema, module in MODULES:
        for name, value in vars(importlib.import_module(module)).items():
            if re.fullmatch(r"_[A-Z][A-Z_]*", name) and isinstance(value, str) and _SQL.match(value):
                found.append((schema, f"{module}.{name}", value))
    return found


async def generic_plan(conn: asyncpg.Connection, sql: str) -> list[str]:
    """The plan a prepared `sql` gets once PostgreSQL plans it for any parameters, sequential scans disabled."""
    await conn.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
    params = len((await conn.prepare(sql)).get_parameters())
    await conn.execute("DEALLOCATE ALL")
    await conn.execute(f"PREPARE planned AS {sql}")
    try:
        return [r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE planned({', '.join(['NULL'] * params)})")]
    finally:
        await conn.execute("DEALLOCATE planned")


@pytest.fixture(scope="module")
async def schemas(infra):
    """Every service's schema, migrated, on a database of the module's own: its URL."""
    async with own_database(infra, "plans") as url:
        for service in SERVICES:
            await migrate(url, service, REPO / "services" / service)
        yield url


def test_the_sweep_finds_the_statements_that_grew_with_the_year():
    names = {name for _, name, _ in statements()}
    assert {"services.eligibility.store._SEEN", "services.eligibility.store._COMPLETE_DUE",
            "shared.messaging.inbox._PRUNE", "services.notifier.dispatch._CLAIM"} <= names
    assert len(names) > 50


async def test_no_statement_needs_a_sequential_scan(schemas):
    unserved = {}
    for schema, name, sql in statements():
        conn = await asyncpg.connect(schemas, server_settings={"search_path": schema})
        try:
            plan = await generic_plan(conn, sql)
        finally:
            await conn.close()
        if scans := [line.strip() for line in plan if "Seq Scan" in line]:
            unserved[name] = scans
    assert unserved == {}


async def test_a_missing_index_is_seen(schemas):
    """The check itself: without the index of eligibility's migration 0003, its batch read is a seq scan."""
    from services.eligibility.store import _SEEN
    conn = await asyncpg.connect(schemas, server_settings={"search_path": "eligibility"})
    dropped = conn.transaction()
    await dropped.start()
    try:
        await conn.execute("DROP INDEX cancellations_contract")
        plan = await generic_plan(conn, _SEEN)
    finally:
        await dropped.rollback()
        await conn.close()
    assert any("Seq Scan on cancellations" in line for line in plan)


@pytest.mark.parametrize("name, table", [("services.eligibility.store._COMPLETE_DUE", "cancellations"),
                                         ("shared.messaging.inbox._PRUNE", "processed_events")])
async def test_a_pass_reaches_its_rows_by_primary_key(schemas, name, table):
    """The completion pass and the inbox's pruning pick their rows first, then update or delete them through
    the primary key: as `IN (subquery)` PostgreSQL planned them at a year of rows as a hash join over a scan
    of the whole table (which disabling seq scans on an empty table does not show)."""
    schema, _, sql = next(s for s in statements() if s[1] == name)
    conn = await asyncpg.connect(schemas, server_settings={"search_path": schema})
    try:
        plan = "\n".join(await generic_plan(conn, sql))
    finally:
        await conn.close()
    assert re.search(rf"Index Scan (?:using|on) {table}_pkey[^\n]*\n\s+Index Cond: \(\w+ = ANY \(\(InitPlan", plan), plan


@pytest.mark.parametrize("by_key, scans", [(True, 0), (False, 1)])
async def test_a_plan_made_on_an_empty_table_still_reads_by_key_once_the_table_has_grown(infra, by_key, scans):
    """A service's pool (`by_key`): the dispatcher's confirmation, prepared and run while notifications was
    empty, confirms one mail among 20,000 rows through the primary key. Without it, PostgreSQL keeps the
    sequential scan it planned on the empty table (no analyze in between: autovacuum is off for the table)."""
    from datetime import datetime, timezone

    from services.notifier.dispatch import _CONFIRM
    from shared.db import create_pool

    now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
    async with own_database(infra, "grown") as url:
        await migrate(url, "notifier", REPO / "services" / "notifier")
        pool = await create_pool(url, "notifier", max_size=1, by_key=by_key)
        try:
            async with pool.acquire() as conn:
                await conn.execute("ALTER TABLE notifications SET (autovacuum_enabled = false)")
                for _ in range(8):  # past the executions after which the generic plan is kept
                    assert await conn.fetch(_CONFIRM, [1], now, ["<m@cancelflow>"]) == []
                await conn.execute(
                    "INSERT INTO notifications (request_id, kind, due_at, status) SELECT 'R' || i, 'acknowledgement',"
                    " $1::timestamptz - i * interval '1 second', 'sent' FROM generate_series(1, 20000) AS i", now)
                pending = await conn.fetchval("INSERT INTO notifications (request_id, kind, due_at)"
                                              " VALUES ('R0', 'acknowledgement', $1) RETURNING id", now)
                # This backend's scans of the table not yet published (nothing is published inside a transaction).
                seq_scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'notifications'"
                async with conn.transaction():
                    before = await conn.fetchval(seq_scans)
                    assert [r["id"] for r in await conn.fetch(_CONFIRM, [pending], now, ["<m@cancelflow>"])] == [pending]
                    assert await conn.fetchval(seq_scans) - before == scans
        finally:
            await pool.close()
