"""Reliability without a chaos run: poison edge cases, duplicates, late events, fuzzed HTTP, start-up
while a dependency is down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import schemathesis

from cancelflow.client import read_topic
from cancelflow.infra.ports import free_port
from cancelflow.infra.postgres import PostgresNode, create_database, wait_ready
from shared import topics
from shared.events import CancellationSubmitted, PaymentRecorded, new_envelope

pytestmark = pytest.mark.integration
OLD_START = date(2024, 1, 31)


async def test_huge_message_is_dead_lettered_and_the_consumer_goes_on(client, infra, db):
    contract = await client.sign_contract(start_date=OLD_START)
    sid = f"S-huge-{uuid.uuid4().hex[:8]}"
    # A valid submission, then a feedback the field (4,000 characters) refuses, set without validation; its
    # other fields stay typed, so serializing it warns of nothing (a warning would print the customer).
    valid = CancellationSubmitted.model_validate(client.form(contract) | {"submission_id": sid})
    huge = new_envelope(valid.model_copy(update={"feedback": "x" * 900_000}), producer="t",
                        correlation_id=sid, causation_id=None).to_bytes()
    assert len(huge) > 900_000
    await client.publish_raw(topics.SUBMISSIONS, huge, key=contract)
    after = await client.submit_kafka(client.form(contract))
    rid = await client.find_request_by_submission(db, after)
    assert (await client.wait_status(rid, lambda s: s["status"] != "received"))["status"] == "accepted"
    dead = await read_topic(infra.bootstrap, topics.dlq(topics.SUBMISSIONS), lambda r: r.key == contract.encode())
    assert [len(r.value) for r in dead] == [len(huge)]
    assert "data.feedback" in dict(dead[0].headers)["dlq.reason"].decode()
    assert await db.fetchval("SELECT count(*) FROM intake.requests WHERE submission_id = $1", sid) == 0


async def test_payments_out_of_order_and_twice_are_one_ledger(client, db):
    """Payments arrive late, in reverse order and twice: the ledger keys them by billing date."""
    from shared.contract_calendar import add_months, tokyo_date
    from datetime import datetime, timezone

    contract = await client.sign_contract(start_date=OLD_START, monthly_fee_jpy=7_000)
    today = tokyo_date(datetime.now(timezone.utc))
    due = [b for b in (add_months(OLD_START, n) for n in range(60)) if today <= b < today + timedelta(days=45)]
    for billing_date in [*reversed(due), *due]:
        await client.record_payment(contract, billing_date, 7_000, wait=False)
    await client.record_payment(contract, due[0], 7_000)
    assert await db.fetchval("SELECT count(*) FROM billing.payments WHERE contract_id = $1", contract) == len(due)
    rid = (await client.submit(client.form(contract))).json()["request_id"]
    s = await client.wait_status(rid, lambda s: s["settlement"] is not None)
    assert s["settlement"]["charges"] == [] and s["settlement"]["total_jpy"] == 0


async def test_a_redelivered_decision_has_no_second_effect(client, infra, db):
    """Replay the very bytes of a cancellation.accepted: no second settlement, no second e-mail."""
    contract = await client.sign_contract(start_date=OLD_START)
    rid = (await client.submit(client.form(contract))).json()["request_id"]
    await client.wait_status(rid, lambda s: s["settlement"] is not None and len(s["notifications"]) >= 3)
    await client.redeliver(topics.DECISIONS, contract, "cancellation.accepted", 3, ("billing", "notifier", "intake"))
    await asyncio.sleep(1.0)
    settlements = await read_topic(infra.bootstrap, topics.SETTLEMENTS, lambda r: r.key == contract.encode())
    assert len(settlements) == 1
    assert len(client.mails(rid)) == 3
    assert await db.fetchval("SELECT count(*) FROM notifier.notifications WHERE request_id = $1", rid) == 7


def _intake_openapi() -> dict:
    """intake's OpenAPI document, built without connecting to anything (as `create_app` does)."""
    from fastapi import FastAPI
    from pathlib import Path

    from services.intake.api import install
    from services.intake.settings import IntakeSettings
    from shared.clock import SystemClock
    from shared.service import Runtime, health_routes

    runtime = Runtime(name="intake", settings=IntakeSettings(api_keys="openapi-only"), service_dir=Path("."), clock=SystemClock())
    app: FastAPI = health_routes(runtime)
    install(runtime, app)
    return app.openapi()


# Every check runs; the one widened expectation and its reason are in this file.
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
intake_schema = schemathesis.openapi.from_dict(_intake_openapi(),
                                               config=schemathesis.Config.from_path(SCHEMATHESIS_CONFIG))


@intake_schema.parametrize()
@pytest.mark.filterwarnings("ignore")
def test_http_api_fuzzed_from_its_openapi_never_answers_500(case, client, infra):
    """Schemathesis generates valid and invalid requests for every operation and runs every check on the
    answer: never a 5xx, and status, content type, headers and body as the OpenAPI documents them."""
    case.call_and_validate(base_url=infra.intake_url, headers={"X-API-Key": client.api_key}, timeout=10)


def test_http_api_passes_every_schemathesis_check_in_every_phase(client, infra, tmp_path):
    """`schemathesis run -c all` against the live API, as an upstream team would run it: examples,
    coverage (incl. unsupported methods and their Allow header), fuzzing and stateful phases, zero failures.
    A fixed seed makes a failure reproducible (`st replay`); the report lands in the test's tmp dir.
    Bounded by work (-n), not by time: a --max-time budget was spent on a loaded machine before the first
    request, and schemathesis then ends "Empty test suite" with exit code 0."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "--no-color", "--config-file", str(SCHEMATHESIS_CONFIG),
         "run", f"{infra.intake_url}/openapi.json", "-H", f"X-API-Key: {client.api_key}", "-c", "all",
         "-n", "10", "--seed", "20261201", "--request-timeout", "10",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=540, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Empty test suite" not in done.stdout and " passed" in done.stdout, done.stdout[-2000:]


def _start_service(name: str, env: dict, port: int, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "faststream", "run", f"services.{name}.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)


async def _ready(port: int) -> tuple[int, dict]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{port}/ready", timeout=2)
        return r.status_code, r.json()


async def _wait(predicate, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            if await predicate():
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("condition not met")


async def test_service_started_while_database_and_kafka_are_down_becomes_ready_when_they_return(infra, tmp_path):
    """The health endpoint says what it waits for; backoff until PostgreSQL, then Kafka, answer."""
    pg_port, kafka_port, http_port = free_port(), free_port(), free_port()
    # One broker of the stack's (the compose cluster overlay gives three): the client finds the others in
    # the metadata it answers.
    kafka_host, kafka_real_port = infra.bootstrap.split(",")[0].rsplit(":", 1)
    env = os.environ | {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg_port}/cancelflow",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
        # Its own group and database: it must not take partitions from the stack's billing.
        "BILLING_CONSUMER_GROUP": f"billing-startup-{uuid.uuid4().hex[:6]}",
    }
    log = open(tmp_path / "billing.log", "wb")
    proc = _start_service("billing", env, http_port, log)
    pg = None
    proxy = None
    try:
        async def says_waiting_for_both():
            status, body = await _ready(http_port)
            return status == 503 and body["waiting_for"] == ["database", "kafka"]
        await _wait(says_waiting_for_both)

        pg = PostgresNode(tmp_path / "pg", pg_port)
        pg_proc = pg.start(tmp_path / "pg.log")
        await wait_ready(pg.admin_url)
        await create_database(pg.admin_url)

        async def waits_for_kafka_only():
            status, body = await _ready(http_port)
            return status == 503 and body["waiting_for"] == ["kafka"]
        await _wait(waits_for_kafka_only)

        # Kafka "returns": a TCP forwarder appears on the port the service was given.
        async def forward(reader, writer):
            up_reader, up_writer = await asyncio.open_connection(kafka_host, int(kafka_real_port))

            async def pipe(src, dst):
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        proxy = await asyncio.start_server(forward, "127.0.0.1", kafka_port)

        async def ready():
            status, body = await _ready(http_port)
            return status == 200 and body["ready"] is True
        await _wait(ready, timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proxy is not None:
            proxy.close()
        if pg is not None:
            pg_proc.send_signal(2)
            pg_proc.wait(timeout=30)
    text = (tmp_path / "billing.log").read_text()
    assert "waiting for database" in text and "waiting for kafka" in text


async def test_every_error_is_a_problem_document_and_405_lists_every_method(client, infra):
    """RFC 9457 for each kind of error: unknown request, not JSON, field errors, conflict, auth, method."""
    http = client.http
    missing = await http.get("/v1/cancellations/no-such-request")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                              "detail": "request no-such-request not found", "errors": []}
    not_json = await http.post("/v1/cancellations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["title"] == "Bad Request"
    assert not_json.headers["content-type"] == "application/problem+json"
    invalid = await http.post("/v1/cancellations", json={"contract_id": "C-1"})
    assert invalid.status_code == 422 and invalid.json()["status"] == 422
    assert {"account_id", "customer", "plan", "reason"} <= {e["field"] for e in invalid.json()["errors"]}
    anonymous = await http.get("/v1/cancellations/x", headers={"X-API-Key": "wrong"})
    assert anonymous.status_code == 401 and anonymous.json()["title"] == "Unauthorized"
    assert anonymous.headers["www-authenticate"] == "ApiKey"
    options = await http.options("/v1/cancellations", params={"submission_id": "x"})
    assert options.status_code == 405 and options.headers["allow"] == "GET, POST"
    assert options.json()["status"] == 405
    doc = (await http.get("/openapi.json")).json()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
