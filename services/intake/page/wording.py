"""The page's Japanese: the form's wording from the vendor's cancellation page (seed 000)."""

from datetime import date, datetime

from shared.contract_calendar import TOKYO
from shared.vocabulary import NotificationKind, Offer, Reason, RejectionCode, RequestStatus

from ..domain import Refusal

# The seven reasons exactly as the vendor's form lists them.
REASONS: dict[Reason, str] = {
    Reason.INITIAL_SETUP_FAILED: "LIBOTの初期構築ができなかった",
    Reason.TOO_DIFFICULT: "LIBOTの使い方が難しかった",
    Reason.BUSINESS_CLOSED: "自分のビジネスを辞めた",
    Reason.LINE_ACCOUNT_UNAVAILABLE: "LINE公式アカウントが使えなくなった",
    Reason.NOT_USEFUL_FOR_BUSINESS: "自分のビジネスに活用できなかった",
    Reason.SWITCHING_TOOL: "別のツールを使用するため",
    Reason.NO_LONGER_USED: "LIBOTを使用しなくなった",
}

# (title, what the customer gets) - the seed's "try these before cancelling".
OFFERS: dict[Offer, tuple[str, str]] = {
    Offer.setup_support: ("無料のアカウント設計サポート",
                          "担当者がアカウント設計を一緒に見直し、初期構築を完了までお手伝いします。"),
    Offer.guided_training: ("活用ガイドとトレーニング",
                            "アカウント設計・配信・顧客管理の進め方を、ガイドに沿ってご案内します。"),
    Offer.consultation: ("個別の活用相談", "貴社のビジネスでの使い方を、担当者が個別にご提案します。"),
    Offer.downgrade: ("プランの変更", "より安価なプランに切り替えて、ご利用を続けられます。"),
    Offer.discount: ("継続割引", "ご継続いただく場合、月額料金を割引いたします。"),
}

CODES: dict[RejectionCode, str] = {
    RejectionCode.CONTRACT_NOT_FOUND: "ご契約が見つかりません。",
    RejectionCode.CONTRACT_ENDED: "このご契約はすでに終了しています。再度ご利用いただくには新規契約が必要です。",
    RejectionCode.MINIMUM_TERM: "初年度は年間契約のため、契約開始から1年を経過する日より前には解約できません。",
    RejectionCode.NOTICE_PERIOD: "解約希望日は、お申し込みの受付日から45日以上先の日付をご指定ください。",
    RejectionCode.ALREADY_PENDING: "このご契約には、すでに手続き中の解約のお申し込みがあります。",
}

STATUSES: dict[RequestStatus, str] = {
    RequestStatus.received: "受付済み（確認中）",
    RequestStatus.accepted: "解約を受け付けました",
    RequestStatus.rejected: "お申し込みを受け付けられませんでした",
    RequestStatus.withdrawn: "解約のお申し込みを撤回しました",
    RequestStatus.completed: "解約が完了しました",
}

NOTIFICATIONS: dict[str, str] = {
    NotificationKind.acknowledgement: "受付のお知らせ",
    NotificationKind.rejection: "お申し込みを受け付けられなかったお知らせ",
    NotificationKind.data_export_reminder: "データのエクスポートのお願い",
    NotificationKind.rich_menu_reminder: "リッチメニュー解除のお願い",
    NotificationKind.withdrawal_confirmation: "撤回のお知らせ",
    "offer_confirmation": "ご提案のお申し込みのお知らせ",
}



def offer_title(offer: str | None) -> str:
    """An offer's name; a code the page never showed (an altered form) as itself."""
    return OFFERS[Offer(offer)][0] if offer in Offer.__members__ else str(offer)


def refusal(kind: Refusal, *, status: RequestStatus, taking: str | None, withdrawing_with: str | None,
            effective_date: date | None) -> tuple[str, str]:
    """(heading, explanation) of a refused withdrawal or take (the API's 409), in the customer's words."""
    heading = "ご提案をお受けできませんでした" if taking else "撤回できませんでした"
    if kind is Refusal.ended:
        why = f"このお申し込みはすでに終了しています（{STATUSES[status]}）。"
    elif kind is Refusal.undecided:
        why = "お申し込みの内容を確認中です。確認が終わってから、もう一度お試しください。"
    elif kind is Refusal.date_come:
        why = (f"解約日（{jp_date(effective_date)}）を迎えたため、ご契約は終了しています。"
               "撤回やご提案のご利用はできません。")
    elif kind is Refusal.not_offered:
        why = f"「{offer_title(taking)}」は、このお申し込みでご利用いただけるご提案ではありません。"
    elif withdrawing_with:
        why = (f"すでに「{offer_title(withdrawing_with)}」のご利用で、解約のお申し込みの撤回を承っています。"
               "ほかのご提案への変更はできません。")
    else:
        why = ("すでにご提案なしで、解約のお申し込みの撤回を承っています。ご提案をご希望の場合は、"
               "LIBOT導入時の担当者までご連絡ください。")
    return heading, why


PLANS: dict[str, str] = {"lite": "ライト", "standard": "スタンダード", "pro": "プロ", "enterprise": "エンタープライズ"}

WEEKDAYS = "月火水木金土日"


def jp_date(day: date | str | None) -> str:
    """2026年1月31日（土）; ISO text (the status view's JSON) is read first."""
    if not day:
        return "—"
    day = date.fromisoformat(day) if isinstance(day, str) else day
    return f"{day.year}年{day.month}月{day.day}日（{WEEKDAYS[day.weekday()]}）"


def jp_time(instant: datetime | str | None) -> str:
    """An instant as Tokyo wall time: 1月31日 10:00."""
    if not instant:
        return "—"
    instant = datetime.fromisoformat(instant) if isinstance(instant, str) else instant
    local = instant.astimezone(TOKYO)
    return f"{local.month}月{local.day}日 {local:%H:%M}"


def yen(amount: int) -> str:
    return f"{amount:,}円"
