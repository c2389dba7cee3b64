"""The notifier's messages as bytes: RFC 5322 text/plain mails, written directly for speed, with the
standard library as the fallback for anything unusual."""

from __future__ import annotations

import base64
from email.header import Header
from email.mime.text import MIMEText
from email.policy import compat32

__all__ = ["render_mail", "render_with_stdlib"]

# Lines end in CRLF on the wire (RFC 5321); the body's own line breaks are converted by the policy.
_SMTP_POLICY = compat32.clone(linesep="\r\n")
_MAX_LINE = 998  # RFC 5322 2.1.1
_WORD_BYTES = 45  # UTF-8 bytes per encoded word: base64 of 45 -> 60 chars, "=?utf-8?b?...?=" stays <= 75


def render_mail(sender: str, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> bytes:
    """A text/plain message, written directly: what `email.mime.text.MIMEText` with the compat32 policy
    produces for these messages (same headers, RFC 2047 subject, base64 body when not ASCII), at a
    fraction of its cost (see docs/performance.md). Anything unusual (a header line longer than
    RFC 5322 allows, a very long ASCII body line) goes through the stdlib."""
    for value in (to, subject, msg_id, *headers.values()):
        if "\r" in value or "\n" in value:
            raise ValueError("a header value must not contain a line break")
    ascii_body = body.isascii()
    lines = [f"Content-Type: text/plain; charset=\"{'us-ascii' if ascii_body else 'utf-8'}\"", "MIME-Version: 1.0",
             f"Content-Transfer-Encoding: {'7bit' if ascii_body else 'base64'}", f"From: {sender}", f"To: {to}",
             f"Subject: {subject if subject.isascii() else _encoded_words(subject)}", f"Message-ID: {msg_id}",
             *(f"{k}: {v}" for k, v in headers.items())]
    if ascii_body:
        text = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if any(len(line) > _MAX_LINE for line in text):
            return render_with_stdlib(sender, to, subject, body, msg_id, headers)
        payload = "\r\n".join(text)
    else:
        payload = base64.encodebytes(body.encode()).decode("ascii").replace("\n", "\r\n")
    if any(len(line) > _MAX_LINE or not line.isascii() for line in lines):
        return render_with_stdlib(sender, to, subject, body, msg_id, headers)
    return ("\r\n".join(lines) + "\r\n\r\n" + payload).encode("ascii")


def _encoded_words(text: str) -> str:
    """RFC 2047 B-encoded words of at most `_WORD_BYTES` UTF-8 bytes each (never splitting a character),
    folded one per line."""
    words, chunk, size = [], [], 0
    for ch in text:
        n = len(ch.encode())
        if size + n > _WORD_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    words.append("".join(chunk))
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words)


def render_with_stdlib(sender: str, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> bytes:
    """The same message through `email.mime.text.MIMEText` (the fallback, and the reference in tests)."""
    msg = MIMEText(body, "plain", "us-ascii" if body.isascii() else "utf-8")
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")
    msg["Message-ID"] = msg_id
    for key, value in headers.items():
        msg[key] = value
    return msg.as_bytes(policy=_SMTP_POLICY)
