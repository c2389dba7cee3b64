"""When each request's mails reached the SMTP sink: the end of a request as its customer sees it.

The same point in every version of the code (the sink stores a message, then answers 250), which the
`notification.sent` record is not: issue 14 moved that event from before the mail's DATA to after the
server's answer. The sink names each file by the nanosecond it began storing it (cancelflow/infra/mailsink.py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

_REQUEST = re.compile(rb"^X-Cancelflow-Request-Id:\s*(\S+)", re.MULTILINE | re.IGNORECASE)


class MailArrivals:
    """Reads the sink's directory incrementally: each file once, its request id from the header."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.read: set[str] = set()
        self.at: dict[str, list[float]] = defaultdict(list)

    def scan(self) -> None:
        for path in self.directory.glob("*.eml"):
            if path.name in self.read:
                continue
            self.read.add(path.name)
            with open(path, "rb") as f:
                head = f.read(8192)
            if (m := _REQUEST.search(head)) is not None:
                self.at[m.group(1).decode()].append(int(path.name.split("-", 1)[0]) / 1e9)

    def last(self, request_id: str | None, count: int) -> float | None:
        """When the request's `count`-th mail arrived (its last of the run), or None before that."""
        times = self.at.get(request_id or "")
        return max(times) if times and len(times) >= count else None
