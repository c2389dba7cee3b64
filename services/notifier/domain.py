"""What to tell the customer, and when.

Reminder times, when the acknowledgement goes, what a withdrawal or a completion cancels. The e-mails' texts are templates
(texts.py, templates/); masking is shared/pii.py; no sending here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from shared.contract_calendar import TOKYO
from shared.vocabulary import NotificationKind

__all__ = [
    "REMINDER_DAYS_BEFORE",
    "REMINDER_KINDS",
    "REMINDER_TIME",
    "NotificationKind",
    "RequestFacts",
    "ScheduledNotification",
    "acknowledgement",
    "acknowledgement_cancelled",
    "acknowledgement_due",
    "cancelled_by_completion",
    "cancelled_by_withdrawal",
    "days_before",
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


def days_before(item: ScheduledNotification, *, effective_date: date, accepted_at: datetime) -> int | None:
    """How many days before the effective date a reminder is due (None: the one sent on acceptance)."""
    if item.due_at == accepted_at:
        return None
    return (effective_date - item.due_at.astimezone(TOKYO).date()).days


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What notifier knows of a request so far (two topics: the acceptance and the settlement may come in
    either order, maybe in two processes)."""

    status: str  # received (nothing decided yet), accepted, rejected, withdrawn, completed
    accepted_at: datetime | None = None
    settlement: str | None = None  # issued, voided; None: none yet


def acknowledgement_due(facts: RequestFacts) -> datetime | None:
    """The acknowledgement states the effective date, the final charge and the offers: it is due, at the
    acceptance time, once both the acceptance and the issued settlement are known, whichever came last;
    never for a request that is no longer accepted (withdrawn, completed) or whose settlement was voided."""
    if facts.status == "accepted" and facts.accepted_at is not None and facts.settlement == "issued":
        return facts.accepted_at
    return None


def acknowledgement_cancelled(facts: RequestFacts) -> datetime | None:
    """A request withdrawn before its issued settlement was read: the acknowledgement it had been due, recorded
    as cancelled, as the withdrawal cancels it when read after. So notifier's rows do not depend on which of
    the two topics was read first (what `cancelflow rebuild` needs: it reads one topic after the other)."""
    if facts.status == "withdrawn" and facts.accepted_at is not None and facts.settlement == "issued":
        return facts.accepted_at
    return None


def acknowledgement(facts: RequestFacts) -> tuple[datetime, bool] | None:
    """The acknowledgement row these facts call for: (due at, recorded as cancelled), or None."""
    if (due := acknowledgement_due(facts)) is not None:
        return due, False
    if (due := acknowledgement_cancelled(facts)) is not None:
        return due, True
    return None


def cancelled_by_withdrawal() -> tuple[NotificationKind, ...]:
    """A withdrawal cancels every reminder not sent yet, and the acknowledgement if it is still due."""
    return (*REMINDER_KINDS, NotificationKind.acknowledgement)


def cancelled_by_completion() -> tuple[NotificationKind, ...]:
    """On completion the reminders not sent yet have nothing left to remind of."""
    return REMINDER_KINDS


def withdrawal_notice(taken_offer: str | None) -> NotificationKind:
    """What a withdrawal tells the customer: what they get when they took an offer (SPEC section 6), else
    the plain confirmation. One or the other, never both."""
    return NotificationKind.withdrawal_confirmation if taken_offer is None else NotificationKind.offer_confirmation
