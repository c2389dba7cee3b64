"""The product end to end through the real stack: HTTP and Kafka in, decisions, settlements, e-mails out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, time, timedelta, timezone

import orjson
import pytest

from cancelflow.client import read_topic
from shared import topics
from services.intake.signatures import sign
from shared.contract_calendar import TOKYO, add_months, tokyo_date
from shared.events import CancellationAccepted, CancellationSubmitted, ContractSigned, new_envelope

pytestmark = pytest.mark.integration

OLD_START = date(2024, 1, 31)  # first anniversary long past; month-end clamping on every billing date


def today() -> date:
    return tokyo_date(datetime.now(timezone.utc))


def done(s: dict) -> bool:
    return s["status"] != "received"


# --- accepted, settled, acknowledged ----------------------------------------------------------------

async def test_accepted_request_is_settled_to_the_yen_and_acknowledged(client, infra):
    contract = await client.sign_contract(start_date=OLD_START, monthly_fee_jpy=12_000, plan="pro")
    received_on = today()
    effective = received_on + timedelta(days=45)
    billing = [add_months(OLD_START, n) for n in range(0, 60)]
    due = [b for b in billing if received_on <= b < effective]
    await client.record_payment(contract, due[0], 12_000)  # one already paid: not charged again

    r = await client.submit(client.form(contract, reason="SWITCHING_TOOL"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "received" and body["status_url"].endswith(body["request_id"])
    rid = body["request_id"]

    s = await client.wait_status(rid, lambda s: done(s) and s["settlement"] and len(s["notifications"]) >= 3)
    assert s["status"] == "accepted"
    assert s["effective_date"] == effective.isoformat()
    assert s["offers"] == ["consultation", "discount"]
    st = s["settlement"]
    assert [c["billing_date"] for c in st["charges"]] == [d.isoformat() for d in due[1:]]
    assert st["total_jpy"] == 12_000 * (len(due) - 1) and st["refund_jpy"] == 0
    last_billing = max(b for b in billing if b < effective)
    assert st["paid_through"] == add_months(OLD_START, billing.index(last_billing) + 1).isoformat()
    assert {n["kind"] for n in s["notifications"]} == {"acknowledgement", "data_export_reminder", "rich_menu_reminder"}
    assert all(n["recipient"] == "t***@example.jp" for n in s["notifications"])

    mails = await client.wait_mails(rid, 3)
    ack = next(m for m in mails if m.headers["X-Cancelflow-Kind"] == "acknowledgement")
    assert ack.to == "taro.1@example.jp"
    assert f"¥{st['total_jpy']:,}" in ack.body
    assert rid in ack.subject


# --- every rejection code ---------------------------------------------------------------------------

async def test_contract_not_found(client):
    r = await client.submit(client.form(f"C-NONE-{uuid.uuid4().hex[:8]}"))
    s = await client.wait_status(r.json()["request_id"], done)
    assert s["status"] == "rejected" and s["codes"] == ["CONTRACT_NOT_FOUND"]
    assert s["earliest_effective_date"] is None


async def test_minimum_term_and_notice_period_are_both_reported(client):
    start = today() - timedelta(days=60)
    contract = await client.sign_contract(start_date=start)
    r = await client.submit(client.form(contract, desired=today() + timedelta(days=30)))
    s = await client.wait_status(r.json()["request_id"], done)
    assert s["status"] == "rejected"
    assert s["codes"] == ["MINIMUM_TERM", "NOTICE_PERIOD"]
    assert s["earliest_effective_date"] == add_months(start, 12).isoformat()


@pytest.mark.parametrize(("days", "status", "codes"), [
    (44, "rejected", ["NOTICE_PERIOD"]), (45, "accepted", []), (46, "accepted", [])])
async def test_notice_period_boundary(client, days, status, codes):
    contract = await client.sign_contract(start_date=OLD_START)
    r = await client.submit(client.form(contract, desired=today() + timedelta(days=days)))
    s = await client.wait_status(r.json()["request_id"], done)
    assert (s["status"], s["codes"]) == (status, codes)


async def test_duplicate_request_is_already_pending(client):
    contract = await client.sign_contract(start_date=OLD_START)
    first = await client.submit(client.form(contract))
    await client.wait_status(first.json()["request_id"], done)
    second = await client.submit(client.form(contract, who=2))
    s = await client.wait_status(second.json()["request_id"], done)
    assert s["status"] == "rejected" and s["codes"] == ["ALREADY_PENDING"]
    mails = await client.wait_mails(second.json()["request_id"], 1)
    assert mails[0].headers["X-Cancelflow-Kind"] == "rejection" and "already in progress" in mails[0].body


# --- withdrawal and completion (clock moved) ----------------------------------------------------------

async def test_withdrawal_voids_the_settlement_and_cancels_reminders(client, clock):
    contract = await client.sign_contract(start_date=OLD_START)
    rid = (await client.submit(client.form(contract, reason="NO_LONGER_USED"))).json()["request_id"]
    s = await client.wait_status(rid, lambda s: done(s) and s["settlement"])
    await client.wait_mails(rid, 3)
    assert (await client.withdraw(rid)).status_code == 202
    s = await client.wait_status(rid, lambda s: s["status"] == "withdrawn" and s["settlement"]["status"] == "voided")
    mails = await client.wait_mails(rid, 4)
    assert mails[-1].headers["X-Cancelflow-Kind"] == "withdrawal_confirmation"
    # The reminders 14 and 3 days before were cancelled: moving past them sends nothing more.
    effective = date.fromisoformat(s["effective_date"])
    clock.set(datetime.combine(effective - timedelta(days=2), time(12), TOKYO))
    await asyncio.sleep(1.5)
    assert len(client.mails(rid)) == 4
    assert (await client.withdraw(rid)).status_code == 409


async def test_reminders_14_and_3_days_before_at_10_tokyo_then_completion(client, clock, db):
    contract = await client.sign_contract(start_date=OLD_START)
    rid = (await client.submit(client.form(contract))).json()["request_id"]
    s = await client.wait_status(rid, lambda s: done(s) and len(s["notifications"]) >= 3)
    effective = date.fromisoformat(s["effective_date"])

    clock.set(datetime.combine(effective - timedelta(days=14), time(9, 59), TOKYO))
    await asyncio.sleep(1.0)
    assert len(client.mails(rid)) == 3, "nothing is due before 10:00 Tokyo"
    clock.set(datetime.combine(effective - timedelta(days=14), time(10, 0, 1), TOKYO))
    mails = await client.wait_mails(rid, 5)
    assert sorted(m.headers["X-Cancelflow-Kind"] for m in mails[3:]) == ["data_export_reminder", "rich_menu_reminder"]
    assert all("14" in m.body for m in mails[3:])

    clock.set(datetime.combine(effective - timedelta(days=3), time(10, 0, 1), TOKYO))
    mails = await client.wait_mails(rid, 7)
    due = await db.fetch("SELECT kind, due_at FROM notifier.notifications WHERE request_id = $1 AND days_before = 3", rid)
    assert {r["due_at"].astimezone(TOKYO).time() for r in due} == {time(10, 0)}

    clock.set(datetime.combine(effective - timedelta(days=1), time(23, 59), TOKYO))
    await asyncio.sleep(0.8)
    assert (await client.status(rid))["status"] == "accepted", "not completed before its effective date"
    clock.set(datetime.combine(effective, time(0, 0, 1), TOKYO))
    s = await client.wait_status(rid, lambda s: s["status"] == "completed")
    assert (await client.withdraw(rid)).status_code == 409
    # The contract has ended: a new request for it is rejected CONTRACT_ENDED.
    again = await client.submit(client.form(contract, who=3))
    s = await client.wait_status(again.json()["request_id"], done)
    assert s["codes"] == ["CONTRACT_ENDED"]
    assert len(client.mails(rid)) == 7, "each (request, kind, due time) sent exactly once"


# --- intake: idempotency, auth, validation, Kafka submissions, DLQ ---------------------------------------

async def test_idempotency_key_same_body_same_answer_different_body_error(client):
    contract = await client.sign_contract(start_date=OLD_START)
    key = uuid.uuid4().hex
    form = client.form(contract)
    a = await client.submit(form, idempotency_key=key)
    b = await client.submit(form, idempotency_key=key)
    c = await client.submit(form | {"reason": "BUSINESS_CLOSED"}, idempotency_key=key)
    assert a.status_code == b.status_code == 202 and a.json() == b.json()
    assert c.status_code == 422 and c.json()["errors"][0]["field"] == "Idempotency-Key"


async def test_field_level_errors_and_nothing_published(client, db):
    before = await db.fetchval("SELECT count(*) FROM intake.requests")
    bad = client.form("C-X") | {"customer": {"name": "", "email": "not-an-email", "phone": "abc"}, "plan": "gold",
                                "reason": "BORED", "typo": 1}
    r = await client.submit(bad)
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"customer.name", "customer.email", "customer.phone", "plan", "reason", "typo"} <= fields
    assert "not-an-email" not in r.text  # errors name the fields; the inputs are not echoed back
    assert await db.fetchval("SELECT count(*) FROM intake.requests") == before


async def test_api_key_rotation_and_signed_webhooks(client, infra):
    from tests.conftest import OLD_API_KEY

    if infra.stack is None:
        pytest.skip("the key being rotated out is the test stack's")
    contract = await client.sign_contract(start_date=OLD_START)
    http = client.http
    assert (await http.post("/v1/cancellations", json=client.form(contract), headers={"X-API-Key": ""})).status_code == 401
    assert (await http.get("/v1/cancellations/x", headers={"X-API-Key": "wrong"})).status_code == 401
    assert (await http.get("/v1/cancellations/x", headers={"X-API-Key": OLD_API_KEY})).status_code == 404
    body = orjson.dumps(client.form(contract))
    sig = sign(infra.webhook_secret, body, int(infra.clock.now().timestamp()))
    ok = await http.post("/v1/cancellations", content=body,
                         headers={"X-API-Key": "", "X-Signature": sig, "Content-Type": "application/json"})
    assert ok.status_code == 202
    forged = await http.post("/v1/cancellations", content=body.replace(b"TOO_DIFFICULT", b"BUSINESS_CLOSED"),
                             headers={"X-API-Key": "", "X-Signature": sig, "Content-Type": "application/json"})
    assert forged.status_code == 401


async def test_kafka_submission_is_recorded_once_and_decided(client, db):
    contract = await client.sign_contract(start_date=OLD_START)
    form = client.form(contract, reason="INITIAL_SETUP_FAILED")
    sid = f"S-{uuid.uuid4().hex[:10]}"
    envelope = new_envelope(CancellationSubmitted(**form, submission_id=sid), producer="callcentre",
                            correlation_id=sid, causation_id=None)
    # The same event delivered twice, and the same submission sent again as a new event: one request.
    for _ in range(2):
        await client.publish_raw(topics.SUBMISSIONS, envelope.to_bytes(), key=contract)
    await client.submit_kafka(form, submission_id=sid)
    rid = await client.find_request_by_submission(db, sid)
    s = await client.wait_status(rid, done)
    assert s["status"] == "accepted" and s["offers"] == ["setup_support"]
    found = await client.http.get("/v1/cancellations", params={"submission_id": sid})
    assert found.json()["request_id"] == rid
    await asyncio.sleep(1.0)
    assert await db.fetchval("SELECT count(*) FROM intake.requests WHERE submission_id = $1", sid) == 1
    assert await db.fetchval("SELECT count(*) FROM eligibility.cancellations WHERE contract_id = $1", contract) == 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # model_construct of a deliberately invalid event
async def test_poison_messages_go_to_the_dlq_and_the_consumer_goes_on(client, infra, db):
    contract = await client.sign_contract(start_date=OLD_START)
    marker = uuid.uuid4().hex
    bad_form = client.form(contract) | {"reason": "BORED"}
    invalid = new_envelope(CancellationSubmitted.model_construct(**bad_form, submission_id=f"S-{marker}"),
                           producer="t", correlation_id=marker, causation_id=None)
    newer = orjson.loads(invalid.to_bytes()) | {"schema_version": 99, "data": client.form(contract) | {"submission_id": "S-v"}}
    unknown = orjson.loads(invalid.to_bytes()) | {"event_type": "cancellation.teleported"}
    poison = [b"{not json " + marker.encode(), invalid.to_bytes(), orjson.dumps(newer), orjson.dumps(unknown)]
    for value in poison:
        await client.publish_raw(topics.SUBMISSIONS, value, key=contract)
    good_sid = await client.submit_kafka(client.form(contract))
    rid = await client.find_request_by_submission(db, good_sid)
    assert (await client.wait_status(rid, done))["status"] == "accepted"

    dead = await read_topic(infra.bootstrap, topics.dlq(topics.SUBMISSIONS), lambda r: r.key == contract.encode())
    reasons = {r.value: dict(r.headers)[ "dlq.reason"].decode() for r in dead}
    assert set(reasons) == set(poison)
    assert "not JSON" in reasons[poison[0]]
    assert "data.reason" in reasons[poison[1]]
    assert "schema_version" in reasons[poison[2]]
    assert "unknown event type" in reasons[poison[3]]
    headers = dict(dead[0].headers)
    assert headers["dlq.source.topic"] == topics.SUBMISSIONS.encode()
    assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.consumer"] == b"intake"


async def test_out_of_order_contract_event_settles_when_it_arrives(client, db):
    """billing sees the acceptance before the contract (different topics): it settles when the contract comes."""
    contract, rid = f"C-{uuid.uuid4().hex[:10]}", f"R-{uuid.uuid4().hex[:10]}"
    received_on = today()
    effective = received_on + timedelta(days=45)
    where = await client.publish(CancellationAccepted(
        request_id=rid, contract_id=contract, effective_date=effective, first_anniversary=add_months(OLD_START, 12),
        received_on=received_on), key=contract)
    await client.wait_consumed(("billing",), topics.DECISIONS, *where)
    assert await db.fetchval("SELECT status FROM billing.settlements WHERE request_id = $1", rid) == "awaiting_contract"

    await client.sign_contract(start_date=OLD_START, monthly_fee_jpy=3000, contract_id=contract)
    row = await db.fetchrow("SELECT status, total_jpy FROM billing.settlements WHERE request_id = $1", rid)
    due = [b for b in (add_months(OLD_START, n) for n in range(60)) if received_on <= b < effective]
    assert (row["status"], row["total_jpy"]) == ("issued", 3000 * len(due))
    for _ in range(50):  # the outbox relay publishes right after the commit
        issued = await read_topic(client.bootstrap, topics.SETTLEMENTS, lambda r: r.key == contract.encode())
        if issued:
            break
        await asyncio.sleep(0.2)
    assert len(issued) == 1 and orjson.loads(issued[0].value)["data"]["request_id"] == rid
