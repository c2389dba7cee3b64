"""The report's reading of the event log, written once for every builder of figures (cancelflow.report,
cancelflow.retention_report): an envelope decoded into the few fields they use, a duplicate (the outbox may
publish an event twice) skipped within a week of event time (`SeenWindow`), so that reading a year costs the
memory of a week of ids, not of the year."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .seen_window import SeenWindow

# A relay's republish, or the other half of one transaction's events, comes minutes later: a week is ample.
WINDOW = timedelta(days=7)


def parse_instant(value: Any) -> datetime | None:
    """An RFC 3339 string from an event -> aware datetime (UTC if it had no offset); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Event:
    """An envelope about a request, decoded: what every builder of figures reads."""

    type: Any
    data: Mapping[str, Any]
    request_id: str
    occurred_at: datetime | None


class EnvelopeReader:
    """Envelopes (decoded JSON, any order) -> events about a request, each event once."""

    def __init__(self) -> None:
        self.seen = SeenWindow(WINDOW)

    def read(self, env: Any) -> Event | None:
        """The event, or None for what is not an envelope, a duplicate (same event_id within the window) or an
        event about no request (a contract's)."""
        if not isinstance(env, Mapping) or not isinstance(env.get("data"), Mapping):
            return None
        at = parse_instant(env.get("occurred_at"))
        if not self.seen.first(env.get("event_id") or id(env), at):
            return None
        rid = env["data"].get("request_id")
        if not isinstance(rid, str):
            return None
        return Event(env.get("event_type"), env["data"], rid, at)
