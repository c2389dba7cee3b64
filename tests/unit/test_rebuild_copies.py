"""`cancelflow rebuild`'s copy detection (SPEC section 8): a record whose event was read before is a copy
(a relay's republish) when it was *published* within the inbox window of the original, as the service's
inbox, which held the original's id from when it processed it, skipped it. A copy carries the original's
`occurred_at`, so event time cannot tell: after a record that occurred 50 days later (a moved clock, or a
partition read first), a copy published a minute after its original is still a copy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from cancelflow.rebuild import Rebuilt, apply_record
from cancelflow.seen_window import SeenWindow
from shared.events import CancellationAccepted, CancellationCompleted, new_envelope
from shared.messaging.projection import Projection

T0 = datetime(2026, 4, 1, 1, 0, tzinfo=timezone.utc)
WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class Record:
    value: bytes | None
    timestamp: int  # ms, as Kafka's


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def _read(records: list[Record]) -> tuple[list[str], Rebuilt]:
    applied: list[str] = []

    async def note(conn, envelope, data) -> None:
        applied.append(f"{envelope.event_type} {envelope.event_id}")

    proj = Projection(service="notifier", topics=(), apply={CancellationAccepted.event_type: note,
                                                            CancellationCompleted.event_type: note})
    result, seen, inbox = Rebuilt("notifier", "scratch"), SeenWindow(WINDOW), set()
    for record in records:
        await apply_record(record, proj, None, seen=seen, result=result, since=T0 - WINDOW, inbox_ids=inbox)
    return applied, result


def _accepted(at: datetime):
    return new_envelope(CancellationAccepted(request_id="r1", contract_id="c1", effective_date=date(2026, 5, 31),
                                             first_anniversary=date(2025, 6, 1)),
                        producer="eligibility", correlation_id="r1", causation_id=None, occurred_at=at)


def _completed(at: datetime):
    return new_envelope(CancellationCompleted(request_id="r1", contract_id="c1", effective_date=date(2026, 5, 31)),
                        producer="eligibility", correlation_id="r1", causation_id=None, occurred_at=at)


async def test_a_copy_published_a_minute_later_is_skipped_after_a_record_that_occurred_weeks_later():
    accepted, completed = _accepted(T0), _completed(T0 + timedelta(days=50))
    applied, result = await _read([
        Record(accepted.to_bytes(), _ms(T0)),
        Record(completed.to_bytes(), _ms(T0 + timedelta(seconds=20))),  # the clock moved; the log's did not
        Record(accepted.to_bytes(), _ms(T0 + timedelta(minutes=1))),  # the relay's copy
    ])
    assert applied == [f"cancellation.accepted {accepted.event_id}", f"cancellation.completed {completed.event_id}"]
    assert result.duplicates == 1


async def test_a_copy_published_after_the_window_is_applied_again_as_the_service_applied_it():
    accepted = _accepted(T0)
    applied, result = await _read([Record(accepted.to_bytes(), _ms(T0)),
                                   Record(b"{}", _ms(T0 + timedelta(days=3))),
                                   Record(accepted.to_bytes(), _ms(T0 + WINDOW + timedelta(days=1)))])
    assert applied == [f"cancellation.accepted {accepted.event_id}"] * 2
    assert (result.duplicates, result.skipped) == (0, 1)
