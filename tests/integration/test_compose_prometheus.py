"""The compose stack's Prometheus scrapes the four services: one cancellation's metrics read back through
Prometheus's HTTP API. Needs a compose stack (scripts/compose-test sets PROMETHEUS_URL and runs it);
CANCELFLOW_REQUIRE_PROMETHEUS=1 turns the skip into a failure, so that compose-test cannot pass without it."""

from __future__ import annotations

import asyncio
import os
from datetime import date

import httpx
import pytest

pytestmark = pytest.mark.integration

SERVICES = ("intake", "eligibility", "billing", "notifier")


@pytest.fixture
def prometheus_url() -> str:
    url = os.environ.get("PROMETHEUS_URL")
    if not url:
        if os.environ.get("CANCELFLOW_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("CANCELFLOW_REQUIRE_PROMETHEUS=1 but PROMETHEUS_URL is not set")
        pytest.skip("needs the compose stack's Prometheus (PROMETHEUS_URL; scripts/compose-test sets it)")
    return url


async def query(http: httpx.AsyncClient, promql: str) -> list[dict]:
    r = await http.get("/api/v1/query", params={"query": promql})
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def sent_acknowledgements(http: httpx.AsyncClient) -> float:
    result = await query(http, 'sum(cancelflow_notifications_sent_total{kind="acknowledgement"})')
    return float(result[0]["value"][1]) if result else 0.0


async def test_prometheus_scrapes_every_service_and_sees_a_cancellation(client, prometheus_url):
    async with httpx.AsyncClient(base_url=prometheus_url, timeout=10) as http:
        for _ in range(60):  # the first scrape comes within one 5 s interval of the target's start
            up = {r["metric"]["job"]: r["value"][1] for r in await query(http, "up")}
            if all(up.get(s) == "1" for s in SERVICES):
                break
            await asyncio.sleep(0.5)
        assert {s: up.get(s) for s in SERVICES} == {s: "1" for s in SERVICES}

        before = await sent_acknowledgements(http)
        contract = await client.sign_contract(start_date=date(2024, 1, 31))
        r = await client.submit(client.form(contract))
        assert r.status_code == 202, r.text
        rid = r.json()["request_id"]
        await client.wait_status(rid, lambda s: any(n["kind"] == "acknowledgement" for n in s["notifications"]))

        # Each service is scraped every 5 s at its own offset: wait until both scrapes show the request.
        after, consumed = before, 0.0
        for _ in range(60):
            after = await sent_acknowledgements(http)
            consumed = sum(float(r["value"][1]) for r in await query(
                http, 'cancelflow_messages_consumed_total{service="eligibility",topic="cancellation.requests"}'))
            if after >= before + 1 and consumed >= 1:
                break
            await asyncio.sleep(0.5)
        assert after >= before + 1, f"Prometheus saw {before} then {after} acknowledgements"
        assert consumed >= 1, "Prometheus saw no request consumed by eligibility"
