"""`cancelflow`: run the local stack, and operate it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .infra.errors import InfraError
from .stack import Ports, Stack, StackConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The cancellation pipeline's stack: Kafka, PostgreSQL, SMTP sink and four services.")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def _stack(clock_file: Path | None = None) -> Stack:
    config = StackConfig(ports=Ports.from_env())
    # The demo moves the clock to show reminders and completion: every `up` gets a clock file.
    config.clock_file = clock_file or config.root / "clock"
    return Stack(config)


@app.command()
def install() -> None:
    """Fetch the Kafka broker's jars from Maven Central and check PostgreSQL's binaries (idempotent)."""
    from .infra import kafka, postgres

    try:
        libs = kafka.ensure_jars()
        postgres.check_binaries()
    except InfraError as exc:
        _fail(str(exc))
    console.print(f"Kafka {kafka.kafka_version()} jars in {libs}; PostgreSQL binaries ok", highlight=False)


@app.command()
def up(detach: bool = typer.Option(False, "--detach", "-d", help="Return once healthy, leave it running."),
       demo: bool = typer.Option(False, "--demo", help="Run the demo once the stack is healthy."),
       clock_file: Path = typer.Option(None, help="Demo/tests: a file holding the stack's current instant."),
       offer_holdout_percent: int = typer.Option(
           10, min=0, max=50, help="Share (%) of accepted cancellations shown no offers, to measure the offers' "
                                   "lift against (ELIGIBILITY_OFFER_HOLDOUT_PERCENT; the service's default is 0).")) -> None:
    """Start Kafka, PostgreSQL, the SMTP sink and the four services; wait until each is healthy."""
    stack = _stack(clock_file.resolve() if clock_file else None)
    stack.config.offer_holdout_percent = offer_holdout_percent
    if stack.alive():
        _fail(f"the stack is already running from {stack.root}: `cancelflow status` or `cancelflow down`")
    try:
        took = stack.up()
    except InfraError as exc:
        _fail(str(exc))
    for key, value in stack.endpoints().items():
        print(f"{key}={value}")
    print(f"ELIGIBILITY_OFFER_HOLDOUT_PERCENT={offer_holdout_percent}")
    console.print(f"[green]healthy in {took:.1f}s[/green]", highlight=False)
    if demo:
        from .demo import run_demo

        run_demo(stack, intake_url=stack.endpoints()["INTAKE_URL"], api_key=stack.config.api_keys.split(",")[0],
                 console=console)
    if detach:
        return
    console.print("running; Ctrl-C stops everything", highlight=False)
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
def status() -> None:
    """What runs, where, healthy or not."""
    stack = _stack()
    rows = stack.status()
    if not rows:
        console.print("not running")
        raise typer.Exit(3)
    table = Table("component", "pid", "port", "running", "healthy")
    for r in rows:
        table.add_row(r["name"], str(r["pid"]), str(r["port"]), "yes" if r["running"] else "[red]no[/red]",
                      {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r["healthy"]])
    console.print(table)
    for key, value in stack.endpoints().items():
        print(f"{key}={value}")


@app.command()
def topics(bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS"),
           partitions: int = typer.Option(4)) -> None:
    """Create the SPEC's topics and their .dlq companions (idempotent)."""
    from shared import topics as t
    from shared.settings import ServiceSettings

    from .infra import kafka

    bootstrap = bootstrap or "127.0.0.1:19092"
    # The same KAFKA_SECURITY_PROTOCOL / KAFKA_SASL_* settings as the services.
    options = ServiceSettings().kafka_client_options()

    async def run() -> None:
        await kafka.wait_ready(bootstrap, 120, **options)
        await kafka.create_topics(bootstrap, t.all_with_dlq(), partitions, **options)

    try:
        asyncio.run(run())
    except InfraError as exc:
        _fail(str(exc))
    console.print(f"topics ready on {bootstrap}", highlight=False)


@app.command()
def demo(intake_url: str = typer.Option("http://127.0.0.1:8001", envvar="INTAKE_URL"),
         api_key: str = typer.Option("dev-key", envvar="CANCELFLOW_API_KEY")) -> None:
    """Against a running stack: sign contracts, submit cancellations, show what happened to each."""
    from .demo import run_demo

    stack = _stack()
    try:
        run_demo(stack, intake_url=intake_url, api_key=api_key, console=console)
    except InfraError as exc:
        _fail(str(exc))


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
