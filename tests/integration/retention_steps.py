"""The steps the retention loop's integration tests share: an accepted request, the events it leaves on the
topics, the mails it gets."""

from __future__ import annotations

import asyncio
from datetime import date

import orjson

from cancelflow.client import read_topic
from shared import topics

OLD_START = date(2024, 1, 31)


def decided(s: dict) -> bool:
    return s["status"] != "received"


def events_of(records, event_type: str) -> list[dict]:
    out = [orjson.loads(r.value) for r in records]
    return [e for e in out if e["event_type"] == event_type]


async def accepted_request(client, reason: str = "SWITCHING_TOOL", contract: str | None = None) -> tuple[str, str]:
    contract = await client.sign_contract(start_date=OLD_START, plan="pro", contract_id=contract)
    rid = (await client.submit(client.form(contract, reason=reason))).json()["request_id"]
    s = await client.wait_status(rid, lambda s: decided(s) and s["settlement"] is not None)
    assert s["status"] == "accepted", s
    return contract, rid


async def offers_taken(bootstrap: str, contract: str) -> list[dict]:
    return events_of(await read_topic(bootstrap, topics.RETENTION, lambda r: r.key == contract.encode()),
                     "retention.offer_taken")


async def withdrawn_events(bootstrap: str, contract: str) -> list[dict]:
    return events_of(await read_topic(bootstrap, topics.DECISIONS, lambda r: r.key == contract.encode()),
                     "cancellation.withdrawn")


async def wait_offers_taken(bootstrap: str, contract: str, n: int = 1) -> list[dict]:
    for _ in range(100):
        found = await offers_taken(bootstrap, contract)
        if len(found) >= n:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{n} retention.offer_taken for {contract} not published")


async def wait_mail_kind(client, request_id: str, kind: str) -> list[str]:
    """The kinds of the request's mails once one of `kind` arrived, after a pause for any second one. (The
    acknowledgement may or may not have gone out before a quick withdrawal cancelled it.)"""
    for _ in range(150):
        if any(m.headers["X-Cancelflow-Kind"] == kind for m in client.mails(request_id)):
            await asyncio.sleep(1.0)
            return [m.headers["X-Cancelflow-Kind"] for m in client.mails(request_id)]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no {kind} mail for {request_id}")
