"""What to tell the customer, and when.

Reminder times, masking of personal data for records, and the plain-text
e-mails (Japanese first, then a short English line). No sending here.
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
    "EmailContent",
    "NotificationKind",
    "ScheduledNotification",
    "mask_email",
    "mask_phone",
    "reminder_schedule",
    "render",
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


def withdrawal_notice(taken_offer: str | None) -> NotificationKind:
    """What a withdrawal tells the customer: what they get when they took an offer (SPEC section 6), else
    the plain confirmation. One or the other, never both."""
    return NotificationKind.withdrawal_confirmation if taken_offer is None else NotificationKind.offer_confirmation


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


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    body: str


# (Japanese, English) one-line descriptions.
_OFFER_TEXT: dict[str, tuple[str, str]] = {
    "setup_support": ("アカウント設計の無料サポート（個別セッション）", "a free account-design session"),
    "guided_training": (
        "アカウント設計・メッセージ配信・顧客管理の活用ガイド",
        "guides for account design, message delivery and customer management",
    ),
    "consultation": ("貴社のビジネスでの活用方法についての個別相談", "a consultation on using it in your business"),
    "downgrade": ("より安価なプランへの変更", "a move to a cheaper plan"),
    "discount": ("継続いただく場合の料金割引", "a discount to stay"),
}

_CODE_TEXT: dict[str, tuple[str, str]] = {
    "CONTRACT_NOT_FOUND": (
        "ご指定の契約番号に該当する契約が見つかりませんでした。",
        "we could not find the contract",
    ),
    "CONTRACT_ENDED": (
        "このご契約はすでに終了しています。再度ご利用の場合は新規契約が必要です。",
        "the contract has already ended",
    ),
    "MINIMUM_TERM": (
        "初年度は年間契約のため、契約開始日から1年を経過する日より前の日付を解約日にすることはできません。",
        "the first year is an annual commitment",
    ),
    "NOTICE_PERIOD": (
        "解約日は、お申し込みの受付日から45日以上先の日付である必要があります。",
        "the effective date must be at least 45 days after we received the request",
    ),
    "ALREADY_PENDING": (
        "このご契約には、すでに手続き中の解約のお申し込みがあります。",
        "a cancellation for this contract is already in progress",
    ),
}


def _ja(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _yen(amount: int) -> str:
    return f"¥{amount:,}"


def _require(value: object, name: str, kind: NotificationKind) -> None:
    if value is None:
        raise ValueError(f"{kind} e-mail needs {name}")


def _lookup(table: dict[str, tuple[str, str]], key: str, what: str) -> tuple[str, str]:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unknown {what} {key!r}; expected one of {', '.join(table)}") from None


def _days_left_ja(days_before: int | None) -> str:
    return f"（あと{days_before}日）" if days_before is not None else ""


def _days_left_en(days_before: int | None) -> str:
    return f" (in {days_before} days)" if days_before is not None else ""


def render(
    kind: NotificationKind,
    *,
    customer_name: str,
    request_id: str,
    contract_id: str,
    effective_date: date | None = None,
    total_jpy: int | None = None,
    paid_through: date | None = None,
    offers: tuple[str, ...] = (),
    codes: tuple[str, ...] = (),
    earliest_effective_date: date | None = None,
    days_before: int | None = None,
    taken_offer: str | None = None,
) -> EmailContent:
    """The plain-text e-mail for one notification."""
    if "\r" in request_id or "\n" in request_id:
        # The subject becomes a mail header; a line break there would inject headers.
        raise ValueError("request_id must not contain line breaks")
    kind = NotificationKind(kind)
    greeting = f"{customer_name} 様"
    ref = f"受付番号: {request_id}\n契約番号: {contract_id}"
    lines: list[str]

    if kind is NotificationKind.acknowledgement:
        _require(effective_date, "effective_date", kind)
        assert effective_date is not None
        subject = f"【解約受付】解約のお申し込みを承りました / Cancellation accepted [{request_id}]"
        lines = [greeting, "", "解約のお申し込みを承りました。", "", ref, f"解約日: {_ja(effective_date)}"]
        if total_jpy is not None:
            lines.append(f"最終のご請求額: {_yen(total_jpy)}（日割りでのご請求・ご返金はありません）")
        if paid_through is not None:
            lines.append(f"お支払い済みの期間: {_ja(paid_through)}まで")
        lines += [
            "",
            "ご注意ください:",
            f"・解約日（{_ja(effective_date)}）以降は管理画面にログインできなくなります。",
            "・必要なデータは、解約日の前日までにエクスポートしてください。",
            "・リッチメニューは、解約日の前日までに解除してください。解除しないと、"
            "LINE Official Account Manager で設定したリッチメニューより本サービスのリッチメニューが優先されたままになります。",
            "・解約日の前日まではお申し込みを取り下げることができます。解約後に再度ご利用の場合は新規契約が必要です。",
        ]
        if offers:
            lines += ["", "解約の前に、次のご提案もご検討ください:"]
            lines += [f"・{_lookup(_OFFER_TEXT, o, 'offer')[0]}" for o in offers]
        en = (
            f"We have accepted your cancellation; it takes effect on {effective_date.isoformat()}. "
            "From that date you can no longer log in to the admin console: "
            "export your data and release the rich menu before then."
        )
        if total_jpy is not None:
            en += f" Final charge: {_yen(total_jpy)}."
        if paid_through is not None:
            en += f" Paid through {paid_through.isoformat()}."
        if offers:
            en += " Before you go, we can offer: " + "; ".join(_lookup(_OFFER_TEXT, o, "offer")[1] for o in offers) + "."
        lines += ["", en]

    elif kind is NotificationKind.rejection:
        if not codes:
            raise ValueError("rejection e-mail needs at least one code")
        texts = [_lookup(_CODE_TEXT, c, "rejection code") for c in codes]
        subject = f"【解約受付不可】解約のお申し込みをお受けできませんでした / Cancellation not accepted [{request_id}]"
        lines = [greeting, "", "誠に恐れ入りますが、次の理由により解約のお申し込みをお受けできませんでした。", "", ref, ""]
        lines += [f"・{ja}" for ja, _ in texts]
        if earliest_effective_date is not None:
            lines += ["", f"最も早い解約可能日: {_ja(earliest_effective_date)}", "この日以降の日付で改めてお申し込みください。"]
        en = "We could not accept your cancellation: " + "; ".join(e for _, e in texts) + "."
        if earliest_effective_date is not None:
            en += f" The earliest possible effective date is {earliest_effective_date.isoformat()}."
        lines += ["", en]

    elif kind is NotificationKind.data_export_reminder:
        _require(effective_date, "effective_date", kind)
        assert effective_date is not None
        subject = f"【ご確認】解約日までにデータのエクスポートをお願いします / Export your data [{request_id}]"
        lines = [
            greeting,
            "",
            f"ご契約は{_ja(effective_date)}に解約となります{_days_left_ja(days_before)}。",
            "解約日以降は管理画面にログインできなくなるため、必要なデータは解約日の前日までに管理画面からエクスポートしてください。",
            "",
            ref,
            "",
            f"Your contract ends on {effective_date.isoformat()}{_days_left_en(days_before)}: "
            "export your data before then, as the admin console can no longer be logged into from that date.",
        ]

    elif kind is NotificationKind.rich_menu_reminder:
        _require(effective_date, "effective_date", kind)
        assert effective_date is not None
        subject = f"【ご確認】解約日までにリッチメニューの解除をお願いします / Release the rich menu [{request_id}]"
        lines = [
            greeting,
            "",
            f"ご契約は{_ja(effective_date)}に解約となります{_days_left_ja(days_before)}。",
            "本サービスで設定したリッチメニューは、LINE Official Account Manager で設定したものより優先されます。"
            "解約日の前日までに管理画面からリッチメニューを解除してください。",
            "",
            ref,
            "",
            f"Your contract ends on {effective_date.isoformat()}{_days_left_en(days_before)}: "
            "release the rich menu before then, or it keeps overriding the one set in LINE Official Account Manager.",
        ]

    elif kind is NotificationKind.offer_confirmation:
        _require(taken_offer, "taken_offer", kind)
        ja, en = _lookup(_OFFER_TEXT, str(taken_offer), "offer")
        subject = f"【お申し込み完了】ご提案を承り、解約のお申し込みを取り下げました / Offer taken, cancellation withdrawn [{request_id}]"
        lines = [
            greeting,
            "",
            "次のご提案のお申し込みを承りました:",
            f"・{ja}",
            "",
            "あわせて、解約のお申し込みを取り下げました。ご契約はこれまでどおり継続されます。",
            "",
            ref,
            "",
            f"You have taken our offer: {en}. Your cancellation request has been withdrawn; your contract continues as before.",
        ]

    else:  # withdrawal_confirmation
        subject = f"【取り下げ完了】解約のお申し込みを取り下げました / Cancellation withdrawn [{request_id}]"
        lines = [
            greeting,
            "",
            "解約のお申し込みの取り下げを承りました。ご契約はこれまでどおり継続されます。",
            "",
            ref,
            "",
            "Your cancellation request has been withdrawn; your contract continues as before.",
        ]

    return EmailContent(subject=subject, body="\n".join(lines) + "\n")
