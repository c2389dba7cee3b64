"""The retention loop end to end (SPEC section 6) through the real broker and database: offers taken over HTTP
and Kafka, exactly once, told to the contract system on retention.offers and to the customer by e-mail; the
holdout; every 404 and 409, the dead letters and the redeliveries."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone

import orjson
import pytest

from cancelflow.client import read_topic
from services.eligibility.domain import in_holdout
from shared import topics
from shared.contract_calendar import TOKYO, tokyo_date
from shared.events import WithdrawalRequested, WithdrawalSubmitted, new_envelope

pytestmark = pytest.mark.integration

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


async def run_report(infra, *args: str) -> tuple[dict, bytes]:
    """`cancelflow report --json ...` against the test broker: the JSON, and stdout as it came."""
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap, "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cancelflow.cli", "report", "--json", *args,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out), out  # nothing but the JSON on stdout


# --- the holdout ----------------------------------------------------------------------------------------

@pytest.fixture
def holdout_50(infra):
    """eligibility (which decides) and intake (which quotes) restarted with ELIGIBILITY_OFFER_HOLDOUT_PERCENT=50,
    and back to 0 afterwards."""
    if infra.stack is None:
        pytest.skip("the external stack's processes are not ours to restart")
    stack = infra.stack
    services = ["eligibility", "intake"]

    def restart(percent: str | None) -> None:
        for name in services:
            stack.stop_process(name, stack.procs[name].pid)
        stack.config.extra_env.pop("ELIGIBILITY_OFFER_HOLDOUT_PERCENT", None)
        if percent is not None:
            stack.config.extra_env["ELIGIBILITY_OFFER_HOLDOUT_PERCENT"] = percent
        for name in services:
            stack.start_service(name)
        stack.wait_healthy(services, timeout=60)

    restart("50")
    try:
        yield 50
    finally:
        restart(None)


def contract_ids(percent: int) -> tuple[str, str]:
    """A fresh contract id in the holdout group and one outside it (the rule is deterministic)."""
    held = kept = None
    while held is None or kept is None:
        c = f"C-{uuid.uuid4().hex[:12]}"
        if in_holdout(c, percent):
            held = held or c
        else:
            kept = kept or c
    return held, kept


async def test_the_holdout_sees_no_offers_and_cannot_take_one(client, infra, holdout_50):
    held, kept = contract_ids(holdout_50)
    for contract in (held, kept):
        await client.sign_contract(start_date=OLD_START, plan="pro", contract_id=contract)
    # The quote does not promise what the decision withholds: the held-out contract is quoted no offers.
    quoted = {c: (await client.quote(c, reason="SWITCHING_TOOL")).json() for c in (held, kept)}
    assert (quoted[held]["offers"], quoted[kept]["offers"]) == ([], ["consultation", "discount"])
    assert "holdout" not in quoted[held]  # the customer is not told about the experiment
    _, held_rid = await accepted_request(client, "SWITCHING_TOOL", contract=held)
    _, kept_rid = await accepted_request(client, "SWITCHING_TOOL", contract=kept)
    assert (await client.status(held_rid))["offers"] == quoted[held]["offers"] == []
    assert (await client.status(kept_rid))["offers"] == quoted[kept]["offers"]
    accepted = {c: events_of(await read_topic(infra.bootstrap, topics.DECISIONS, lambda r, c=c: r.key == c.encode()),
                             "cancellation.accepted")[0]["data"] for c in (held, kept)}
    assert (accepted[held]["holdout"], accepted[held]["offers"]) == (True, [])
    assert (accepted[kept]["holdout"], accepted[kept]["offers"]) == (False, ["consultation", "discount"])
    r = await client.take_offer(held_rid, "discount")
    assert r.status_code == 409 and "(none)" in r.json()["detail"]
    # ... and no offers mailed: the acknowledgement of the held-out request has none, the other's has them.
    acks = {rid: next(m for m in await client.wait_mails(rid, 3) if m.headers["X-Cancelflow-Kind"] == "acknowledgement")
            for rid in (held_rid, kept_rid)}
    assert "discount" in acks[kept_rid].body and "consultation" in acks[kept_rid].body
    assert "discount" not in acks[held_rid].body and "consultation" not in acks[held_rid].body
    # A second request of the held-out contract is held out too (deterministic per contract).
    assert (await client.withdraw(held_rid)).status_code == 202
    await client.wait_status(held_rid, lambda s: s["status"] == "withdrawn")
    again = (await client.submit(client.form(held, reason="NO_LONGER_USED", who=2))).json()["request_id"]
    assert (await client.wait_status(again, decided))["offers"] == []
    # The report counts the held-out acceptances and the held-out save against the offered group.
    lift = (await run_report(infra))[0]["retention"]
    assert lift["holdout"]["holdout"]["accepted"] >= 2 and lift["holdout"]["holdout"]["saved"] >= 1
    assert lift["holdout"]["offered"]["accepted"] >= 1 and lift["saves_without_offer"]["holdout"] >= 1
    assert lift["holdout"]["verdict"]


# --- the report ---------------------------------------------------------------------------------------

async def test_the_report_json_attributes_the_take_and_masks_the_feedback(client, infra, tmp_path):
    contract = await client.sign_contract(start_date=OLD_START)
    form = client.form(contract, reason="SWITCHING_TOOL") | {
        "feedback": "料金が高い。連絡は hanako.s@example.jp か 080-9876-5432まで"}
    rid = (await client.submit(form)).json()["request_id"]
    await client.wait_status(rid, lambda s: decided(s) and s["settlement"] is not None)
    assert (await client.take_offer(rid, "consultation")).status_code == 202
    await wait_offers_taken(infra.bootstrap, contract)
    # A save without an offer: shown offers, withdrawn without taking one.
    _, plain = await accepted_request(client, "SWITCHING_TOOL")
    assert (await client.withdraw(plain)).status_code == 202
    await client.wait_status(plain, lambda s: s["status"] == "withdrawn")
    page = tmp_path / "report.html"
    doc, out = await run_report(infra, "--html", str(page))
    assert doc["retention"]["saves_without_offer"]["offered"] >= 1
    consultation = doc["retention"]["offers"]["consultation"]
    assert consultation["taken"] >= 1 and consultation["offered"] >= consultation["taken"]
    assert consultation["take_rate"] == consultation["taken"] / consultation["offered"]
    lift = doc["retention"]["holdout"]
    assert lift["offered"]["accepted"] >= 1 and lift["verdict"]
    mine = next(e for e in doc["retention"]["feedback"]["SWITCHING_TOOL"] if e["request_id"] == rid)
    assert mine["text"] == "料金が高い。連絡は h***@example.jp か ***32まで"
    assert "hanako.s@example.jp" not in out.decode() and "9876-5432" not in out.decode()
    assert doc["accepted"] >= doc["withdrawn"] >= 1
    html = page.read_text(encoding="utf-8")
    assert 'class="lift"' in html and 'class="takes"' in html and "h***@example.jp" in html
    assert "hanako.s@example.jp" not in html
