"""What every service is made of: a FastStream Kafka broker, a PostgreSQL pool in the service's own
schema, the outbox relay, background loops, and an HTTP app for health, readiness and metrics.

`build_app()` only wires objects together; nothing connects until the app starts. Start-up waits for
the database and Kafka with backoff in the background, so /health answers at once and /ready says
what the service still waits for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import metrics, topics
from shared.clock import Clock, clock_from
from shared.db import create_pool, migrate
from shared.jsonlog import configure_logging
from shared.kafka_connection import MAX_REQUEST_BYTES
from shared.messaging import inbox
from shared.messaging.consumer import BatchConsumer, Subscription
from shared.messaging.doorbell import Doorbell
from shared.messaging.lag import lag_loop
from shared.messaging.offsets import OffsetCommitter
from shared.messaging.relay import OutboxRelay
from shared.retry import until_it_works
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


BackgroundLoop = Callable[["Runtime"], Awaitable[None]]


@dataclass
class Runtime:
    """The live parts of one service process, filled in at start-up."""

    name: str
    settings: ServiceSettings
    service_dir: Path
    clock: Clock
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    relay: OutboxRelay | None = None
    doorbell: Doorbell = field(default_factory=Doorbell)  # this process's NOTIFYs, heard here at commit
    waiting_for: list[str] = field(default_factory=lambda: ["database", "kafka"])
    started: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)
    group: str = ""
    topics: tuple[str, ...] = ()
    consumers: list[BatchConsumer] = field(default_factory=list)
    committers: list[OffsetCommitter] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.name

    async def close_pool(self) -> None:
        """Close the pool, after the consumers gave back the connections they keep between batches."""
        for consumer in self.consumers:
            await consumer.close()
        if self.pool is not None:
            await self.pool.close()


class ServiceApp(AsgiFastStream):
    """An AsgiFastStream whose broker starts once its dependencies answer, serving FastAPI routes.

    The one place that adapts FastStream, for two hooks it lacks (docs/architecture.md, "Where FastStream
    is adapted"; tests/unit/test_faststream_adapter.py pins both): `AsgiFastStream` routes HTTP by whole
    path only (`asgi_routes`), with no way to mount an ASGI app (FastAPI, with path parameters) under a
    prefix, so `__call__` hands every HTTP request to FastAPI; and it starts its brokers in `_start_broker`
    right after the `on_startup` hooks, which hold up the ASGI lifespan, with no public way to start them
    once the database and Kafka answer, so that override (the one private member touched) starts them in
    the background while /health already answers.
    """

    def __init__(self, broker: KafkaBroker, runtime: Runtime, http: FastAPI,
                 background: Sequence[BackgroundLoop]) -> None:
        super().__init__(broker)
        self.runtime = runtime
        self.http = http
        self.background = tuple(background)
        self._starter: asyncio.Task | None = None

    async def run(self, log_level: int = logging.INFO, run_extra_options: dict | None = None) -> None:
        # uvicorn would install its own plain-text handlers; without them its loggers reach our JSON root.
        await super().run(log_level, {**(run_extra_options or {}), "log_config": None})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(scope, receive, send)
        else:
            await self.http(scope, receive, send)

    async def _start_broker(self) -> None:
        configure_logging(self.runtime.name, self.runtime.settings.log_level)
        self._starter = asyncio.create_task(self._start_when_ready(), name=f"{self.runtime.name}-start")

    async def _start_when_ready(self) -> None:
        rt, s = self.runtime, self.runtime.settings

        async def connect_db() -> asyncpg.Pool:
            await migrate(s.database_url, rt.schema, rt.service_dir)
            return await create_pool(s.database_url, rt.schema, max_size=s.db_pool_max, by_key=True)

        rt.pool = await until_it_works("database", connect_db)
        rt.waiting_for.remove("database")

        async def connect_kafka() -> None:
            producer = AIOKafkaProducer(
                bootstrap_servers=s.kafka_bootstrap_servers, enable_idempotence=True, acks="all",
                linger_ms=2, max_request_size=MAX_REQUEST_BYTES, client_id=f"{s.client_id or rt.name}-outbox",
                **s.kafka_client_options())
            try:
                await producer.start()
            except Exception:
                await producer.stop()
                raise
            rt.producer = producer
            for broker in self.brokers:
                await broker.start()

        await until_it_works("kafka", connect_kafka)
        rt.waiting_for.remove("kafka")
        rt.relay = OutboxRelay(pool=rt.pool, producer=rt.producer, schema=rt.schema, service=rt.name,
                               poll_ms=s.relay_poll_ms)
        rt.tasks.append(asyncio.create_task(rt.relay.run(), name=f"{rt.name}-relay"))
        rt.tasks.append(asyncio.create_task(inbox.pruning_loop(
            rt.pool, rt.clock, window=timedelta(days=s.inbox_window_days), interval_s=s.inbox_prune_interval_s,
            batch=s.inbox_prune_batch), name=f"{rt.name}-inbox-pruning"))
        for loop in self.background:
            rt.tasks.append(asyncio.create_task(loop(rt), name=f"{rt.name}-{loop.__name__}"))
        rt.tasks.append(asyncio.create_task(lag_loop(
            service=rt.name, group=rt.group, topic_names=rt.topics, bootstrap_servers=s.kafka_bootstrap_servers,
            client_options=s.kafka_client_options()), name=f"{rt.name}-lag"))
        rt.started = True
        log.info("%s started", rt.name)

    async def stop(self) -> None:
        """Stop consuming first (in-flight batches finish and commit), then drain the outbox, then close."""
        rt = self.runtime
        if self._starter and not self._starter.done():
            self._starter.cancel()
        for committer in rt.committers:  # what finished so far; batches finishing later commit at once
            await committer.close()
        for broker in self.brokers:
            await broker.stop()
        for task in rt.tasks:  # the relay too: what it has not published is in the table
            task.cancel()
        await asyncio.gather(*rt.tasks, return_exceptions=True)
        if rt.relay is not None:
            try:
                await asyncio.wait_for(rt.relay.drain(), timeout=5)
            except Exception as exc:  # noqa: BLE001 - what is left is published on the next start
                log.warning("outbox not drained at shutdown: %s", exc)
        if rt.producer is not None:
            await rt.producer.stop()
        await rt.close_pool()
        rt.started = False


def health_routes(runtime: Runtime) -> FastAPI:
    app = FastAPI(title=f"cancelflow {runtime.name}", version="1")

    @app.get("/health", tags=["operations"], summary="Liveness: the process answers")
    async def health() -> dict:
        return {"service": runtime.name, "status": "ok", "started": runtime.started,
                "waiting_for": list(runtime.waiting_for)}

    @app.get("/ready", tags=["operations"], summary="Readiness: database and Kafka reachable",
             responses={503: {"description": "Not ready: `waiting_for` names what it waits for",
                              "content": {"application/json": {}}}})
    async def ready() -> Response:
        problems = list(runtime.waiting_for)
        if runtime.pool is not None and "database" not in problems:
            try:
                await asyncio.wait_for(runtime.pool.fetchval("SELECT 1"), 2)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                problems.append(f"database: {type(exc).__name__}")
        if runtime.producer is not None and "kafka" not in problems:
            try:
                await asyncio.wait_for(runtime.producer.client.fetch_all_metadata(), 2)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                problems.append(f"kafka: {type(exc).__name__}")
        body = {"service": runtime.name, "ready": not problems and runtime.started, "waiting_for": problems}
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format"}})
    async def prometheus() -> Response:
        if runtime.relay is not None and runtime.pool is not None:
            try:
                metrics.OUTBOX_BACKLOG.labels(runtime.name).set(await runtime.relay.backlog())
            except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
                pass
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def build_app(*, name: str, settings: ServiceSettings, service_dir: Path,
              subscriptions: Callable[[Runtime], Sequence[Subscription]],
              http: Callable[[Runtime, FastAPI], None] | None = None,
              background: Sequence[BackgroundLoop] = ()) -> ServiceApp:
    configure_logging(name, settings.log_level)
    runtime = Runtime(name=name, settings=settings, service_dir=service_dir, clock=clock_from(settings.clock_file),
                      group=settings.consumer_group or name)
    # FastStream's "Received"/"Processed" line per batch only at DEBUG: two log writes per batch add up
    # at low rates (one record per batch), and the metrics say the same.
    # Nothing is published through FastStream (the outbox relay publishes); its producer is as safe anyway.
    broker = KafkaBroker(settings.kafka.servers, client_id=settings.client_id or name,
                         logger=logging.getLogger(f"{name}.kafka"), log_level=logging.DEBUG,
                         acks="all", enable_idempotence=True,
                         **settings.kafka.broker_kwargs())
    for sub in subscriptions(runtime):
        runtime.topics += tuple(sub.topics)
        consumer = BatchConsumer(runtime, sub)
        runtime.consumers.append(consumer)
        committer = OffsetCommitter(settings.commit_interval_ms / 1000)
        runtime.committers.append(committer)
        _subscribe(broker, consumer, committer, group_id=settings.consumer_group or name,
                   max_records=settings.batch_max_records,
                   collect_ms=max(sub.collect_ms, settings.batch_collect_ms))
    app_http = health_routes(runtime)
    if http is not None:
        http(runtime, app_http)
    return ServiceApp(broker, runtime, app_http, background)


async def _undecoded(message: KafkaMessage) -> KafkaMessage:
    """The handler gets the message itself as its body: no JSON decoding of each record by FastStream (the
    consumer decodes them itself) and no context injection, which FastStream resolves on a worker thread."""
    return message


def consumer_description(group_id: str, consumer: BatchConsumer) -> str:
    """What the AsyncAPI document says of a subscriber."""
    kinds = ", ".join(f"`{t}`" for t in consumer.handlers)
    dlqs = ", ".join(f"`{topics.dlq(t)}`" for t in consumer.topics)
    return (f"Consumer group `{group_id}` (batches, one PostgreSQL transaction each, offsets committed after it). "
            f"Handles {kinds}; other event types are recorded in the inbox and skipped. A record that cannot be "
            f"parsed or handled goes to {dlqs} with the reason in headers.")


def fetch_options(collect_ms: int) -> dict:
    """The consumer's fetch settings: with collect_ms, the broker holds each fetch until 1 MiB or collect_ms, so
    a batch gathers what came meanwhile; without, a batch goes as soon as a record arrives."""
    collecting = {"fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": collect_ms} if collect_ms else {}
    return {"batch_timeout_ms": max(50, collect_ms), **collecting}


def _subscribe(broker: KafkaBroker, consumer: BatchConsumer, committer: OffsetCommitter, *, group_id: str,
               max_records: int, collect_ms: int = 0) -> None:
    @broker.subscriber(
        *consumer.topics, group_id=group_id, batch=True, max_records=max_records, **fetch_options(collect_ms),
        auto_offset_reset="earliest", ack_policy=AckPolicy.MANUAL, listener=committer,
        max_poll_interval_ms=300_000, session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
        title=f"{group_id}:{'+'.join(consumer.topics)}", description=consumer_description(group_id, consumer),
        decoder=_undecoded,
    )
    async def on_batch(message: Any) -> None:
        raw = message.raw_message
        records = raw if isinstance(raw, (tuple, list)) else (raw,)
        try:
            await consumer.handle_batch(records)
        except BaseException:
            await message.nack()  # rewind: the same records come again
            raise
        # Offsets only after the database commit; the committer sends them within commit_interval_ms.
        await committer.processed(message, records)
