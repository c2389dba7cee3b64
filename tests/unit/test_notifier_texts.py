"""The mail texts come from templates (services/notifier/texts.py, templates/): the mails are exactly
the ones written before the templates (tests/unit/notifier_mails/, produced by the old code), every kind
has a template in every language, and every offer and rejection code a description in each."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from jinja2 import PackageLoader

from services.notifier.texts import CODE_TEXTS, LANGUAGES, OFFER_TEXTS, REQUIRED, render
from shared.vocabulary import NotificationKind as K
from shared.vocabulary import Offer, RejectionCode

MAILS = Path(__file__).parent / "notifier_mails"
COMMON = dict(customer_name="山田 太郎", request_id="REQ-123", contract_id="C-9")
EFFECTIVE = date(2026, 6, 30)

CASES = {
    "acknowledgement-full": (K.acknowledgement, dict(effective_date=EFFECTIVE, total_jpy=12_000,
                                                     paid_through=date(2026, 7, 10), offers=("consultation", "downgrade"))),
    "acknowledgement-bare": (K.acknowledgement, dict(effective_date=EFFECTIVE)),
    "rejection": (K.rejection, dict(codes=("MINIMUM_TERM", "NOTICE_PERIOD"), earliest_effective_date=date(2026, 8, 15))),
    "data_export_reminder-3": (K.data_export_reminder, dict(effective_date=EFFECTIVE, days_before=3)),
    "rich_menu_reminder-on-acceptance": (K.rich_menu_reminder, dict(effective_date=EFFECTIVE)),
    "withdrawal_confirmation": (K.withdrawal_confirmation, {}),
    "offer_confirmation": ("offer_confirmation", dict(taken_offer="discount")),
}


@pytest.mark.parametrize("case", CASES)
def test_the_mail_is_byte_for_byte_the_expected_one(case: str) -> None:
    kind, values = CASES[case]
    mail = render(kind, **COMMON, **values)
    assert f"Subject: {mail.subject}\n\n{mail.body}" == (MAILS / f"{case}.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", [*K, "offer_confirmation"], ids=str)
def test_every_kind_has_a_template_in_every_language(kind: str) -> None:
    assert kind in REQUIRED
    names = set(PackageLoader("services.notifier", "templates").list_templates())
    assert {f"{kind}.{lang}.txt" for lang in LANGUAGES} <= names


def test_every_template_is_a_kind_in_a_language_or_an_included_piece() -> None:
    names = PackageLoader("services.notifier", "templates").list_templates()
    kinds = {name.split(".")[0] for name in names if not name.startswith("_")}
    assert kinds == set(REQUIRED)
    assert all(name.split(".")[1] in LANGUAGES and name.endswith(".txt") for name in names)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_offer_and_code_is_described_in_every_language(lang: str) -> None:
    assert set(OFFER_TEXTS[lang]) == {o.value for o in Offer}
    assert set(CODE_TEXTS[lang]) == {c.value for c in RejectionCode}


@pytest.mark.parametrize("offer", list(Offer), ids=str)
def test_offer_confirmation_says_what_the_customer_gets_and_that_the_cancellation_is_withdrawn(offer: Offer) -> None:
    mail = render("offer_confirmation", **COMMON, taken_offer=offer.value)
    assert "REQ-123" in mail.subject and "\n" not in mail.subject
    assert OFFER_TEXTS["ja"][offer] in mail.body and OFFER_TEXTS["en"][offer] in mail.body
    assert "取り下げ" in mail.body and "withdrawn" in mail.body
    assert mail.body.index("取り下げ") < mail.body.index("withdrawn")  # Japanese first


@pytest.mark.parametrize(("kind", "values", "message"), [
    pytest.param("offer_confirmation", {}, "taken_offer", id="offer-confirmation-without-offer"),
    pytest.param("offer_confirmation", {"taken_offer": "free_lunch"}, "free_lunch", id="unknown-taken-offer"),
    pytest.param("farewell", {}, "farewell", id="unknown-kind"),
])
def test_what_cannot_be_written_is_an_error_naming_it(kind: str, values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(kind, **COMMON, **values)
