"""The retention loop's holdout and what the report learns from it, end to end through the real broker and
database (SPEC section 6): a held-out contract is quoted, offered and mailed no offers and cannot take one;
`cancelflow report --json` attributes the take, counts the holdout and masks the feedback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import pytest

from cancelflow.client import read_topic
from services.eligibility.domain import in_holdout
from shared import topics
from tests.integration.retention_steps import OLD_START, accepted_request, decided, events_of, wait_offers_taken

pytestmark = pytest.mark.integration


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
