"""PostgreSQL least privilege on the real server (SPEC section 9): each service runs as its own login role,
owning its schema and everything in it, and is refused every other schema's tables."""

from __future__ import annotations

import asyncpg
import pytest

from shared.vocabulary import SERVICES

pytestmark = pytest.mark.integration


@pytest.fixture
def role_urls(infra) -> dict[str, str]:
    if infra.stack is None:
        pytest.skip("an external stack's roles are its own (docker compose: its db-roles step)")
    return {name: infra.stack.service_database_url(name) for name in SERVICES}


async def test_each_role_owns_its_schema_and_is_refused_every_other_schemas_tables(role_urls, db):
    tables = {schema: [r["tablename"] for r in await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)] for schema in SERVICES}
    assert all(tables.values()) and "seen_signatures" in tables["intake"]
    owners = await db.fetch("SELECT n.nspname AS schema, pg_get_userbyid(n.nspowner) AS owner FROM pg_namespace n"
                            " WHERE n.nspname = ANY($1::text[])", list(SERVICES))
    assert {r["schema"]: r["owner"] for r in owners} == {s: s for s in SERVICES}
    foreign_owned = await db.fetch("SELECT schemaname, tablename, tableowner FROM pg_tables"
                                   " WHERE schemaname = ANY($1::text[]) AND tableowner <> schemaname", list(SERVICES))
    assert foreign_owned == []  # migrations ran as the service's role
    for role, url in role_urls.items():
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_user") == role
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            for table in tables[role]:
                await conn.fetchval(f'SELECT count(*) FROM "{role}"."{table}"')
            for schema in SERVICES:
                if schema == role:
                    continue
                for table in tables[schema]:
                    for statement in (f'SELECT 1 FROM "{schema}"."{table}" LIMIT 1',
                                      f'DELETE FROM "{schema}"."{table}"'):
                        with pytest.raises(asyncpg.InsufficientPrivilegeError):
                            await conn.execute(statement)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f'CREATE SCHEMA "{role}_extra"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("CREATE TABLE public.smuggled (x int)")
        finally:
            await conn.close()


async def test_the_roles_need_their_password(role_urls, infra):
    if infra.stack.config.database_url is not None:
        pytest.skip("the server is a container's, whose authentication is the image's")
    for role, url in role_urls.items():
        host = url.rsplit("@", 1)[1]
        for wrong in (f"postgresql://{role}@{host}", f"postgresql://{role}:not-it@{host}",
                      f"postgresql://postgres@{host}"):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(wrong)


async def test_cancelflow_db_roles_is_idempotent_and_shows_no_secret(infra, role_urls):
    """What a deployment runs against its own server (docker compose: once, as the admin role)."""
    import os
    import subprocess
    import sys

    from cancelflow import stack_security

    passwords = stack_security.service_database_passwords(infra.stack.security_dir)
    env = {k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL")}
    env |= {f"{name.upper()}_DATABASE_PASSWORD": pw for name, pw in passwords.items()}
    env["DATABASE_URL"] = infra.database_url
    result = subprocess.run([sys.executable, "-m", "cancelflow.cli", "db-roles", "--password-from-env"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "roles ready: intake, eligibility, billing, notifier"
    assert not any(pw in result.stdout + result.stderr for pw in passwords.values())  # no secret shown
    for role, url in role_urls.items():  # the same passwords still open the same roles
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT current_user") == role
        await conn.close()
