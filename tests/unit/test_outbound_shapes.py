"""Outbound shapes the README's *Outbound: stamping* and *What casethread changes in a
message* describe, pinned as the outbound audit found them (our own fixtures): a newsletter
sent one message a customer, duplicate Message-ID fields, Apple Mail's text parts between
inline attachments; signed and encrypted mail, winmail.dat, invitations, AMP and Apple Watch
parts."""

from __future__ import annotations

import base64
import email
from typing import Any

import pytest

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


# --- signed, encrypted and Outlook-only shapes (session 27's audit) ------------------------

_SIGNATURE = base64.encodebytes(bytes(range(256))).decode()  # bytes, not a real signature
_TEXT = "Hello Pat,\n\nthe printer is fixed.\n\n-- \nDana\n"
_CLEARSIGNED = ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nHello Pat,\n\n"
                "the printer is fixed.\n\n- -- \nDana\n-----BEGIN PGP SIGNATURE-----\n\n"
                f"{_SIGNATURE}-----END PGP SIGNATURE-----\n")
_SMIME = "application/pkcs7-mime; smime-type={}; name=smime.p7m"
# (Content-Type, Content-Transfer-Encoding, body) of what signs or encrypts a whole body.
SEALED = {
    "s/mime detached": (
        'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary=S',
        None, f"--S\nContent-Type: text/plain; charset=utf-8\n\n{_TEXT}\n--S\nContent-Type: "
        f"application/pkcs7-signature; name=smime.p7s\nContent-Transfer-Encoding: base64\n\n"
        f"{_SIGNATURE}\n--S--\n"),
    "s/mime signed-data": (_SMIME.format("signed-data"), "base64", _SIGNATURE),
    "s/mime enveloped-data": (_SMIME.format("enveloped-data"), "base64", _SIGNATURE),
    "pgp/mime signed": (
        'multipart/signed; micalg=pgp-sha512; protocol="application/pgp-signature"; boundary=S',
        None, f"--S\nContent-Type: text/plain; charset=utf-8\n\n{_TEXT}\n--S\nContent-Type: "
        f"application/pgp-signature; name=signature.asc\n\n{_SIGNATURE}\n--S--\n"),
    "inline pgp": ("text/plain; charset=utf-8", None, _CLEARSIGNED),
}


def _mime(ctype: str, cte: str | None) -> list[tuple[str, str]]:
    fields = [("MIME-Version", "1.0"), ("Content-Type", ctype)]
    return fields + ([("Content-Transfer-Encoding", cte)] if cte else [])


@pytest.mark.parametrize("shape", SEALED)
def test_signed_or_encrypted_mail_keeps_its_body_and_threads_by_its_header_fields(
        harness: Any, shape: str) -> None:
    """The body stays byte for byte (the filter's output of such mail passes `openssl smime
    -verify` and `gpg --verify`); the fields outside the signature carry the case. A client
    that protects header fields (RFC 9788) answers with the Subject from inside, no tag."""
    ctype, cte, text = SEALED[shape]
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"),
                           ("Message-ID", "<signed-1@support.example.com>"), *_mime(ctype, cte),
                           body=text.encode(), rcpts=(CUSTOMER_ADDR,))
    token = harness.token(out.case_id)
    assert out.body == text.encode()
    assert (out.one("Subject"), out.one("References")) == (
        f"Printer [ref:{token}]", f"<{token}.case@support.example.com>")
    reply = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer"),
                            ("In-Reply-To", "<signed-1@support.example.com>"))
    assert (reply.case_id, reply.one("X-Case-Match")) == (out.case_id, "in-reply-to")


def _alternative(*parts: tuple[str, str]) -> bytes:
    return "".join(f"--A\nContent-Type: {ctype}\n\n{text}\n" for ctype, text in parts
                   ).encode() + b"--A--\n"


_HTML = "<html><body><p>Hello Pat,</p><p>the printer is fixed.</p></body></html>"
_ICS = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Example//Helpdesk//EN\r\nMETHOD:REQUEST\r\n"
        "BEGIN:VEVENT\r\nUID:printer-1@support.example.com\r\nDTSTAMP:20261201T060000Z\r\n"
        "DTSTART:20261202T090000Z\r\nSUMMARY:Printer follow-up\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
# Each shape's body (multipart/alternative or /mixed, boundary A) and the part left as it is.
BESIDE = {
    "winmail.dat": ("multipart/mixed", _alternative(
        ("text/plain; charset=us-ascii", _TEXT),
        ("application/ms-tnef; name=winmail.dat\nContent-Transfer-Encoding: base64\n"
         "Content-Disposition: attachment; filename=winmail.dat", _SIGNATURE))),
    "invitation": ("multipart/alternative", _alternative(
        ("text/plain; charset=utf-8", _TEXT), ("text/html; charset=utf-8", _HTML),
        ("text/calendar; charset=utf-8; method=REQUEST", _ICS))),
    "amp": ("multipart/alternative", _alternative(
        ("text/plain; charset=utf-8", _TEXT),
        ("text/x-amp-html; charset=utf-8", "<!doctype html><html amp4email><body>Hi</body></html>"),
        ("text/html; charset=utf-8", _HTML))),
    "apple watch": ("multipart/alternative", _alternative(
        ("text/plain; charset=utf-8", _TEXT),
        ("text/watch-html; charset=utf-8", "<b>Hello Pat</b>, fixed."),
        ("text/html; charset=utf-8", _HTML))),
    "inline pgp beside html": ("multipart/alternative", _alternative(
        ("text/plain; charset=utf-8", _CLEARSIGNED),
        ("text/html; charset=utf-8", f"<html><body><pre>{_CLEARSIGNED}</pre></body></html>"))),
}


def _leaves(ctype: str, body: bytes) -> list[tuple[str, bytes]]:
    parsed = email.message_from_bytes(f"Content-Type: {ctype}; boundary=A\n\n".encode() + body)
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in parsed.walk()
            if not p.is_multipart()]


def _common_start(a: bytes, b: bytes) -> int:
    pairs = zip(a, b, strict=False)  # the shorter one's length at most
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


def _insertion(before: bytes, after: bytes) -> tuple[int, bytes]:
    """Where `after` is `before` with one run of bytes inserted, and that run."""
    start = _common_start(before, after)
    tail = _common_start(before[start:][::-1], after[start:][::-1])
    assert start + tail == len(before), "more than one insertion"
    return start, after[start : len(after) - tail]


@pytest.mark.parametrize("shape", BESIDE)
def test_only_the_text_and_html_beside_other_renderings_are_stamped(
        harness: Any, shape: str) -> None:
    """winmail.dat, an invitation's text/calendar, AMP and Apple Watch parts and inline-PGP
    text stay as they are; the text and HTML beside them (not signed) get one insertion each,
    the HTML's after the signed text's end, not above its dash-escaped `- -- `."""
    ctype, body = BESIDE[shape]
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"),
                           *_mime(f"{ctype}; boundary=A", None), body=body,
                           rcpts=(CUSTOMER_ADDR,))
    tag = f"[ref:{harness.token(out.case_id)}]".encode()
    for (kind, before), (_, after) in zip(_leaves(ctype, body), _leaves(ctype, out.body),
                                          strict=True):
        if kind not in ("text/plain", "text/html") or before.startswith(b"-----BEGIN PGP"):
            assert after == before, kind
            continue
        at, inserted = _insertion(before, after)
        assert tag in inserted, kind
        assert at > before.find(b"-----END PGP SIGNATURE-----"), kind
