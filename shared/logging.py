"""JSON-lines logging with personal data masked at the last moment, whatever the caller logged."""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timezone

import orjson

_EMAIL = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
# Phone numbers: a leading 0 (domestic) or +country code, then 9-13 digits in groups. Dates, times,
# offsets and uuids never start that way, so they stay readable. The boundaries are ASCII: Japanese text
# runs straight into a number ("090-1234-5678まで"), and its letters count as \w.
_PHONE = re.compile(r"(?<![A-Za-z0-9_.:/+-])(?:\+\d{1,3}[\s-]?|0)\d{1,4}(?:[\s-]?\d{1,4}){1,3}(?![A-Za-z0-9_.:/-])")


def mask_pii(text: str) -> str:
    """Mask e-mail addresses and phone numbers in free text."""
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)

    def phone(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "***" + digits[-2:] if 10 <= len(digits) <= 15 else m.group(0)

    return _PHONE.sub(phone, text)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("event_id", "event_type", "correlation_id", "topic", "partition", "offset", "request_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return mask_pii(orjson.dumps(entry, default=str).decode())


# Libraries that install their own (plain-text) handlers: routed to the JSON root handler instead.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "faststream.access")


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout for everything in the process. Called again once the server has configured
    its own loggers, so theirs end up here too."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _OWN_HANDLERS:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    # Health probes and per-message access lines would drown what matters.
    for noisy in ("aiokafka", "uvicorn.access", "faststream.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
