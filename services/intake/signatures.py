"""Signed upstream calls: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (Stripe's
scheme). A signature is good within a tolerance of its `t` and once: intake's database remembers each one
(`store.first_use_of_signature`) until it would be too old anyway, so a captured request replayed to any
intake instance is refused. The rules only: no I/O here."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone

SCHEME = "v1"


class SignatureRefused(ValueError):
    """Why a signed call is refused (the 401's detail)."""


@dataclass(frozen=True)
class Signature:
    timestamp: int
    digests: tuple[str, ...]  # several v1= while an upstream rotates its secret


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value an upstream sends: what README shows, in four lines."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},{SCHEME}={digest}"


def parse(header: str) -> Signature:
    if header.startswith("sha256="):
        raise SignatureRefused("X-Signature: the sha256=<HMAC of the body> form is no longer accepted (it can be "
                               "replayed): send t=<unix seconds>,v1=<HMAC-SHA256 of \"<t>.<body>\">")
    timestamp, digests = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == SCHEME and value:
            digests.append(value)
    if timestamp is None or not digests:
        raise SignatureRefused("X-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">")
    return Signature(timestamp, tuple(digests))


def verify(secret: str, header: str, body: bytes, now: datetime, tolerance_s: int) -> Signature:
    """The signature if it is this body's and fresh; else `SignatureRefused` naming why."""
    signature = parse(header)
    age = now.timestamp() - signature.timestamp
    if abs(age) > tolerance_s:
        raise SignatureRefused(f"X-Signature: t is {abs(age):.0f} s {'old' if age > 0 else 'ahead'}, outside the "
                               f"tolerance of {tolerance_s} s")
    expected = sign(secret, body, signature.timestamp).split(f"{SCHEME}=", 1)[1].encode()
    # Every candidate compared, so the time taken does not tell which one nearly matched.
    matched = [d for d in signature.digests if hmac.compare_digest(expected, d.encode())]
    if not matched:
        raise SignatureRefused("X-Signature does not match the body (HMAC-SHA256 of \"<t>.<body>\" with the "
                               "webhook secret)")
    return Signature(signature.timestamp, (matched[0],))


def remembered_until(signature: Signature, tolerance_s: int) -> datetime:
    """How long a used signature is remembered: until its `t` leaves the tolerance, after which the time
    check refuses it by itself."""
    return datetime.fromtimestamp(signature.timestamp + tolerance_s, timezone.utc)


class SignatureReplayed(SignatureRefused):
    def __init__(self) -> None:
        super().__init__("X-Signature was used before: a replayed request (sign each request anew, with its own t)")
