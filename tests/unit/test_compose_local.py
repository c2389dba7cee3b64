"""The compose files run both ways: on the official images (the defaults) and on the images built here
(infra/docker/local.env, scripts/compose-images). Read without an engine; the Kafka image's entrypoint is
run for real in its dry-run mode, on the very KAFKA_* settings the compose files give it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.infra_choice import local_images
from tests.unit.test_compose import env_of, load_compose, published

ROOT = Path(__file__).resolve().parents[2]
LOCAL = local_images()
OFFICIAL = {
    "KAFKA_IMAGE": "apache/kafka",
    "POSTGRES_IMAGE": "postgres",
    "PROMETHEUS_IMAGE": "prom/prometheus",
    "APP_BASE_IMAGE": "python",
}
KAFKA_RUN = ROOT / "infra" / "docker" / "kafka" / "run"


def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def pom_kafka_version() -> str:
    return re.search(r"<kafka.version>([^<]+)<", (ROOT / "infra/kafka/pom.xml").read_text()).group(1)


def test_every_image_comes_from_a_variable_whose_default_is_the_official_image():
    compose = raw("docker-compose.yml")
    images = {name: d["image"] for name, d in compose["services"].items() if "image" in d}
    images["(project image base)"] = compose["x-app"]["build"]["args"]["BASE_IMAGE"]
    for name, image in images.items():
        match = re.fullmatch(r"\$\{([A-Z_]+):-([^}]+)\}", image)
        assert match, f"{name}: {image} is not ${{VARIABLE:-official image}}"
    by_variable = {re.match(r"\$\{([A-Z_]+)", i).group(1): i.split(":-", 1)[1].rstrip("}") for i in images.values()}
    for variable, repository in OFFICIAL.items():
        assert by_variable[variable].split(":")[0] == repository
    assert by_variable["APP_BASE_IMAGE"] == "python:3.11-slim"
    sasl = raw("docker-compose.sasl.yml")
    assert sasl["services"]["kafka-users"]["image"] == compose["services"]["kafka"]["image"]
    assert sasl["services"]["kafka-acls"]["image"] == compose["x-app"]["image"]
    assert sasl["services"]["kafka-acls"]["build"]["args"]["BASE_IMAGE"] == images["(project image base)"]


def test_local_env_names_a_built_image_for_every_official_one_the_stack_runs():
    assert set(OFFICIAL) <= set(LOCAL)
    assert LOCAL["KAFKA_IMAGE"].rsplit(":", 1)[1] == pom_kafka_version()
    assert LOCAL["POSTGRES_IMAGE"].rsplit(":", 1)[1] == load_compose()["services"]["postgres"]["image"].split(":")[1]
    local = load_compose(environ=LOCAL)
    assert local["services"]["kafka"]["image"] == LOCAL["KAFKA_IMAGE"]
    assert local["x-app"]["build"]["args"]["BASE_IMAGE"] == LOCAL["APP_BASE_IMAGE"]
    assert all(name.startswith("cancelflow-local/") for name in LOCAL.values())


def test_what_cannot_be_built_here_is_in_the_dashboards_profile_only():
    services = raw("docker-compose.yml")["services"]
    profiled = {name: d["profiles"] for name, d in services.items() if "profiles" in d}
    assert profiled == {"grafana": ["dashboards"], "kafka-ui": ["dashboards"]}
    assert "COMPOSE_PROFILES" not in (ROOT / "infra/docker/local.env").read_text().split("\n# ")[-1]


def test_host_ports_are_loopback_and_movable_and_compose_test_moves_them_all():
    # The cluster overlay's other two Kafka nodes too (scripts/compose-test cluster).
    services = raw("docker-compose.yml")["services"]
    cluster = raw("docker-compose.cluster.yml")["services"]
    variables = set()
    for name, definition in [*services.items(), *cluster.items()]:
        for port in definition.get("ports") or []:
            match = re.fullmatch(r"127\.0\.0\.1:\$\{([A-Z][A-Z0-9_]*_HOST_PORT):-\d+\}:\d+", str(port))
            assert match, f"{name}: {port} is not 127.0.0.1:${{..._HOST_PORT:-default}}:port"
            variables.add((name, match.group(1)))
    script = (ROOT / "scripts" / "compose-test").read_text()
    moved = set(re.findall(r"([A-Z][A-Z0-9_]*_HOST_PORT)=", script))
    unprofiled = {v for name, v in variables if "profiles" not in (services.get(name) or cluster[name])}
    assert unprofiled <= moved, unprofiled - moved
    moved_to = {22000 + int(n) for n in re.findall(r"_HOST_PORT=\$\(\(base \+ (\d+)\)\)", script)}
    assert len(moved_to) == len(moved), "two host ports would collide"
    # Kafka advertises the port it is published on.
    kafka = load_compose(environ={"KAFKA_HOST_PORT": "22092"})["services"]["kafka"]
    assert published(kafka) == {19092: 22092}
    assert "HOST://localhost:22092" in env_of(kafka)["KAFKA_ADVERTISED_LISTENERS"]


def kafka_properties(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    props = tmp_path / "server.properties"
    result = subprocess.run(
        ["bash", str(KAFKA_RUN)], capture_output=True, text=True, timeout=30,
        env={"PATH": os.environ["PATH"], **env, "CANCELFLOW_KAFKA_PROPERTIES": str(props),
             "CANCELFLOW_KAFKA_DRY_RUN": "1"},
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if line)


def test_the_local_kafka_image_reads_the_compose_settings_as_the_official_image_does(tmp_path):
    env = env_of(load_compose()["services"]["kafka"])
    props = kafka_properties({**env, "KAFKA_HEAP_OPTS": "-Xmx1g"}, tmp_path)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://:9092,CONTROLLER://:9093,HOST://:19092"
    assert props["advertised.listeners"] == "PLAINTEXT://kafka:9092,HOST://localhost:19092"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT"
    assert props["controller.quorum.voters"] == "1@kafka:9093"
    assert props["share.coordinator.state.topic.min.isr"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == "/var/lib/kafka/data"
    assert "heap.opts" not in props, "launcher variables are not broker settings"
    assert len(props) == len(env) + 1  # every KAFKA_* setting, plus the log directory


def test_the_local_kafka_image_reads_the_sasl_overlay_names_with_dashes(tmp_path):
    env = {**env_of(load_compose()["services"]["kafka"]),
           **env_of(load_compose("docker-compose.sasl.yml")["services"]["kafka"])}
    props = kafka_properties(env, tmp_path)
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,PLAIN"
    assert props["listener.name.sasl.scram-sha-512.sasl.jaas.config"] == \
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    assert props["listener.name.controller.plain.sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.plain.PlainLoginModule required")
    assert props["super.users"] == "User:broker"


def test_the_local_kafka_image_refuses_to_start_without_settings(tmp_path):
    result = subprocess.run(["bash", str(KAFKA_RUN)], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ["PATH"], "CANCELFLOW_KAFKA_PROPERTIES": str(tmp_path / "p")})
    assert result.returncode == 1 and "KAFKA_PROCESS_ROLES" in result.stderr


def test_the_test_overlay_shares_one_clock_with_every_service():
    overlay = load_compose("docker-compose.test.yml")["services"]
    assert set(overlay) == {"intake", "eligibility", "billing", "notifier"}
    for definition in overlay.values():
        assert env_of(definition)["CANCELFLOW_CLOCK_FILE"] == "/clock/now"
        assert definition["volumes"] == ["./.stack/compose-clock:/clock:ro"]


@pytest.mark.parametrize("script", ["compose-images", "compose-test"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True).returncode == 0


def test_compose_images_says_in_one_line_that_no_engine_runs(tmp_path):
    result = subprocess.run([str(ROOT / "scripts" / "compose-images")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'none.sock'}"})
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Docker engine answers"), result.stderr
