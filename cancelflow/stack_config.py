"""Where the local stack runs: its ports (one block from a base port, a cluster's nodes and further instances
included) and what it is started with (`StackConfig`)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from shared.vocabulary import SERVICES

from .infra.topic_policy import BUSINESS_RETENTION_DAYS

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ports:
    kafka: int = 19092
    kafka_controller: int = 19093
    postgres: int = 15432
    smtp: int = 10025
    intake: int = 8001
    eligibility: int = 8002
    billing: int = 8003
    notifier: int = 8004
    # `--brokers 3`: the nodes' client listeners from here on, their controllers right after them.
    kafka_cluster: int = 19192
    # `--instances N`: instance k >= 2 of the i-th service (intake, eligibility, billing, notifier) on
    # instances + 4 * (k - 2) + i.
    instances: int = 18100

    @classmethod
    def from_base(cls, b: int) -> "Ports":
        """N..N+7 (Kafka, its controller, PostgreSQL, SMTP, services), a cluster's nodes from N+8 (clients, then
        controllers), further instances from N+24."""
        return cls(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, kafka_cluster=b + 8, instances=b + 24)

    @classmethod
    def from_env(cls) -> "Ports":
        """CANCELFLOW_PORT_BASE=N puts the stack on N and the ports after it (see `from_base`)."""
        base = os.environ.get("CANCELFLOW_PORT_BASE")
        return cls.from_base(int(base)) if base else cls()

    def service(self, name: str, instance: int = 1) -> int:
        if instance == 1:
            return getattr(self, name)
        return self.instances + 4 * (instance - 2) + SERVICES.index(name)

    def broker(self, node: int, brokers: int) -> tuple[int, int]:
        """(client port, controller port) of node 1..brokers of a cluster."""
        return self.kafka_cluster + node - 1, self.kafka_cluster + brokers + node - 1


@dataclass
class StackConfig:
    root: Path = field(default_factory=lambda: Path(os.environ.get("CANCELFLOW_STACK_DIR", REPO_ROOT / ".stack")))
    ports: Ports = field(default_factory=Ports)
    clock_file: Path | None = None
    partitions: int = 4
    # None: the key and the webhook secret generated for this stack (see `Stack.api_keys`).
    api_keys: str | None = field(default_factory=lambda: os.environ.get("INTAKE_API_KEYS"))
    webhook_secret: str | None = field(default_factory=lambda: os.environ.get("INTAKE_WEBHOOK_SECRET"))
    # Signs the customers' cancel links; one per stack unless given.
    link_secret: str = field(default_factory=lambda: os.environ.get("INTAKE_LINK_SECRET") or secrets.token_urlsafe(32))
    extra_env: dict[str, str] = field(default_factory=dict)
    # eligibility's holdout (SPEC section 6); recorded in stack.json so the demo knows which contracts it holds out.
    offer_holdout_percent: int = 0
    # Set when Kafka / PostgreSQL run elsewhere (testcontainers, docker compose): only the rest starts here.
    kafka_bootstrap: str | None = None
    database_url: str | None = None
    # The local broker's one client listener: "plaintext", "scram" (SASL_PLAINTEXT, SCRAM-SHA-512) or "tls".
    security: str = "plaintext"
    # Kafka nodes (1, or a cluster of 3 or more) and processes of each service (see stack_cluster).
    brokers: int = 1
    instances: int = 1
    # Retention of the business topics other than contracts.events (SPEC section 8; -1: forever).
    topic_retention_days: int = field(
        default_factory=lambda: int(os.environ.get("CANCELFLOW_TOPIC_RETENTION_DAYS", BUSINESS_RETENTION_DAYS)))
