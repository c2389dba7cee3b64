"""Operator commands: `trace`, `tail`, `dlq list|replay`, `top`, `report`, `asyncapi`, one module per family.

They read Kafka like any other client (nothing here touches the services' databases), with clients from
`cancelflow.kafka_clients`. Each command's figures come from a pure function over decoded records
(`records.Record`), so they are unit-tested without a broker; the functions that talk to Kafka are thin and
tested against the real stack (plain, SASL/SCRAM and TLS).
"""

from __future__ import annotations

import typer

# Imported in the order `cancelflow --help` lists the commands; each registers its commands on base.app.
from . import tracing, tail, dlq, top, reporting  # noqa: F401, I001
from .base import app


def register(main: typer.Typer) -> None:
    """Add these commands (and the `dlq` group) to the main `cancelflow` app."""
    main.registered_commands += app.registered_commands
    main.registered_groups += app.registered_groups
