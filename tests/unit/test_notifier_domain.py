from datetime import date, datetime, time, timedelta, timezone

import pytest

from services.notifier.domain import (
    REMINDER_DAYS_BEFORE,
    REMINDER_KINDS,
    REMINDER_TIME,
    NotificationKind,
    ScheduledNotification,
    reminder_schedule,
    withdrawal_notice,
)
from services.notifier.texts import EmailContent, render
from shared.contract_calendar import TOKYO
from shared.vocabulary import Offer

K = NotificationKind
UTC = timezone.utc
EFFECTIVE = date(2026, 6, 30)
DUE_14 = datetime(2026, 6, 16, 1, 0, tzinfo=UTC)  # 10:00 JST
DUE_3 = datetime(2026, 6, 27, 1, 0, tzinfo=UTC)


def test_constants() -> None:
    assert REMINDER_KINDS == (K.data_export_reminder, K.rich_menu_reminder)
    assert REMINDER_DAYS_BEFORE == (14, 3)
    assert REMINDER_TIME == time(10, 0)


def _both(at: datetime) -> list[ScheduledNotification]:
    return [ScheduledNotification(K.data_export_reminder, at), ScheduledNotification(K.rich_menu_reminder, at)]


@pytest.mark.parametrize(
    ("accepted_at", "expected"),
    [
        pytest.param(
            datetime(2026, 4, 1, 3, 0, tzinfo=UTC),
            _both(datetime(2026, 4, 1, 3, 0, tzinfo=UTC)) + _both(DUE_14) + _both(DUE_3),
            id="long-before-three-per-kind",
        ),
        pytest.param(
            datetime(2026, 6, 20, 0, 0, tzinfo=UTC),
            _both(datetime(2026, 6, 20, 0, 0, tzinfo=UTC)) + _both(DUE_3),
            id="minus-14-already-past",
        ),
        pytest.param(DUE_14, _both(DUE_14) + _both(DUE_3), id="accepted-exactly-at-minus-14"),
        pytest.param(
            DUE_14 - timedelta(seconds=1),
            _both(DUE_14 - timedelta(seconds=1)) + _both(DUE_14) + _both(DUE_3),
            id="accepted-one-second-before-minus-14",
        ),
        pytest.param(
            datetime(2026, 6, 28, 0, 0, tzinfo=UTC), _both(datetime(2026, 6, 28, 0, 0, tzinfo=UTC)), id="both-past"
        ),
        pytest.param(
            # 2026-06-16 09:59 in Tokyo, given in Tokyo time: -14 still ahead by a minute.
            datetime(2026, 6, 16, 9, 59, tzinfo=TOKYO),
            _both(datetime(2026, 6, 16, 0, 59, tzinfo=UTC)) + _both(DUE_14) + _both(DUE_3),
            id="accepted-in-tokyo-time",
        ),
    ],
)
def test_reminder_schedule(accepted_at: datetime, expected: list[ScheduledNotification]) -> None:
    schedule = reminder_schedule(effective_date=EFFECTIVE, accepted_at=accepted_at)
    assert list(schedule) == expected
    assert all(n.due_at.tzinfo is UTC for n in schedule)


def test_reminder_times_are_ten_in_tokyo() -> None:
    schedule = reminder_schedule(effective_date=EFFECTIVE, accepted_at=datetime(2026, 1, 1, tzinfo=UTC))
    scheduled = [n.due_at.astimezone(TOKYO) for n in schedule][2:]
    assert {(d.date(), d.time()) for d in scheduled} == {(date(2026, 6, 16), time(10)), (date(2026, 6, 27), time(10))}


def test_reminder_schedule_rejects_naive() -> None:
    with pytest.raises(ValueError):
        reminder_schedule(effective_date=EFFECTIVE, accepted_at=datetime(2026, 4, 1, 3, 0))


def test_scheduled_notification_normalizes_to_utc() -> None:
    n = ScheduledNotification(K.rich_menu_reminder, datetime(2026, 6, 16, 10, 0, tzinfo=TOKYO))
    assert n.due_at.tzinfo is UTC and n.due_at == DUE_14
    assert n.due_at.hour == 1


COMMON = dict(customer_name="山田 太郎", request_id="REQ-123", contract_id="C-9")


def test_acknowledgement_content() -> None:
    mail = render(
        K.acknowledgement, **COMMON, effective_date=date(2026, 6, 30), total_jpy=12_000,
        paid_through=date(2026, 7, 10), offers=("setup_support", "guided_training", "consultation", "downgrade", "discount"),
    )
    assert isinstance(mail, EmailContent)
    assert "REQ-123" in mail.subject
    body = mail.body
    for expected in [
        "山田 太郎 様", "C-9", "2026年6月30日", "2026-06-30", "¥12,000", "2026年7月10日",
        "管理画面にログインできなくなります", "エクスポート", "リッチメニュー", "LINE Official Account Manager",
        "free account-design session",
        "guides for account design, message delivery and customer management",
        "consultation on using it in your business", "cheaper plan", "discount to stay",
    ]:
        assert expected in body, expected
    # Japanese first, English after.
    assert body.index("解約のお申し込みを承りました") < body.index("We have accepted")


def test_acknowledgement_only_lists_given_offers_and_omits_missing_amounts() -> None:
    body = render(K.acknowledgement, **COMMON, effective_date=date(2026, 6, 30), offers=("downgrade",)).body
    assert "cheaper plan" in body
    assert "discount to stay" not in body and "free account-design session" not in body
    assert "¥" not in body


def test_acknowledgement_needs_effective_date() -> None:
    with pytest.raises(ValueError):
        render(K.acknowledgement, **COMMON)


@pytest.mark.parametrize(
    ("code", "ja", "en"),
    [
        pytest.param("CONTRACT_NOT_FOUND", "見つかりませんでした", "could not find the contract", id="not-found"),
        pytest.param("CONTRACT_ENDED", "すでに終了", "already ended", id="ended"),
        pytest.param("MINIMUM_TERM", "年間契約", "annual commitment", id="minimum-term"),
        pytest.param("NOTICE_PERIOD", "45日", "45 days", id="notice"),
        pytest.param("ALREADY_PENDING", "手続き中", "already in progress", id="pending"),
    ],
)
def test_rejection_explains_each_code(code: str, ja: str, en: str) -> None:
    mail = render(K.rejection, **COMMON, codes=(code,), earliest_effective_date=date(2026, 8, 15))
    assert "REQ-123" in mail.subject
    assert ja in mail.body and en in mail.body
    assert "2026年8月15日" in mail.body and "2026-08-15" in mail.body


def test_rejection_lists_all_codes_and_omits_absent_earliest_date() -> None:
    body = render(K.rejection, **COMMON, codes=("MINIMUM_TERM", "NOTICE_PERIOD")).body
    assert "annual commitment" in body and "45 days" in body
    assert "earliest" not in body and "最も早い" not in body


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"codes": ()}, "code", id="no-codes"),
        pytest.param({"codes": ("NOPE",)}, "NOPE", id="unknown-code"),
    ],
)
def test_rejection_rejects_bad_codes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(K.rejection, **COMMON, **kwargs)


def test_unknown_offer_is_an_error() -> None:
    with pytest.raises(ValueError, match="free_lunch"):
        render(K.acknowledgement, **COMMON, effective_date=date(2026, 6, 30), offers=("free_lunch",))


@pytest.mark.parametrize(
    ("kind", "ja", "en"),
    [
        pytest.param(K.data_export_reminder, "エクスポート", "export your data", id="data-export"),
        pytest.param(K.rich_menu_reminder, "リッチメニューを解除", "release the rich menu", id="rich-menu"),
    ],
)
@pytest.mark.parametrize("days_before", [14, 3, None], ids=["14", "3", "on-acceptance"])
def test_reminders(kind: NotificationKind, ja: str, en: str, days_before: int | None) -> None:
    mail = render(kind, **COMMON, effective_date=date(2026, 6, 30), days_before=days_before)
    assert "REQ-123" in mail.subject
    assert "2026年6月30日" in mail.body and "2026-06-30" in mail.body
    assert ja in mail.body and en in mail.body
    if days_before is None:
        assert "あと" not in mail.body and "None" not in mail.body
    else:
        assert f"あと{days_before}日" in mail.body and f"in {days_before} days" in mail.body


def test_withdrawal_confirmation() -> None:
    mail = render(K.withdrawal_confirmation, **COMMON)
    assert "REQ-123" in mail.subject
    assert "取り下げ" in mail.body and "継続" in mail.body
    assert "withdrawn" in mail.body and "contract continues" in mail.body


@pytest.mark.parametrize("kind", list(NotificationKind), ids=str)
def test_every_kind_renders_without_personal_contact_data(kind: NotificationKind) -> None:
    mail = render(
        kind, **COMMON, effective_date=date(2026, 6, 30), total_jpy=0, paid_through=date(2026, 7, 1),
        codes=("NOTICE_PERIOD",), earliest_effective_date=date(2026, 7, 15), days_before=3, taken_offer="discount",
    )
    assert mail.subject and mail.body
    assert "REQ-123" in mail.subject
    assert "\n" not in mail.subject
    assert "@" not in mail.body + mail.subject


def test_subject_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        render(K.withdrawal_confirmation, customer_name="x", request_id="R\nBcc: evil@example.com", contract_id="C")


def test_days_before_is_none_for_the_reminder_sent_on_acceptance() -> None:
    from services.notifier.domain import days_before

    accepted_at = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)
    schedule = reminder_schedule(effective_date=EFFECTIVE, accepted_at=accepted_at)
    assert sorted({days_before(n, effective_date=EFFECTIVE, accepted_at=accepted_at) for n in schedule},
                  key=lambda d: -1 if d is None else d) == [None, 3, 14]


def test_what_a_withdrawal_and_a_completion_cancel() -> None:
    from services.notifier.domain import cancelled_by_completion, cancelled_by_withdrawal

    assert set(cancelled_by_withdrawal()) == {*REMINDER_KINDS, K.acknowledgement}
    assert set(cancelled_by_completion()) == set(REMINDER_KINDS)
    assert K.withdrawal_confirmation not in cancelled_by_withdrawal(), "the confirmation is what it sends"


@pytest.mark.parametrize(("taken_offer", "kind"), [(None, NotificationKind.withdrawal_confirmation),
                                                    *((o.value, NotificationKind.offer_confirmation) for o in Offer)])
def test_a_withdrawal_tells_what_was_taken_or_confirms_it_plainly(taken_offer, kind) -> None:
    assert withdrawal_notice(taken_offer) is kind
