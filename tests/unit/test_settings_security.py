"""No default secret, and secrets that do not show: the settings as a deployment meets them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.intake.settings import IntakeSettings
from services.notifier.settings import NotifierSettings
from shared.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def _without_intake_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}


@pytest.mark.parametrize(("keys", "why"), [(None, "INTAKE_API_KEYS is not set"),
                                           (" , ", "INTAKE_API_KEYS: Value error, no key in it")])
def test_intake_refuses_to_start_without_api_keys(keys, why):
    """The real start command (`faststream run ... --factory`): exit 1, one line naming the variable."""
    env = _without_intake_env() | ({"INTAKE_API_KEYS": keys} if keys is not None else {})
    result = subprocess.run([sys.executable, "-m", "faststream", "run", "services.intake.app:create_app",
                             "--factory", "--port", "1"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"intake cannot start: {why}"), result.stderr


def test_load_settings_names_the_variable(monkeypatch):
    monkeypatch.delenv("INTAKE_API_KEYS", raising=False)
    with pytest.raises(SettingsError, match="^intake cannot start: INTAKE_API_KEYS is not set$"):
        load_settings(IntakeSettings)
    monkeypatch.setenv("INTAKE_API_KEYS", "k1,k2")
    assert load_settings(IntakeSettings).api_key_list() == ["k1", "k2"]


def test_secrets_are_secret_str_and_never_printed():
    settings = IntakeSettings(api_keys="key-one,key-two", webhook_secret="hook-secret", KAFKA_SASL_PASSWORD="pw-kafka")
    for name in ("api_keys", "webhook_secret", "kafka_sasl_password"):
        assert isinstance(getattr(settings, name), SecretStr), name
    assert isinstance(NotifierSettings(smtp_password="pw-smtp").smtp_password, SecretStr)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in ("key-one", "key-two", "hook-secret", "pw-kafka"):
        assert secret not in shown


def test_a_service_database_url_of_its_own(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared@db/x")
    monkeypatch.setenv("INTAKE_API_KEYS", "k")
    assert IntakeSettings().database_url == "postgresql://shared@db/x"
    monkeypatch.setenv("INTAKE_DATABASE_URL", "postgresql://intake:pw@intake-db/x")
    assert IntakeSettings().database_url == "postgresql://intake:pw@intake-db/x"
    assert NotifierSettings().database_url == "postgresql://shared@db/x"


def test_cancelflow_link_has_no_default_key(monkeypatch, tmp_path):
    """No key given and no stack that made one: one line naming INTAKE_API_KEY, nothing sent. With a stack's
    generated key, that key is the one sent (as `cancelflow up` printed it)."""
    from typer.testing import CliRunner

    from cancelflow import cli, stack_security

    for name in ("INTAKE_API_KEY", "INTAKE_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CANCELFLOW_STACK_DIR", str(tmp_path))
    result = CliRunner().invoke(cli.app, ["link", "C-1", "--intake-url", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "no API key: set INTAKE_API_KEY" in result.output
    assert not (tmp_path / "security" / "intake.json").exists()  # asking made no key
    generated, _ = stack_security.intake_secrets(tmp_path / "security")
    assert cli._client_api_key(None, cli._stack(recorded=True)) == generated
    assert cli._client_api_key("given", cli._stack(recorded=True)) == "given"
