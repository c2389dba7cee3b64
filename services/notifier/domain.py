"""What to tell the customer, and when.

Reminder times and the masking of personal data for records. The e-mails' texts are templates
(texts.py, templates/); no sending here.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from shared.calendar import TOKYO
from shared.vocabulary import NotificationKind

__all__ = [
    "REMINDER_DAYS_BEFORE",
    "REMINDER_KINDS",
    "REMINDER_TIME",
    "NotificationKind",
    "ScheduledNotification",
    "mask_email",
    "mask_phone",
    "reminder_schedule",
    "withdrawal_notice",
]

REMINDER_KINDS: tuple[NotificationKind, ...] = (
    NotificationKind.data_export_reminder,
    NotificationKind.rich_menu_reminder,
)
REMINDER_DAYS_BEFORE: tuple[int, ...] = (14, 3)
REMINDER_TIME = time(10, 0)  # Tokyo wall-clock time


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {value!r}")


@dataclass(frozen=True, slots=True)
class ScheduledNotification:
    """One notification to send at due_at (stored in UTC)."""

    kind: NotificationKind
    due_at: datetime

    def __post_init__(self) -> None:
        _require_aware(self.due_at, "due_at")
        # One representation per instant, so (request, kind, due_at) keys compare and serialise alike.
        object.__setattr__(self, "due_at", self.due_at.astimezone(timezone.utc))


def reminder_schedule(*, effective_date: date, accepted_at: datetime) -> tuple[ScheduledNotification, ...]:
    """Reminders on acceptance and at 10:00 Tokyo 14 and 3 days before the effective date.

    A scheduled reminder already due at acceptance is dropped: the one sent on
    acceptance says the same thing.
    """
    _require_aware(accepted_at, "accepted_at")
    schedule: list[ScheduledNotification] = []
    for kind in REMINDER_KINDS:
        schedule.append(ScheduledNotification(kind, accepted_at))
        for days in REMINDER_DAYS_BEFORE:
            due_at = datetime.combine(effective_date - timedelta(days=days), REMINDER_TIME, tzinfo=TOKYO)
            if due_at > accepted_at:
                schedule.append(ScheduledNotification(kind, due_at))
    return tuple(sorted(schedule, key=lambda n: (n.due_at, n.kind)))


def mask_email(email: str) -> str:
    """Keep the first character and the domain: taro@example.jp -> t***@example.jp."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(phone: str) -> str:
    """Keep the last two digits: 090-1234-5678 -> ***78."""
    # NFKC turns full-width digits (０９０…) typed on Japanese keyboards into ASCII ones.
    digits = [c for c in unicodedata.normalize("NFKC", phone) if c in "0123456789"]
    if len(digits) < 4:
        # Too short for the tail to be anonymous.
        return "***"
    return "***" + "".join(digits[-2:])


def withdrawal_notice(taken_offer: str | None) -> NotificationKind:
    """What a withdrawal tells the customer: what they get when they took an offer (SPEC section 6), else
    the plain confirmation. One or the other, never both."""
    return NotificationKind.withdrawal_confirmation if taken_offer is None else NotificationKind.offer_confirmation
