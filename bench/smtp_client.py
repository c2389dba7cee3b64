#!/usr/bin/env python
"""The notifier's SMTP client against aiosmtplib, sending to the project's SMTP sink, in one run.

    .venv/bin/python bench/smtp_client.py                      # 2,000 mails per client and round, 3 rounds
    .venv/bin/python bench/smtp_client.py --mails 500 --rounds 1 --connections 1 32

A command, not a test. It starts the project's sink (`python -m cancelflow.infra.mailsink`, as
`cancelflow up` does) as its own process on a free loopback port with a temporary maildir, and stops it
at the end. Each client sends the same pre-written mails (an acknowledgement: Japanese, base64, about
2 KB) over C connections kept open, C in `--connections` (32 is the notifier's default per dispatch
batch), N/C mails one after the other on each. The clients take turns within a round, in a rotating
order, so a busy neighbour on a shared machine hits all of them alike.

The clients
- `project`: services.notifier.smtp_client.Mailer.send with an empty commit: MAIL/RCPT/DATA pipelined
  (one round trip), the content, the commit, the final "." (a second round trip). What the notifier runs.
- `aiosmtplib-held`: aiosmtplib doing the same job, the DATA held open until the commit: `mail()`,
  `rcpt()`, `execute_command(b"DATA")`, the content written on `SMTP.protocol`, the commit, then
  `execute_command(b".")` (four round trips: aiosmtplib does not pipeline).
- `aiosmtplib-sendmail`: `SMTP.sendmail` on a kept-open connection: the library's ordinary path. It
  cannot put the commit between the content and the final ".", so it is not a replacement for the
  notifier; it is here as the library's best case.

Figures: mails per second (wall clock, first mail to last) and the bench process's CPU per mail (the
client's own cost), the median of the rounds, and each as a ratio to `project` in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiosmtplib  # noqa: E402

from cancelflow.infra.ports import free_port, wait_port  # noqa: E402
from services.notifier.settings import NotifierSettings  # noqa: E402
from services.notifier.smtp_client import Mail, Mailer, MailRefused, dot_stuffed  # noqa: E402
from services.notifier.texts import render  # noqa: E402

SENDER = "support@cancelflow.example"


async def _no_commit() -> None:
    return None


def mails(n: int) -> list[Mail]:
    """N acknowledgements as the notifier writes them, each to its own recipient."""
    content = render("acknowledgement", customer_name="山田 太郎", request_id="REQ-1", contract_id="C-1",
                     effective_date=date(2026, 6, 30), total_jpy=12_000, paid_through=date(2026, 7, 10),
                     offers=("consultation", "downgrade"))
    mailer = Mailer(NotifierSettings(mail_from=SENDER))
    return [mailer.compose(f"t{i}@example.jp", content.subject, content.body, f"<m{i}@bench>",
                           {"X-Cancelflow-Kind": "acknowledgement"}) for i in range(n)]


class Project:
    def __init__(self, port: int) -> None:
        self.mailer = Mailer(NotifierSettings(smtp_port=port, mail_from=SENDER))

    async def open(self) -> None:
        pass  # the Mailer connects on its first mail (the warm-up, below)

    async def send(self, mail: Mail) -> None:
        await self.mailer.send(mail, _no_commit)

    async def close(self) -> None:
        self.mailer.close()


class AiosmtplibHeld:
    """aiosmtplib with the notifier's guarantee: the commit between the content and the final "."."""

    def __init__(self, port: int) -> None:
        self.smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)

    async def open(self) -> None:
        await self.smtp.connect()
        await self.smtp.ehlo()

    async def send(self, mail: Mail) -> None:
        await self.smtp.mail(SENDER)
        await self.smtp.rcpt(mail.to)
        code, text = await self.smtp.execute_command(b"DATA")
        if code != 354:
            raise aiosmtplib.SMTPDataError(code, text)
        self.smtp.protocol.write(dot_stuffed(mail.content))
        await _no_commit()
        code, text = await self.smtp.execute_command(b".")
        if code != 250:
            raise MailRefused(f"{code} {text}")

    async def close(self) -> None:
        self.smtp.close()


class AiosmtplibSendmail(AiosmtplibHeld):
    """aiosmtplib's ordinary path: no place for a commit before the final "."."""

    async def send(self, mail: Mail) -> None:
        await self.smtp.sendmail(SENDER, [mail.to], mail.content)


CLIENTS = {"project": Project, "aiosmtplib-held": AiosmtplibHeld, "aiosmtplib-sendmail": AiosmtplibSendmail}


async def run(client: str, port: int, batch: list[Mail], connections: int) -> tuple[float, float]:
    """(mails per second, CPU ms of this process per mail) for one client sending `batch`."""
    conns = [CLIENTS[client](port) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    await asyncio.gather(*(c.send(batch[0]) for c in conns))  # warm-up, off the clock: connections as a running notifier has them
    shares = [batch[i::connections] for i in range(connections)]

    async def drain(conn, share: list[Mail]) -> None:
        for mail in share:
            await conn.send(mail)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(drain(c, s) for c, s in zip(conns, shares)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.gather(*(c.close() for c in conns))
    return len(batch) / wall, cpu * 1000 / len(batch)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000, help="mails per client, round and connection count")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        port = free_port()
        sink = subprocess.Popen([sys.executable, "-m", "cancelflow.infra.mailsink", "--port", str(port),
                                 "--dir", str(Path(tmp) / "mail")], cwd=REPO)
        try:
            if not wait_port(port, 20):
                raise SystemExit("the SMTP sink did not start")
            batch = mails(args.mails)
            names = list(CLIENTS)
            expected = 0
            print(f"{args.mails} mails per client and round, {args.rounds} rounds, sink pid {sink.pid}, port {port}")
            for connections in args.connections:
                results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
                for r in range(args.rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for name in order:
                        results[name].append(await run(name, port, batch, connections))
                        expected += len(batch) + connections
                base_rate = statistics.median(x for x, _ in results["project"])
                base_cpu = statistics.median(c for _, c in results["project"])
                print(f"\n{connections} connection(s):")
                print(f"  {'client':22} {'mails/s (rounds)':36} {'median':>8} {'ratio':>6}   {'CPU ms/mail':>11} {'ratio':>6}")
                for name in names:
                    rates = [x for x, _ in results[name]]
                    cpus = [c for _, c in results[name]]
                    rate, cpu = statistics.median(rates), statistics.median(cpus)
                    print(f"  {name:22} {', '.join(f'{x:,.0f}' for x in rates):36} {rate:8,.0f} {rate / base_rate:6.2f}"
                          f"   {cpu:11.3f} {cpu / base_cpu:6.2f}")
            stored = len(list((Path(tmp) / "mail").glob("*.eml")))
            print(f"\nthe sink stored {stored:,} mails of {expected:,} sent (warm-ups included)")
            if stored != expected:
                raise SystemExit("some mails were not stored: the figures do not count")
        finally:
            sink.terminate()
            sink.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
