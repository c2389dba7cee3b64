"""What the compose-file tests share: the files read (with `${VAR}` interpolated as compose does), the
settings classes of the services they start, and small readers of a service's definition."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

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
            "INTAKE_LINK_SECRET": "link-secret-from-env",
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
