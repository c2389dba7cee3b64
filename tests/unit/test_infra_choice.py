"""The harness's choice of Kafka and PostgreSQL (tests/infra_choice.py): testcontainers only where it can work."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pytest

from tests.infra_choice import Choice, DockerCli, InfraChoiceError, choose, local_images

KAFKA = "apache/kafka:4.1.1"
LOCAL = local_images()


@dataclass
class FakeDocker:
    up: bool = True
    images: set[str] = field(default_factory=set)
    pullable: set[str] = field(default_factory=set)
    can_run: bool = True
    pulled: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def answers(self) -> bool:
        return self.up

    def has_image(self, image: str) -> bool:
        return image in self.images

    def pull(self, image: str) -> bool:
        self.pulled.append(image)
        if image in self.pullable:
            self.images.add(image)
            return True
        return False

    def runs(self, image: str) -> bool:
        self.ran.append(image)
        return self.can_run


ENV_STACK = {"KAFKA_BOOTSTRAP_SERVERS": "localhost:19092", "DATABASE_URL": "postgresql://p@localhost/c"}


def test_docker_answering_without_usable_images_falls_back_to_the_local_stack():
    docker = FakeDocker(up=True, images=set(), pullable=set())
    choice = choose({}, docker, KAFKA)
    assert choice.mode == "local"
    assert "Docker answers but has no image" in choice.reason
    assert KAFKA in choice.reason and "postgres:18" in choice.reason
    assert docker.pulled == [KAFKA, "postgres:18"], "it tried to pull the official images once each"
    assert docker.ran == [], "no container is started from an image that is not there"
    assert "\n" not in choice.line() and choice.line().startswith("test infrastructure: local (")


def test_no_engine_is_the_local_stack():
    assert choose({}, FakeDocker(up=False), KAFKA) == Choice("local", "no Docker engine answers")


def test_the_locally_built_images_are_used_when_the_official_ones_are_missing():
    docker = FakeDocker(images={LOCAL["KAFKA_IMAGE"], LOCAL["POSTGRES_IMAGE"]})
    choice = choose({}, docker, KAFKA)
    assert (choice.mode, choice.kafka_image, choice.postgres_image) == \
        ("docker", LOCAL["KAFKA_IMAGE"], LOCAL["POSTGRES_IMAGE"])
    assert docker.pulled == [] and docker.ran == [LOCAL["KAFKA_IMAGE"]]


def test_official_images_present_or_pullable_are_preferred():
    docker = FakeDocker(images={KAFKA, LOCAL["KAFKA_IMAGE"]}, pullable={"postgres:18"})
    choice = choose({}, docker, KAFKA)
    assert (choice.mode, choice.kafka_image, choice.postgres_image) == ("docker", KAFKA, "postgres:18")


def test_an_engine_that_cannot_start_containers_is_not_chosen():
    choice = choose({}, FakeDocker(images={KAFKA, "postgres:18"}, can_run=False), KAFKA)
    assert choice.mode == "local" and "cannot start a container" in choice.reason


def test_image_variables_name_the_only_candidates():
    environ = {"KAFKA_IMAGE": "mirror.example/kafka:4.1.1", "POSTGRES_IMAGE": "mirror.example/pg:18"}
    docker = FakeDocker(images={KAFKA, "postgres:18"})
    choice = choose(environ, docker, KAFKA)
    assert choice.mode == "local"
    assert docker.pulled == ["mirror.example/kafka:4.1.1", "mirror.example/pg:18"]


def test_an_existing_stack_wins_unless_forced_otherwise():
    assert choose(ENV_STACK, FakeDocker(images={KAFKA, "postgres:18"}), KAFKA).mode == "env"
    assert choose({**ENV_STACK, "CANCELFLOW_TEST_INFRA": "local"}, FakeDocker(), KAFKA).mode == "local"
    docker = FakeDocker(images={KAFKA, "postgres:18"})
    assert choose({**ENV_STACK, "CANCELFLOW_TEST_INFRA": "docker"}, docker, KAFKA).mode == "docker"


@pytest.mark.parametrize("environ, docker, message", [
    ({"CANCELFLOW_TEST_INFRA": "docker"}, FakeDocker(up=False), "no Docker engine answers"),
    ({"CANCELFLOW_TEST_INFRA": "docker"}, FakeDocker(), "has no image"),
    ({"CANCELFLOW_TEST_INFRA": "env"}, FakeDocker(), "needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"),
    ({"CANCELFLOW_TEST_INFRA": "containers"}, FakeDocker(), "expected one of env, docker, local"),
])
def test_a_forced_choice_that_cannot_work_is_an_error_not_a_fallback(environ, docker, message):
    with pytest.raises(InfraChoiceError, match=message):
        choose(environ, docker, KAFKA)


def test_the_cli_probe_reports_an_engine_that_does_not_answer(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    probe = DockerCli()
    assert probe.answers() is False
    assert probe.has_image(KAFKA) is False
    assert choose({}, probe, KAFKA) == Choice("local", "no Docker engine answers")


FAKE_CLI = """#!/bin/sh
# A docker CLI whose engine answers but has no image and reaches no registry (a developer's machine with
# Docker running and nothing built). Every call is logged.
echo "$*" >> "$(dirname "$0")/calls"
case "$1 $2" in
  "info "*) exit 0 ;;
  "image inspect") echo "Error: No such image: $3" >&2; exit 1 ;;
  "pull -q") [ -n "$HANG_PULL" ] && exec sleep 30
             echo "Error response from daemon: Get https://registry-1.docker.io/v2/: no such host" >&2; exit 1 ;;
esac
exit 99
"""


@pytest.fixture
def engine_without_images(monkeypatch, tmp_path):
    cli = tmp_path / "docker"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.delenv("DOCKER_HOST", raising=False)  # the default socket, as on a developer's machine
    monkeypatch.delenv("HANG_PULL", raising=False)
    return tmp_path / "calls"


def test_an_engine_without_images_through_the_real_probe_is_the_local_stack_in_one_line(engine_without_images):
    choice = choose({}, DockerCli(), KAFKA)
    assert choice.mode == "local" and choice.kafka_image is None
    assert choice.line() == (
        f"test infrastructure: local (Docker answers but has no image {KAFKA} or {LOCAL['KAFKA_IMAGE']} nor "
        f"postgres:18 or {LOCAL['POSTGRES_IMAGE']} and cannot pull one (scripts/compose-images builds them))")
    calls = engine_without_images.read_text().splitlines()
    assert not [c for c in calls if c.startswith("run")], "no container is started"
    assert [c for c in calls if c.startswith("pull")] == [f"pull -q {KAFKA}", "pull -q postgres:18"]


def test_a_pull_that_hangs_is_given_up_and_the_local_stack_chosen(engine_without_images, monkeypatch):
    monkeypatch.setenv("HANG_PULL", "1")
    started = time.monotonic()
    choice = choose({}, DockerCli(pull_timeout=1), KAFKA)
    assert choice.mode == "local" and "cannot pull" in choice.reason
    assert time.monotonic() - started < 15
