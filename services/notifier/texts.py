"""The customer's e-mails, from Jinja2 templates: one per kind and language in templates/.

A template is `templates/<kind>.<lang>.txt`: its first line is that language's subject, then a blank
line, then its body. The mail puts the languages in `LANGUAGES` order (Japanese first): the subjects
joined by " / " and followed by the request id, the bodies one after another with a blank line between.
Files starting with "_" are pieces the templates include (the request and contract numbers).

Every template sees the same names: customer_name, request_id, contract_id, effective_date,
total_jpy, paid_through, earliest_effective_date, days_before (None when absent), offers and codes
(their descriptions in the template's language, from `OFFER_TEXTS` and `CODE_TEXTS`) and taken_offer
(its description, or None). Filters: `ja_date` (2026年6月30日) and `yen` (¥12,000).

Adding a kind: its two templates, and a line in `REQUIRED` naming what it cannot do without.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cache

import jinja2

__all__ = ["CODE_TEXTS", "LANGUAGES", "OFFER_TEXTS", "REQUIRED", "EmailContent", "render"]

LANGUAGES: tuple[str, ...] = ("ja", "en")

# What each kind's mail cannot be written without; the other names may be None (or empty).
REQUIRED: dict[str, tuple[str, ...]] = {
    "acknowledgement": ("effective_date",),
    "rejection": ("codes",),
    "data_export_reminder": ("effective_date",),
    "rich_menu_reminder": ("effective_date",),
    "withdrawal_confirmation": (),
    "offer_confirmation": ("taken_offer",),
}

OFFER_TEXTS: dict[str, dict[str, str]] = {
    "ja": {
        "setup_support": "アカウント設計の無料サポート（個別セッション）",
        "guided_training": "アカウント設計・メッセージ配信・顧客管理の活用ガイド",
        "consultation": "貴社のビジネスでの活用方法についての個別相談",
        "downgrade": "より安価なプランへの変更",
        "discount": "継続いただく場合の料金割引",
    },
    "en": {
        "setup_support": "a free account-design session",
        "guided_training": "guides for account design, message delivery and customer management",
        "consultation": "a consultation on using it in your business",
        "downgrade": "a move to a cheaper plan",
        "discount": "a discount to stay",
    },
}

CODE_TEXTS: dict[str, dict[str, str]] = {
    "ja": {
        "CONTRACT_NOT_FOUND": "ご指定の契約番号に該当する契約が見つかりませんでした。",
        "CONTRACT_ENDED": "このご契約はすでに終了しています。再度ご利用の場合は新規契約が必要です。",
        "MINIMUM_TERM": "初年度は年間契約のため、契約開始日から1年を経過する日より前の日付を解約日にすることはできません。",
        "NOTICE_PERIOD": "解約日は、お申し込みの受付日から45日以上先の日付である必要があります。",
        "ALREADY_PENDING": "このご契約には、すでに手続き中の解約のお申し込みがあります。",
    },
    "en": {
        "CONTRACT_NOT_FOUND": "we could not find the contract",
        "CONTRACT_ENDED": "the contract has already ended",
        "MINIMUM_TERM": "the first year is an annual commitment",
        "NOTICE_PERIOD": "the effective date must be at least 45 days after we received the request",
        "ALREADY_PENDING": "a cancellation for this contract is already in progress",
    },
}


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    body: str


def _ja_date(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _yen(amount: int) -> str:
    return f"¥{amount:,}"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("services.notifier", "templates"),  # works from an installed package
        autoescape=False,  # plain-text mail: nothing to escape
        undefined=jinja2.StrictUndefined,  # a misspelt name fails, never renders as ""
        trim_blocks=True, lstrip_blocks=True,  # a line holding only a tag leaves nothing in the mail
        keep_trailing_newline=True,
        auto_reload=False,  # the templates are part of the installed package: no stat() per mail
    )
    env.filters.update(ja_date=_ja_date, yen=_yen)
    return env


def _described(table: dict[str, dict[str, str]], keys: tuple[str, ...], what: str) -> None:
    for key in keys:
        if key not in table[LANGUAGES[0]]:
            raise ValueError(f"unknown {what} {key!r}; expected one of {', '.join(table[LANGUAGES[0]])}")


def _section(kind: str, lang: str, values: dict[str, object]) -> tuple[str, str]:
    text = _environment().get_template(f"{kind}.{lang}.txt").render(values)
    subject, blank, body = text.partition("\n\n")
    if not blank or "\n" in subject:
        raise ValueError(f"template {kind}.{lang}.txt: the first line is the subject, then a blank line")
    return subject, body.strip("\n")


def render(
    kind: str,
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
    """The plain-text e-mail for one notification of `kind` (a NotificationKind or its value)."""
    if "\r" in request_id or "\n" in request_id:
        # The subject becomes a mail header; a line break there would inject headers.
        raise ValueError("request_id must not contain line breaks")
    kind = str(kind)
    if kind not in REQUIRED:
        raise ValueError(f"unknown notification kind {kind!r}; expected one of {', '.join(REQUIRED)}")
    values: dict[str, object] = dict(
        customer_name=customer_name, request_id=request_id, contract_id=contract_id, effective_date=effective_date,
        total_jpy=total_jpy, paid_through=paid_through, earliest_effective_date=earliest_effective_date,
        days_before=days_before, offers=offers, codes=codes, taken_offer=taken_offer)
    for name in REQUIRED[kind]:
        if values[name] is None or values[name] == ():
            raise ValueError(f"{kind} e-mail needs {name}")
    _described(OFFER_TEXTS, (*offers, *([taken_offer] if taken_offer is not None else [])), "offer")
    _described(CODE_TEXTS, codes, "rejection code")
    subjects, bodies = [], []
    for lang in LANGUAGES:
        subject, body = _section(kind, lang, {
            **values, "offers": [OFFER_TEXTS[lang][o] for o in offers], "codes": [CODE_TEXTS[lang][c] for c in codes],
            "taken_offer": OFFER_TEXTS[lang][taken_offer] if taken_offer is not None else None})
        subjects.append(subject)
        bodies.append(body)
    return EmailContent(subject=f"{' / '.join(subjects)} [{request_id}]", body="\n\n".join(bodies) + "\n")
