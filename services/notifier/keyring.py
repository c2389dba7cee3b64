"""The customer of a notification, opened at send time: the recipients table keeps it sealed as it came
(`shared.sealing`), and the contract's data key is asked of intake (`POST /internal/v1/subject-keys`, one call
per batch, any intake instance) and kept in memory for `keyring_ttl_s` at most. A contract whose key is gone
was erased: its notification is never sent."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from shared.events import SealedCustomer
from shared.sealing import DataKey, Unreadable, unseal

from .settings import NotifierSettings

log = logging.getLogger(__name__)


class KeyringUnavailable(RuntimeError):
    """No intake answered: the mails wait (they stay pending), as when SMTP is down."""


@dataclass(frozen=True)
class Recipient:
    name: str
    email: str


class Keyring:
    def __init__(self, settings: NotifierSettings) -> None:
        self.urls = [u.strip().rstrip("/") for u in settings.intake_url.split(",") if u.strip()]
        self.token = settings.keyring_token.get_secret_value() if settings.keyring_token else None
        self.ttl_s = settings.keyring_ttl_s
        self._cache: dict[str, tuple[float, DataKey]] = {}
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _fetch(self, contract_ids: list[str]) -> dict[str, DataKey | None]:
        if self.token is None:
            raise KeyringUnavailable("NOTIFIER_KEYRING_TOKEN is not set: sealed recipients cannot be opened")
        self._client = self._client or httpx.AsyncClient(timeout=5.0)
        failure: Exception | None = None
        for url in self.urls:
            try:
                response = await self._client.post(f"{url}/internal/v1/subject-keys",
                                                   json={"contract_ids": contract_ids},
                                                   headers={"X-Keyring-Token": self.token})
            except httpx.HTTPError as exc:
                failure = exc
                continue
            if response.status_code != 200:
                raise KeyringUnavailable(f"intake at {url} answered {response.status_code} for the data keys")
            keys = response.json()["keys"]
            return {cid: DataKey(cid, k["key_id"], base64.b64decode(k["key"])) if k else None
                    for cid, k in keys.items()}
        raise KeyringUnavailable(f"no intake answered for the data keys ({type(failure).__name__})")

    async def keys(self, contract_ids: set[str]) -> dict[str, DataKey | None]:
        now = time.monotonic()
        known = {cid: entry[1] for cid in contract_ids if (entry := self._cache.get(cid)) and entry[0] > now}
        missing = sorted(contract_ids - set(known))
        if missing:
            fetched = await self._fetch(missing)
            for cid, key in fetched.items():
                if key is not None:
                    self._cache[cid] = (now + self.ttl_s, key)
            known |= fetched
        if len(self._cache) > 10_000:  # bounded: expired entries go
            self._cache = {c: e for c, e in self._cache.items() if e[0] > now}
        return known

    async def open(self, rows: Sequence[Any]) -> dict[int, Recipient]:
        """{notification id: its recipient in clear} for the rows that can still be read; an erased one is
        left out."""
        sealed = {r["id"]: SealedCustomer.model_validate(r["customer_sealed"]) for r in rows if r["customer_sealed"]}
        keys = await self.keys({r["contract_id"] for r in rows if r["id"] in sealed}) if sealed else {}
        out: dict[int, Recipient] = {}
        for row in rows:
            if row["id"] in sealed:
                try:
                    customer = unseal(sealed[row["id"]], row["contract_id"], keys.get(row["contract_id"]))
                except Unreadable:
                    continue
                out[row["id"]] = Recipient(customer.name, str(customer.email))
            elif row["email"]:  # a version-1 event's recipient, in clear
                out[row["id"]] = Recipient(row["customer_name"], row["email"])
        return out
