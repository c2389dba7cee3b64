"""The local stack's Kafka security (`cancelflow up --security plaintext|scram|tls`): the generated SCRAM user
or CA under the stack directory, the client connection that goes with it, and the rule that a data directory
keeps the security it was made with."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from shared.kafka_connection import KafkaConnection
from shared.vocabulary import SERVICES

from .infra.acl import CLUSTER_NAME, Acl, Operation, Pattern, Resource
from .infra.certificates import make_ca_and_broker_cert
from .infra.errors import InfraError

SECURITY_MODES = ("plaintext", "scram", "tls")
# `--security scram`: the broker's own principal (inter-broker and controller; the only super user), one per
# service, `upstream` (what upstream systems write) and `operator` (the printed settings: trace, dlq, top, ...).
BROKER = "broker"
UPSTREAM = "upstream"
OPERATOR = "operator"
CLIENT_PRINCIPALS = (*SERVICES, UPSTREAM, OPERATOR)


def generated(path: Path, make: Callable[[], dict]) -> dict:
    """Secrets kept in `path` (mode 0600), made by `make()` the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before anything is written: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(make()))
    return json.loads(path.read_text())


def intake_secrets(security_dir: Path) -> tuple[str, str]:
    """(the API key, the webhook secret) of the stack's intake, generated once per stack."""
    data = generated(security_dir / "intake.json", lambda: {
        "api_key": secrets.token_urlsafe(24), "webhook_secret": secrets.token_urlsafe(32)})
    return data["api_key"], data["webhook_secret"]


def recorded_api_key(security_dir: Path) -> str | None:
    """The API key `cancelflow up` generated (and printed as INTAKE_API_KEY=) for this stack, if it made one;
    never makes one: a key no intake accepts is no use to a client."""
    path = security_dir / "intake.json"
    return json.loads(path.read_text())["api_key"] if path.exists() else None


def principals(security_dir: Path) -> dict[str, str]:
    """Every SCRAM principal of a `--security scram` stack and its password, generated once."""
    return generated(security_dir / "principals.json",
                     lambda: {name: secrets.token_urlsafe(24) for name in (BROKER, *CLIENT_PRINCIPALS)})


def database_passwords(security_dir: Path) -> dict[str, str]:
    """The password of each service's PostgreSQL role and of the superuser (`postgres`), generated once."""
    return generated(security_dir / "postgres.json",
                     lambda: {name: secrets.token_urlsafe(24) for name in ("postgres", *SERVICES)})


def service_database_passwords(security_dir: Path) -> dict[str, str]:
    return {name: password for name, password in database_passwords(security_dir).items() if name in SERVICES}


def scram_node_users(security_dir: Path) -> dict:
    """The KafkaNode arguments of a SCRAM stack: the broker's user, the clients' users, ACLs on."""
    users = principals(security_dir)
    return {"scram_user": (BROKER, users[BROKER]), "acls": True,
            "client_users": tuple((name, users[name]) for name in CLIENT_PRINCIPALS)}


def access_policy() -> list[Acl]:
    """Who may do what on a SCRAM stack's broker; nothing else is allowed (SPEC section 9).

    A service reads the topics it subscribes to (in its consumer groups, prefixed by its name), writes the
    topics it publishes and the dead-letter topics of what it reads. `upstream` writes only its two topics.
    `operator` reads everything and writes only what `dlq replay` needs: the topics records are replayed to.
    """
    from shared import topics

    from .asyncapi import PUBLISHED, service_subscriptions
    from .ops.dlq import REPLAY_GROUP_PREFIX

    acls: list[Acl] = []

    def allow(who: str, operation: Operation, resource: Resource, name: str, pattern: Pattern = Pattern.LITERAL):
        acls.append(Acl(f"User:{who}", operation, resource, name, pattern))

    consumed: set[str] = set()
    for service, subscriptions in service_subscriptions().items():
        reads = sorted({t for sub in subscriptions for t in sub.topics})
        consumed |= set(reads)
        for topic in reads:
            allow(service, Operation.READ, Resource.TOPIC, topic)
            allow(service, Operation.WRITE, Resource.TOPIC, topics.dlq(topic))
        for topic in PUBLISHED[service]:
            allow(service, Operation.WRITE, Resource.TOPIC, topic)
        allow(service, Operation.READ, Resource.GROUP, service, Pattern.PREFIXED)
    for topic in PUBLISHED[UPSTREAM]:
        allow(UPSTREAM, Operation.WRITE, Resource.TOPIC, topic)
    allow(OPERATOR, Operation.READ, Resource.TOPIC, "*")
    allow(OPERATOR, Operation.DESCRIBE, Resource.GROUP, "*")
    allow(OPERATOR, Operation.DESCRIBE, Resource.CLUSTER, CLUSTER_NAME)
    allow(OPERATOR, Operation.READ, Resource.GROUP, REPLAY_GROUP_PREFIX, Pattern.PREFIXED)
    for topic in sorted(consumed):
        allow(OPERATOR, Operation.WRITE, Resource.TOPIC, topic)
    return acls


def tls_files(security_dir: Path) -> tuple[Path, Path]:
    """(the broker's keystore, the CA), generated once."""
    return make_ca_and_broker_cert(security_dir)


def connection(security: str, bootstrap: str, security_dir: Path, principal: str = OPERATOR) -> KafkaConnection:
    """How a client of the stack reaches its broker: as `principal` (a service, `upstream`, `operator` or the
    broker's own `broker`, which creates topics and ACLs) when the broker requires SCRAM."""
    if security == "scram":
        user, password = principal, principals(security_dir)[principal]
        return KafkaConnection(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                               sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=password)
    if security == "tls":
        return KafkaConnection(bootstrap_servers=bootstrap, security_protocol="SSL",
                               ssl_cafile=str(tls_files(security_dir)[1]))
    return KafkaConnection(bootstrap_servers=bootstrap, security_protocol="PLAINTEXT")


def check_data_security(kafka_dir: Path, security: str) -> None:
    """SCRAM users are written when Kafka's storage is formatted, once: a data directory made with one
    security cannot be started with another (it would fail later, with a less clear message)."""
    marker = kafka_dir / "security"
    formatted = (kafka_dir / "log" / "meta.properties").exists()
    # Data made before the marker existed was made by a plain stack (there was no other kind).
    was = marker.read_text().strip() if marker.exists() else ("plaintext" if formatted else None)
    if was is not None and was != security:
        raise InfraError(f"the Kafka data in {kafka_dir} was made with --security {was}: start it with "
                         f"`cancelflow up --security {was}`, or remove {kafka_dir} to start afresh")
    if was == "scram" and formatted and not (kafka_dir.parent / "security" / "principals.json").exists():
        raise InfraError(f"the Kafka data in {kafka_dir} was made with one SCRAM user for all, before one "
                         f"principal per application: remove {kafka_dir} to start afresh")
    kafka_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(security)
