"""The quote and the signed links on the real stack: a submission after a quote gets exactly the quoted
decision and settlement; links that are expired, altered or for no contract all get the same page."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from services.intake.links import sign_link
from shared.contract_calendar import add_months, tokyo_date

pytestmark = pytest.mark.integration

OLD_START = date(2024, 1, 31)


def today() -> date:
    return tokyo_date(datetime.now(timezone.utc))


def answered(s: dict) -> bool:
    return s["status"] == "rejected" or (s["status"] == "accepted" and s["settlement"] is not None)


async def quote_then_submit(client, contract: str, *, desired: date | None, reason: str, who: int = 1) -> tuple[dict, dict]:
    q = await client.quote(contract, desired=desired, reason=reason)
    assert q.status_code == 200, q.text
    r = await client.submit(client.form(contract, desired=desired, reason=reason, who=who))
    assert r.status_code == 202, r.text
    return q.json(), await client.wait_status(r.json()["request_id"], answered)


def assert_got_the_quote(quote: dict, s: dict) -> None:
    assert quote["received_on"] == s["received_on"]
    if quote["codes"]:
        assert s["status"] == "rejected"
        assert (s["codes"], s["earliest_effective_date"]) == (quote["codes"], quote["earliest_effective_date"])
        return
    assert s["status"] == "accepted"
    assert (s["effective_date"], s["offers"]) == (quote["effective_date"], quote["offers"])
    st = s["settlement"]
    assert (st["charges"], st["total_jpy"], st["refund_jpy"], st["paid_through"]) == \
        (quote["charges"], quote["total_jpy"], quote["refund_jpy"], quote["paid_through"])


@pytest.mark.parametrize(("start", "desired_days", "reason", "paid"), [
    (OLD_START, None, "SWITCHING_TOOL", 1),             # the earliest date, one billing date paid already
    (OLD_START, 120, "NOT_USEFUL_FOR_BUSINESS", 2),     # several months charged, two paid
    (OLD_START, 44, "TOO_DIFFICULT", 0),                 # NOTICE_PERIOD
    ("young", 60, "BUSINESS_CLOSED", 0),                # MINIMUM_TERM and NOTICE_PERIOD
])
async def test_a_submission_after_a_quote_gets_exactly_the_quote(client, start, desired_days, reason, paid):
    start = today() - timedelta(days=100) if start == "young" else start
    contract = await client.sign_contract(start_date=start, monthly_fee_jpy=12_000, plan="pro")
    due = [add_months(start, n) for n in range(0, 80) if today() <= add_months(start, n) < today() + timedelta(days=130)]
    for b in due[:paid]:
        await client.record_payment(contract, b, 12_000)
    desired = today() + timedelta(days=desired_days) if desired_days is not None else None
    quote, status = await quote_then_submit(client, contract, desired=desired, reason=reason)
    assert_got_the_quote(quote, status)
    if paid:
        assert not {c["billing_date"] for c in quote["charges"]} & {b.isoformat() for b in due[:paid]}
    if desired_days == 120:
        assert quote["charges"], "a quote that charges nothing would prove little"


async def test_a_pending_cancellation_is_quoted_already_pending_and_then_rejected_so(client):
    contract = await client.sign_contract(start_date=OLD_START)
    quote, first = await quote_then_submit(client, contract, desired=None, reason="NO_LONGER_USED")
    assert_got_the_quote(quote, first)
    quote, second = await quote_then_submit(client, contract, desired=None, reason="NO_LONGER_USED", who=2)
    assert quote["codes"] == ["ALREADY_PENDING"]
    assert_got_the_quote(quote, second)


async def test_quote_needs_a_key_or_the_contracts_link_and_knows_unknown_contracts(client, infra):
    contract = await client.sign_contract(start_date=OLD_START)
    other = await client.sign_contract(start_date=OLD_START)
    url = f"/v1/contracts/{contract}/cancellation-quote"
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as anonymous:
        assert (await anonymous.get(url)).status_code == 401
        token = (await client.cancel_link(contract))["url"].rsplit("/", 1)[1]
        assert (await anonymous.get(url, params={"token": token})).status_code == 200
        other_url = f"/v1/contracts/{other}/cancellation-quote"
        assert (await anonymous.get(other_url, params={"token": token})).status_code == 401
    assert (await client.quote(f"C-NONE-{uuid.uuid4().hex[:8]}")).status_code == 404
    bad = await client.http.get(url, params={"reason": "BORED", "desired_effective_date": "tomorrow"})
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} >= {"reason", "desired_effective_date"}


async def test_cancel_links(client, infra, clock):
    contract = await client.sign_contract(start_date=OLD_START, who=7)
    http = client.http
    assert (await http.post("/v1/cancel-links", json={"contract_id": contract}, headers={"X-API-Key": ""})
            ).status_code == 401
    assert (await http.post("/v1/cancel-links", json={"contract_id": "C-NOPE-" + uuid.uuid4().hex[:6]})
            ).status_code == 404
    assert (await http.post("/v1/cancel-links", json={"contract_id": contract, "ttl_days": 0})).status_code == 422
    issued = await client.cancel_link(contract, ttl_days=2)
    expires_at = datetime.fromisoformat(issued["expires_at"])
    assert timedelta(days=2) - timedelta(seconds=5) < expires_at - datetime.now(timezone.utc) <= timedelta(days=2)
    assert issued["url"].startswith(f"{infra.intake_url}/cancel/")
    path = issued["url"][len(infra.intake_url):]

    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        good = await browser.get(path)
        assert good.status_code == 200 and "山田 太郎 7" in good.text
        assert "default-src 'none'" in good.headers["content-security-policy"]
        assert good.headers["referrer-policy"] == "no-referrer"
        token = path.rsplit("/", 1)[1]
        altered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        answers = [await browser.get(f"/cancel/{altered}")]
        if infra.link_secret:  # a correctly signed link for a contract that does not exist
            nobody = sign_link(infra.link_secret, "C-NOBODY-" + uuid.uuid4().hex[:6], expires_at)
            answers.append(await browser.get(f"/cancel/{nobody}"))
        clock.set(expires_at + timedelta(seconds=1))
        answers.append(await browser.get(path))
        assert {(a.status_code, a.text) for a in answers} == {(404, answers[0].text)}
        assert "有効期限" in answers[0].text and contract not in answers[0].text


async def test_page_posts_without_the_csrf_field_change_nothing(client, infra, db):
    contract = await client.sign_contract(start_date=OLD_START, who=8)
    path = (await client.cancel_link(contract))["url"][len(infra.intake_url):]
    form = {"reason": "NO_LONGER_USED", "name": "山田 太郎", "email": "taro@example.jp", "phone": "090-1234-5678"}
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        await browser.get(path)  # the cookie, but not the form's field
        for step in ("offers", "quote", "confirm", "submit"):
            r = await browser.post(f"{path}/{step}", data=form)
            assert r.status_code == 403, step
            forged = await browser.post(f"{path}/{step}", data=form | {"csrf": "0" * 64})
            assert forged.status_code == 403, step
    assert await db.fetchval("SELECT count(*) FROM intake.requests WHERE contract_id = $1", contract) == 0


async def test_intakes_contract_view_follows_contracts_events(client, infra):
    """A payment recorded twice is one payment; a new signature changes the terms and keeps the customer."""
    contract = await client.sign_contract(start_date=OLD_START, monthly_fee_jpy=10_000, who=9)
    desired = today() + timedelta(days=100)
    due = [add_months(OLD_START, n) for n in range(80) if today() <= add_months(OLD_START, n) < desired]
    await client.record_payment(contract, due[0], 10_000)
    await client.record_payment(contract, due[0], 10_000)
    await client.sign_contract(start_date=OLD_START, monthly_fee_jpy=15_000, contract_id=contract)  # no customer
    q = (await client.quote(contract, desired=desired)).json()
    assert [c["billing_date"] for c in q["charges"]] == [b.isoformat() for b in due[1:]]
    assert {c["amount_jpy"] for c in q["charges"]} == {15_000} and q["total_jpy"] == 15_000 * (len(due) - 1)
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        page = await browser.get((await client.cancel_link(contract))["url"][len(infra.intake_url):])
    assert "山田 太郎 9" in page.text and "taro.9@example.jp" in page.text


async def test_cancelflow_link_prints_a_working_link(client, infra):
    contract = await client.sign_contract(start_date=OLD_START, who=10)
    cli = Path(sys.executable).parent / "cancelflow"
    env = os.environ | {"INTAKE_URL": infra.intake_url, "INTAKE_API_KEY": client.api_key}
    proc = await asyncio.create_subprocess_exec(str(cli), "link", contract, "--ttl-days", "3", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    url = out.decode().splitlines()[0]
    assert url.startswith(f"{infra.intake_url}/cancel/")
    async with httpx.AsyncClient(timeout=10) as browser:
        assert "山田 太郎 10" in (await browser.get(url)).text
    unknown = await asyncio.create_subprocess_exec(str(cli), "link", "C-NOBODY-x", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(unknown.communicate(), 60)
    assert unknown.returncode == 1 and "404" in out.decode()


async def test_a_page_address_that_is_not_one_gets_the_plain_page(client, infra):
    contract = await client.sign_contract(start_date=OLD_START)
    path = (await client.cancel_link(contract))["url"][len(infra.intake_url):]
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        for tail in ("/requests/not-a-uuid", "/requests/%00", f"/requests/{uuid.uuid4()}", "/requests/x/live"):
            r = await browser.get(path + tail)
            assert r.status_code == 404 and "有効期限" in r.text, tail
        assert (await browser.get("/cancel/assets/../../etc/passwd")).status_code == 404
        assert (await browser.get("/cancel/assets/page.css")).headers["content-type"].startswith("text/css")


async def test_the_page_of_a_contract_with_a_pending_cancellation_leads_to_it(client, infra):
    contract = await client.sign_contract(start_date=OLD_START, who=11)
    rid = (await client.submit(client.form(contract))).json()["request_id"]
    await client.wait_status(rid, lambda s: s["status"] == "accepted")
    path = (await client.cancel_link(contract))["url"][len(infra.intake_url):]
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        page = await browser.get(path)
        assert "すでに手続き中の解約" in page.text and f'href="{path}/requests/{rid}"' in page.text
        assert 'action="' not in page.text  # no second form to send
        status = await browser.get(f"{path}/requests/{rid}")
        assert status.status_code == 200 and "解約を受け付けました" in status.text


async def test_taking_an_offer_on_the_page_needs_the_csrf_field_and_an_offer_of_the_request(client, infra, db):
    contract = await client.sign_contract(start_date=OLD_START, who=12)
    rid = (await client.submit(client.form(contract, reason="SWITCHING_TOOL", who=12))).json()["request_id"]
    await client.wait_status(rid, lambda s: s["status"] == "accepted")
    path = (await client.cancel_link(contract))["url"][len(infra.intake_url):] + f"/requests/{rid}"
    async with httpx.AsyncClient(base_url=infra.intake_url, timeout=10) as browser:
        page = await browser.get(path)
        assert f'action="{path}/offers/discount/take"' in page.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)
        for form in ({}, {"csrf": "0" * 64}):  # forged: nothing taken
            assert (await browser.post(f"{path}/offers/discount/take", data=form)).status_code == 403
        other = await browser.post(f"{path}/offers/downgrade/take", data={"csrf": csrf})  # not this request's
        assert other.status_code == 409 and "「プランの変更」は、このお申し込みでご利用いただけるご提案ではありません" in other.text
        assert "Content-Security-Policy" in other.headers
    row = await db.fetchrow("SELECT status, withdrawal_requested_at FROM intake.requests WHERE request_id = $1", rid)
    assert (row["status"], row["withdrawal_requested_at"]) == ("accepted", None)
