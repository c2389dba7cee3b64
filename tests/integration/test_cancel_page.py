"""The customer's cancel page in a real browser (Debian's Chromium driven by Playwright), on the real stack.

Accepted, rejected and saved, clicked through at 375 px and 1280 px; the status page is watched changing by
itself; every submission through the page is compared, event by event on the topics, with the same
submission made through the API for a twin contract. Screenshots go to tests/screenshots/ (not in git).

Accepted and rejected here; saved (withdrawn, an offer taken) and without JavaScript:
test_cancel_page_saved.py.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

import pytest
from playwright.async_api import expect

from cancelflow.client import customer
from services.intake.page.wording import jp_date, yen
from shared.contract_calendar import TOKYO, add_months

from tests.integration.cancel_page_steps import (OLD_START, assert_same_as_the_api, confirm_and_submit, fill_reason,
                                                 open_link, still_the_same_document, today, twins)

pytestmark = pytest.mark.integration


# --- accepted ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("visit", [1280, 375], indirect=True)
async def test_accepted_through_the_page_as_through_the_api(client, infra, visit, clock):
    who = f"page-accepted-{visit.width}"
    contract, twin = await twins(client, start=OLD_START, who=who, paid=1)
    page = visit.page
    path = await open_link(client, visit, contract)
    await expect(page.get_by_text("@" + contract.lower())).to_be_visible()
    await visit.shot("accepted-1-reason")
    await fill_reason(visit, who, "別のツールを使用するため", "予約配信の機能が欲しかった")
    await page.get_by_role("button", name="次へ進む").click()

    await expect(page.get_by_role("heading", name="個別の活用相談")).to_be_visible()
    await expect(page.get_by_role("heading", name="継続割引")).to_be_visible()
    await visit.shot("accepted-2-offers")
    await page.get_by_role("button", name="提案を利用せず、解約の手続きを続ける").click()

    # The quote: the picker starts at the earliest date and refuses anything before it.
    earliest = (await client.quote(contract, reason="SWITCHING_TOOL")).json()["earliest_effective_date"]
    picker = page.get_by_label("解約希望日")
    await expect(picker).to_have_attribute("min", earliest)
    await expect(picker).to_have_value(earliest)
    chosen = date.fromisoformat(earliest) + timedelta(days=40)  # a later date: more months charged
    await picker.fill(chosen.isoformat())
    await page.get_by_role("button", name="この日付で計算し直す").click()
    quote = (await client.quote(contract, desired=chosen, reason="SWITCHING_TOOL")).json()
    assert quote["codes"] == [] and len(quote["charges"]) >= 1
    await expect(page.locator(".quote .total")).to_have_text(yen(quote["total_jpy"]))
    for charge in quote["charges"]:
        await expect(page.locator(".charges")).to_contain_text(jp_date(date.fromisoformat(charge["billing_date"])))
    await expect(page.get_by_text(f"{jp_date(date.fromisoformat(quote['paid_through']))}まで")).to_be_visible()
    await expect(page.get_by_role("heading", name="データのエクスポート")).to_be_visible()
    await expect(page.get_by_role("heading", name="リッチメニューの解除")).to_be_visible()
    await expect(page.get_by_text("LINE Official Account Managerの管理画面で設定されたものではなく")).to_be_visible()
    await visit.shot("accepted-3-quote")
    request_id, _ = await confirm_and_submit(visit, "accepted")

    # The status page follows the request by itself: accepted, the settlement quoted, three e-mails.
    await expect(page.get_by_role("heading", name="解約を受け付けました")).to_be_visible()
    await expect(page.locator(".settlement .total")).to_have_text(yen(quote["total_jpy"]))
    await expect(page.locator(".mails li")).to_have_count(3)
    await expect(page.get_by_role("button", name="解約のお申し込みを撤回する")).to_be_visible()
    await still_the_same_document(page)
    await visit.shot("accepted-5-status")

    api = await client.submit(client.form(twin, reason="SWITCHING_TOOL", desired=chosen, who=who, plan="pro",
                                          feedback="予約配信の機能が欲しかった"))
    api_request = api.json()["request_id"]
    await client.wait_status(api_request, lambda s: s["settlement"] and len(s["notifications"]) >= 3)
    events = await assert_same_as_the_api(client, infra, request_id, api_request)
    assert events["cancellation.accepted"]["effective_date"] == chosen.isoformat()
    assert events["settlement.issued"]["charges"] == quote["charges"]
    visit.check_clean()

    if visit.width == 1280:  # the reminders and the end of the contract, seen arriving on the open page
        clock.set(datetime.combine(chosen - timedelta(days=14), time(10, 0, 5), TOKYO))
        await expect(page.locator(".mails li")).to_have_count(5)
        clock.set(datetime.combine(chosen, time(0, 0, 5), TOKYO))
        await expect(page.get_by_role("heading", name="解約が完了しました")).to_be_visible()
        await expect(page.get_by_role("button", name="解約のお申し込みを撤回する")).to_have_count(0)
        await still_the_same_document(page)
        await visit.shot("accepted-6-completed")
        await page.goto(path)  # the link again: nothing left to cancel
        await expect(page.get_by_text("このご契約はすでに終了しています")).to_be_visible()
        await expect(page.get_by_role("button", name="次へ進む")).to_have_count(0)


# --- rejected: a date too early ---------------------------------------------------------------------

@pytest.mark.parametrize("visit", [375], indirect=True)
async def test_a_date_too_early_is_refused_by_the_picker_and_rejected_when_posted(client, infra, visit):
    who = "page-rejected"
    start = today() - timedelta(days=100)  # in its first year: the minimum term binds
    contract, twin = await twins(client, start=start, who=who)
    page = visit.page
    path = await open_link(client, visit, contract)
    await fill_reason(visit, who, "自分のビジネスを辞めた", "")
    await page.get_by_role("button", name="次へ進む").click()

    # No offers fit a closed business: straight to the quote.
    picker = page.get_by_label("解約希望日")
    earliest = add_months(start, 12)
    await expect(picker).to_have_attribute("min", earliest.isoformat())
    too_early = today() + timedelta(days=30)  # before the anniversary and inside the notice period
    await picker.fill(too_early.isoformat())
    await page.get_by_label("上記の注意事項を確認しました").check()
    before = page.url
    await page.get_by_role("button", name="確認画面へ進む").click()
    assert await picker.evaluate("el => el.validity.rangeUnderflow") is True
    assert page.url == before, "the picker let a date before the earliest through"
    await expect(page.get_by_role("heading", name="解約日と最終のご請求")).to_be_visible()
    await visit.shot("rejected-3-picker-refuses")

    # Posted anyway (the picker's limit taken away): the pipeline rejects it and the page shows the rules.
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    answer = await page.request.post(f"{path}/submit", form={
        "csrf": csrf, "reason": "BUSINESS_CLOSED", "feedback": "", "desired_effective_date": too_early.isoformat(),
        **customer(who)})
    assert answer.ok and re.search(r"/requests/[0-9a-f-]{36}$", answer.url)
    await page.goto(answer.url)
    await page.evaluate("window.sameDocument = true")
    await expect(page.get_by_role("heading", name="お申し込みを受け付けられませんでした")).to_be_visible()
    await expect(page.get_by_text("初年度は年間契約のため")).to_be_visible()
    await expect(page.get_by_text("45日以上先の日付")).to_be_visible()
    await expect(page.locator(".error-summary")).to_contain_text(jp_date(earliest))
    await expect(page.locator(".mails li")).to_have_count(1)
    await still_the_same_document(page)
    await visit.shot("rejected-5-status")
    request_id = answer.url.rsplit("/", 1)[1]

    api = await client.submit(client.form(twin, reason="BUSINESS_CLOSED", desired=too_early, who=who, plan="pro",
                                          feedback=""))
    await client.wait_status(api.json()["request_id"], lambda s: s["status"] == "rejected" and s["notifications"])
    events = await assert_same_as_the_api(client, infra, request_id, api.json()["request_id"])
    assert events["cancellation.rejected"]["codes"] == ["MINIMUM_TERM", "NOTICE_PERIOD"]
    visit.check_clean()
