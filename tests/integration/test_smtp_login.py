"""The notifier logs in to a relay that wants it (aiosmtpd with AUTH), with the password kept as a SecretStr."""

from __future__ import annotations

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from cancelflow.infra.ports import free_port
from services.notifier.settings import NotifierSettings
from services.notifier.smtp_client import Mailer


class Accepting:
    def __init__(self) -> None:
        self.received: list[str] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.received.append(envelope.rcpt_tos[0])
        return "250 OK"


def only(user: bytes, password: bytes):
    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        return AuthResult(success=(auth_data.login, auth_data.password) == (user, password))
    return authenticator


@pytest.fixture
def relay():
    handler, port = Accepting(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=only(b"notifier", b"s3cret"),
                            auth_require_tls=False, auth_required=True)
    controller.start()
    yield port, handler
    controller.stop()


async def _commit() -> None:
    return None


# AUTH without TLS is what this loopback relay offers; aiosmtpd warns about it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_the_notifier_logs_in_and_its_password_never_shows(relay):
    port, handler = relay
    settings = NotifierSettings(smtp_port=port, smtp_username="notifier", smtp_password="s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    mailer = Mailer(settings)
    await mailer.send(mailer.compose("t@example.jp", "s", "body", "<m1@t>", {}), _commit)
    mailer.close()
    assert handler.received == ["t@example.jp"]

