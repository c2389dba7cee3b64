"""docker-compose.yml is kept correct by reading it: there may be no Docker engine where the tests run.

The compose file is checked against the code it starts: the Kafka image tag against infra/kafka/pom.xml,
each service's ports and environment against its pydantic-settings class (so a misspelt variable, which
the service would silently ignore, fails here)."""

from __future__ import annotations

import importlib
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices, AliasPath

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
POM_FILE = ROOT / "infra" / "kafka" / "pom.xml"

# service -> (settings module, class name)
SERVICES = {
    "intake": ("services.intake.settings", "IntakeSettings"),
    "eligibility": ("services.eligibility.settings", "EligibilitySettings"),
    "billing": ("services.billing.settings", "BillingSettings"),
    "notifier": ("services.notifier.settings", "NotifierSettings"),
}

# Defaults that point at the machine itself: inside a container they reach nothing, so compose must set them.
LOOPBACK = re.compile(r"(^|[/@:,])(127\.0\.0\.1|localhost)([:/,]|$)")
# Further fields whose defaults are host-side only (the host port of the SMTP sink).
MUST_SET_EXTRA = {"notifier": {"NOTIFIER_SMTP_PORT"}}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def settings_class(service: str):
    module_name, class_name = SERVICES[service]
    # No importorskip: a missing or broken settings module must fail the test.
    module = importlib.import_module(module_name)
    return getattr(module, class_name)


def _alias_names(alias) -> list[str]:
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        names: list[str] = []
        for choice in alias.choices:
            names += _alias_names(choice)
        return names
    if isinstance(alias, AliasPath):
        return [str(alias.path[0])]
    raise TypeError(f"unexpected validation_alias {alias!r}")


def env_names(cls) -> dict[str, str]:
    """Env var name (upper case) -> field name, for every variable the class reads."""
    prefix = cls.model_config.get("env_prefix", "") or ""
    names: dict[str, str] = {}
    for field_name, field in cls.model_fields.items():
        if field.validation_alias is not None:
            for alias in _alias_names(field.validation_alias):
                names[alias.upper()] = field_name
        else:
            names[(prefix + field_name).upper()] = field_name
    return names


def env_of(service_def: dict) -> dict[str, str]:
    env = service_def.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def command_of(service_def: dict) -> list[str]:
    command = service_def.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command or []]


def option(command: list[str], name: str) -> str | None:
    for i, part in enumerate(command):
        if part == name and i + 1 < len(command):
            return command[i + 1]
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
    return None


def published(service_def: dict) -> dict[int, int]:
    """container port -> host port."""
    out: dict[int, int] = {}
    for port in service_def.get("ports") or []:
        if isinstance(port, dict):
            out[int(port["target"])] = int(port["published"])
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) == 1:
            raise AssertionError(f"port {port!r} does not fix a host port")
        out[int(parts[-1])] = int(parts[-2])
    return out


def depends_on(service_def: dict) -> dict[str, str]:
    deps = service_def.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def has_healthcheck(service_def: dict) -> bool:
    check = service_def.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable", False) and check.get("test") != ["NONE"]


def healthcheck_text(service_def: dict) -> str:
    test = service_def["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


# ---------------------------------------------------------------- infrastructure


def test_kafka_image_matches_pom_version(compose):
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM_FILE).getroot().find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text, "no <kafka.version> in infra/kafka/pom.xml"
    image = compose["services"]["kafka"]["image"]
    repository, _, tag = image.partition(":")
    assert repository == "apache/kafka"
    assert tag == version.text.strip(), f"{image} but the pom pins Kafka {version.text.strip()}"


def test_kafka_is_single_node_kraft_with_container_and_host_listeners(compose):
    kafka = compose["services"]["kafka"]
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in advertised
    assert "HOST://localhost:19092" in advertised
    assert published(kafka).get(19092) == 19092
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listener_names = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listener_names <= set(protocol_map), "every listener needs a security protocol"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_kafka_and_postgres_have_healthchecks(compose):
    kafka, postgres = compose["services"]["kafka"], compose["services"]["postgres"]
    assert has_healthcheck(kafka)
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in healthcheck_text(kafka)
    assert has_healthcheck(postgres)
    assert "pg_isready" in healthcheck_text(postgres)


def test_postgres_matches_the_service_database_url(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:18"
    env = env_of(postgres)
    assert published(postgres).get(5432) == 15432
    for service in SERVICES:
        url = urlsplit(env_of(compose["services"][service])["DATABASE_URL"])
        assert (url.hostname, url.port) == ("postgres", 5432), service
        assert url.path.lstrip("/") == env["POSTGRES_DB"] == "cancelflow", service
        assert url.username == env.get("POSTGRES_USER", "postgres"), service
        assert url.password == env["POSTGRES_PASSWORD"], service


def test_mailsink_runs_from_the_project_image_and_mounts_the_mail_dir(compose):
    mailsink = compose["services"]["mailsink"]
    command = command_of(mailsink)
    assert command[:3] == ["python", "-m", "cancelflow.infra.mailsink"]
    port, directory = option(command, "--port"), option(command, "--dir")
    assert port is not None and directory is not None
    mounts = [str(v) for v in mailsink.get("volumes") or []]
    assert f"./.stack/compose-mail:{directory}" in mounts, mounts
    assert published(mailsink).get(int(port)) == 10025
    notifier_env = env_of(compose["services"]["notifier"])
    assert notifier_env["NOTIFIER_SMTP_HOST"] == "mailsink"
    assert notifier_env["NOTIFIER_SMTP_PORT"] == port


def test_topics_is_a_one_shot_cancelflow_topics_after_kafka(compose):
    topics = compose["services"]["topics"]
    assert command_of(topics) == ["cancelflow", "topics"]
    assert depends_on(topics).get("kafka") == "service_healthy"
    env = env_of(topics)
    assert env.get("KAFKA_BOOTSTRAP_SERVERS") == "kafka:9092"
    from shared.settings import ServiceSettings

    unknown = set(env) - set(env_names(ServiceSettings))
    assert not unknown, f"topics sets variables nothing reads: {sorted(unknown)}"
    assert topics.get("restart", "no") == "no"


def test_python_containers_use_the_project_image(compose):
    images = {compose["services"][name].get("image") for name in [*SERVICES, "topics", "mailsink"]}
    assert len(images) == 1
    assert any("build" in compose["services"][name] for name in [*SERVICES, "topics", "mailsink"])


# ---------------------------------------------------------------- the four services


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_runs_its_faststream_app_on_its_settings_port(compose, service):
    assert service in compose["services"], f"no {service} service"
    definition = compose["services"][service]
    cls = settings_class(service)
    port = cls.model_fields["http_port"].default
    command = command_of(definition)
    assert command[:3] == ["faststream", "run", f"services.{service}.app:create_app"], command
    assert "--factory" in command
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == str(port)
    assert published(definition).get(port) == port, f"{service} must publish {port}:{port}"
    env = env_of(definition)
    prefix = cls.model_config["env_prefix"]
    if f"{prefix}HTTP_PORT" in env:
        assert env[f"{prefix}HTTP_PORT"] == str(port)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_is_health_checked_on_ready(compose, service):
    definition = compose["services"][service]
    assert has_healthcheck(definition)
    port = settings_class(service).model_fields["http_port"].default
    assert f":{port}/ready" in healthcheck_text(definition)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_waits_for_topics_and_postgres(compose, service):
    deps = depends_on(compose["services"][service])
    assert deps.get("topics") == "service_completed_successfully"
    assert deps.get("postgres") == "service_healthy"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_env_names_are_read_by_its_settings_class(compose, service):
    cls = settings_class(service)
    accepted = env_names(cls)
    env = env_of(compose["services"][service])
    unknown = sorted(name for name in env if name.upper() not in accepted)
    assert not unknown, f"{service} sets variables {cls.__name__} never reads: {unknown}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_env_sets_everything_without_a_container_safe_default(compose, service):
    cls = settings_class(service)
    prefix = cls.model_config["env_prefix"]
    must_set = {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", f"{prefix}HTTP_HOST"} | MUST_SET_EXTRA.get(service, set())
    for name, field_name in env_names(cls).items():
        default = cls.model_fields[field_name].default
        if isinstance(default, str) and LOOPBACK.search(default):
            must_set.add(name)
    env = {name.upper(): value for name, value in env_of(compose["services"][service]).items()}
    missing = sorted(name for name in must_set if not env.get(name))
    assert not missing, f"{service} leaves unset: {missing}"
    assert env[f"{prefix}HTTP_HOST"] == "0.0.0.0"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # Everything but the URL shown to API clients must reach another container, not the container itself.
    for name, value in env.items():
        if name != f"{prefix}PUBLIC_URL":
            assert not LOOPBACK.search(value or ""), f"{service}: {name}={value} points at the container itself"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_settings_load_from_the_compose_env(compose, service, monkeypatch):
    cls = settings_class(service)
    for name in env_names(cls):
        monkeypatch.delenv(name, raising=False)
    env = env_of(compose["services"][service])
    for name, value in env.items():
        monkeypatch.setenv(name, value or "")
    settings = cls(_env_file=None)
    assert settings.http_host == "0.0.0.0"
    assert settings.kafka_bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert settings.database_url == env["DATABASE_URL"]


def test_sasl_overlay_turns_on_scram_for_every_client():
    """docker-compose.sasl.yml: the broker gets a SASL listener, every client uses it with SCRAM settings
    whose names the settings classes read."""
    overlay = yaml.safe_load((ROOT / "docker-compose.sasl.yml").read_text())
    kafka_env = overlay["services"]["kafka"]["environment"]
    assert "SASL://:9094" in kafka_env["KAFKA_LISTENERS"]
    assert "SASL:SASL_PLAINTEXT" in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka_env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert overlay["services"]["kafka-scram"]["image"] == base["services"]["kafka"]["image"]
    from shared.settings import ServiceSettings

    accepted = {alias for f in ServiceSettings.model_fields.values() if f.validation_alias
                for alias in f.validation_alias.choices}
    for name in ("topics", "intake", "eligibility", "billing", "notifier"):
        env = overlay["services"][name]["environment"]
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9094"
        assert set(env) <= accepted, set(env) - accepted
        settings = ServiceSettings(**{k: v.replace("${KAFKA_SASL_PASSWORD:-cancelflow-secret}", "x")
                                      for k, v in env.items()})
        assert settings.kafka_client_options()["sasl_mechanism"] == "SCRAM-SHA-512"
