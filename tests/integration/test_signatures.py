"""Signed upstream calls on the real intake: `t=<unix>,v1=<HMAC of "t.body">`, refused when stale, replayed
(also to another intake instance: the memory is intake's database) or in the old `sha256=` form."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
from datetime import date

import httpx
import orjson
import pytest

from cancelflow.infra.ports import free_port, wait_port
from cancelflow.stack import REPO_ROOT
from services.intake.signatures import sign

pytestmark = pytest.mark.integration


def _headers(signature: str) -> dict[str, str]:
    return {"X-API-Key": "", "X-Signature": signature, "Content-Type": "application/json"}


async def _signed_body(client) -> bytes:
    contract = await client.sign_contract(start_date=date(2024, 1, 31))
    return orjson.dumps(client.form(contract))


async def test_a_signature_is_good_once_and_within_the_tolerance(client, infra, db):
    if infra.webhook_secret is None:
        pytest.skip("this external stack gave no INTAKE_WEBHOOK_SECRET")
    http, secret, now = client.http, infra.webhook_secret, int(infra.clock.now().timestamp())
    body = await _signed_body(client)

    signature = sign(secret, body, now)
    first = await http.post("/v1/cancellations", content=body, headers=_headers(signature))
    assert first.status_code == 202, first.text
    digest = signature.split("v1=")[1]
    assert await db.fetchval("SELECT count(*) FROM intake.seen_signatures WHERE digest = $1", digest) == 1

    replay = await http.post("/v1/cancellations", content=body, headers=_headers(signature))
    assert replay.status_code == 401 and "used before" in replay.json()["detail"]

    # The same body signed anew (an upstream's retry) is a new signature: accepted.
    again = await http.post("/v1/cancellations", content=body, headers=_headers(sign(secret, body, now - 1)))
    assert again.status_code == 202

    stale = await http.post("/v1/cancellations", content=body, headers=_headers(sign(secret, body, now - 301)))
    assert stale.status_code == 401 and "outside the tolerance of 300 s" in stale.json()["detail"]
    ahead = await http.post("/v1/cancellations", content=body, headers=_headers(sign(secret, body, now + 400)))
    assert ahead.status_code == 401 and "ahead" in ahead.json()["detail"]

    old_form = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    refused = await http.post("/v1/cancellations", content=body, headers=_headers(old_form))
    assert refused.status_code == 401 and "sha256=" in refused.json()["detail"]

    wrong = await http.post("/v1/cancellations", content=body, headers=_headers(sign("not-the-secret", body, now)))
    assert wrong.status_code == 401 and "does not match" in wrong.json()["detail"]
    garbled = await http.post("/v1/cancellations", content=body, headers=_headers("t=soon,v1="))
    assert garbled.status_code == 401 and "t=<unix seconds>" in garbled.json()["detail"]


async def _ready(port: int, timeout: float = 90) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        for _ in range(int(timeout / 0.2)):
            if (await http.get("/ready")).status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"the second intake was not ready within {timeout:.0f} s")


async def test_a_replay_to_another_intake_instance_is_refused(client, infra):
    """Two intake processes on one database (as `--instances 2` runs them): the second one knows what the
    first accepted."""
    if infra.stack is None:
        pytest.skip("starts a second intake process of the local test stack")
    stack, port = infra.stack, free_port()
    env = stack.service_env("intake") | {"INTAKE_HTTP_PORT": str(port)}
    cmd = [*stack.service_command("intake")[:-1], str(port)]
    log = open(stack.logs / "intake-second.log", "ab")
    second = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                              start_new_session=True)
    try:
        assert wait_port(port, 60), "the second intake did not listen"
        await _ready(port)
        body = await _signed_body(client)
        signature = sign(infra.webhook_secret, body, int(infra.clock.now().timestamp()))
        assert (await client.http.post("/v1/cancellations", content=body, headers=_headers(signature))).status_code == 202
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as other:
            replay = await other.post("/v1/cancellations", content=body, headers=_headers(signature))
            assert replay.status_code == 401 and "used before" in replay.json()["detail"]
            fresh = sign(infra.webhook_secret, body, int(infra.clock.now().timestamp()) - 2)
            assert (await other.post("/v1/cancellations", content=body, headers=_headers(fresh))).status_code == 202
    finally:
        second.terminate()
        second.wait(timeout=30)
        log.close()
