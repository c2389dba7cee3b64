"""Masking personal data (SPEC section 5): one implementation for logs, events and operator output."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["mask_email", "mask_phone", "mask_pii"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
# Phone numbers: a leading 0 (domestic) or +country code, then 9-13 digits in groups. Dates, times,
# offsets and uuids never start that way, so they stay readable. A number may end a sentence (a "." not
# followed by a digit). The boundaries are ASCII: Japanese text runs straight into a number
# ("090-1234-5678まで"), and its letters count as \w.
_PHONE = re.compile(r"(?<![A-Za-z0-9_.:/+-])(?:\+\d{1,3}[\s-]?|0)\d{1,4}(?:[\s-]?\d{1,4}){1,3}"
                    r"(?![A-Za-z0-9_:/-]|\.\d)")


def mask_email(email: str) -> str:
    """Keep the first character and the domain: taro@example.jp -> t***@example.jp."""
    local, at, domain = email.strip().rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def _digits(text: str) -> str:
    # NFKC turns full-width digits (０９０…) typed on Japanese keyboards into ASCII ones.
    return "".join(c for c in unicodedata.normalize("NFKC", text) if c in "0123456789")


def mask_phone(phone: str) -> str:
    """Keep the last two digits: 090-1234-5678 -> ***78."""
    digits = _digits(phone)
    if len(digits) < 4:
        # Too short for the tail to be anonymous.
        return "***"
    return "***" + digits[-2:]


def _phone_in_text(match: re.Match[str]) -> str:
    # In free text only what has a phone number's length is one; shorter runs of digits stay as they are.
    return mask_phone(match.group(0)) if 10 <= len(_digits(match.group(0))) <= 15 else match.group(0)


def mask_pii(text: str) -> str:
    """Mask e-mail addresses and phone numbers in free text."""
    return _PHONE.sub(_phone_in_text, _EMAIL.sub(lambda m: mask_email(m.group(0)), text))
