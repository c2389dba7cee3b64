"""The data keys of the contracts, for notifier only: it needs the customer's address at send time, and the
customer travels sealed (`shared.sealing`). `POST /internal/v1/subject-keys` {contract_ids} answers each
contract's key, or null for one erased (or never seen); only a caller holding INTAKE_KEYRING_TOKEN gets an
answer. Not in the public OpenAPI document."""

from __future__ import annotations

import base64
import hmac
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from shared.events import Id
from shared.service import Runtime

from .settings import IntakeSettings

_KEYS = "SELECT contract_id, key_id, key FROM subject_keys WHERE contract_id = ANY($1::text[]) AND key IS NOT NULL"


class KeysAsked(BaseModel):
    contract_ids: list[Id] = Field(min_length=1, max_length=1000)


class KeyView(BaseModel):
    key_id: str
    key: str  # base64


class Keys(BaseModel):
    keys: dict[str, KeyView | None]


def install_keyring(runtime: Runtime, app: FastAPI) -> None:
    settings: IntakeSettings = runtime.settings  # type: ignore[assignment]
    token = settings.keyring_token.get_secret_value().encode() if settings.keyring_token else None

    @app.post("/internal/v1/subject-keys", response_model=Keys, include_in_schema=False)
    async def subject_keys(body: KeysAsked, x_keyring_token: Annotated[str | None, Header()] = None) -> Any:
        if token is None or x_keyring_token is None or not hmac.compare_digest(x_keyring_token.encode(), token):
            raise HTTPException(401, detail="missing or invalid X-Keyring-Token",
                                headers={"WWW-Authenticate": "KeyringToken"})
        rows = await runtime.pool.fetch(_KEYS, body.contract_ids)
        found = {r["contract_id"]: KeyView(key_id=r["key_id"], key=base64.b64encode(r["key"]).decode()) for r in rows}
        return Keys(keys={cid: found.get(cid) for cid in body.contract_ids})
