"""The signature scheme alone: what an upstream sends, and each reason a signed call is refused."""

from datetime import datetime, timezone

import pytest
from hypothesis import given, strategies as st

from services.intake.signatures import SignatureRefused, parse, remembered_until, sign, verify

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
T = int(NOW.timestamp())


def test_the_header_is_t_and_v1_over_t_dot_body():
    import hashlib
    import hmac

    expected = hmac.new(b"s", f"{T}.".encode() + b'{"a":1}', hashlib.sha256).hexdigest()
    assert sign("s", b'{"a":1}', T) == f"t={T},v1={expected}"


@given(st.binary(max_size=200), st.integers(-300, 300))
def test_a_fresh_signature_of_the_body_verifies(body, skew):
    assert verify("secret", sign("secret", body, T + skew), body, NOW, 300).timestamp == T + skew


@pytest.mark.parametrize(("header", "why"), [
    (sign("secret", b"body", T - 301), "outside the tolerance"),
    (sign("secret", b"body", T + 301), "ahead"),
    (sign("other", b"body", T), "does not match"),
    (sign("secret", b"bodY", T), "does not match"),
    ("sha256=abc", "no longer accepted"),
    (f"t={T}", "must be t="),
    ("v1=abc", "must be t="),
    ("", "must be t="),
])
def test_refused_naming_why(header, why):
    with pytest.raises(SignatureRefused, match=why):
        verify("secret", header, b"body", NOW, 300)


def test_a_second_v1_is_accepted_while_an_upstream_rotates_its_secret():
    header = sign("new", b"b", T) + "," + sign("old", b"b", T).split(",")[1]
    assert parse(header).digests[1] == sign("old", b"b", T).split("v1=")[1]
    assert verify("old", header, b"b", NOW, 300).digests == (sign("old", b"b", T).split("v1=")[1],)


def test_a_used_signature_is_remembered_until_its_t_leaves_the_tolerance():
    signature = verify("s", sign("s", b"b", T - 100), b"b", NOW, 300)
    assert remembered_until(signature, 300).timestamp() == T + 200
