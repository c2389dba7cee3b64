#!/usr/bin/env python
"""The consumer path alone: each service's batches (decode, inbox, batch read, handlers, deferred writes,
outbox) against a real PostgreSQL, without Kafka, the relay or SMTP.

    .venv/bin/python bench/consumer_path.py                # 2,000 requests, batches of 500
    .venv/bin/python bench/consumer_path.py --requests 4000 --database-url postgresql://...

It drives `create_app(...)`'s own consumers (`runtime.consumers[i].handle_batch(records)`) with the records a
pipeline run would bring them, in the same order and batch sizes, so it measures exactly the code between
FastStream and PostgreSQL. Its figures, per service: records handled per second (wall) and the process's CPU
microseconds per record (`time.process_time`, what the service itself spends; far less disturbed by a busy
machine than wall time). Without `--database-url` it starts a PostgreSQL of its own in a temporary
directory (the project's embedded one) and stops it at the end. Every run uses a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path


@dataclass
class Record:
    """What the consumer reads of an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple = ()


def _records(events: list, offsets: dict) -> list[Record]:
    from shared.events import new_envelope

    out = []
    for data, key in events:
        offset = offsets.get(data.topic, 0)
        offsets[data.topic] = offset + 1
        envelope = new_envelope(data, producer="bench", correlation_id=getattr(data, "request_id", "x"),
                                causation_id=None)
        out.append(Record(data.topic, 0, offset, key.encode(), envelope.to_bytes()))
    return out


def workload(n: int) -> dict[str, list[tuple[int, list]]]:
    """Per service: (consumer index, events) phases, as a pipeline run hands them over."""
    from shared.events import (CancellationAccepted, CancellationRequested, CancellationSubmitted, ChargeLine,
                               ContractSigned, NotificationSent, SettlementIssued)

    now = datetime.now(timezone.utc)
    today = now.date()
    customer = {"name": "山田 太郎", "email": "taro@example.jp", "phone": "090-1234-5678"}
    contracts = [f"B-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    requests = [f"R-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    form = dict(account_id="@bench", plan="pro", reason="TOO_DIFFICULT", customer=customer, feedback="")
    signed = [ContractSigned(contract_id=c, account_id="@bench", plan="pro", monthly_fee_jpy=9800,
                             start_date=date(2020, 1, 31)) for c in contracts]
    submitted = [CancellationSubmitted(submission_id=f"S-{r}", contract_id=c, **form)
                 for c, r in zip(contracts, requests)]
    requested = [CancellationRequested(request_id=r, contract_id=c, source="kafka", submission_id=f"S-{r}",
                                       received_at=now, received_on=today, **form)
                 for c, r in zip(contracts, requests)]
    effective = today + timedelta(days=45)
    accepted = [CancellationAccepted(request_id=r, contract_id=c, effective_date=effective,
                                     first_anniversary=date(2021, 1, 31), offers=("guided_training",),
                                     received_on=today, reason="TOO_DIFFICULT", decided_at=now)
                for c, r in zip(contracts, requests)]
    settled = [SettlementIssued(request_id=r, contract_id=c, charges=(ChargeLine(billing_date=today, amount_jpy=9800),),
                                total_jpy=9800, paid_through=effective) for c, r in zip(contracts, requests)]
    sent = [(NotificationSent(request_id=r, kind=k, recipient="t***@example.jp", sent_at=now, due_at=now), c)
            for c, r in zip(contracts, requests)
            for k in ("acknowledgement", "data_export_reminder", "rich_menu_reminder")]

    def keyed(events: list) -> list:
        return [(e, e.contract_id) for e in events]

    signed, submitted, requested, accepted, settled = (keyed(x) for x in (signed, submitted, requested, accepted,
                                                                          settled))
    return {
        "intake": [(0, submitted), (1, accepted + settled + sent)],
        "eligibility": [(0, signed), (0, requested)],
        "billing": [(0, signed), (0, accepted)],
        "notifier": [(0, requested), (0, accepted + settled)],
    }


SETTINGS = {"intake": ("services.intake.app", "services.intake.settings", "IntakeSettings"),
            "eligibility": ("services.eligibility.app", "services.eligibility.settings", "EligibilitySettings"),
            "billing": ("services.billing.app", "services.billing.settings", "BillingSettings"),
            "notifier": ("services.notifier.app", "services.notifier.settings", "NotifierSettings")}


async def run_service(name: str, url: str, phases: list[tuple[int, list]], batch: int) -> dict:
    import importlib
    import logging

    from shared.db import create_pool, migrate

    app_mod, settings_mod, settings_cls = SETTINGS[name]
    settings = getattr(importlib.import_module(settings_mod), settings_cls)(
        database_url=url, kafka_bootstrap_servers="127.0.0.1:9", log_level="WARNING")
    app = importlib.import_module(app_mod).create_app(settings)
    logging.getLogger().setLevel(logging.WARNING)
    rt = app.runtime
    await migrate(url, rt.schema, rt.service_dir)
    rt.pool = await create_pool(url, rt.schema)
    offsets: dict = {}
    wall = cpu = 0.0
    handled = 0
    try:
        for index, events in phases:
            consumer = rt.consumers[index]
            records = _records(events, offsets)
            for i in range(0, len(records), batch):
                chunk = records[i:i + batch]
                w, c = time.perf_counter(), time.process_time()
                await consumer.handle_batch(chunk)
                wall += time.perf_counter() - w
                cpu += time.process_time() - c
                handled += len(chunk)
        outbox = await rt.pool.fetchval("SELECT count(*) FROM outbox")
        dead = await rt.pool.fetchval("SELECT count(*) FROM outbox WHERE topic LIKE '%.dlq'")
    finally:
        await rt.close_pool()
    if dead:
        raise RuntimeError(f"{name}: {dead} records dead-lettered: the workload does not fit the code")
    return {"records": handled, "records_per_s": round(handled / wall), "cpu_us_per_record": round(1e6 * cpu / handled, 1),
            "outbox_rows": outbox}


async def main_async(args: argparse.Namespace) -> dict:
    import asyncpg

    node = proc = None
    url = args.database_url
    tmp = Path(tempfile.mkdtemp(prefix="cancelflow-consumer-bench-"))
    if url is None:
        from cancelflow.infra.ports import free_port
        from cancelflow.infra.postgres import PostgresNode, wait_ready

        node = PostgresNode(tmp / "postgres", free_port())
        node.data_dir.mkdir(parents=True)
        proc = node.start(tmp / "postgres.log")
        await wait_ready(node.admin_url)
        url = node.admin_url
    try:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        db_url = url.rsplit("/", 1)[0] + "/" + name
        phases = workload(args.requests)
        results = {}
        for service in ("intake", "eligibility", "billing", "notifier"):
            results[service] = await run_service(service, db_url, phases[service], args.batch)
        return results
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500, help="records per batch (batch_max_records)")
    parser.add_argument("--database-url", help="an existing PostgreSQL (admin URL); else one is started")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results))
        return
    print("| service | records | records/s | CPU µs per record | outbox rows |\n|---|---|---|---|---|")
    for service, r in results.items():
        print(f"| {service} | {r['records']} | {r['records_per_s']} | {r['cpu_us_per_record']} | {r['outbox_rows']} |")


if __name__ == "__main__":
    main()
