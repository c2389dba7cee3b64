"""The customer's cancel page in a real browser, on the real stack (as test_cancel_page.py): saved by
withdrawing from the status page (keyboard only) or by taking an offer there, and every form without
JavaScript."""

from __future__ import annotations

import re

import orjson
import pytest
from playwright.async_api import expect

from cancelflow.client import read_topic
from shared import topics

from tests.integration.cancel_page_steps import (OLD_START, SHOTS, assert_same_as_the_api, confirm_and_submit,
                                                 fill_reason, open_link, still_the_same_document, twins)

pytestmark = pytest.mark.integration


# --- saved: withdrawn from the status page ----------------------------------------------------------

@pytest.mark.parametrize("visit", [375], indirect=True)
async def test_saved_by_withdrawing_from_the_status_page_keyboard_only(client, infra, visit):
    who = "page-saved"
    contract, twin = await twins(client, start=OLD_START, who=who)
    page = visit.page
    await open_link(client, visit, contract)
    # Step 1 with the keyboard only: Tab to the reasons, arrows to choose, Tab on, Enter to send.
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.name") == "reason":
            break
    await page.keyboard.press("ArrowDown")  # the first reason, then the second: the tool was hard to use
    await expect(page.get_by_label("LIBOTの使い方が難しかった")).to_be_checked()
    await page.keyboard.press("Tab")
    await page.keyboard.type("配信の設定が分かりにくかった")
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "次へ進む":
            break
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="活用ガイドとトレーニング")).to_be_visible()
    await page.get_by_role("button", name="提案を利用せず、解約の手続きを続ける").click()
    request_id, chosen = await confirm_and_submit(visit, "saved")

    await expect(page.get_by_role("heading", name="解約を受け付けました")).to_be_visible()
    await expect(page.locator(".withdraw")).to_contain_text("活用ガイドとトレーニング")  # the offers again
    await expect(page.locator(".mails li")).to_have_count(3)
    await page.get_by_role("button", name="解約のお申し込みを撤回する").click()
    await page.wait_for_url(re.compile(rf"/requests/{request_id}$"))
    await page.evaluate("window.sameDocument = true")
    await expect(page.get_by_role("heading", name="解約のお申し込みを撤回しました")).to_be_visible()
    await expect(page.get_by_role("heading", name="ご精算（撤回により取り消し）")).to_be_visible()
    await expect(page.locator(".mails li")).to_have_count(4)
    await expect(page.get_by_text("撤回のお知らせ")).to_be_visible()
    await still_the_same_document(page)
    await visit.shot("saved-5-withdrawn")

    api = await client.submit(client.form(twin, reason="TOO_DIFFICULT", who=who, plan="pro", desired=chosen,
                                          feedback="配信の設定が分かりにくかった"))
    api_request = api.json()["request_id"]
    await client.wait_status(api_request, lambda s: s["settlement"] and len(s["notifications"]) >= 3)
    assert (await client.withdraw(api_request)).status_code == 202
    await client.wait_status(api_request, lambda s: s["status"] == "withdrawn" and len(s["notifications"]) >= 4
                             and s["settlement"]["status"] == "voided")
    events = await assert_same_as_the_api(client, infra, request_id, api_request)
    assert {"cancellation.withdrawal_requested", "cancellation.withdrawn", "settlement.voided"} <= set(events)
    visit.check_clean()


# --- without JavaScript -----------------------------------------------------------------------------

@pytest.mark.parametrize("visit", [(1280, False)], indirect=True)
async def test_the_forms_work_without_javascript(client, infra, visit):
    who = "page-nojs"
    contract = await client.sign_contract(start_date=OLD_START, who=who)
    page = visit.page
    await open_link(client, visit, contract)
    await fill_reason(visit, who, "LIBOTを使用しなくなった", "")
    await page.get_by_role("button", name="次へ進む").click()
    await expect(page.get_by_role("heading", name="プランの変更")).to_be_visible()
    await page.get_by_role("button", name="提案を利用せず、解約の手続きを続ける").click()
    await page.get_by_label("上記の注意事項を確認しました").check()
    await page.get_by_role("button", name="確認画面へ進む").click()
    await page.get_by_role("button", name="解約を申し込む").click()
    await page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}$"))
    heading = page.get_by_role("heading", name="解約を受け付けました")
    for _ in range(100):  # no script: the customer follows the link to see the news
        if await heading.count():
            break
        await page.get_by_role("link", name="最新の状態に更新").click()
        await page.wait_for_timeout(200)
    await expect(heading).to_be_visible(timeout=1)
    status = await client.status(page.url.rsplit("/", 1)[1])
    assert status["status"] == "accepted" and status["offers"] == ["downgrade"]
    assert not [u for u in visit.requests if "/live" in u], "no script ran, so nothing polled"
    visit.check_clean()


# --- saved: an offer taken from the status page -----------------------------------------------------

@pytest.mark.parametrize("visit", [(375, False)], indirect=True)
async def test_an_offer_taken_from_the_status_page_withdraws_with_it(client, infra, visit):
    """Without JavaScript, as the plainest browser does it: the status page's "take this offer" button is the
    API's take (one retention.offer_taken, the offer confirmation); a second, stale tab that then takes the
    other offer is told, in the customer's words, why it cannot."""
    who = "page-offer"
    contract = await client.sign_contract(start_date=OLD_START, plan="pro", who=who)
    rid = (await client.submit(client.form(contract, reason="SWITCHING_TOOL", who=who, plan="pro"))).json()[
        "request_id"]
    await client.wait_status(rid, lambda s: s["status"] == "accepted" and s["settlement"] is not None)
    page = visit.page
    status_path = f"{await open_link(client, visit, contract)}/requests/{rid}"
    await page.goto(status_path)
    stale = await page.context.new_page()  # the same customer's second tab, opened before the take
    await stale.goto(status_path)

    offers = page.locator(".withdraw .offer")
    await expect(offers).to_have_count(2)
    await visit.shot("offer-5-status")
    await offers.filter(has_text="継続割引").get_by_role("button", name="このご提案を受けて、解約を撤回する").click()
    await page.wait_for_url(re.compile(rf"/requests/{rid}$"))
    heading = page.get_by_role("heading", name="解約のお申し込みを撤回しました")
    voided = page.get_by_role("heading", name="ご精算（撤回により取り消し）")
    for _ in range(100):  # no script: the customer follows the link to see the news (billing voids on its own time)
        if await heading.count() and await voided.count() \
                and await page.locator(".mails").get_by_text("ご提案のお申し込みのお知らせ").count():
            break
        await page.get_by_role("link", name="最新の状態に更新").click()
        await page.wait_for_timeout(200)
    await expect(heading).to_be_visible(timeout=1)
    await expect(page.locator(".taken-offer")).to_contain_text("継続割引")
    await expect(voided).to_be_visible()
    await expect(page.get_by_role("button", name="このご提案を受けて、解約を撤回する")).to_have_count(0)
    await visit.shot("offer-6-taken")

    # The stale tab still shows both offers; taking the other one is the API's 409, said plainly.
    await stale.locator(".withdraw .offer").filter(has_text="個別の活用相談").get_by_role("button").click()
    await expect(stale.get_by_role("alert")).to_contain_text("ご提案をお受けできませんでした")
    await expect(stale.get_by_role("alert")).to_contain_text("すでに「継続割引」のご利用で")
    await stale.screenshot(path=str(SHOTS / "offer-7-refused-375.png"), full_page=True)

    s = await client.status(rid)
    assert (s["status"], s["taken_offer"], s["settlement"]["status"]) == ("withdrawn", "discount", "voided")
    kinds = [n["kind"] for n in s["notifications"]]
    assert kinds.count("offer_confirmation") == 1 and "withdrawal_confirmation" not in kinds, kinds
    taken = [orjson.loads(r.value) for r in await read_topic(infra.bootstrap, topics.RETENTION,
                                                              lambda r: r.key == contract.encode())]
    assert [(t["data"]["request_id"], t["data"]["offer"]) for t in taken] == [(rid, "discount")]
    visit.check_clean()
