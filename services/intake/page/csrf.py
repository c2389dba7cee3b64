"""Cross-site request forgery protection for the page's forms: a random value in a SameSite=Strict,
HttpOnly cookie, and in each form its HMAC bound to the link token. A post from another site carries
neither the cookie nor a field that matches it."""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "cancelflow_csrf"


def new_cookie_value() -> str:
    return secrets.token_urlsafe(24)


def form_token(secret: str, cookie: str, link_token: str) -> str:
    return hmac.new(secret.encode(), f"csrf|{cookie}|{link_token}".encode(), hashlib.sha256).hexdigest()


def form_token_valid(secret: str, cookie: str | None, link_token: str, given: str | None) -> bool:
    if not cookie or not given:
        return False
    return hmac.compare_digest(given.encode(), form_token(secret, cookie, link_token).encode())
