"""The tables that empty and fill again all day (the outbox, notifier's queue) keep their pages when vacuumed:
a truncation takes the table's ACCESS EXCLUSIVE lock, which would stop every writer behind it."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db import migrate
from services.intake.app import create_app as intake_app
from services.intake.settings import IntakeSettings
from services.notifier.app import create_app as notifier_app
from services.notifier.settings import NotifierSettings

from tests.integration.own_database import own_database

pytestmark = pytest.mark.integration


async def test_a_vacuum_of_the_emptied_outbox_keeps_its_pages(infra):
    async with own_database(infra, "queue_tables") as url:
        await migrate(url, "intake", intake_app(IntakeSettings(database_url=url, api_keys="k")).runtime.service_dir)
        conn = await asyncpg.connect(url, server_settings={"search_path": "intake"})
        try:
            await conn.execute("INSERT INTO outbox (topic, key, value, headers)"
                               " SELECT 't', 'k', repeat('v', 500)::bytea, '[]' FROM generate_series(1, 2000)")
            await conn.execute("DELETE FROM outbox")
            pages = await conn.fetchval("SELECT pg_relation_size('outbox')")
            await conn.execute("VACUUM outbox")
            assert pages > 0 and await conn.fetchval("SELECT pg_relation_size('outbox')") == pages
        finally:
            await conn.close()


async def test_notifiers_queue_is_not_truncated_by_a_vacuum(infra):
    async with own_database(infra, "queue_tables") as url:
        await migrate(url, "notifier", notifier_app(NotifierSettings(database_url=url)).runtime.service_dir)
        conn = await asyncpg.connect(url)
        try:
            options = await conn.fetchval(
                "SELECT reloptions FROM pg_class WHERE oid = 'notifier.notification_queue'::regclass")
            assert "vacuum_truncate=false" in options
        finally:
            await conn.close()
