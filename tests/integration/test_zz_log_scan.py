"""Runs last (file order): every log line the stack wrote during the whole session is searched for the
personal data the tests used. E-mails and phones may appear only masked."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

CLEAR_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]{2,}@example\.jp")
CLEAR_PHONE = re.compile(r"090-1234-\d{4}|0901234\d{4}")


def test_no_personal_data_in_any_log_line(infra):
    if infra.stack is None:
        pytest.skip("the external stack's logs are not on this machine")
    lines = []
    for path in sorted(infra.stack.logs.glob("*.log")):
        lines += [(path.name, line) for line in path.read_text(errors="replace").splitlines()]
    service_lines = [line for name, line in lines if name.split(".")[0] in ("intake", "eligibility", "billing", "notifier")]
    assert len(service_lines) > 50, "the services logged the session"
    # Positive control: intake logs each notification with its (masked) recipient.
    assert any("t***@example.jp" in line for line in service_lines)
    leaks = [(name, line[:200]) for name, line in lines if CLEAR_EMAIL.search(line) or CLEAR_PHONE.search(line)]
    assert leaks == []


def test_no_secret_in_any_log_line(infra):
    """The stack's generated API key, webhook secret and database passwords never reach a log."""
    if infra.stack is None:
        pytest.skip("the external stack's logs are not on this machine")
    from cancelflow import stack_security

    secrets = [infra.api_key, infra.webhook_secret,
               *stack_security.database_passwords(infra.stack.security_dir).values()]
    assert all(secrets) and all(len(s) >= 20 for s in secrets)
    leaks = [(path.name, secret[:4]) for path in sorted(infra.stack.logs.glob("*.log"))
             for secret in secrets if secret in path.read_text(errors="replace")]
    assert leaks == []
