"""A client of a running pipeline, the way upstream systems and operators use it: events to Kafka,
the form over HTTP, status back over HTTP, mail read back from the SMTP sink. Used by the demo, the
tests and the benchmark."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from aiokafka.structs import TopicPartition

from shared import topics
from shared.events import (CancellationSubmitted, ContractSigned, EventData, PaymentRecorded, WithdrawalSubmitted,
                           new_envelope)
from shared.events import CustomerErasureRequested as ErasureRequested

from . import kafka_clients
from .infra.mailsink import StoredMail, read_mail
from .kafka_clients import Target, read_topic  # noqa: F401 - the tests' and the demo's topic reader


async def request_cancel_link(intake_url: str, api_key: str, contract_id: str, ttl_days: int | None = None) -> dict:
    """{url, expires_at} from intake's POST /v1/cancel-links; InfraError with intake's reason otherwise."""
    from .infra.errors import InfraError

    body = {"contract_id": contract_id} | ({"ttl_days": ttl_days} if ttl_days else {})
    try:
        async with httpx.AsyncClient(base_url=intake_url, headers={"X-API-Key": api_key}, timeout=10) as http:
            r = await http.post("/v1/cancel-links", json=body)
    except httpx.HTTPError as exc:
        raise InfraError(f"intake at {intake_url} did not answer: {exc}") from None
    if r.status_code != 200:
        raise InfraError(f"intake refused the link ({r.status_code}): {r.text}")
    return r.json()


async def erase_customer(target: Target | None, contract_id: str, wait_s: float = 60) -> tuple[int, int, bool]:
    """Publish `customer.erasure_requested` for the contract; with `wait_s`, wait until the services that hold
    personal data (intake, notifier) have consumed it. (partition, offset, erased within wait_s)."""
    from .infra.errors import InfraError

    connection = kafka_clients.as_connection(target if target is not None else kafka_clients.connection())
    event = ErasureRequested(contract_id=contract_id, requested_at=datetime.now(timezone.utc))
    envelope = new_envelope(event, producer="operator", correlation_id=contract_id, causation_id=None)
    producer = kafka_clients.producer(connection)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topics.CONTRACTS, envelope.to_bytes(), key=contract_id.encode())
    finally:
        await producer.stop()
    if wait_s <= 0:
        return meta.partition, meta.offset, False
    admin = kafka_clients.admin(connection)
    await admin.start()
    try:
        tp, deadline = TopicPartition(topics.CONTRACTS, meta.partition), time.monotonic() + wait_s
        for group in ERASING_GROUPS:
            while (committed := (await admin.list_consumer_group_offsets(group, partitions=[tp])).get(tp)) is None \
                    or committed.offset <= meta.offset:
                if time.monotonic() > deadline:
                    raise InfraError(f"{group} has not consumed the erasure within {wait_s:g} s (it is published: "
                                     f"contracts.events[{meta.partition}]@{meta.offset}; it erases once it runs)")
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return meta.partition, meta.offset, True


# The services that keep personal data, and so act on an erasure (eligibility and billing keep none).
ERASING_GROUPS = ("intake", "notifier")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def customer(n: int | str = 1) -> dict:
    suffix = int(hashlib.sha256(str(n).encode()).hexdigest(), 16) % 10_000  # stable across runs
    return {"name": f"山田 太郎 {n}", "email": f"taro.{n}@example.jp", "phone": f"090-1234-{suffix:04d}"}


@dataclass
class PipelineClient:
    bootstrap: Target  # a KafkaConnection, or a bootstrap address with the operator's security settings
    intake_url: str
    mail_dir: Path
    api_key: str | None = None  # intake's X-API-Key (none: only calls that need no key, or signed ones)
    # Who publishes, when not the reader: on a broker with ACLs the operator reads, `upstream` writes.
    publisher: Target | None = None

    async def __aenter__(self) -> "PipelineClient":
        self.connection = kafka_clients.as_connection(self.bootstrap)
        self.producer = kafka_clients.producer(self.publisher if self.publisher is not None else self.connection)
        await self.producer.start()
        self.admin = kafka_clients.admin(self.connection)
        await self.admin.start()
        # Idle connections are dropped well before the server's keep-alive (uvicorn: 5 s, httpx's default too):
        # at equal values a request can go out on a connection the server is closing (httpx.ReadError).
        self.http = httpx.AsyncClient(base_url=self.intake_url,
                                      headers={"X-API-Key": self.api_key} if self.api_key else {}, timeout=10,
                                      limits=httpx.Limits(keepalive_expiry=2.0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.admin.close()
        await self.producer.stop()

    # --- upstream events --------------------------------------------------------------------------

    async def publish(self, data: EventData, *, key: str, correlation_id: str | None = None) -> tuple[int, int]:
        envelope = new_envelope(data, producer="upstream", correlation_id=correlation_id or key, causation_id=None)
        return await self.publish_raw(data.topic, envelope.to_bytes(), key=key)

    async def publish_raw(self, topic: str, value: bytes | None, *, key: str | None,
                          headers: list[tuple[str, bytes]] | None = None) -> tuple[int, int]:
        meta = await self.producer.send_and_wait(topic, value, key=key.encode() if key else None, headers=headers)
        return meta.partition, meta.offset

    async def redeliver(self, topic: str, contract_id: str, event_type: str, times: int,
                        consumers: tuple[str, ...]) -> None:
        """Publish the very bytes (and headers) of the contract's one `event_type` record on `topic` again, `times`
        times, as a broker redelivers it; wait until `consumers` have read past the last copy."""
        found = await read_topic(self.bootstrap, topic,
                                 lambda r: r.key == contract_id.encode() and event_type.encode() in r.value)
        assert len(found) == 1, f"{len(found)} {event_type} records for {contract_id}"
        for _ in range(times):
            where = await self.publish_raw(topic, found[0].value, key=contract_id, headers=list(found[0].headers))
        await self.wait_consumed(consumers, topic, *where)

    async def sign_contract(self, *, start_date: date, monthly_fee_jpy: int = 10_000, plan: str = "standard",
                            contract_id: str | None = None, wait: bool = True, who: int | str | None = None) -> str:
        """Publish `contract.signed` (with the customer `who`, if given) and wait until every projection has it."""
        contract_id = contract_id or unique("C")
        where = await self.publish(ContractSigned(
            contract_id=contract_id, account_id="@" + contract_id.lower(), plan=plan, monthly_fee_jpy=monthly_fee_jpy,
            start_date=start_date, customer=customer(who) if who is not None else None), key=contract_id)
        if wait:
            await self.wait_consumed(("eligibility", "billing", "intake"), topics.CONTRACTS, *where)
        return contract_id

    async def record_payment(self, contract_id: str, billing_date: date, amount_jpy: int, wait: bool = True) -> None:
        where = await self.publish(PaymentRecorded(contract_id=contract_id, billing_date=billing_date,
                                                   amount_jpy=amount_jpy), key=contract_id)
        if wait:
            await self.wait_consumed(("billing", "intake"), topics.CONTRACTS, *where)

    async def wait_consumed(self, groups: tuple[str, ...], topic: str, partition: int, offset: int,
                            timeout: float = 30) -> None:
        """Until each group has committed past `offset`: the event has had its effect."""
        tp = TopicPartition(topic, partition)
        deadline = time.monotonic() + timeout
        for group in groups:
            while True:
                committed = await self.admin.list_consumer_group_offsets(group, partitions=[tp])
                meta = committed.get(tp)
                if meta is not None and meta.offset > offset:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{group} did not consume {topic}[{partition}]@{offset} in {timeout}s")
                await asyncio.sleep(0.05)

    # --- the form ---------------------------------------------------------------------------------

    def form(self, contract_id: str, *, reason: str = "TOO_DIFFICULT", desired: date | None = None,
             who: int | str = 1, **extra: Any) -> dict:
        body = {"contract_id": contract_id, "account_id": "@" + contract_id.lower(), "customer": customer(who),
                "plan": "standard", "reason": reason, "feedback": "テスト"}
        if desired:
            body["desired_effective_date"] = desired.isoformat()
        return body | extra

    async def submit(self, form: dict, *, idempotency_key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self.http.post("/v1/cancellations", json=form, headers=headers)

    async def submit_kafka(self, form: dict, *, submission_id: str | None = None) -> str:
        submission_id = submission_id or unique("S")
        await self.publish(CancellationSubmitted(**form, submission_id=submission_id), key=form["contract_id"],
                           correlation_id=submission_id)
        return submission_id

    async def quote(self, contract_id: str, *, desired: date | None = None, reason: str | None = None) -> httpx.Response:
        params = {k: v for k, v in {"desired_effective_date": desired.isoformat() if desired else None,
                                    "reason": reason}.items() if v}
        return await self.http.get(f"/v1/contracts/{contract_id}/cancellation-quote", params=params)

    async def cancel_link(self, contract_id: str, *, ttl_days: int | None = None) -> dict:
        """A signed link to the customer's cancel page: {url, expires_at}."""
        return await request_cancel_link(self.intake_url, self.api_key, contract_id, ttl_days)

    async def status(self, request_id: str) -> dict:
        r = await self.http.get(f"/v1/cancellations/{request_id}")
        r.raise_for_status()
        return r.json()

    async def withdraw(self, request_id: str) -> httpx.Response:
        return await self.http.post(f"/v1/cancellations/{request_id}/withdraw")

    async def take_offer(self, request_id: str, offer: str) -> httpx.Response:
        return await self.http.post(f"/v1/cancellations/{request_id}/offers/{offer}/take")

    async def withdraw_kafka(self, request_id: str, contract_id: str, *, taken_offer: str | None = None,
                             submission_id: str | None = None) -> str:
        """What the call centre does: withdraw (taking an offer, or not) on `cancellation.submissions`."""
        submission_id = submission_id or unique("W")
        await self.publish(WithdrawalSubmitted(submission_id=submission_id, request_id=request_id,
                                               taken_offer=taken_offer), key=contract_id, correlation_id=submission_id)
        return submission_id

    async def wait_status(self, request_id: str, until: Callable[[dict], bool], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            r = await self.http.get(f"/v1/cancellations/{request_id}")
            if r.status_code == 200:
                last = r.json()
                if until(last):
                    return last
            await asyncio.sleep(0.1)
        raise TimeoutError(f"request {request_id} did not reach the expected state in {timeout}s; last: {last}")

    async def find_request_by_submission(self, pool, submission_id: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rid = await pool.fetchval("SELECT request_id FROM intake.requests WHERE submission_id = $1", submission_id)
            if rid:
                return rid
            await asyncio.sleep(0.1)
        raise TimeoutError(f"submission {submission_id} was not recorded in {timeout}s")

    # --- mail -------------------------------------------------------------------------------------

    def mails(self, request_id: str | None = None) -> list[StoredMail]:
        return [m for m in read_mail(self.mail_dir)
                if request_id is None or m.headers.get("X-Cancelflow-Request-Id") == request_id]

    async def wait_mails(self, request_id: str, count: int, timeout: float = 30) -> list[StoredMail]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.mails(request_id)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{count} mails for {request_id} not received in {timeout}s; got {len(self.mails(request_id))}")
