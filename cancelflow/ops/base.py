"""What every operator command shares: the Typer apps they register on, the console, the `--bootstrap`
option and how a command fails (one line, not a traceback)."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import typer
from rich.console import Console

from shared.kafka_connection import KafkaConnection

from .. import kafka_clients

app = typer.Typer(add_completion=False, help="Operate a running pipeline.")
dlq_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Dead letters: list them with their reasons, replay them to their source topic.")
app.add_typer(dlq_app, name="dlq")
console = Console()

BOOTSTRAP = typer.Option(None, "--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS",
                         help="Kafka bootstrap servers [default: the local stack's, else 127.0.0.1:19092]. "
                              "Security from KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE "
                              "(as `cancelflow up` prints them), else the local stack's.",
                         show_default=False)


def connection(bootstrap: str | None) -> KafkaConnection:
    """The `--bootstrap` option (or KAFKA_BOOTSTRAP_SERVERS) with the security settings around it."""
    return kafka_clients.connection(bootstrap)


def fail(message: str) -> NoReturn:
    """One line on the console and exit status 1: what an operator reads instead of a traceback."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except Exception as exc:  # noqa: BLE001 - an operator wants one line, not a traceback
        from aiokafka.errors import KafkaError

        if isinstance(exc, (KafkaError, OSError, ValueError)):
            console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
            raise typer.Exit(1) from None
        raise
