"""Settings every service shares. Stack-wide connection settings are unprefixed (one broker, one database
for the whole stack); each service's own class adds its fields under its own prefix (INTAKE_, ...)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka_connection import DEFAULT_BOOTSTRAP, KafkaConnection, Mechanism, Protocol


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:15432/cancelflow"


def database_url_field(prefix: str) -> Any:
    """A service's database: `<PREFIX>_DATABASE_URL` (its own role, perhaps its own server), else DATABASE_URL."""
    return Field(DEFAULT_DATABASE_URL, validation_alias=AliasChoices(f"{prefix}_DATABASE_URL", "DATABASE_URL"),
                 description=f"PostgreSQL URL of this service, as its own role ({prefix.lower()}) owning its schema; "
                             "DATABASE_URL when unset.")


def load_settings(cls: type[S]) -> S:
    """`cls()` from the environment; what is missing or invalid as one line naming each variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = []
        for error in exc.errors():
            loc = str(error["loc"][0]) if error["loc"] else ""
            field = cls.model_fields.get(loc)
            name = (prefix + loc if field is not None and field.validation_alias is None else loc).upper()
            problems.append(f"{name} is not set" if error["type"] == "missing" else f"{name}: {error['msg']}")
        raise SettingsError(f"{prefix.rstrip('_').lower() or 'service'} cannot start: {'; '.join(problems)}") from None


class SettingsError(SystemExit):
    """Raised by `load_settings`: exits the process with its one-line message on stderr."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field(
        DEFAULT_BOOTSTRAP, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers, comma separated.")
    kafka_security_protocol: Protocol = Field(
        "PLAINTEXT", validation_alias=_env("KAFKA_SECURITY_PROTOCOL"),
        description="How clients talk to Kafka.")
    kafka_sasl_mechanism: Mechanism = Field(
        "SCRAM-SHA-512", validation_alias=_env("KAFKA_SASL_MECHANISM"),
        description="SASL mechanism when the protocol is SASL_*.")
    kafka_sasl_username: str | None = Field(None, validation_alias=_env("KAFKA_SASL_USERNAME"))
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias=_env("KAFKA_SASL_PASSWORD"))
    kafka_ssl_cafile: str | None = Field(None, validation_alias=_env("KAFKA_SSL_CAFILE"),
                                         description="CA bundle for SSL / SASL_SSL.")
    database_url: str = Field(
        DEFAULT_DATABASE_URL, validation_alias=_env("DATABASE_URL"),
        description="PostgreSQL URL; each service keeps its tables in its own schema.")
    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))
    clock_file: str | None = Field(
        None, validation_alias=_env("CANCELFLOW_CLOCK_FILE"),
        description="Tests and demo only: a file holding the current instant, shared by all services.")

    # Per-service tuning; subclasses' env_prefix applies to these.
    http_host: str = Field("127.0.0.1", description="Address of the health/metrics (and intake API) server.")
    http_port: int = Field(8000, description="Port of the health/metrics (and intake API) server.")
    batch_max_records: int = Field(500, ge=1, description="Most records handled in one DB transaction.")
    batch_collect_ms: int = Field(
        0, ge=0, le=5000, description="Each consumer's fetch is held by the broker up to this long (or 1 MiB), so a "
                                      "batch gathers what came meanwhile: fewer, larger transactions at a steady "
                                      "rate, each hop later by as much. 0: a batch as soon as a record arrives.")
    db_pool_max: int = Field(10, ge=1, description="Largest PostgreSQL connection pool.")
    commit_interval_ms: int = Field(
        100, ge=0, description="Offsets of processed batches are committed to Kafka this often (0: after every "
                               "batch). Later is safe: re-read records are skipped by the inbox.")
    relay_poll_ms: int = Field(500, ge=10, description="Outbox relay poll interval when no NOTIFY wakes it.")
    inbox_window_days: float = Field(
        7, gt=0, description="The inbox keeps each consumed event's id this long (by the service's clock), longer "
                             "than any redelivery; older ids are pruned.")
    inbox_prune_interval_s: float = Field(60, gt=0, description="How often the inbox is pruned.")
    inbox_prune_batch: int = Field(1000, ge=1, description="Ids deleted per pruning transaction.")
    consumer_group: str | None = Field(None, description="Kafka consumer group; the service's name when unset.")
    client_id: str | None = Field(None, description="Kafka client id of this process's clients (one instance of "
                                                    "several: `intake-2`); the service's name when unset.")

    @property
    def kafka(self) -> KafkaConnection:
        """The Kafka connection these settings describe (the one translation to client options)."""
        return KafkaConnection(
            bootstrap_servers=self.kafka_bootstrap_servers, security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism, sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password, ssl_cafile=self.kafka_ssl_cafile)

    def kafka_client_options(self) -> dict:
        """aiokafka keyword arguments for the configured security (see `KafkaConnection.client_options`)."""
        return self.kafka.client_options()


S = TypeVar("S", bound=ServiceSettings)
