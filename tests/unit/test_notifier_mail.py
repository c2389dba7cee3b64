"""The notifier writes its mails itself: any mail reader must read back exactly what was meant, and the
body must be what the standard library's MIMEText would have carried."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.mime import render_mail, render_with_stdlib
from services.notifier.smtp_client import dot_stuffed

text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=300)
body = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=2000)


def parsed(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


@settings(max_examples=300, deadline=None)
@given(subject=text, content=body)
def test_what_a_reader_sees_is_what_was_meant(subject, content):
    args = ("support@cancelflow.example", "t@example.jp", subject, content, "<r1.ack.1@cancelflow>",
            {"X-Cancelflow-Kind": "acknowledgement"})
    ours, stdlib = parsed(dot_stuffed(render_mail(*args))), parsed(dot_stuffed(render_with_stdlib(*args)))
    # Readers drop the whitespace that opens a header value; everything else comes back as it was.
    assert str(ours["Subject"]).strip() == subject.strip()
    assert ours.get_body(("plain",)).get_content() == stdlib.get_body(("plain",)).get_content()
    assert (ours["To"], ours["Message-ID"], ours["X-Cancelflow-Kind"]) == (
        "t@example.jp", "<r1.ack.1@cancelflow>", "acknowledgement")
    raw = render_mail(*args)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_a_japanese_subject_is_split_into_encoded_words_of_whole_characters():
    subject = "【ご解約】お手続きを受け付けました。データのエクスポートはお早めに" * 2
    raw = render_mail("s@x.example", "t@example.jp", subject, "本文", "<m@x>", {})
    headers = raw.split(b"\r\n\r\n")[0].decode("ascii")
    words = [w for w in headers.split() if w.startswith("=?utf-8?b?")]
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    assert str(parsed(raw)["Subject"]) == subject
