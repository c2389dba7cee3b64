"""How every client of the project reaches Kafka: the bootstrap servers and the security settings, read once
(`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CAFILE`) and translated in
one place into aiokafka's keyword arguments and FastStream's `security=` object. Services, relays, operator
commands, the demo and the benchmark all build their clients from a `KafkaConnection`."""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
# The largest request a producer sends: a 1 MiB event dead-lettered with its headers, plus room for the batch.
MAX_REQUEST_BYTES = 2 * 1024 * 1024 + 65536

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaConnection(BaseSettings):
    """Where Kafka is and how to authenticate to it. Frozen: one value per process, passed around."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS"),
                                   description="Kafka bootstrap servers, comma separated.")
    security_protocol: Protocol = Field("PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL"),
                                        description="How clients talk to Kafka.")
    sasl_mechanism: Mechanism = Field("SCRAM-SHA-512", validation_alias=AliasChoices("KAFKA_SASL_MECHANISM"),
                                      description="SASL mechanism when the protocol is SASL_*.")
    sasl_username: str | None = Field(None, validation_alias=AliasChoices("KAFKA_SASL_USERNAME"))
    sasl_password: SecretStr | None = Field(None, validation_alias=AliasChoices("KAFKA_SASL_PASSWORD"))
    ssl_cafile: str | None = Field(None, validation_alias=AliasChoices("KAFKA_SSL_CAFILE"),
                                   description="CA bundle for SSL / SASL_SSL.")

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers as a list (FastStream takes a string as one address; aiokafka splits it)."""
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ssl_cafile) if self.uses_tls else None

    def _password(self) -> str:
        return self.sasl_password.get_secret_value() if self.sasl_password is not None else ""

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the security (every client: producer, consumer, admin)."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_sasl:
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self._password()}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def client_kwargs(self) -> dict[str, Any]:
        """`client_options()` with the bootstrap servers: what an aiokafka client is built from."""
        return {"bootstrap_servers": self.bootstrap_servers, **self.client_options()}

    def faststream_security(self) -> Any:
        """FastStream's `security=` object for a KafkaBroker (None for PLAINTEXT)."""
        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        if not self.uses_sasl:
            return BaseSecurity(ssl_context=self.ssl_context()) if self.uses_tls else None
        cls = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}[
            self.sasl_mechanism]
        return cls(username=self.sasl_username or "", password=self._password(), ssl_context=self.ssl_context())

    def broker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a FastStream KafkaBroker for the security (none for PLAINTEXT)."""
        security = self.faststream_security()
        return {} if security is None else {"security": security}

    def env(self) -> dict[str, str]:
        """The settings as environment variables (what `cancelflow up` prints and gives its services)."""
        out = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers, "KAFKA_SECURITY_PROTOCOL": self.security_protocol}
        if self.uses_sasl:
            out |= {"KAFKA_SASL_MECHANISM": self.sasl_mechanism, "KAFKA_SASL_USERNAME": self.sasl_username or "",
                    "KAFKA_SASL_PASSWORD": self._password()}
        if self.uses_tls and self.ssl_cafile:
            out["KAFKA_SSL_CAFILE"] = self.ssl_cafile
        return out

    def describe(self) -> str:
        """One line for people: the protocol and, for SASL, the user (never the password)."""
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"{self.security_protocol}{who}"


async def describe_partitions(admin: Any, names: Any) -> dict[str, list[int]]:
    """The partitions of each existing topic among `names`, asked of the cluster now through a started
    AIOKafkaAdminClient (aiokafka's consumer has no public way to refresh its metadata; the admin client's
    describe_topics is public)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    described = await admin.describe_topics(wanted)
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in described if t.get("error_code", 0) == 0 and t.get("partitions")}
