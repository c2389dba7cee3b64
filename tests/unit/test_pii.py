"""Masking personal data: one implementation for logs, events and operator output."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.pii import mask_email, mask_phone, mask_pii


@pytest.mark.parametrize(
    ("mask", "value", "expected"),
    [
        pytest.param(mask_email, "taro.yamada@example.co.jp", "t***@example.co.jp", id="email-typical"),
        pytest.param(mask_email, "a@example.com", "a***@example.com", id="email-one-letter-local"),
        pytest.param(mask_email, "no-at-sign", "***", id="email-no-at"),
        pytest.param(mask_email, "", "***", id="email-empty"),
        pytest.param(mask_email, "@example.com", "***@example.com", id="email-empty-local"),
        pytest.param(mask_phone, "090-1234-5678", "***78", id="phone-mobile"),
        pytest.param(mask_phone, "+81 3 1234 5601", "***01", id="phone-international"),
        pytest.param(mask_phone, "０９０１２３４５６７８", "***78", id="phone-full-width-digits"),
        pytest.param(mask_phone, "123", "***", id="phone-too-short"),
        pytest.param(mask_phone, "1234", "***34", id="phone-four-digits"),
        pytest.param(mask_phone, "", "***", id="phone-empty"),
    ],
)
def test_mask_email_and_phone(mask, value: str, expected: str) -> None:
    assert mask(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("mail taro.yamada@example.co.jp now", "mail t***@example.co.jp now", id="email-in-text"),
        pytest.param("call 090-1234-5678 please", "call ***78 please", id="phone-in-text"),
        pytest.param("+81 3 1234 5601", "***01", id="international"),
        pytest.param("2026-06-30T10:00:00+09:00", "2026-06-30T10:00:00+09:00", id="instant-untouched"),
        pytest.param("offset 12345", "offset 12345", id="short-number-untouched"),
        pytest.param("f47ac10b-58cc-4372-a567-0e02b2c3d479", "f47ac10b-58cc-4372-a567-0e02b2c3d479", id="uuid"),
    ],
)
def test_mask_pii_in_free_text(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@given(local=st.from_regex(r"[a-z][a-z0-9._]{2,20}", fullmatch=True),
       domain=st.from_regex(r"[a-z]{2,10}\.(jp|com|co\.jp)", fullmatch=True),
       around=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="@"), max_size=20))
def test_an_address_in_any_text_is_never_left_in_clear(local: str, domain: str, around: str) -> None:
    masked = mask_pii(f"{around} {local}@{domain} {around}")
    assert f"{local}@{domain}" not in masked
    assert f"{local[0]}***@{domain}" in masked


@given(st.from_regex(r"0[0-9]{2}-[0-9]{4}-[0-9]{4}", fullmatch=True))
def test_a_domestic_number_keeps_only_its_last_two_digits(phone: str) -> None:
    assert mask_pii(f"tel {phone}.") == f"tel ***{phone[-2:]}."
    assert re.sub(r"\D", "", mask_pii(phone)) == phone[-2:]
