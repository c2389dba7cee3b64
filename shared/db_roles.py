"""PostgreSQL least privilege: one login role per service, named after it, owning its schema and nothing
else (SPEC section 9). Run once by whoever holds the database's admin role (`cancelflow up` does it for the
local stack, `cancelflow db-roles` for any other server); each service then migrates as its own role."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

# Objects made in a schema before it had its own role (a stack started by an older version) change owner.
_REOWN = """
DO $$
DECLARE
    r record;
    kind text;
BEGIN
    FOR r IN SELECT c.oid, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = {schema} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') ORDER BY c.relkind <> 'r'
    LOOP
        -- A table's own sequences follow it: skip what already moved.
        CONTINUE WHEN (SELECT relowner FROM pg_class WHERE oid = r.oid) = {role}::regrole;
        kind := CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END;
        EXECUTE format('ALTER %s %I.%I OWNER TO %I', kind, {schema}, r.relname, {role});
    END LOOP;
END $$;
"""


async def provision(admin_url: str, passwords: dict[str, str], database: str | None = None) -> None:
    """For each service: its login role (with this password), its schema owned by it, CONNECT on the
    database; PUBLIC keeps no CONNECT, so a role sees only what it owns."""
    conn = await asyncpg.connect(admin_url)
    try:
        database = database or await conn.fetchval("SELECT current_database()")
        await conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
        for role, password in passwords.items():
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            # Identifiers and the password through format(): DDL takes no parameters.
            statement = await conn.fetchval(
                "SELECT format(%s, $1::text, $2::text)" % ("'ALTER ROLE %I LOGIN PASSWORD %L'" if exists
                                                          else "'CREATE ROLE %I LOGIN PASSWORD %L'"), role, password)
            await conn.execute(statement)
            await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{role}" AUTHORIZATION "{role}"')
            await hand_over(conn, role, role)
    finally:
        await conn.close()


async def hand_over(conn: asyncpg.Connection, schema: str, role: str) -> bool:
    """Make `role` the owner of `schema` and of everything in it (a schema the admin built, e.g. by
    `cancelflow rebuild`, or one made before the roles existed). False, and nothing changed, when there is no
    such role (a database where every service still runs as the admin)."""
    if not await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):
        return False
    await conn.execute(f'ALTER SCHEMA "{_identifier(schema)}" OWNER TO "{_identifier(role)}"')
    await conn.execute(_REOWN.format(schema=_literal(schema), role=_literal(role)))
    return True


def _identifier(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"not a role or schema name: {name!r}")
    return name


def _literal(name: str) -> str:
    return f"'{_identifier(name)}'"


def role_url(url: str, role: str, password: str) -> str:
    """`url` (the admin's) with `role:password` as its user."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))
