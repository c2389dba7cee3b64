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


VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
# What the tests give the variables compose requires (${VAR:?message}): a deployment's own secrets.
REQUIRED = {"INTAKE_API_KEYS": "key-from-env", "INTAKE_WEBHOOK_SECRET": "secret-from-env",
            "INTAKE_LINK_SECRET": "link-secret-from-env", "INTAKE_KEYRING_TOKEN": "keyring-from-env",
            **{f"KAFKA_{p.upper()}_PASSWORD": f"{p}-kafka-pw" for p in
               ("broker", "intake", "eligibility", "billing", "notifier", "upstream", "operator")},
            "POSTGRES_PASSWORD": "admin-pw", **{f"{s.upper()}_DATABASE_PASSWORD": f"{s}-pw" for s in
                                                ("intake", "eligibility", "billing", "notifier")}}


def _substitute(match: re.Match, environ: dict[str, str]) -> str:
    name, kind, rest = match.groups()
    if kind == "?":
        value = environ.get(name) or REQUIRED.get(name)
        assert value, f"${{{name}}} is required ({rest}) and the test gives it no value"
        return value
    return environ.get(name) or (rest or "")


def interpolate(value, environ: dict[str, str]):
    """Compose's ${VAR:-default}, ${VAR:?required} and ${VAR}, through every string of the loaded file."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: _substitute(m, environ), value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    return value


def load_compose(name: str = "docker-compose.yml", environ: dict[str, str] | None = None) -> dict:
    """A compose file as `docker compose config` reads it: with the variables' defaults unless given."""
    return interpolate(yaml.safe_load((ROOT / name).read_text()), environ or {})


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


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


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.sasl.yml", "docker-compose.cluster.yml"])
def test_every_kafka_health_check_execs_its_jvm_tool(name):
    """A check past its timeout is killed, but only the process the engine started: a JVM under `sh -c`
    stays, one more each interval, until the broker starves (seen on the cluster and the SASL overlay)."""
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    checks = {svc: healthcheck_text(d) for svc, d in services.items() if "kafka" in svc and has_healthcheck(d)}
    assert checks, f"{name} health-checks no Kafka node"
    for svc, text in checks.items():
        assert re.search(r"(^|&&|;)\s*exec /opt/kafka/bin/kafka-broker-api-versions\.sh", text.removeprefix("CMD-SHELL ")), \
            f"{name} {svc}: {text}"


def test_postgres_matches_the_service_database_url(compose):
    """Each service connects as its own role (made by the one-shot db-roles as the admin role)."""
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:18"
    env = env_of(postgres)
    assert published(postgres).get(5432) == 15432
    admin = urlsplit(env_of(compose["services"]["db-roles"])["DATABASE_URL"])
    assert (admin.username, admin.password) == (env.get("POSTGRES_USER", "postgres"), env["POSTGRES_PASSWORD"])
    assert command_of(compose["services"]["db-roles"]) == ["cancelflow", "db-roles", "--password-from-env"]
    for service in SERVICES:
        service_env = env_of(compose["services"][service])
        assert "DATABASE_URL" not in service_env, f"{service} must not fall back to the admin role"
        url = urlsplit(service_env[f"{service.upper()}_DATABASE_URL"])
        assert (url.hostname, url.port) == ("postgres", 5432), service
        assert url.path.lstrip("/") == env["POSTGRES_DB"] == "cancelflow", service
        assert url.username == service, service
        assert url.password == env_of(compose["services"]["db-roles"])[f"{service.upper()}_DATABASE_PASSWORD"]


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

    # `cancelflow topics` reads the retention of the business topics (SPEC section 8) besides the Kafka settings.
    unknown = set(env) - set(env_names(ServiceSettings)) - {"CANCELFLOW_TOPIC_RETENTION_DAYS"}
    assert not unknown, f"topics sets variables nothing reads: {sorted(unknown)}"
    assert int(env["CANCELFLOW_TOPIC_RETENTION_DAYS"]) >= 400
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
    must_set = {"KAFKA_BOOTSTRAP_SERVERS", f"{prefix}DATABASE_URL", f"{prefix}HTTP_HOST"} | MUST_SET_EXTRA.get(service, set())
    env = {name.upper(): value for name, value in env_of(compose["services"][service]).items()}
    names_of: dict[str, list[str]] = {}
    for name, field_name in env_names(cls).items():
        names_of.setdefault(field_name, []).append(name)
    for field_name, names in names_of.items():
        default = cls.model_fields[field_name].default
        # A field read from several names (INTAKE_DATABASE_URL, else DATABASE_URL) is set by any of them.
        if isinstance(default, str) and LOOPBACK.search(default) and not any(env.get(n) for n in names):
            must_set.add(names[0])
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
    assert settings.database_url == env[f"{cls.model_config['env_prefix']}DATABASE_URL"]


def test_secrets_come_from_the_environment_and_none_is_committed():
    """INTAKE_API_KEYS and INTAKE_WEBHOOK_SECRET are ${VAR:?...}: compose refuses to start without them, and
    .env.example names them without a value."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["intake"]["environment"]
    for name in ("INTAKE_API_KEYS", "INTAKE_WEBHOOK_SECRET"):
        assert raw[name].startswith(f"${{{name}:?"), raw[name]
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"INTAKE_API_KEYS", "INTAKE_WEBHOOK_SECRET"} <= set(example) and not any(example.values())
    # The default key of old, in no tracked file (this test spells it in two halves).
    import subprocess

    old_default = "dev" + "-key"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    holding = [name for name in tracked.decode().split("\0") if name and (ROOT / name).is_file()
               and old_default.encode() in (ROOT / name).read_bytes()]
    assert holding == []


def _properties(env: dict[str, str]) -> dict[str, str]:
    """The apache/kafka image's KAFKA_* variables as the server properties it writes (___ is "-", _ is ".")."""
    return {k[len("KAFKA_"):].lower().replace("___", "-").replace("_", "."): v for k, v in env.items()
            if k.startswith("KAFKA_")}


def test_sasl_overlay_has_the_principals_and_acls_of_the_local_scram_stack(tmp_path):
    """docker-compose.sasl.yml and `cancelflow up --security scram` agree: the same SCRAM principals, each
    service as itself, the same ACLs (made by the same code), the same authorizer and super user, and no
    listener left without authentication."""
    from cancelflow import stack_security
    from cancelflow.infra.acl import Operation, Resource
    from cancelflow.stack import Ports, Stack, StackConfig
    from shared import topics
    from shared.settings import ServiceSettings

    overlay = load_compose("docker-compose.sasl.yml")["services"]
    stack = merged(load_compose(), load_compose("docker-compose.sasl.yml"))["services"]
    node = Stack(StackConfig(root=tmp_path, ports=Ports.from_base(30000), security="scram")).kafka_node
    local = dict(line.split("=", 1) for line in node.server_properties().splitlines() if "=" in line)
    super_user = local["super.users"].removeprefix("User:")
    assert super_user == stack_security.BROKER

    # The broker: the local node's authorizer settings, every listener SASL, the controller's too.
    props = _properties(env_of(stack["kafka"]))
    for key in ("authorizer.class.name", "allow.everyone.if.no.acl.found", "super.users",
                "sasl.mechanism.controller.protocol", "listener.name.controller.sasl.enabled.mechanisms"):
        assert props[key] == local[key], key
    protocols = dict(item.split(":") for item in props["listener.security.protocol.map"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}, protocols
    assert set(protocols) == {item.split("://")[0] for item in props["listeners"].split(",")}
    assert props["inter.broker.listener.name"] in protocols
    assert "SCRAM-SHA-512" in props["sasl.enabled.mechanisms"].split(",")
    for listener in protocols:
        jaas = props[f"listener.name.{listener.lower()}.plain.sasl.jaas.config"]
        assert f'username="{super_user}"' in jaas and f"user_{super_user}=" in jaas, listener

    # The users: exactly the local stack's principals, each with a password of its own from the environment.
    [script] = command_of(overlay["kafka-users"])
    users = set(re.search(r"for user in ([a-z ]+); do", script).group(1).split())
    assert users == set(stack_security.CLIENT_PRINCIPALS)
    raw = yaml.safe_load((ROOT / "docker-compose.sasl.yml").read_text())["services"]
    for user in users:
        assert raw["kafka-users"]["environment"][f"{user.upper()}_PASSWORD"].startswith(
            f"${{KAFKA_{user.upper()}_PASSWORD:?")
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {f"KAFKA_{u.upper()}_PASSWORD" for u in users | {super_user}} <= set(example)

    # The ACLs: `cancelflow kafka-acls` (stack_security.access_policy, as `up` makes them) as the super user,
    # after the topics and before any service; the policy names no principal that has no user here.
    acls = stack["kafka-acls"]
    assert command_of(acls) == ["cancelflow", "kafka-acls"]
    assert env_of(acls)["KAFKA_SASL_USERNAME"] == super_user
    assert depends_on(acls).get("topics") == "service_completed_successfully"
    policy = stack_security.access_policy()
    assert {acl.principal for acl in policy} == {f"User:{u}" for u in users}, "every user, and only they, has ACLs"
    assert not any(acl.name == "*" and acl.operation != Operation.READ and acl.resource == Resource.TOPIC
                   for acl in policy), "no principal writes every topic"
    assert {acl.name for acl in policy if acl.principal == f"User:{stack_security.UPSTREAM}"
            and acl.operation == Operation.WRITE} == {topics.CONTRACTS, topics.SUBMISSIONS}
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"

    accepted = {alias for f in ServiceSettings.model_fields.values() if f.validation_alias
                for alias in f.validation_alias.choices}
    for name in SERVICES:
        env = env_of(stack[name])
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT" and env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["KAFKA_SASL_USERNAME"] == name, "each service connects as itself"
        assert raw[name]["environment"]["KAFKA_SASL_PASSWORD"].startswith(f"${{KAFKA_{name.upper()}_PASSWORD:?")
        assert depends_on(stack[name]).get("kafka-acls") == "service_completed_successfully"
        kafka_env = {k: v for k, v in env.items() if k.startswith("KAFKA_")}
        assert set(kafka_env) <= accepted, set(kafka_env) - accepted
        settings = ServiceSettings(**kafka_env)
        assert settings.kafka_client_options()["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "cancelflow-secret" not in (ROOT / "docker-compose.sasl.yml").read_text()


# ---------------------------------------------------------------- watching it: Prometheus, Grafana, Kafka UI

OPS = ROOT / "ops"
PROMETHEUS_FILE = OPS / "prometheus.yml"
GRAFANA_DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = OPS / "grafana" / "dashboards" / "cancelflow.json"
PROMETHEUS_DEFAULT_CONFIG = "/etc/prometheus/prometheus.yml"  # the prom/prometheus image's --config.file
GRAFANA_DEFAULT_PROVISIONING = "/etc/grafana/provisioning"  # the grafana/grafana image's GF_PATHS_PROVISIONING

# What the dashboard must show, named as in the exposition (shared/metrics.py).
DASHBOARD_METRICS = {
    "cancelflow_messages_consumed_total", "cancelflow_messages_produced_total", "cancelflow_messages_failed_total",
    "cancelflow_messages_dead_lettered_total", "cancelflow_batch_processing_seconds", "cancelflow_consumer_lag",
    "cancelflow_outbox_backlog", "cancelflow_notifications_sent_total", "cancelflow_messages_duplicate_total",
}

# Series names prometheus_client exposes for one metric family, by type (no `_created`: nothing should chart it).
EXPOSITION_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                       "summary": ("", "_sum", "_count"), "info": ("_info",), "stateset": ("",), "enum": ("",)}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "count_values", "day_of_month", "day_of_week", "day_of_year", "delta",
    "deriv", "exp", "floor", "group", "histogram_avg", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "max", "max_over_time", "min", "min_over_time", "predict_linear",
    "present_over_time", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort",
    "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "stdvar_over_time", "sum", "sum_over_time",
    "time", "timestamp", "topk", "vector",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right"}
PROMQL_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exposed_metrics() -> dict[str, tuple[str, set[str]]]:
    """Series name as scraped -> (family name, label names), for every metric object in shared/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    module = importlib.import_module("shared.metrics")
    out: dict[str, tuple[str, set[str]]] = {}
    for obj in vars(module).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        labels = set(obj._labelnames)
        for family in obj.describe():
            for suffix in EXPOSITION_SUFFIXES[family.type]:
                out[family.name + suffix] = (family.name, labels)
    return out


def promql_parts(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, function names, grouping labels) of one PromQL expression."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)   # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                                            # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                                           # ranges, subqueries
    grouping: set[str] = set()
    for match in PROMQL_GROUPING.finditer(text):
        grouping |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    text = PROMQL_GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)                                          # Grafana variables
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        if re.match(r"\s*\(", text[match.end():]):
            functions.add(name)
        elif name.lower() not in PROMQL_KEYWORDS:
            metrics.add(name)
    return metrics, functions, grouping


def dashboard() -> dict:
    import json

    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_targets(node) -> list[dict]:
    """Every query (a dict with `expr`) anywhere in the dashboard: panels, rows' nested panels, templating."""
    found: list[dict] = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            found.append(node)
        for value in node.values():
            found += dashboard_targets(value)
    elif isinstance(node, list):
        for value in node:
            found += dashboard_targets(value)
    return found


def mounts(service_def: dict) -> list[tuple[Path, str]]:
    """Bind mounts as (absolute host path, container path)."""
    out: list[tuple[Path, str]] = []
    for volume in service_def.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "bind") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        else:
            parts = str(volume).split(":")
            if len(parts) < 2 or not parts[0].startswith((".", "/")):
                continue  # a named volume or an anonymous one
            source, target = parts[0], parts[1]
        out.append(((ROOT / source).resolve(), target))
    return out


def container_path(service_def: dict, host_path: Path) -> str | None:
    """Where a file of the repository appears inside the container (the most specific mount wins)."""
    host_path = host_path.resolve()
    best: tuple[int, str] | None = None
    for source, target in mounts(service_def):
        if host_path == source or source in host_path.parents:
            rest = host_path.relative_to(source).as_posix()
            path = target if rest == "." else f"{target.rstrip('/')}/{rest}"
            if best is None or len(source.parts) > best[0]:
                best = (len(source.parts), path)
    return None if best is None else best[1]


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest)."""
    image, _, digest = image.partition("@")
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
    else:
        repository, tag = image, None
    return repository, tag, digest or None


@pytest.mark.parametrize(("expr", "metrics", "functions", "grouping"), [
    ('sum by (service, topic) (rate(a_total{topic=~"x.*"}[$__rate_interval]))', {"a_total"}, {"sum", "rate"},
     {"service", "topic"}),
    ("histogram_quantile(0.95, sum(rate(h_bucket[5m])) by (le)) or vector(0)", {"h_bucket"},
     {"histogram_quantile", "sum", "rate", "vector"}, {"le"}),
    ("g offset 5m / on (service) group_left h", {"g", "h"}, set(), {"service"}),
])
def test_promql_parts_finds_metrics_functions_and_grouping_labels(expr, metrics, functions, grouping):
    assert promql_parts(expr) == (metrics, functions, grouping)


def test_prometheus_scrapes_exactly_the_four_services_on_their_settings_ports(compose):
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    default_interval = (config.get("global") or {}).get("scrape_interval", "1m")
    default_timeout = (config.get("global") or {}).get("scrape_timeout", "10s")
    targets: list[str] = []
    for job in config["scrape_configs"]:
        assert not [key for key in job if key.endswith("_sd_configs") and key != "static_configs"], job
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        assert job.get("scheme", "http") == "http", job["job_name"]
        interval = job.get("scrape_interval", default_interval)
        assert interval == "5s", f"{job['job_name']} scrapes every {interval}"
        assert duration_seconds(job.get("scrape_timeout", default_timeout)) <= duration_seconds(interval)
        for static in job.get("static_configs") or []:
            # The metrics carry a `service` label; a target label of that name would rename it exported_service.
            assert "service" not in (static.get("labels") or {}), job["job_name"]
            targets += [str(target) for target in static["targets"]]
    expected = [f"{service}:{settings_class(service).model_fields['http_port'].default}" for service in SERVICES]
    assert sorted(targets) == sorted(expected)
    for target in targets:
        host, _, port = target.partition(":")
        assert host in compose["services"], f"{target}: no compose service {host}"
        assert option(command_of(compose["services"][host]), "--port") == port, target


def test_prometheus_container_reads_the_ops_config_publishes_9090_and_is_health_checked(compose):
    prometheus = compose["services"]["prometheus"]
    assert image_parts(prometheus["image"])[0] in {"prom/prometheus", "quay.io/prometheus/prometheus"}
    assert published(prometheus).get(9090) == 9090
    config_path = option(command_of(prometheus), "--config.file") or PROMETHEUS_DEFAULT_CONFIG
    assert container_path(prometheus, PROMETHEUS_FILE) == config_path
    assert has_healthcheck(prometheus)
    assert re.search(r":9090/-/(healthy|ready)\b", healthcheck_text(prometheus)), healthcheck_text(prometheus)


def test_dashboard_uses_only_metrics_that_shared_metrics_exposes():
    exposed = exposed_metrics()
    targets = dashboard_targets(dashboard())
    assert targets, "the dashboard has no queries"
    for target in targets:
        metrics, functions, grouping = promql_parts(target["expr"])
        assert metrics, f"no metric in {target['expr']!r}"
        unknown = sorted(metrics - set(exposed))
        assert not unknown, f"{target['expr']!r} uses {unknown}, which shared/metrics.py does not expose"
        assert functions <= PROMQL_FUNCTIONS, f"{target['expr']!r}: unknown functions {functions - PROMQL_FUNCTIONS}"
        labels = set().union(*(exposed[name][1] for name in metrics))
        if any(name.endswith("_bucket") for name in metrics):
            labels.add("le")
        assert grouping <= labels, f"{target['expr']!r} groups by {sorted(grouping - labels)}, no such label"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat") or ""))
        assert legend <= (grouping or labels), f"{target['expr']!r}: legend uses {sorted(legend)}"


def test_dashboard_shows_every_pipeline_metric():
    exposed = exposed_metrics()
    families = {family for family, _ in exposed.values()}
    used: set[str] = set()
    exprs = [target["expr"] for target in dashboard_targets(dashboard())]
    for expr in exprs:
        used |= {exposed[name][0] for name in promql_parts(expr)[0] if name in exposed}
    wanted = {name.removesuffix("_total") if name.removesuffix("_total") in families else name
              for name in DASHBOARD_METRICS}
    assert wanted <= families, f"not in shared/metrics.py: {sorted(wanted - families)}"
    assert not wanted - used, f"no panel for {sorted(wanted - used)}"
    # Per service and topic where the metric has both labels; latency as p50 and p95.
    for name, (family, labels) in exposed.items():
        if family in used and {"service", "topic"} <= labels and name.endswith("_total"):
            assert any(name in promql_parts(e)[0] and {"service", "topic"} <= promql_parts(e)[2] for e in exprs), name
    for quantile in ("0.5", "0.95"):
        assert any(re.search(rf"histogram_quantile\(\s*{re.escape(quantile)}\s*,.*"
                             r"cancelflow_batch_processing_seconds_bucket", e) for e in exprs), quantile


def test_dashboard_queries_the_provisioned_prometheus_datasource(compose):
    sources = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    prometheus_sources = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus_sources) == 1
    source = prometheus_sources[0]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and "prometheus" in compose["services"]
    assert url.port in published(compose["services"]["prometheus"]), "the datasource must use Prometheus' own port"
    assert source.get("uid"), "a fixed uid, so the dashboard can name it"

    board = dashboard()
    assert board.get("uid") and board.get("title")

    def check(node, inherited=None):
        """Every Prometheus datasource reference names the provisioned uid; every query has one (its own or its
        panel's)."""
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("type") != "grafana":
                assert ds.get("uid") == source["uid"], ds
            ds = ds if ds is not None else inherited
            if isinstance(node.get("expr"), str):
                assert isinstance(ds, dict) and ds.get("uid") == source["uid"], (node["expr"], ds)
            for value in node.values():
                check(value, ds)
        elif isinstance(node, list):
            for value in node:
                check(value, inherited)

    check(board)


def test_grafana_mounts_the_provisioning_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    assert image_parts(grafana["image"])[0] == "grafana/grafana"
    env = env_of(grafana)
    provisioning = env.get("GF_PATHS_PROVISIONING", GRAFANA_DEFAULT_PROVISIONING).rstrip("/")
    datasource_path = container_path(grafana, GRAFANA_DATASOURCES)
    provider_path = container_path(grafana, GRAFANA_PROVIDERS)
    assert datasource_path and datasource_path.rsplit("/", 1)[0] == f"{provisioning}/datasources", datasource_path
    assert provider_path and provider_path.rsplit("/", 1)[0] == f"{provisioning}/dashboards", provider_path

    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    dashboard_path = container_path(grafana, DASHBOARD_FILE)
    assert dashboard_path, "ops/grafana/dashboards is not mounted into grafana"
    assert any(p.get("type", "file") == "file" and p["options"]["path"].rstrip("/") == dashboard_path.rsplit("/", 1)[0]
               for p in providers), f"no file provider reads {dashboard_path}"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == dashboard_path


def test_grafana_is_anonymous_viewer_on_3000_after_prometheus(compose):
    grafana = compose["services"]["grafana"]
    env = env_of(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"].lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert published(grafana).get(3000) == 3000
    assert depends_on(grafana).get("prometheus") == "service_healthy"


def test_kafka_ui_points_at_the_in_network_kafka_listener(compose):
    kafka_ui = compose["services"]["kafka-ui"]
    assert image_parts(kafka_ui["image"])[0] in {"provectuslabs/kafka-ui", "kafbat/kafka-ui", "ghcr.io/kafbat/kafka-ui"}
    env = env_of(kafka_ui)
    assert env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:9092"
    advertised = env_of(compose["services"]["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"PLAINTEXT://{env['KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS']}" in advertised
    assert published(kafka_ui).get(8080) == 8080
    assert depends_on(kafka_ui).get("kafka") == "service_healthy"


@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.sasl.yml"])
def test_images_are_pinned(compose_file):
    services = load_compose(compose_file)["services"]
    for name, definition in services.items():
        if "image" not in definition:
            continue
        repository, tag, digest = image_parts(str(definition["image"]))
        assert tag or digest, f"{compose_file}: {name} runs {definition['image']} with no tag"
        assert tag != "latest", f"{compose_file}: {name} runs {definition['image']}"
        if "build" not in definition and not digest:
            assert re.search(r"\d", tag), f"{compose_file}: {name} runs {definition['image']}, not a version"


def test_header_comment_lists_every_published_host_port(compose):
    header = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    for name, definition in compose["services"].items():
        for host_port in published(definition).values():
            assert re.search(rf"\b{host_port}\b", text), f"the header does not mention {name}'s port {host_port}"


# ---------------------------------------------------------------- the cluster overlay


def merged(base: dict, overlay: dict) -> dict:
    """`docker compose -f base -f overlay`: maps merged key by key, anything else (lists, commands) replaced."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_the_single_node_file_says_it_is_for_development():
    head = COMPOSE_FILE.read_text().split("\nname:", 1)[0].lower()
    assert "development" in head and "docker-compose.cluster.yml" in head


def test_cluster_overlay_runs_three_nodes_with_the_settings_of_cancelflow_up_brokers_3(tmp_path):
    from cancelflow.stack import Ports, Stack, StackConfig

    base = load_compose()
    stack = merged(base, load_compose("docker-compose.cluster.yml"))["services"]
    nodes = {name: stack[name] for name in ("kafka", "kafka-2", "kafka-3")}
    local = {k: v for k, v in (line.split("=", 1) for line in Stack(StackConfig(
        root=tmp_path, ports=Ports.from_base(30000), brokers=3)).kafka_nodes["kafka-1"].server_properties().splitlines()
        if line) }
    host_ports = set()
    for k, (name, node) in enumerate(nodes.items(), start=1):
        env = env_of(node)
        assert set(env_of(base["services"]["kafka"])) <= set(env), f"{name} has every setting of the single node"
        assert node["image"] == base["services"]["kafka"]["image"], "the same Kafka for every node"
        assert env["KAFKA_NODE_ID"] == str(k)
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        for key in ("default.replication.factor", "min.insync.replicas", "unclean.leader.election.enable",
                    "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                    "share.coordinator.state.topic.min.isr", "auto.create.topics.enable",
                    "initial.broker.registration.timeout.ms"):
            assert env["KAFKA_" + key.upper().replace(".", "_")] == local[key], (name, key)
        assert f"PLAINTEXT://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        host = published(node)
        assert f"HOST://localhost:{host[19092]}" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        host_ports.add(host[19092])
        assert has_healthcheck(node)
    assert len(host_ports) == 3
    assert len({env_of(n)["CLUSTER_ID"] for n in nodes.values()}) == 1
    bootstrap = "kafka:9092,kafka-2:9092,kafka-3:9092"
    for name in ("topics", *SERVICES):
        assert env_of(stack[name])["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap, name
    for name in SERVICES:
        database = f"{name.upper()}_DATABASE_URL"  # each service's own role
        assert env_of(stack[name])[database] == env_of(base["services"][name])[database], \
            "the overlay adds to the base environment"
    assert option(command_of(stack["topics"]), "--brokers") == "3"
    assert {"kafka", "kafka-2", "kafka-3"} <= set(depends_on(stack["topics"]))
