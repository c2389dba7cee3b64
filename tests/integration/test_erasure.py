"""Erasing a customer's personal data (APPI, GDPR) on the real broker and database: `cancelflow erase`
publishes `customer.erasure_requested`; afterwards no table of the four services and no record of the topics
the pipeline writes yields the customer's name, e-mail or phone, while the request, its decision and its
settlement (the accounting) stay, and the pipeline goes on for everyone else."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from datetime import date, datetime, timedelta, timezone

import asyncpg
import pytest

from cancelflow.client import unique
from cancelflow.kafka_clients import read_topics
from shared import topics
from shared.contract_calendar import tokyo_date
from shared.events import ContractSigned, Customer
from shared.vocabulary import SERVICES

pytestmark = pytest.mark.integration

# The topics the pipeline writes (contracts.events and cancellation.submissions are upstream's: docs/security.md).
PIPELINE_TOPICS = [t for name in (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS)
                   for t in (name, topics.dlq(name))]


def _person() -> Customer:
    tag = unique("e").split("-")[1]
    digits = f"{random.randrange(10**8):08d}"  # unique enough that no other test's customer shares it
    return Customer(name=f"消去 花子 {tag}", email=f"hanako.{tag}@example.jp", phone=f"080-{digits[:4]}-{digits[4:]}")


def _traces(person: Customer) -> list[bytes]:
    """What of the person could be read: the e-mail, the phone as typed and as digits only, the name."""
    return [person.email.encode(), person.phone.encode(), person.phone.replace("-", "").encode(),
            person.name.encode()]


async def _rows_with(db, person: Customer) -> list[str]:
    """Every row of every table of the four schemas, as text, that shows something of the person."""
    found = []
    tables = await db.fetch("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY($1::text[])",
                            list(SERVICES))
    for t in tables:
        rows = await db.fetch(f'SELECT t::text AS row FROM "{t["schemaname"]}"."{t["tablename"]}" t')
        found += [f'{t["schemaname"]}.{t["tablename"]}: {r["row"][:80]}' for r in rows
                  if any(trace.decode() in r["row"] for trace in _traces(person))]
    return found


async def _records_with(infra, person: Customer) -> list[str]:
    records = await read_topics(infra.bootstrap, PIPELINE_TOPICS, timeout=30)
    return [f"{r.topic}[{r.partition}]@{r.offset}" for r in records
            if any(trace in (r.value or b"") for trace in _traces(person))]


async def _key_readable(infra, db, contract_id: str) -> bool:
    """Whether the contract's data key is there where notifier reads it: intake's `data_keys` view, as
    notifier's own role when the test has its own stack (and that role reads nothing else of intake's)."""
    if infra.stack is None:
        return bool(await db.fetchval("SELECT count(*) FROM intake.data_keys WHERE contract_id = $1", contract_id))
    conn = await asyncpg.connect(infra.stack.service_database_url("notifier"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM intake.subject_keys")
        return bool(await conn.fetchval("SELECT count(*) FROM intake.data_keys WHERE contract_id = $1", contract_id))
    finally:
        await conn.close()


async def test_after_erasure_nothing_of_the_person_is_readable_and_the_accounting_stays(client, infra, db, tmp_path):
    person = _person()
    contract = unique("ER")
    start = date(2023, 1, 31)
    where = await client.publish(ContractSigned(contract_id=contract, account_id="@" + contract.lower(), plan="pro",
                                                monthly_fee_jpy=9_800, start_date=start, customer=person),
                                 key=contract)
    await client.wait_consumed(("eligibility", "billing", "intake"), topics.CONTRACTS, *where)
    # Far enough ahead that the reminders are still to be sent when the erasure comes.
    desired = tokyo_date(infra.clock.now() if infra.clock else datetime.now(timezone.utc)) + timedelta(days=120)
    r = await client.submit(client.form(contract, desired=desired) | {"customer": person.model_dump(mode="json")})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    mails = await client.wait_mails(rid, 3, timeout=60)  # the acknowledgement and the two reminders on acceptance
    assert {m.to for m in mails} == {person.email}  # notifier opened the sealed customer with the contract's key
    assert any(person.name in m.body for m in mails)
    view = await client.wait_status(rid, lambda s: s["settlement"] is not None and s["notifications"], timeout=60)
    settlement = await db.fetchrow("SELECT total_jpy, status FROM billing.settlements WHERE request_id = $1", rid)
    assert settlement["status"] == "issued"
    assert await db.fetchval("SELECT count(*) FROM notifier.notifications WHERE request_id = $1"
                             " AND status = 'pending'", rid) > 0
    # Sealed from the start: the topics never had the person in clear; tables only what a service needs.
    assert await _records_with(infra, person) == []
    assert await _key_readable(infra, db, contract)
    assert {row.split(":")[0] for row in await _rows_with(db, person)} == {"intake.contracts"}  # the page's prefill

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap, "CANCELFLOW_STACK_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cancelflow.cli", "erase", contract,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 180))[0].decode()
    assert proc.returncode == 0 and "erased by intake and notifier" in " ".join(out.split()), out

    assert await _rows_with(db, person) == []
    assert await _records_with(infra, person) == []
    assert not await _key_readable(infra, db, contract)  # every sealed copy in the topics is unreadable now
    assert await db.fetchval("SELECT erased_at IS NOT NULL AND key IS NULL FROM intake.subject_keys"
                             " WHERE contract_id = $1", contract)
    statuses = {r["status"] for r in await db.fetch("SELECT status FROM notifier.notifications WHERE request_id = $1",
                                                    rid)}
    assert "pending" not in statuses and "erased" in statuses  # the reminders will never be sent
    # The accounting and the status view stay: ids, dates, decision, amounts.
    assert dict(await db.fetchrow("SELECT total_jpy, status FROM billing.settlements WHERE request_id = $1",
                                  rid)) == dict(settlement)
    after = await client.status(rid)
    assert after["status"] == view["status"] == "accepted" and after["settlement"]["total_jpy"] == \
        view["settlement"]["total_jpy"] == settlement["total_jpy"]
    assert after["effective_date"] == desired.isoformat()

    # The rest goes on: another contract's cancellation is sealed, opened and mailed as before.
    other = await client.sign_contract(start_date=start, who="after-erasure")
    rid2 = (await client.submit(client.form(other, who="after-erasure"))).json()["request_id"]
    mails = await client.wait_mails(rid2, 1, timeout=60)
    assert {m.to for m in mails} == {"taro.after-erasure@example.jp"}
