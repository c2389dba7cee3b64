"""The customer's cancel page in a real browser (Debian's Chromium driven by Playwright), on the real stack.

Accepted, rejected and saved, clicked through at 375 px and 1280 px; the status page is watched changing by
itself; every submission through the page is compared, event by event on the topics, with the same
submission made through the API for a twin contract. Screenshots go to tests/screenshots/ (not in git).
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import asyncpg
import orjson
import pytest
from playwright.async_api import Page, async_playwright, expect

from cancelflow.client import customer, read_topic
from services.intake.page.wording import jp_date, yen
from shared import topics
from shared.contract_calendar import TOKYO, add_months, tokyo_date
from shared.events import SealedCustomer
from shared.sealing import DataKey, unseal

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
OLD_START = date(2024, 1, 31)
WAIT = 30_000  # ms: the pipeline's answer reaches the page within this


def today() -> date:
    return tokyo_date(datetime.now(timezone.utc))


@pytest.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/install installs Debian's chromium")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


class Visit:
    """One customer's browser window: what it requested and what the console said."""

    def __init__(self, page: Page, width: int, origin: str) -> None:
        self.page, self.width, self.origin = page, width, origin
        self.requests: list[str] = []
        self.console: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.console.append(m.text))

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(SHOTS / f"{name}-{self.width}.png"), full_page=True)
        # Readable at this width: nothing wider than the window (no sideways scrolling).
        assert await self.page.evaluate("document.documentElement.scrollWidth") <= self.width, name

    def check_clean(self) -> None:
        """Nothing fetched from elsewhere, nothing refused by the Content-Security-Policy."""
        assert self.requests and all(u.startswith(self.origin) for u in self.requests), self.requests
        assert not [m for m in self.console if "Content Security Policy" in m or "Refused" in m], self.console


@pytest.fixture
async def visit(browser, infra, request):
    width, js = request.param if isinstance(request.param, tuple) else (request.param, True)
    context = await browser.new_context(viewport={"width": width, "height": 900}, locale="ja-JP",
                                        java_script_enabled=js, base_url=infra.intake_url)
    page = await context.new_page()
    page.set_default_timeout(WAIT)
    yield Visit(page, width, infra.intake_url)
    await context.close()


async def twins(client, *, start: date, who: str, fee: int = 12_000, paid: int = 0) -> tuple[str, str]:
    """Two contracts with the same terms and payments: one for the page, one for the API."""
    pair = []
    for _ in range(2):
        contract = await client.sign_contract(start_date=start, monthly_fee_jpy=fee, plan="pro", who=who)
        for b in [add_months(start, n) for n in range(80) if add_months(start, n) >= today()][:paid]:
            await client.record_payment(contract, b, fee)
        pair.append(contract)
    return pair[0], pair[1]


async def events_of(infra, request_id: str) -> dict[str, dict]:
    """event_type -> data of every event about the request on the pipeline's topics; the customer opened."""
    found: dict[str, dict] = {}
    for topic in (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS):
        for record in await read_topic(infra.bootstrap, topic, lambda r: request_id.encode() in r.value):
            envelope = orjson.loads(record.value)
            found[envelope["event_type"]] = await opened(infra, envelope["data"])
    return found


async def opened(infra, data: dict) -> dict:
    """`customer_sealed` opened with its contract's data key: each contract has its own key (and each seal
    its own nonce), so two requests' ciphertexts differ even for the same customer."""
    if data.get("customer_sealed") is None:
        return data
    contract_id = data["contract_id"]
    conn = await asyncpg.connect(infra.database_url)
    try:
        row = await conn.fetchrow("SELECT key_id, key FROM intake.subject_keys WHERE contract_id = $1", contract_id)
    finally:
        await conn.close()
    key = DataKey(contract_id, row["key_id"], bytes(row["key"])) if row else None
    customer = unseal(SealedCustomer.model_validate(data["customer_sealed"]), contract_id, key)
    return {k: v for k, v in data.items() if k != "customer_sealed"} | {"customer": customer.model_dump(mode="json")}


# Fields that name the request, the contract or the moment, not what was decided.
IDENTITY = {"request_id", "contract_id", "account_id", "submission_id", "received_at", "decided_at",
            "withdrawn_at", "requested_at"}


async def assert_same_as_the_api(client, infra, page_request: str, api_request: str) -> dict[str, dict]:
    ours, theirs = await events_of(infra, page_request), await events_of(infra, api_request)
    assert set(ours) == set(theirs), (set(ours), set(theirs))
    def what(data: dict) -> dict:  # the moments (`*_at`) differ by the seconds between the two submissions
        return {k: v for k, v in data.items() if k not in IDENTITY and not k.endswith("_at")}

    for kind in ours:
        assert what(ours[kind]) == what(theirs[kind]), kind
    assert ours["cancellation.requested"]["source"] == "http"
    page_status, api_status = await client.status(page_request), await client.status(api_request)
    assert sorted(n["kind"] for n in page_status["notifications"]) == \
        sorted(n["kind"] for n in api_status["notifications"])
    return ours


async def open_link(client, visit: Visit, contract: str) -> str:
    url = (await client.cancel_link(contract, ttl_days=90))["url"]
    path = url[len(visit.origin):]
    await visit.page.goto(path)
    return path


async def fill_reason(visit: Visit, who: str, reason_label: str, feedback: str) -> None:
    page = visit.page
    await expect(page.get_by_label("ご契約者名")).to_have_value(customer(who)["name"])  # prefilled
    await expect(page.get_by_label("メールアドレス")).to_have_value(customer(who)["email"])
    await expect(page.get_by_label("お電話番号")).to_have_value(customer(who)["phone"])
    await page.get_by_label(reason_label).check()
    await page.get_by_label("LIBOTの改善してほしい点や、欲しい機能など").fill(feedback)


async def confirm_and_submit(visit: Visit, shot_prefix: str) -> tuple[str, date]:
    """From the quote step: the request's id, and the date the picker held (the form's desired date)."""
    page = visit.page
    chosen = date.fromisoformat(await page.get_by_label("解約希望日").input_value())
    await page.get_by_label("上記の注意事項を確認しました").check()
    await page.get_by_role("button", name="確認画面へ進む").click()
    await expect(page.get_by_role("heading", name="お申し込み内容のご確認")).to_be_visible()
    await visit.shot(f"{shot_prefix}-4-confirm")
    await page.get_by_role("button", name="解約を申し込む").click()
    await page.wait_for_url(re.compile(r"/requests/[0-9a-f-]{36}$"))
    await page.evaluate("window.sameDocument = true")  # gone if the page reloaded: updates come by themselves
    return page.url.rsplit("/", 1)[1], chosen


async def still_the_same_document(page: Page) -> None:
    assert await page.evaluate("window.sameDocument === true"), "the status page reloaded instead of updating"


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
