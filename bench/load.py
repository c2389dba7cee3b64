"""The pipeline bench's load: the messages it sends (each request its own contract, signed beforehand, old
enough to be accepted) and the open-loop driver that sends them on a fixed schedule or all at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import date, datetime, timedelta, timezone

from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from cancelflow import kafka_clients  # the project's one Kafka client factory


START_DATE = date(2020, 1, 31)  # first anniversary long past: every request is accepted


def customer(n: int) -> dict:
    return {"name": f"山田 太郎 {n}", "email": f"taro.{n}@example.jp", "phone": f"090-1234-{n % 10000:04d}"}


def form(contract_id: str, n: int) -> dict:
    return {"contract_id": contract_id, "account_id": "@" + contract_id.lower(), "customer": customer(n),
            "plan": "standard", "reason": "SWITCHING_TOOL", "feedback": "ベンチマーク"}


def submission(contract_id: str, n: int) -> tuple[str, bytes]:
    from shared.events import CancellationSubmitted, new_envelope

    sid = f"S-{uuid.uuid4().hex[:16]}"
    env = new_envelope(CancellationSubmitted(**form(contract_id, n), submission_id=sid), producer="bench",
                       correlation_id=sid, causation_id=None)
    return sid, env.to_bytes()


def pipeline_message_sizes() -> list[int]:
    """Bytes of each hop's event as the pipeline writes it: submitted, requested, accepted, settlement, sent."""
    from shared.events import (CancellationAccepted, CancellationRequested, ChargeLine, NotificationSent,
                               SettlementIssued, new_envelope)
    from shared.vocabulary import NotificationKind, Offer

    now = datetime.now(timezone.utc)
    rid, cid = str(uuid.uuid4()), "C-" + uuid.uuid4().hex[:12]
    events = [
        CancellationRequested(**form(cid, 1), request_id=rid, source="kafka", submission_id="S-" + uuid.uuid4().hex[:16],
                              received_at=now, received_on=now.date()),
        CancellationAccepted(request_id=rid, contract_id=cid, effective_date=now.date() + timedelta(days=45),
                             first_anniversary=START_DATE.replace(year=2021), offers=(Offer.consultation, Offer.discount),
                             received_on=now.date(), reason="SWITCHING_TOOL", decided_at=now),
        SettlementIssued(request_id=rid, contract_id=cid, charges=(
            ChargeLine(billing_date=now.date(), amount_jpy=10_000),
            ChargeLine(billing_date=now.date() + timedelta(days=30), amount_jpy=10_000)),
            total_jpy=20_000, paid_through=now.date() + timedelta(days=60)),
        NotificationSent(request_id=rid, kind=NotificationKind.acknowledgement, recipient="t***@example.jp",
                         sent_at=now, due_at=now),
    ]
    sizes = [len(submission(cid, 1)[1])]
    sizes += [len(new_envelope(e, producer="svc", correlation_id=rid, causation_id=str(uuid.uuid4())).to_bytes())
              for e in events]
    return sizes


async def sign_contracts(bootstrap: str, contract_ids: list[str]) -> None:
    from shared import topics
    from shared.events import ContractSigned, new_envelope

    producer = kafka_clients.producer(bootstrap, linger_ms=5)
    admin = kafka_clients.admin(bootstrap)
    await producer.start()
    await admin.start()
    try:
        futures = []
        for cid in contract_ids:
            env = new_envelope(ContractSigned(contract_id=cid, account_id="@" + cid.lower(), plan="standard",
                                              monthly_fee_jpy=10_000, start_date=START_DATE),
                               producer="bench", correlation_id=cid, causation_id=None)
            futures.append(await producer.send(topics.CONTRACTS, env.to_bytes(), key=cid.encode()))
        metas = await asyncio.gather(*futures)
        last: dict[TopicPartition, int] = {}
        for m in metas:
            tp = TopicPartition(m.topic, m.partition)
            last[tp] = max(last.get(tp, -1), m.offset)
        deadline = time.monotonic() + 300
        for group in ("eligibility", "billing"):
            while True:
                committed = await admin.list_consumer_group_offsets(group, partitions=list(last))
                if all(committed.get(tp) is not None and committed[tp].offset > off for tp, off in last.items()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{group} did not consume the contracts")
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await producer.stop()


async def drive(producer: AIOKafkaProducer, topic: str, messages: list[tuple[str, bytes, bytes]],
                rate: float | None) -> dict[str, float]:
    """Send (sid, key, value) on an open-loop schedule (`rate` per second) or all at once; sid -> sent at."""
    sent: dict[str, float] = {}
    futures = []
    start = time.monotonic()
    for i, (sid, key, value) in enumerate(messages):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
        sent[sid] = time.time()
        futures.append(await producer.send(topic, value, key=key))
    await asyncio.gather(*futures)
    return sent
