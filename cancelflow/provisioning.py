"""`cancelflow topics`, `kafka-acls` and `db-roles`: what an operator provisions on a Kafka cluster and a
PostgreSQL server that are not the local stack's (which does all three itself): the topics with the retention
policy, the ACLs of SPEC section 9, one login role per service. Each is idempotent."""

from __future__ import annotations

import asyncio
import os

import typer
from rich.table import Table

from .infra.errors import InfraError
from .ops.base import console, fail

app = typer.Typer(add_completion=False)


@app.command()
def topics(bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS"),
           partitions: int = typer.Option(4),
           brokers: int | None = typer.Option(None, "--brokers", help="Kafka nodes the cluster has (3 and more: topics "
                                       "replicated on 3, min.insync.replicas=2); default: as many as the "
                                       "cluster's metadata names."),
           retention_days: int = typer.Option(
               400, envvar="CANCELFLOW_TOPIC_RETENTION_DAYS",
               help="Retention of the business topics other than contracts.events (kept forever); -1: forever."),
           fix: bool = typer.Option(False, "--fix", help="Apply the policy to existing topics that differ.")) -> None:
    """Create the SPEC's topics and their .dlq companions with the retention policy (idempotent); report
    existing topics whose settings differ from it, and with --fix apply it to them."""
    from shared import topics as t

    from . import kafka_clients
    from .infra import kafka, topic_admin, topic_policy

    try:
        topic_policy.retention_days_ms(retention_days)
    except ValueError as exc:
        fail(f"--retention-days: {exc}")
    # The same KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* settings as the services and the other commands.
    conn = kafka_clients.connection(bootstrap)
    bootstrap, options = conn.bootstrap_servers, conn.client_options()
    wanted = t.all_with_dlq()

    async def run() -> tuple[list[str], list]:
        nonlocal brokers
        # Not told: the cluster's own size, so that a 3-node cluster is never "fixed" down to one replica's
        # min.insync.replicas.
        if brokers is None:
            brokers = await kafka.wait_ready(bootstrap, 120, **options)
        else:
            await kafka.wait_ready(bootstrap, 120, brokers=brokers, **options)
        created = await topic_admin.create_topics(bootstrap, wanted, partitions, brokers=brokers,
                                                  business_retention_days=retention_days, **options)
        drifted = await topic_admin.check_topics(bootstrap, wanted, business_retention_days=retention_days,
                                                 brokers=brokers, **options)
        if fix:
            await topic_admin.fix_topics(bootstrap, drifted, **options)
        return created, drifted

    try:
        created, drifted = asyncio.run(run())
    except InfraError as exc:
        fail(str(exc))
    if created:
        console.print(f"created: {', '.join(created)}", highlight=False, soft_wrap=True)
    if drifted:
        table = Table("topic", "config", "on the broker", "policy", title="topics whose settings differ from the policy")
        for d in drifted:
            for name, (actual, policy) in d.differences.items():
                table.add_row(d.topic, name, actual or "-", policy)
        console.print(table)
        if fix:
            console.print(f"fixed: {len(drifted)} topic(s) now have the policy's settings", highlight=False)
        else:
            console.print("run `cancelflow topics --fix` to apply the policy", highlight=False)
            raise typer.Exit(2)
    console.print(f"topics ready on {bootstrap}", highlight=False)


@app.command("kafka-acls")
def kafka_acls(bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS")) -> None:
    """Create the ACLs of SPEC section 9 (one principal per service, upstream, operator) on a broker with an
    authorizer, connecting with the KAFKA_* settings of a principal allowed to alter ACLs (idempotent)."""
    from . import kafka_clients
    from .infra import kafka
    from .infra.acl import create_acls
    from .stack_security import access_policy

    conn = kafka_clients.connection(bootstrap)

    async def run() -> int:
        await kafka.wait_ready(conn.bootstrap_servers, 120, **conn.client_options())
        policy = access_policy()
        await create_acls(conn.bootstrap_servers, policy, **conn.client_options())
        return len(policy)

    from aiokafka.errors import KafkaError

    try:
        count = asyncio.run(run())
    except (InfraError, KafkaError) as exc:
        fail(str(exc))
    console.print(f"{count} ACLs on {conn.bootstrap_servers}", highlight=False)


@app.command("db-roles")
def db_roles_command(admin_url: str = typer.Option(..., envvar="DATABASE_URL",
                                                   help="A URL of the database as a role that may create roles."),
                     password_from_env: bool = typer.Option(
                         False, help="Take each role's password from <SERVICE>_DATABASE_PASSWORD instead of "
                                     "generating one.")) -> None:
    """Give each service its own login role owning only its schema (idempotent). With generated passwords, prints
    <SERVICE>_DATABASE_URL= lines for the services' environment; with passwords from the environment (docker
    compose: the one-shot db-roles) it prints no secret, only the roles made."""
    import secrets

    from shared import db_roles
    from shared.vocabulary import SERVICES

    def password(service: str) -> str:
        if not password_from_env:
            return secrets.token_urlsafe(24)
        value = os.environ.get(f"{service.upper()}_DATABASE_PASSWORD")
        if not value:
            fail(f"{service.upper()}_DATABASE_PASSWORD is not set")
        return value

    passwords = {service: password(service) for service in SERVICES}
    try:
        asyncio.run(db_roles.provision(admin_url, passwords))
    except OSError as exc:
        fail(f"cannot reach {admin_url.rsplit('@', 1)[-1]}: {exc}")
    if password_from_env:
        console.print(f"roles ready: {', '.join(passwords)}", highlight=False)
        return
    for service, secret in passwords.items():
        print(f"{service.upper()}_DATABASE_URL={db_roles.role_url(admin_url, service, secret)}")


def register(main: typer.Typer) -> None:
    """Add these commands to the main `cancelflow` app."""
    main.registered_commands += app.registered_commands
