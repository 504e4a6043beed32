"""Outbound shapes the README's *Outbound: stamping* and *What casethread changes in a
message* describe, pinned as the outbound audit found them (our own fixtures): a newsletter
sent one message a customer, duplicate Message-ID fields, Apple Mail's text parts between
inline attachments."""

from __future__ import annotations

import email
from typing import Any

AGENT = ("From", "Dana Agent <dana@support.example.com>")
CUSTOMER_ADDR = "pat@customer.example.org"
CUSTOMER = ("From", f"Pat Customer <{CUSTOMER_ADDR}>")
TO_CUSTOMER = ("To", f"Pat Customer <{CUSTOMER_ADDR}>")
TO_SUPPORT = ("To", "Support <support@example.com>")
NEWS = (("From", "News <news@support.example.com>"), TO_CUSTOMER,
        ("Subject", "November news"), ("Precedence", "bulk"),
        ("List-Unsubscribe", "<mailto:unsubscribe@support.example.com>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))


def test_a_newsletter_sent_one_message_a_customer_opens_a_case_unless_it_has_a_list_id(
        harness: Any) -> None:
    """List-Unsubscribe (with Precedence: bulk) on mail to one customer is what apps put on
    their answers too: each such message opens its case. A List-Id marks it as a list's."""
    opened = [harness.outbound(*NEWS, rcpts=(CUSTOMER_ADDR,)) for _ in range(2)]
    assert [r.decision.match for r in opened] == ["new", "new"]
    assert opened[0].case_id != opened[1].case_id
    listed = harness.outbound(*NEWS, ("List-Id", "<news.support.example.com>"),
                              rcpts=(CUSTOMER_ADDR,))
    assert (listed.decision.match, "list-mail" in listed.decision.notes) == ("none", True)
    assert listed.one("Subject") == "November news"


def test_of_two_message_id_fields_the_first_is_recorded_and_both_stay(harness: Any) -> None:
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"),
                           ("Message-ID", "<one@support.example.com>"),
                           ("Message-ID", "<two@support.example.com>"))
    assert out.all("Message-ID") == ["<one@support.example.com>", "<two@support.example.com>"]
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer"),
                            ("In-Reply-To", "<one@support.example.com>"))
    assert (first.case_id, first.one("X-Case-Match")) == (out.case_id, "in-reply-to")
    second = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer"),
                             ("In-Reply-To", "<two@support.example.com>"))
    assert second.one("X-Case-Match") == "new"


def _apple_mail(first_text: str) -> bytes:
    return (
        "--B\nContent-Type: text/plain; charset=utf-8\n\n" + first_text
        + "--B\nContent-Type: image/png; name=a.png\nContent-Disposition: inline; filename=a.png"
        "\nContent-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
        "--B\nContent-Type: text/plain; charset=utf-8\n\nAfter the picture.\n-- \nDana\n"
        "--B--\n").encode()


def test_only_the_first_of_apple_mails_text_parts_between_attachments_gets_the_line(
        harness: Any) -> None:
    for first_text in ("Hello Pat, the screenshot:\n", ""):
        body = _apple_mail(first_text)
        out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Screenshot"),
                               ("MIME-Version", "1.0"),
                               ("Content-Type", 'multipart/mixed; boundary="B"'), body=body)
        token = harness.token(out.case_id)
        parts = [p for p in email.message_from_bytes(
            b"Content-Type: multipart/mixed; boundary=B\n\n" + out.body).walk()
            if p.get_content_type() == "text/plain"]
        first, last = (p.get_payload() for p in parts)
        # The line break before a delimiter is the delimiter's (RFC 2046 §5.1.1).
        assert first == f"{first_text.rstrip()}\n[ref:{token}]\n"
        assert last == "After the picture.\n-- \nDana"


def test_base64_readers_would_forgive_is_left_unstamped(harness: Any) -> None:
    """Base64 is read strictly where it is re-encoded (README): blanks at a line's end or a
    missing padding leave the part as it is, with its reason noted."""
    for body in (b"SGVsbG8gUGF0IQo=  \n", b"SGVsbG8gUGF0IQo\n"):
        out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"),
                               ("MIME-Version", "1.0"),
                               ("Content-Type", "text/plain; charset=utf-8"),
                               ("Content-Transfer-Encoding", "base64"), body=body)
        assert "text-not-stamped:invalid-base64" in out.decision.notes
        assert out.body == body
