"""Who may call intake's API: an X-API-Key (any configured key) or a signed body (`signatures`: good within the
tolerance of its timestamp, and once)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, HTTPException, Request

from shared.service import Runtime

from .settings import IntakeSettings
from .signatures import SignatureRefused, SignatureReplayed, remembered_until, verify
from .store import first_use_of_signature


def api_key_matches(settings: IntakeSettings, given: str | None) -> bool:
    """Compared with every key in constant time, so the time taken does not tell which one nearly matched."""
    if given is None:
        return False
    keys = [k.encode() for k in settings.api_key_list()]
    return any([hmac.compare_digest(given.encode(), k) for k in keys])


def authenticator(runtime: Runtime) -> Callable[..., Awaitable[None]]:
    """The FastAPI dependency: 401 unless the caller holds a key or signed the body (the detail says why)."""
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]

    async def authenticate(request: Request, x_api_key: Annotated[str | None, Header()] = None,
                           x_signature: Annotated[str | None, Header()] = None) -> None:
        if api_key_matches(settings, x_api_key):
            return
        if x_signature is not None and settings.webhook_secret is not None:
            now, tolerance = runtime.clock.now(), settings.signature_tolerance_s
            try:
                signature = verify(settings.webhook_secret.get_secret_value(), x_signature, await request.body(),
                                   now, tolerance)
                if not await first_use_of_signature(runtime.pool, signature.digests[0],
                                                    remembered_until(signature, tolerance), now):
                    raise SignatureReplayed
            except SignatureRefused as exc:
                raise HTTPException(401, detail=str(exc), headers={"WWW-Authenticate": "ApiKey"}) from None
            return
        raise HTTPException(401, detail="missing or invalid X-API-Key (or X-Signature)",
                            headers={"WWW-Authenticate": "ApiKey"})

    return authenticate
