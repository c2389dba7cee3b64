"""Who may call intake's API: an X-API-Key (any configured key) or an HMAC-SHA256 signed body."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, HTTPException, Request

from .settings import IntakeSettings


def api_key_matches(settings: IntakeSettings, given: str | None) -> bool:
    """Compared with every key in constant time, so the time taken does not tell which one nearly matched."""
    if given is None:
        return False
    keys = [k.encode() for k in settings.api_key_list()]
    return any([hmac.compare_digest(given.encode(), k) for k in keys])


def authenticator(settings: IntakeSettings) -> Callable[..., Awaitable[None]]:
    """The FastAPI dependency: 401 unless the caller holds a key or signed the body."""

    async def authenticate(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                           x_signature: Annotated[str | None, Header()] = None) -> None:
        if api_key_matches(settings, x_api_key):
            return
        if x_signature is not None and settings.webhook_secret:
            expected = "sha256=" + hmac.new(settings.webhook_secret.encode(), await request.body(),
                                            hashlib.sha256).hexdigest()
            if hmac.compare_digest(x_signature.encode(), expected.encode()):
                return
        raise HTTPException(401, detail="missing or invalid X-API-Key (or X-Signature)",
                            headers={"WWW-Authenticate": "ApiKey"})

    return authenticate
