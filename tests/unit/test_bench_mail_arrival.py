"""The bench's like-for-like end point (bench/mail_arrival.py): when a request's mails reached the sink,
read from the sink's own files."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from cancelflow.infra.mailsink import Maildir

_spec = importlib.util.spec_from_file_location("mail_arrival", Path(__file__).parents[2] / "bench" / "mail_arrival.py")
mail_arrival = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mail_arrival)


def _mail(request_id: str) -> bytes:
    return (f"From: a@example.jp\r\nTo: b@example.jp\r\nSubject: s\r\nX-Cancelflow-Request-Id: {request_id}\r\n"
            "X-Cancelflow-Kind: acknowledgement\r\n\r\nbody\r\n").encode()


def test_a_request_ends_when_its_last_mail_arrived_and_not_before(tmp_path: Path) -> None:
    sink = Maildir(tmp_path)
    before = time.time()
    sink.store(_mail("R-1"))
    sink.store(_mail("R-2"))
    arrivals = mail_arrival.MailArrivals(tmp_path)
    arrivals.scan()
    assert arrivals.last("R-1", 2) is None, "one of two mails in: not delivered yet"
    sink.store(_mail("R-1"))
    arrivals.scan()
    arrivals.scan()  # a file is read once
    last = arrivals.last("R-1", 2)
    assert last is not None and before <= last <= time.time()
    assert last > arrivals.at["R-2"][0], "the second R-1 mail came after R-2's"
    assert len(arrivals.at["R-1"]) == 2 and arrivals.last(None, 1) is None
