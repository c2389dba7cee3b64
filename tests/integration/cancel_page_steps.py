"""What the cancel page's browser tests share: a customer's browser window (`Visit`), the steps they click
through, twin contracts, and the comparison of a page's submission with the API's, event by event."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path

import asyncpg
import orjson
from playwright.async_api import Page, expect

from cancelflow.client import customer, read_topic
from shared import topics
from shared.contract_calendar import add_months, tokyo_date
from shared.events import SealedCustomer
from shared.sealing import DataKey, unseal

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]
SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
OLD_START = date(2024, 1, 31)
WAIT = 30_000  # ms: the pipeline's answer reaches the page within this


def today() -> date:
    return tokyo_date(datetime.now(timezone.utc))


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
