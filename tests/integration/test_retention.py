"""The retention loop end to end (SPEC section 6) through the real broker and database: offers taken over HTTP
and Kafka, exactly once, told to the contract system on retention.offers and to the customer by e-mail; the
holdout; every 404 and 409, the dead letters and the redeliveries. The holdout and the report:
test_retention_holdout.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, time, timedelta, timezone

import orjson
import pytest

from cancelflow.client import read_topic
from shared import topics
from shared.contract_calendar import TOKYO, tokyo_date
from shared.events import WithdrawalRequested, WithdrawalSubmitted, new_envelope
from tests.integration.retention_steps import (OLD_START, accepted_request, decided, events_of, offers_taken,
                                               wait_mail_kind, wait_offers_taken, withdrawn_events)

pytestmark = pytest.mark.integration

# --- HTTP ---------------------------------------------------------------------------------------------

async def test_taking_an_offer_over_http_withdraws_once_and_tells_the_contract_system(client, infra, db):
    contract, rid = await accepted_request(client, "SWITCHING_TOOL")
    first = await client.take_offer(rid, "discount")
    assert first.status_code == 202, first.text
    assert first.json()["request_id"] == rid and first.json()["status_url"].endswith(f"/v1/cancellations/{rid}")
    again = await client.take_offer(rid, "discount")  # taking the same offer twice is one take
    assert again.status_code == 202

    s = await client.wait_status(rid, lambda s: s["status"] == "withdrawn" and s["settlement"]["status"] == "voided")
    assert s["taken_offer"] == "discount"
    taken = await wait_offers_taken(infra.bootstrap, contract)
    await asyncio.sleep(1.0)  # time for a second one, were there one
    taken = await offers_taken(infra.bootstrap, contract)
    assert len(taken) == 1
    data = taken[0]["data"]
    assert {k: data[k] for k in ("request_id", "contract_id", "account_id", "offer", "reason", "plan")} == {
        "request_id": rid, "contract_id": contract, "account_id": "@" + contract.lower(), "offer": "discount",
        "reason": "SWITCHING_TOOL", "plan": "pro"}
    assert datetime.fromisoformat(data["taken_at"]).tzinfo is not None
    assert taken[0]["producer"] == "eligibility" and taken[0]["correlation_id"] == rid
    withdrawn = await withdrawn_events(infra.bootstrap, contract)
    assert [(w["data"]["contract_id"], w["data"]["taken_offer"]) for w in withdrawn] == [(contract, "discount")]
    assert await db.fetchval("SELECT taken_offer FROM eligibility.cancellations WHERE request_id = $1", rid) == "discount"
    # After the withdrawal: the same offer is still the same take; another offer, or a withdrawal, is refused.
    assert (await client.take_offer(rid, "discount")).status_code == 202
    other = await client.take_offer(rid, "consultation")
    assert other.status_code == 409 and "already being withdrawn with offer discount" in other.json()["detail"]
    assert (await client.withdraw(rid)).status_code == 409
    await asyncio.sleep(0.5)
    assert len(await offers_taken(infra.bootstrap, contract)) == 1
    # The customer hears what they get, once, instead of the plain withdrawal confirmation.
    kinds = await wait_mail_kind(client, rid, "offer_confirmation")
    assert kinds.count("offer_confirmation") == 1 and "withdrawal_confirmation" not in kinds, kinds
    confirmation = next(m for m in client.mails(rid) if m.headers["X-Cancelflow-Kind"] == "offer_confirmation")
    assert "継続いただく場合の料金割引" in confirmation.body and "You have taken our offer: a discount to stay." in confirmation.body
    assert "取り下げ" in confirmation.body and "Offer taken" in confirmation.subject


async def test_taking_an_offer_that_is_not_the_requests_is_409_and_changes_nothing(client, infra):
    contract, rid = await accepted_request(client, "SWITCHING_TOOL")  # consultation, discount
    for offer in ("downgrade", "setup_support", "free_beer"):
        r = await client.take_offer(rid, offer)
        assert r.status_code == 409, (offer, r.text)
        assert f"offer {offer} is not among the request's offers (consultation, discount)" == r.json()["detail"]
    await asyncio.sleep(0.5)
    s = await client.status(rid)
    assert s["status"] == "accepted" and s["withdrawal_requested_at"] is None and s["taken_offer"] is None
    assert await offers_taken(infra.bootstrap, contract) == []


async def test_an_unknown_request_is_404(client):
    r = await client.take_offer(f"R-none-{uuid.uuid4().hex[:8]}", "discount")
    assert r.status_code == 404


async def test_a_rejected_request_or_one_with_no_offers_cannot_take_one(client):
    contract = await client.sign_contract(start_date=OLD_START)
    rejected = (await client.submit(client.form(contract, desired=tokyo_date(datetime.now(timezone.utc))
                                                + timedelta(days=10)))).json()["request_id"]
    assert (await client.wait_status(rejected, decided))["status"] == "rejected"
    r = await client.take_offer(rejected, "guided_training")
    assert r.status_code == 409 and r.json()["detail"] == "the request is rejected"
    _, closed = await accepted_request(client, "BUSINESS_CLOSED")
    r = await client.take_offer(closed, "discount")
    assert r.status_code == 409 and r.json()["detail"] == "offer discount is not among the request's offers (none)"


async def test_a_plain_withdrawal_first_leaves_no_offer_to_take(client, infra):
    contract, rid = await accepted_request(client, "NO_LONGER_USED")
    assert (await client.withdraw(rid)).status_code == 202
    r = await client.take_offer(rid, "downgrade")
    assert r.status_code == 409 and "already being withdrawn without an offer" in r.json()["detail"]
    s = await client.wait_status(rid, lambda s: s["status"] == "withdrawn")
    assert s["taken_offer"] is None
    assert [w["data"]["taken_offer"] for w in await withdrawn_events(infra.bootstrap, contract)] == [None]
    assert await offers_taken(infra.bootstrap, contract) == []


async def test_no_offer_can_be_taken_once_the_effective_date_has_come(client, clock, infra):
    contract, rid = await accepted_request(client, "TOO_DIFFICULT")
    effective = date.fromisoformat((await client.status(rid))["effective_date"])
    clock.set(datetime.combine(effective, time(0, 0, 1), TOKYO))
    r = await client.take_offer(rid, "guided_training")
    assert r.status_code == 409
    assert r.json()["detail"] == "the request is completed" or "has come: the contract has ended" in r.json()["detail"]
    await client.wait_status(rid, lambda s: s["status"] == "completed")
    assert (await client.take_offer(rid, "guided_training")).status_code == 409
    assert await offers_taken(infra.bootstrap, contract) == []


async def test_no_offer_can_be_taken_before_the_request_is_accepted(client, infra):
    """eligibility stopped: the request stays received, and has no offers yet to take (409); once it is
    accepted the same take goes through."""
    if infra.stack is None:
        pytest.skip("the external stack's processes are not ours to stop")
    stack = infra.stack
    contract = await client.sign_contract(start_date=OLD_START, plan="pro")
    stack.stop_process("eligibility", stack.procs["eligibility"].pid)
    try:
        rid = (await client.submit(client.form(contract, reason="SWITCHING_TOOL"))).json()["request_id"]
        await client.wait_status(rid, lambda s: s["status"] == "received")
        r = await client.take_offer(rid, "discount")
        assert r.status_code == 409 and r.json()["detail"] == "the request is received"
    finally:
        stack.start_service("eligibility")
        stack.wait_healthy(["eligibility"], timeout=60)
    await client.wait_status(rid, lambda s: s["status"] == "accepted")
    assert (await client.take_offer(rid, "discount")).status_code == 202
    assert [t["data"]["offer"] for t in await wait_offers_taken(infra.bootstrap, contract)] == ["discount"]


# --- Kafka --------------------------------------------------------------------------------------------

async def test_the_call_centre_takes_an_offer_over_kafka_once_whatever_is_redelivered(client, infra, db):
    contract, rid = await accepted_request(client, "NOT_USEFUL_FOR_BUSINESS")  # consultation, downgrade
    sid = f"W-{uuid.uuid4().hex[:10]}"
    submitted = new_envelope(WithdrawalSubmitted(submission_id=sid, request_id=rid, taken_offer="downgrade"),
                             producer="callcentre", correlation_id=sid, causation_id=None)
    # The same event twice, and the same submission_id again as a new event: it acts once.
    for _ in range(2):
        await client.publish_raw(topics.SUBMISSIONS, submitted.to_bytes(), key=contract)
    await client.withdraw_kafka(rid, contract, taken_offer="downgrade", submission_id=sid)
    s = await client.wait_status(rid, lambda s: s["status"] == "withdrawn")
    assert s["taken_offer"] == "downgrade"
    taken = await wait_offers_taken(infra.bootstrap, contract)
    assert [t["data"]["offer"] for t in taken] == ["downgrade"]
    assert taken[0]["data"]["reason"] == "NOT_USEFUL_FOR_BUSINESS"
    requested = events_of(await read_topic(infra.bootstrap, topics.REQUESTS, lambda r: r.key == contract.encode()),
                          "cancellation.withdrawal_requested")
    assert [(e["data"]["taken_offer"], e["causation_id"] is not None) for e in requested] == [("downgrade", True)]
    assert await db.fetchval("SELECT count(*) FROM intake.withdrawal_submissions WHERE submission_id = $1", sid) == 1
    # A new submission taking the same offer is the same take: no refusal, no second event.
    await client.withdraw_kafka(rid, contract, taken_offer="downgrade")
    await asyncio.sleep(1.0)
    assert len(await offers_taken(infra.bootstrap, contract)) == 1
    assert (await client.status(rid))["withdrawal_refused"] is None
    kinds = await wait_mail_kind(client, rid, "offer_confirmation")
    assert kinds.count("offer_confirmation") == 1 and "withdrawal_confirmation" not in kinds, kinds


async def test_a_withdrawal_over_kafka_without_an_offer(client, infra):
    contract, rid = await accepted_request(client, "TOO_DIFFICULT")
    await client.withdraw_kafka(rid, contract)
    s = await client.wait_status(rid, lambda s: s["status"] == "withdrawn" and s["settlement"]["status"] == "voided")
    assert s["taken_offer"] is None
    assert [w["data"]["taken_offer"] for w in await withdrawn_events(infra.bootstrap, contract)] == [None]
    assert await offers_taken(infra.bootstrap, contract) == []
    kinds = await wait_mail_kind(client, rid, "withdrawal_confirmation")
    assert kinds.count("withdrawal_confirmation") == 1 and "offer_confirmation" not in kinds, kinds


@pytest.mark.filterwarnings("ignore::UserWarning")  # model_construct of a deliberately invalid event
async def test_invalid_withdrawal_submissions_are_dead_lettered_with_the_reason(client, infra, db):
    contract, rid = await accepted_request(client, "SWITCHING_TOOL")
    reused = f"W-{uuid.uuid4().hex[:10]}"
    bad_offer = new_envelope(WithdrawalSubmitted.model_construct(submission_id=f"W-{uuid.uuid4().hex[:8]}",
                                                                 request_id=rid, taken_offer="free_beer"),
                             producer="callcentre", correlation_id="x", causation_id=None).to_bytes()
    no_request = orjson.loads(bad_offer) | {"data": {"submission_id": "W-x1", "taken_offer": "discount"}}
    cases = {
        "unknown offer code": (bad_offer, "data.taken_offer"),
        "no request_id": (orjson.dumps(no_request), "data.request_id"),
    }
    for value, _ in cases.values():
        await client.publish_raw(topics.SUBMISSIONS, value, key=contract)
    unknown = await client.withdraw_kafka(f"R-none-{uuid.uuid4().hex[:8]}", contract, taken_offer="discount")
    not_offered = await client.withdraw_kafka(rid, contract, taken_offer="downgrade")
    await client.withdraw_kafka(rid, contract, taken_offer="discount", submission_id=reused)  # acts
    await client.wait_status(rid, lambda s: s["status"] == "withdrawn")
    await client.withdraw_kafka(rid, contract, taken_offer="consultation", submission_id=reused)  # reused key
    later = await client.withdraw_kafka(rid, contract, taken_offer="consultation")  # after the take: another offer

    wanted = 4 + len(cases)
    for _ in range(100):
        dead = await read_topic(infra.bootstrap, topics.dlq(topics.SUBMISSIONS), lambda r: r.key == contract.encode())
        if len(dead) >= wanted:
            break
        await asyncio.sleep(0.2)
    reasons = {orjson.loads(r.value)["data"].get("submission_id"): dict(r.headers)["dlq.reason"].decode() for r in dead}
    by_value = {r.value: dict(r.headers)["dlq.reason"].decode() for r in dead}
    for value, field in cases.values():
        assert field in by_value[value]
    assert reasons[unknown].startswith("request_id: unknown request R-none-")
    assert reasons[not_offered] == "taken_offer: offer downgrade is not among the request's offers (consultation, discount)"
    assert reasons[reused].startswith("submission_id: already used for a withdrawal of request")
    assert reasons[later] == "taken_offer: the request is already being withdrawn with offer discount"
    assert [t["data"]["offer"] for t in await offers_taken(infra.bootstrap, contract)] == ["discount"]
    assert await db.fetchval("SELECT count(*) FROM intake.withdrawal_submissions WHERE request_id = $1", rid) == 1


async def test_eligibility_applies_a_redelivered_withdrawal_once(client, infra, db):
    """cancellation.withdrawal_requested delivered twice, and asked again as a new event: one withdrawal, one
    retention.offer_taken, no refusal."""
    contract, rid = await accepted_request(client, "INITIAL_SETUP_FAILED")
    asked = new_envelope(WithdrawalRequested(request_id=rid, contract_id=contract, taken_offer="setup_support",
                                             requested_at=datetime.now(timezone.utc)),
                         producer="intake", correlation_id=rid, causation_id=None)
    for _ in range(2):
        await client.publish_raw(topics.REQUESTS, asked.to_bytes(), key=contract)
    where = await client.publish(WithdrawalRequested(request_id=rid, contract_id=contract, taken_offer="setup_support"),
                                 key=contract, correlation_id=rid)
    await client.wait_consumed(("eligibility",), topics.REQUESTS, *where)
    await client.wait_status(rid, lambda s: s["status"] == "withdrawn" and s["taken_offer"] == "setup_support")
    await wait_offers_taken(infra.bootstrap, contract)
    await asyncio.sleep(0.5)
    assert len(await offers_taken(infra.bootstrap, contract)) == 1
    assert len(await withdrawn_events(infra.bootstrap, contract)) == 1
    decisions = await read_topic(infra.bootstrap, topics.DECISIONS, lambda r: r.key == contract.encode())
    assert events_of(decisions, "cancellation.withdrawal_refused") == []


async def test_a_redelivered_withdrawal_sends_one_offer_confirmation(client, infra, db):
    """The very bytes of cancellation.withdrawn (taken_offer set) delivered again: no second e-mail, the status
    view unchanged."""
    contract, rid = await accepted_request(client, "NO_LONGER_USED")
    assert (await client.take_offer(rid, "downgrade")).status_code == 202
    await wait_mail_kind(client, rid, "offer_confirmation")
    await client.redeliver(topics.DECISIONS, contract, "cancellation.withdrawn", 2, ("billing", "notifier", "intake"))
    await asyncio.sleep(1.0)
    kinds = [m.headers["X-Cancelflow-Kind"] for m in client.mails(rid)]
    assert kinds.count("offer_confirmation") == 1, kinds
    assert await db.fetchval("SELECT count(*) FROM notifier.notifications WHERE request_id = $1 AND kind = $2",
                             rid, "offer_confirmation") == 1
    s = await client.status(rid)
    assert (s["status"], s["taken_offer"]) == ("withdrawn", "downgrade")
    assert len(await offers_taken(infra.bootstrap, contract)) == 1
