"""docker-compose.yml is kept correct by reading it: there may be no Docker engine where the tests run.

The compose file is checked against the code it starts: the Kafka image tag against infra/kafka/pom.xml,
each service's ports and environment against its pydantic-settings class (so a misspelt variable, which
the service would silently ignore, fails here).

The watching side (Prometheus, Grafana, Kafka UI): test_compose_monitoring.py."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.compose_files import (COMPOSE_FILE, LOOPBACK, MUST_SET_EXTRA, POM_FILE, ROOT, SERVICES, command_of,
                                      depends_on, env_names, env_of, has_healthcheck, healthcheck_text, load_compose,
                                      option, published, settings_class)


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


def _seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cluster.yml"])
def test_every_kafka_health_check_gives_its_jvm_time_on_a_loaded_machine(name):
    """The check's JVM took 27 s at load 28: with a 10 s timeout every check failed and the brokers never
    became healthy; and a JVM every 5 s per broker is a large share of two cores."""
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    timings = {svc: d["healthcheck"] for svc, d in services.items() if "kafka" in svc and has_healthcheck(d)}
    assert timings, f"{name} health-checks no Kafka node"
    for svc, check in timings.items():
        assert _seconds(check["timeout"]) >= 60, f"{name} {svc}: timeout {check['timeout']}"
        assert _seconds(check["interval"]) >= 10, f"{name} {svc}: interval {check['interval']}"
        assert _seconds(check["interval"]) * check["retries"] >= 180, f"{name} {svc}: gives up too early"


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
