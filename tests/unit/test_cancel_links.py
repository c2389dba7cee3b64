"""Signed cancel links and the page's CSRF fields."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.links import InvalidLink, sign_link, verify_link
from services.intake.page import csrf

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
LATER = NOW + timedelta(days=7)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}", fullmatch=True))
def test_a_link_carries_its_contract_and_expiry(contract_id: str) -> None:
    link = verify_link("secret", sign_link("secret", contract_id, LATER), NOW)
    assert link.contract_id == contract_id and link.expires_at == LATER


def test_expired_at_its_expiry() -> None:
    token = sign_link("secret", "C-1", LATER)
    assert verify_link("secret", token, LATER - timedelta(seconds=1)).contract_id == "C-1"
    with pytest.raises(InvalidLink):
        verify_link("secret", token, LATER)


def test_another_secret_is_refused() -> None:
    with pytest.raises(InvalidLink):
        verify_link("other", sign_link("secret", "C-1", LATER), NOW)


@pytest.mark.parametrize("junk", ["", ".", "abc", "abc.", ".abc", "a.b.c", "€.x", "Qy0x.AAAA"])
def test_malformed_tokens_are_refused(junk: str) -> None:
    with pytest.raises(InvalidLink):
        verify_link("secret", junk, NOW)


def test_every_altered_character_is_refused() -> None:
    token = sign_link("secret", "C-1", LATER)
    for i, ch in enumerate(token):
        for other in {"A", "b", "-", "_"} - {ch}:
            with pytest.raises(InvalidLink):
                verify_link("secret", token[:i] + other + token[i + 1:], NOW)


def test_an_extended_expiry_is_refused() -> None:
    import base64

    token = sign_link("secret", "C-1", LATER)
    payload, mac = token.split(".")
    longer = base64.urlsafe_b64encode(f"C-1.{int((LATER + timedelta(days=365)).timestamp())}".encode()).rstrip(b"=")
    with pytest.raises(InvalidLink):
        verify_link("secret", f"{longer.decode()}.{mac}", NOW)


def test_csrf_field_is_bound_to_the_cookie_and_the_link() -> None:
    cookie = csrf.new_cookie_value()
    field = csrf.form_token("s", cookie, "tok")
    assert csrf.form_token_valid("s", cookie, "tok", field)
    assert not csrf.form_token_valid("s", csrf.new_cookie_value(), "tok", field)
    assert not csrf.form_token_valid("s", cookie, "other-link", field)
    assert not csrf.form_token_valid("s", None, "tok", field)
    assert not csrf.form_token_valid("s", cookie, "tok", None)
