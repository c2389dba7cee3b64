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

from .infra.certificates import make_ca_and_broker_cert
from .infra.errors import InfraError

SECURITY_MODES = ("plaintext", "scram", "tls")
SCRAM_USER = "cancelflow"


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


def scram_user(security_dir: Path) -> tuple[str, str]:
    """The stack's SCRAM user and its password, generated once."""
    data = generated(security_dir / "scram.json", lambda: {"username": SCRAM_USER,
                                                            "password": secrets.token_urlsafe(24)})
    return data["username"], data["password"]


def tls_files(security_dir: Path) -> tuple[Path, Path]:
    """(the broker's keystore, the CA), generated once."""
    return make_ca_and_broker_cert(security_dir)


def connection(security: str, bootstrap: str, security_dir: Path) -> KafkaConnection:
    """How every client of the stack (services, operator commands) reaches its broker."""
    if security == "scram":
        user, password = scram_user(security_dir)
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
    kafka_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(security)
