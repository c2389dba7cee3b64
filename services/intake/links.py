"""Signed cancel links: a token carrying a contract id and an expiry, signed with HMAC-SHA256.

token = base64url("<contract_id>.<expires unix seconds>") "." base64url(HMAC-SHA256(secret, first part))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone


class InvalidLink(ValueError):
    """Expired, altered or malformed: the page answers all of them alike."""


@dataclass(frozen=True)
class Link:
    contract_id: str
    expires_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def sign_link(secret: str, contract_id: str, expires_at: datetime) -> str:
    payload = _b64(f"{contract_id}.{int(expires_at.timestamp())}".encode())
    return f"{payload}.{_mac(secret, payload)}"


def verify_link(secret: str, token: str, now: datetime) -> Link:
    """The link's contract and expiry; InvalidLink unless signed with `secret` and not expired at `now`."""
    payload, _, mac = token.partition(".")
    if not payload or not mac or not hmac.compare_digest(mac.encode(), _mac(secret, payload).encode()):
        raise InvalidLink("signature")
    try:
        contract_id, _, expires = _unb64(payload).decode().rpartition(".")
        expires_at = datetime.fromtimestamp(int(expires), timezone.utc)
    except (ValueError, UnicodeDecodeError):
        raise InvalidLink("payload") from None
    if not contract_id or now >= expires_at:
        raise InvalidLink("expired")
    return Link(contract_id, expires_at)
