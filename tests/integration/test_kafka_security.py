"""A secured Kafka cluster, as the services and the operators meet it: a real broker that requires
SASL/SCRAM-SHA-512, one that speaks TLS with a CA of its own, and the whole stack started with
`cancelflow up --security scram`. Every client is built from one `KafkaConnection`: the services' outbox
producer and FastStream broker, and every operator command (trace, tail, dlq list|replay, top, report) with
`cancelflow.client` feeding them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from cancelflow import stack_security
from cancelflow.client import PipelineClient
from cancelflow.infra import kafka
from cancelflow.infra.certificates import make_ca_and_broker_cert
from cancelflow.infra.ports import free_port_block
from services.eligibility.domain import in_holdout
from shared import topics
from shared.events import CancellationAccepted, CancellationRequested, ContractSigned, new_envelope
from shared.kafka_connection import KafkaConnection
from shared.settings import ServiceSettings
from shared.vocabulary import SERVICES

pytestmark = pytest.mark.integration

SCRAM_USER = ("cancelflow", "s3cret")


def _broker(prefix: str, **security) -> tuple[kafka.KafkaNode, subprocess.Popen, Path]:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if security.get("tls") == "make":
        security["tls"] = make_ca_and_broker_cert(root / "certs")
    node, proc = kafka.start_node(lambda port, controller: kafka.KafkaNode(
        root / "kafka", port, controller, heap_mb=256, partitions=2, **security), root / "kafka.log")
    return node, proc, root


@pytest.fixture(scope="module")
def scram_broker():
    node, proc, root = _broker("cancelflow-sasl-", scram_user=SCRAM_USER)
    try:
        yield node
    finally:
        kafka.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_broker():
    node, proc, root = _broker("cancelflow-tls-", tls="make")
    try:
        yield node
    finally:
        kafka.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _scram(node, password: str = SCRAM_USER[1]) -> ServiceSettings:
    return ServiceSettings(KAFKA_BOOTSTRAP_SERVERS=node.bootstrap, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                           KAFKA_SASL_MECHANISM="SCRAM-SHA-512", KAFKA_SASL_USERNAME=SCRAM_USER[0],
                           KAFKA_SASL_PASSWORD=password)


def _tls(node, cafile: Path | None) -> ServiceSettings:
    return ServiceSettings(KAFKA_BOOTSTRAP_SERVERS=node.bootstrap, KAFKA_SECURITY_PROTOCOL="SSL",
                           **({"KAFKA_SSL_CAFILE": str(cafile)} if cafile else {}))


async def _round_trip_through_service_clients(settings: ServiceSettings, payload: bytes) -> None:
    """Create a topic, consume it with a FastStream broker and produce to it with the outbox's client
    options, all built from `settings` as the services build them."""
    conn = settings.kafka
    await kafka.wait_ready(conn.bootstrap_servers, 90, **conn.client_options())
    topic = f"secure-{uuid.uuid4().hex[:6]}"
    await kafka.create_topics(conn.bootstrap_servers, (topic,), 1, **conn.client_options())
    broker = KafkaBroker(conn.bootstrap_servers, **conn.broker_kwargs())
    received: asyncio.Queue = asyncio.Queue()

    @broker.subscriber(topic, group_id=f"{topic}-group", auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        await received.put(body)

    await broker.start()
    producer = AIOKafkaProducer(**conn.client_kwargs())
    await producer.start()
    await producer.send_and_wait(topic, payload)
    await producer.stop()
    try:
        assert await asyncio.wait_for(received.get(), 30) == payload
    finally:
        await broker.stop()


async def test_services_talk_scram_when_configured_and_are_refused_with_a_wrong_password(scram_broker):
    await _round_trip_through_service_clients(_scram(scram_broker), b"over scram")

    bad = AIOKafkaProducer(**_scram(scram_broker, "wrong").kafka.client_kwargs())
    with pytest.raises(KafkaError):
        await bad.start()
    await bad.stop()


async def test_services_talk_tls_with_the_configured_ca_and_refuse_an_unknown_one(tls_broker):
    ca = Path(tls_broker.tls[1])
    await _round_trip_through_service_clients(_tls(tls_broker, ca), b"over tls")

    stranger = AIOKafkaProducer(request_timeout_ms=5000, **_tls(tls_broker, None).kafka.client_kwargs())
    with pytest.raises(KafkaError):
        await stranger.start()
    await stranger.stop()


def test_the_password_is_a_secret_and_never_printed():
    settings = _scram(kafka.KafkaNode(Path("/nonexistent"), 1, 2))
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(settings.kafka)
    assert "s3cret" not in settings.kafka.describe()
    assert settings.kafka.client_options()["sasl_plain_password"] == "s3cret"
    assert settings.kafka.env()["KAFKA_SASL_PASSWORD"] == "s3cret"


# --- every operator command on a secured broker ---------------------------------------------------------

async def cancelflow(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`cancelflow ARGS` in its own process with exactly these Kafka settings in its environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cancelflow.cli", *args, env=base | {"COLUMNS": "250", "NO_COLOR": "1"} | env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    result = subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())
    if ok:
        assert result.returncode == 0, f"cancelflow {' '.join(args)}: {result.stdout[-1500:]} {result.stderr[-1500:]}"
    return result


@pytest.fixture(params=["scram", "tls"])
def secured(request, tmp_path) -> tuple[KafkaConnection, dict[str, str]]:
    """(the connection, the environment an operator sets), for each kind of secured broker; no local stack
    (CANCELFLOW_STACK_DIR is empty) so the commands can only know the security from the environment."""
    if request.param == "scram":
        conn = _scram(request.getfixturevalue("scram_broker")).kafka
    else:
        node = request.getfixturevalue("tls_broker")
        conn = _tls(node, Path(node.tls[1])).kafka
    return conn, conn.env() | {"CANCELFLOW_STACK_DIR": str(tmp_path / "no-stack")}


async def test_every_operator_command_works_on_a_secured_broker(secured, tmp_path):
    conn, env = secured
    await kafka.create_topics(conn.bootstrap_servers, topics.all_with_dlq(), 2, **conn.client_options())
    contract, rid, consumer = f"C-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), f"sec-{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    async with PipelineClient(conn, "http://127.0.0.1:9", tmp_path / "mail") as client:
        await client.publish(ContractSigned(contract_id=contract, account_id="@acc", plan="standard",
                                            monthly_fee_jpy=1000, start_date=date(2024, 1, 31)), key=contract)
        form = client.form(contract, reason="SWITCHING_TOOL", who="sec")
        requested = new_envelope(CancellationRequested(
            **form, request_id=rid, source="http", received_at=now, received_on=now.date()),
            producer="intake", correlation_id=rid, causation_id=None)
        await client.publish_raw(topics.REQUESTS, requested.to_bytes(), key=contract)
        accepted = new_envelope(CancellationAccepted(
            request_id=rid, contract_id=contract, effective_date=now.date() + timedelta(days=60),
            first_anniversary=date(2025, 1, 31), offers=("consultation",), reason="SWITCHING_TOOL",
            decided_at=now), producer="eligibility", correlation_id=rid, causation_id=str(requested.event_id))
        await client.publish_raw(topics.DECISIONS, accepted.to_bytes(), key=contract)
        await client.publish_raw(topics.dlq(topics.SUBMISSIONS), b"{not json", key=contract, headers=[
            ("dlq.reason", b"value: not JSON"), ("dlq.source.topic", topics.SUBMISSIONS.encode()),
            ("dlq.source.partition", b"0"), ("dlq.source.offset", b"7"), ("dlq.consumer", consumer.encode())])

    trace = await cancelflow(env, "trace", rid, "--json")
    assert [json.loads(line)["event_type"] for line in trace.stdout.splitlines()] == [
        "cancellation.requested", "cancellation.accepted"]

    tail = await cancelflow(env, "tail", topics.REQUESTS, "--from-beginning", "--limit", "1")
    assert rid in tail.stdout and "taro.sec@example.jp" not in tail.stdout

    listed = await cancelflow(env, "dlq", "list", topics.SUBMISSIONS, "--consumer", consumer, "--json")
    assert [(d["consumer"], d["reason"], d["replayed"]) for d in map(json.loads, listed.stdout.splitlines())] == [
        (consumer, "value: not JSON", False)]
    replayed = await cancelflow(env, "dlq", "replay", topics.SUBMISSIONS, "--consumer", consumer)
    assert replayed.stdout.strip().splitlines()[-1] == "1 replayed"

    top = await cancelflow(env, "top", "--once", "--interval", "0.2")
    assert conn.bootstrap_servers in top.stdout and "dead letters: 1 " in top.stdout

    page = tmp_path / "report.html"
    report = await cancelflow(env, "report", "--html", str(page))
    assert "accepted cancellations" in report.stdout and "Cancellations report" in page.read_text()

    # Without the security settings the same command cannot get in: the settings are what made it work.
    plain = await cancelflow({"KAFKA_BOOTSTRAP_SERVERS": conn.bootstrap_servers,
                              "CANCELFLOW_STACK_DIR": env["CANCELFLOW_STACK_DIR"]}, "trace", rid, ok=False)
    assert plain.returncode != 0


# --- the whole stack, secured ------------------------------------------------------------------------------

def test_the_stack_runs_with_scram_and_a_cancellation_goes_through(tmp_path):
    """`cancelflow up --security scram`: its KAFKA_* lines are all an operator needs (`env $(...)`)."""
    stack_dir = tmp_path / "stack"
    cli = [sys.executable, "-m", "cancelflow.cli"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_URL", "INTAKE_"))}
    base_env |= {"CANCELFLOW_STACK_DIR": str(stack_dir), "NO_COLOR": "1",
                 "COLUMNS": "200"}
    for attempt in range(3):  # another process may take one of the chosen ports before the stack binds it
        env = base_env | {"CANCELFLOW_PORT_BASE": str(free_port_block(8))}
        up = subprocess.run([*cli, "up", "--detach", "--security", "scram"], env=env, capture_output=True,
                            text=True, timeout=300)
        if up.returncode == 0 or "busy" not in up.stdout and "bind" not in up.stdout.lower():
            break
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        settings = dict(line.split("=", 1) for line in up.stdout.splitlines())  # nothing but KEY=value lines
        assert settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert settings["KAFKA_SASL_USERNAME"] == "operator"  # the printed settings are the operator's
        assert settings["KAFKA_SASL_PASSWORD"] and (stack_dir / "security" / "principals.json").stat().st_mode & 0o777 == 0o600
        assert settings["INTAKE_API_KEY"] and settings["INTAKE_WEBHOOK_SECRET"]
        server = (stack_dir / "kafka" / "server.properties").read_text()
        assert "listeners=SASL_PLAINTEXT://" in server and "PLAINTEXT://127" not in server.replace(
            "SASL_PLAINTEXT://", "")

        upstream = stack_security.connection("scram", settings["KAFKA_BOOTSTRAP_SERVERS"], stack_dir / "security",
                                             stack_security.UPSTREAM)
        # `cancelflow up` holds out 10 % of the contracts by default (SPEC section 6): the one signed here is not.
        holdout = json.loads((stack_dir / "stack.json").read_text())["offer_holdout_percent"]
        assert holdout == 10
        rid = asyncio.run(_one_cancellation(KafkaConnection.model_validate(settings), upstream, settings, holdout))
        trace = subprocess.run([*cli, "trace", rid, "--json"], env=base_env | settings, capture_output=True,
                               text=True, timeout=120)
        assert trace.returncode == 0, trace.stdout + trace.stderr
        kinds = [json.loads(line)["event_type"] for line in trace.stdout.splitlines()]
        assert kinds[:2] == ["cancellation.requested", "cancellation.accepted"] and "settlement.issued" in kinds

        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "Kafka security: SASL_PLAINTEXT as operator (SCRAM-SHA-512)" in status.stdout
        pids = json.loads((stack_dir / "stack.json").read_text())["pids"]
        for name in SERVICES:  # each service connects as itself, with its own password
            environ = psutil.Process(pids[name]).environ()
            assert environ["KAFKA_SASL_USERNAME"] == name
            assert environ["KAFKA_SASL_PASSWORD"] not in (settings["KAFKA_SASL_PASSWORD"], "")
    finally:
        subprocess.run([*cli, "down"], env=base_env, capture_output=True, text=True, timeout=120)


async def _one_cancellation(conn: KafkaConnection, upstream: KafkaConnection, settings: dict[str, str],
                            holdout_percent: int) -> str:
    """Upstream signs the contract (as `upstream`), the customer cancels over HTTP with the generated key, the
    operator reads the result back (as `operator`)."""
    intake_url = settings["INTAKE_URL"]
    async with PipelineClient(conn, intake_url, Path(settings["MAIL_DIR"]), api_key=settings["INTAKE_API_KEY"],
                              publisher=upstream) as client:
        contract = next(c for c in (f"C-{uuid.uuid4().hex[:12]}" for _ in range(1000))
                        if not in_holdout(c, holdout_percent))
        await client.sign_contract(start_date=date(2024, 1, 31), contract_id=contract)
        r = await client.submit(client.form(contract, reason="TOO_DIFFICULT"))
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]
        view = await client.wait_status(rid, lambda s: s["status"] == "accepted" and s["settlement"] is not None,
                                        timeout=60)
        assert view["offers"] == ["guided_training"]
        assert httpx.get(intake_url + "/ready").status_code == 200
        return rid
