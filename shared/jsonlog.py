"""JSON-lines logging with personal data masked at the last moment, whatever the caller logged."""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson

from shared.pii import mask_pii


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
