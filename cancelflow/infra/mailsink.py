"""A real SMTP server (aiosmtpd) that keeps every message it receives as an .eml file.

The notifier talks SMTP to it exactly as it would to a production relay; tests and the demo read the
mail back from the directory. Run: python -m cancelflow.infra.mailsink --port 10025 --dir .stack/mail
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


class MaildirHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        name = f"{time.time_ns()}-{uuid.uuid4().hex}.eml"
        tmp = self.directory / (name + ".tmp")
        tmp.write_bytes(envelope.original_content or envelope.content)
        os.replace(tmp, self.directory / name)  # readers never see half a message
        return "250 Message accepted for delivery"


@dataclass(frozen=True)
class StoredMail:
    to: str
    subject: str
    message_id: str
    headers: dict[str, str]
    body: str


def read_mail(directory: Path) -> list[StoredMail]:
    """Every message received so far, oldest first."""
    out = []
    if not directory.exists():
        return out
    for path in sorted(directory.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        out.append(StoredMail(
            to=str(msg["To"]), subject=str(msg["Subject"]), message_id=str(msg["Message-ID"]),
            headers={k: str(v) for k, v in msg.items()},
            body=body.get_content() if body is not None else "",
        ))
    return out


def main() -> None:
    from aiosmtpd.controller import Controller

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    controller = Controller(MaildirHandler(args.dir), hostname=args.host, port=args.port)
    controller.start()
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
