"""`cancelflow demo`: every case of the product on a running stack, shown as a table.

It signs contracts, submits cancellations over HTTP and Kafka, records a payment, withdraws one, takes an
offer for another, shows one in the stack's holdout (no offers; `cancelflow up --offer-holdout-percent`), then moves the stack's clock (the demo stack shares a clock file) to show the reminders 14 days
before, the completion on the effective date and a request for the ended contract. The clock is put
back at the end. Last, it prints a signed link to the customer's cancel page for a fresh contract.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta, timezone

from rich.console import Console
from rich.table import Table

from shared.contract_calendar import TOKYO, billing_dates_between, tokyo_date
from shared.clock import FileClock

from services.eligibility.domain import in_holdout

from .client import PipelineClient, unique
from .infra.errors import InfraError
from .stack import Stack
from .stack_security import UPSTREAM


def run_demo(stack: Stack, *, intake_url: str, api_key: str, console: Console) -> None:
    asyncio.run(_demo(stack, intake_url, api_key, console))


async def _demo(stack: Stack, intake_url: str, api_key: str, console: Console) -> None:
    clock = FileClock(stack.config.clock_file) if stack.config.clock_file else None
    holdout = stack.recorded_holdout_percent()

    def contract_id(held: bool = False) -> str:
        """A new contract id in (or outside) the stack's holdout group: the rule is deterministic."""
        while True:
            candidate = unique("C")
            if in_holdout(candidate, holdout) == held:
                return candidate

    async with PipelineClient(stack.kafka_connection, intake_url, stack.mail_dir, api_key=api_key,
                              publisher=stack.connection_for(UPSTREAM)) as c:
        today = tokyo_date(datetime.now(timezone.utc))
        console.rule("signing contracts")
        old = today.replace(year=today.year - 2)
        sign = c.sign_contract
        a = await sign(start_date=old.replace(day=28), monthly_fee_jpy=12_000, plan="pro", contract_id=contract_id())
        b = await sign(start_date=old, monthly_fee_jpy=8_000, contract_id=contract_id())
        young = await sign(start_date=today - timedelta(days=100), monthly_fee_jpy=5_000, plan="lite",
                           contract_id=contract_id())
        d = await sign(start_date=old, monthly_fee_jpy=20_000, plan="enterprise", contract_id=contract_id())
        g = await sign(start_date=old, monthly_fee_jpy=9_800, contract_id=contract_id())
        k = await sign(start_date=old, monthly_fee_jpy=10_000, contract_id=contract_id())
        t = await sign(start_date=old, monthly_fee_jpy=15_000, plan="pro", contract_id=contract_id())
        h = await sign(start_date=old, monthly_fee_jpy=15_000, plan="pro",
                       contract_id=contract_id(held=True)) if holdout else None
        # One billing date of A is already paid: it is not charged again.
        first_due = next(day for day in (today + timedelta(days=i) for i in range(32)) if day.day == 28)
        await c.record_payment(a, first_due, 12_000)

        cases: list[tuple[str, str]] = []

        async def http(label: str, contract: str, n: int, **kw) -> str:
            r = await c.submit(c.form(contract, who=n, **kw))
            if r.status_code != 202:
                raise InfraError(f"demo: intake answered {r.status_code}: {r.text}")
            cases.append((label, r.json()["request_id"]))
            return r.json()["request_id"]

        console.rule("submitting cancellations")
        ra = await http("accepted (HTTP), one month already paid", a, 1, reason="SWITCHING_TOOL")
        rb = await http("accepted, then withdrawn", b, 2, reason="TOO_DIFFICULT")
        await http("MINIMUM_TERM (date in the first year)", young, 3, reason="INITIAL_SETUP_FAILED",
                   desired=today + timedelta(days=60))
        await http("NOTICE_PERIOD (desired date too soon)", d, 4, reason="BUSINESS_CLOSED",
                   desired=today + timedelta(days=30))
        await c.wait_status(ra, lambda s: s["status"] != "received")
        await http("ALREADY_PENDING (second request)", a, 5, reason="NO_LONGER_USED")
        await http("CONTRACT_NOT_FOUND", "C-NEVER-SIGNED", 6, reason="LINE_ACCOUNT_UNAVAILABLE")
        rg = await http("accepted, completed on its effective date", g, 7, reason="NOT_USEFUL_FOR_BUSINESS")
        rt = await http("accepted, offer taken: withdrawn for a discount", t, 10, reason="SWITCHING_TOOL",
                        feedback="他社の方が月額が安い。見積もりは sato@example.jp まで（090-1234-5678）")
        if h is not None:
            await http(f"holdout ({holdout}%): accepted, shown no offers", h, 11, reason="SWITCHING_TOOL",
                       feedback="配信の予約機能が使いにくかった")
        sid = await c.submit_kafka(c.form(k, who=8, reason="NO_LONGER_USED"))
        for _ in range(100):
            rk = await c.http.get("/v1/cancellations", params={"submission_id": sid})
            if rk.status_code == 200:
                break
            await asyncio.sleep(0.1)
        cases.append(("accepted (Kafka submission)", rk.json()["request_id"]))

        for _, rid in cases:
            await c.wait_status(rid, lambda s: s["status"] != "received")
        await c.wait_mails(rb, 3)  # the customer read the acknowledgement and took an offer
        console.rule("withdrawing one")
        await c.withdraw(rb)
        await c.wait_status(rb, lambda s: s["status"] == "withdrawn")
        console.rule("taking an offer")
        await c.wait_mails(rt, 3)
        taken = await c.take_offer(rt, "discount")
        if taken.status_code != 202:
            raise InfraError(f"demo: taking the offer answered {taken.status_code}: {taken.text}")
        await c.wait_status(rt, lambda s: s["status"] == "withdrawn")
        if h is None:
            console.print("no holdout on this stack (start it with `cancelflow up --offer-holdout-percent N`)")

        if clock is not None:
            effective = (await c.status(rg))["effective_date"]
            eff = datetime.fromisoformat(effective).date()
            console.rule(f"moving the clock to 10:00 JST 14 days before {eff}")
            clock.set(datetime.combine(eff - timedelta(days=14), time(10, 0, 5), TOKYO))
            await c.wait_mails(ra, 5)
            console.rule(f"moving the clock to the effective date {eff}")
            clock.set(datetime.combine(eff, time(0, 0, 5), TOKYO))
            await c.wait_status(rg, lambda s: s["status"] == "completed")
            await http("CONTRACT_ENDED (after completion)", g, 9, reason="BUSINESS_CLOSED")
            await c.wait_mails(cases[-1][1], 1)
            clock.path.unlink(missing_ok=True)
        await asyncio.sleep(1.0)  # let the last notifications land in the status view

        table = Table("case", "status", "effective", "codes / earliest", "offers", "final charge", "paid through",
                      "mails", title="What happened to each request")
        for label, rid in cases:
            s = await c.status(rid)
            st = s["settlement"] or {}
            codes = ", ".join(s["codes"]) + (f" / {s['earliest_effective_date']}" if s["earliest_effective_date"] else "")
            charge = (f"¥{st['total_jpy']:,} ({len(st['charges'])} months)" if "total_jpy" in st else "-") + \
                     (" voided" if st.get("status") == "voided" else "")
            offers = ", ".join(s["offers"]) + (f" (took {s['taken_offer']})" if s.get("taken_offer") else "")
            table.add_row(label, s["status"], s["effective_date"] or "-", codes or "-", offers or "-",
                          charge, st.get("paid_through", "-"), str(len(c.mails(rid))))
        console.print(table)
        mails = Table("request", "kind", "to", "subject (English part)", title="E-mails received by the SMTP sink")
        ids = {rid for _, rid in cases}
        for m in c.mails():
            rid = m.headers.get("X-Cancelflow-Request-Id")
            if rid in ids:
                masked = m.to[0] + "***@" + m.to.split("@")[1]
                subject = m.subject.split(" / ")[-1].split(" [")[0]
                mails.add_row(rid[:8], m.headers.get("X-Cancelflow-Kind", ""), masked, subject)
        console.print(mails)
        # A contract of its own for the customer's page, with the customer's details to prefill the form.
        on_page = await c.sign_contract(start_date=old, monthly_fee_jpy=9_800, plan="standard", who="page")
        await c.record_payment(on_page, billing_dates_between(old, today, today + timedelta(days=40))[0], 9_800)
        link = await c.cancel_link(on_page)
        console.rule("the customer's cancel page")
        print(link["url"], flush=True)  # on one line, whatever the terminal's width, to copy it
        console.print(f"(contract {on_page}; valid until {link['expires_at']}; `cancelflow link CONTRACT_ID` "
                      "makes another)", highlight=False)
        console.print(f"\nnext: [bold].venv/bin/cancelflow trace {cases[0][1]}[/bold]  (every event of the first request)\n"
                      "      [bold].venv/bin/cancelflow report --html .stack/report.html[/bold]  (reasons, save rate, "
                      "time to first answer, offers taken, lift against the holdout)\n      [bold].venv/bin/cancelflow top[/bold]  (rates, lag, dead letters); "
                      f"metrics: http://127.0.0.1:{stack.ports.intake}/metrics (and each service's port)",
                      highlight=False)
