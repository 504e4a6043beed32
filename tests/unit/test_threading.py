"""Complete threading (issue 3; DESIGN §3-§6): every strategy, case rule and transition.

Most tests run through the engine (`Harness`: MemoryIndex, fixed clock, fixed key); the ones at
the end run `casethread filter` as a subprocess on the real LMDB index and the index's own key.
Case states and links are set on the index directly, as `casethread case ...` does.
"""

from __future__ import annotations

import base64
import dataclasses
import email.header
import itertools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread import case_admin
from casethread.core import mime, msgid, outbound, rules, thread_index
from casethread.core.message import parse_raw, unfold
from casethread.core.model import (
    Alias,
    AliasHit,
    AliasKind,
    CaseRecord,
    CaseState,
    CounterBump,
    Direction,
)
from casethread.core.resolve import Resolver
from casethread.core.settings import (
    ExternalRefRule,
    FloodSettings,
    RoutingRule,
    RoutingSettings,
    Settings,
)
from casethread.core.store import CaseChange
from casethread.core.subject import decode_subject
from casethread.core.token import ALPHABET, Keyring
from casethread.index import LmdbIndex, MemoryIndex, keys

from ..helpers import conversation_index

AGENT = ("From", "Dana Agent <dana@support.example.com>")
CUSTOMER_ADDR = "pat@customer.example.org"
CUSTOMER = ("From", f"Pat Customer <{CUSTOMER_ADDR}>")
TO_CUSTOMER = ("To", f"Pat Customer <{CUSTOMER_ADDR}>")
EVE_ADDR = "Eve Elsewhere <eve@elsewhere.example>"
STRANGER = ("From", EVE_ADDR)
TO_SUPPORT = ("To", "Support <support@example.com>")
TAG = re.compile(r"\[ref:([0-9A-Z]{19,31})\]")
DAY = 86_400



def token_of(subject: str) -> str:
    found = TAG.search(subject)
    assert found, subject
    return found.group(1)


def start_case(h: Any, subject: str = "Printer jam", **kw: Any) -> Any:
    """The agent writes to Pat: a new case, stamped; Pat becomes a participant (To)."""
    r = h.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), **kw)
    assert r.decision.match in ("new", "app"), r.decision
    return r


def settings_with(h: Any, **inbound: Any) -> Settings:
    base: Settings = h.settings
    return dataclasses.replace(base, inbound=dataclasses.replace(base.inbound, **inbound))


# --------------------------------------------------------------------------- bounce


def dsn(returned: bytes, part_type: str = "message/rfc822") -> bytes:
    """A Postfix-style delivery status notification returning `returned` (RFC 3464)."""
    return (
        b"This is a MIME-encapsulated message.\n"
        b"\n"
        b"--DSN.BOUNDARY\n"
        b"Content-Description: Notification\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"\n"
        b"I'm sorry to have to inform you that your message could not\n"
        b"be delivered to one or more recipients.\n"
        b"\n"
        b"--DSN.BOUNDARY\n"
        b"Content-Description: Delivery report\n"
        b"Content-Type: message/delivery-status\n"
        b"\n"
        b"Reporting-MTA: dns; mx.customer.example.org\n"
        b"\n"
        b"Final-Recipient: rfc822; pat@customer.example.org\n"
        b"Action: failed\n"
        b"Status: 5.1.1\n"
        b"\n"
        b"--DSN.BOUNDARY\n"
        b"Content-Description: Undelivered Message\n"
        b"Content-Type: " + part_type.encode() + b"\n"
        b"\n" + returned + b"\n"
        b"--DSN.BOUNDARY--\n"
    )


DSN_HEADERS = (
    ("From", "MAILER-DAEMON@mx.customer.example.org (Mail Delivery System)"),
    ("To", "dana@support.example.com"),
    ("Subject", "Undelivered Mail Returned to Sender"),
    ("Message-ID", "<20260302.dsn1@mx.customer.example.org>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="DSN.BOUNDARY"'),
)


def returned_message(message_id: str, subject: str = "Printer jam") -> bytes:
    return (
        f"From: Dana Agent <dana@support.example.com>\n"
        f"To: pat@customer.example.org\n"
        f"Subject: {subject}\n"
        f"Message-ID: {message_id}\n"
        f"\n"
        f"Hello Pat,\n"
    ).encode()


@pytest.mark.parametrize("part_type", ["message/rfc822", "text/rfc822-headers",
                                       # Bigfoot's LiteMail returns it as the first (only)
                                       # fragment of a message/partial (RFC 2046 5.2.2)
                                       "message/partial"])
def test_bounce_of_our_message_id(harness: Any, part_type: str) -> None:
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    # Only the returned part names the case: its Message-ID (no token anywhere).
    returned = returned_message(out.one("Message-ID"))
    if part_type == "text/rfc822-headers":
        returned = returned.partition(b"\n\n")[0] + b"\n"
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned, part_type), mail_from="<>")
    assert r.ours() == [
        ("X-Case-ID", "C-000001"),
        ("X-Case-Match", "bounce"),
        # A bounce is automatic: it threads but never reopens.
        ("X-Case-State", "resolved"),
        # The case, opened by outbound mail, had no queue: its first inbound mail routes it.
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "bounce"),
        ("X-Case-Sender", "unknown"),
    ]
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_a_delivery_report_body_is_parsed_once(harness: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The auto-reply classifier (its Action fields) and the bounce strategy (the returned
    header fields) read one MIME structure of the report."""
    out = start_case(harness)
    parses: list[int] = []
    real_parse = mime.parse
    monkeypatch.setattr(mime, "parse", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned_message(out.one("Message-ID"))),
                        mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")
    assert len(parses) == 1


def test_bounce_by_token_when_a_relay_rewrote_the_message_id(harness: Any) -> None:
    out = start_case(harness)
    returned = returned_message("<rewritten.by.relay@smarthost.example>", out.one("Subject"))
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned), mail_from="<>")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "bounce"


def test_bounce_by_anchor_in_returned_references(harness: Any) -> None:
    out = start_case(harness)
    returned = (
        b"From: dana@support.example.com\nSubject: no token here\n"
        b"Message-ID: <rewritten@smarthost.example>\n"
        b"References: " + out.one("References").encode() + b"\n\n"
    )
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned, "text/rfc822-headers"))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "bounce"


@pytest.mark.parametrize("order", ["message-id first", "parents first", "id rewritten"])
def test_bounce_of_a_mail_that_moved_to_another_case(harness: Any, order: str) -> None:
    """The agent answered a mail of C-000001 under the app's ticket TICKET-9: the bounce of
    that answer belongs to TICKET-9, though the answer's In-Reply-To names C-000001's mail."""
    first = start_case(harness)
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"),
                             ("Subject", f"Re: {first.one('Subject')}"),
                             ("In-Reply-To", first.one("Message-ID")),
                             ("References", first.one("Message-ID")))
    assert moved.case_id == "TICKET-9"
    own = ("Message-ID: <rewritten@smarthost.example>" if order == "id rewritten"
           else f"Message-ID: {moved.one('Message-ID')}")
    parents = (f"In-Reply-To: {moved.one('In-Reply-To')}\n"
               f"References: {moved.one('References')}")
    fields = [f"Subject: {moved.one('Subject')}",
              *((parents, own) if order != "message-id first" else (own, parents))]
    returned = ("From: dana@support.example.com\n" + "\n".join(fields) + "\n\n").encode()
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned, "text/rfc822-headers"), mail_from="<>")
    assert (r.decision.case_ids, r.one("X-Case-Match")) == (("TICKET-9",), "bounce")


def test_bounce_of_unknown_mail_opens_no_case(harness: Any) -> None:
    returned = returned_message("<never-seen@support.example.com>")
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned), mail_from="<>")
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "bounce")]
    assert r.decision.case_ids == ()
    assert harness.index.last_number() == 0


# Bounces without a DSN at their top, as their servers write them: the mail system's notice
# (a null sender, MAILER-DAEMON or a failure subject) returning the mail in a form of its own.
def qmail_bounce(returned: bytes, yahoo: bool = False) -> tuple[tuple[tuple[str, str], ...],
                                                                 bytes]:
    """qmail's text bounce (Yahoo's is the same, under MIME): the copy after a marker line."""
    host = "yahoo.com" if yahoo else "mail.customer.example.org"
    fields = (("From", f"MAILER-DAEMON@{host}"), ("To", "dana@support.example.com"),
              ("Subject", "Failure Notice" if yahoo else "failure notice"),
              *((("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=UTF-8"),
                 ("Content-Transfer-Encoding", "8bit")) if yahoo else ()))
    return fields, (
        f"Hi. This is the qmail-send program at {host}.\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        "<pat@customer.example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        "--- Below this line is a copy of the message.\n\n"
        "Return-Path: <dana@support.example.com>\n"
        "Received: (qmail 4711 invoked from network); 2 Mar 2026 09:15:03 -0000\n"
    ).encode() + returned


def exim_text_bounce(returned: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """Exim's failure report where DSNs are off: the copy after its own marker line."""
    return ((("From", "Mail Delivery System <Mailer-Daemon@mx.customer.example.org>"),
             ("Subject", "Mail delivery failed: returning message to sender"),
             ("X-Failed-Recipients", "pat@customer.example.org"),
             ("Auto-Submitted", "auto-replied")),
            b"This message was created automatically by mail delivery software.\n\n"
            b"A message that you sent could not be delivered to one or more of its\n"
            b"recipients. This is a permanent error. The following address(es) failed:\n\n"
            b"  pat@customer.example.org\n    mailbox is full\n\n"
            b"------ This is a copy of the message, including all the headers. ------\n\n"
            + returned)


def mdaemon_bounce(returned: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """MDaemon's failure: multipart/mixed, the returned mail attached as message/rfc822."""
    return ((("From", '"MDaemon at mail.customer.example.org" '
                      "<MDaemon@mail.customer.example.org>"),
             ("Subject", "Permanent Delivery Failure"), ("X-MDDSN-Message", "Yes"),
             ("X-Return-Path", "<>"), ("MIME-Version", "1.0"),
             ("Content-Type", 'multipart/mixed; boundary="----=_MDaemon_NDR_0001"')),
            b"------=_MDaemon_NDR_0001\nContent-Type: text/plain; charset=US-ASCII\n\n"
            b"The attached message had PERMANENT fatal delivery errors!\n\n"
            b"--- Session Transcript ---\n <-- 550 5.1.1 User unknown\n"
            b"--- End Transcript ---\n\n"
            b"------=_MDaemon_NDR_0001\nContent-Type: message/rfc822\n"
            b"Content-Disposition: attachment\n\n" + returned
            + b"\n------=_MDaemon_NDR_0001--\n")


def wrapped_dsn(returned: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """Sendmail's DSN with the headers returned, wrapped by a gateway that adds a disclaimer
    part: multipart/mixed around the multipart/report."""
    headers = returned.partition(b"\n\n")[0] + b"\n"
    return ((("From", "Mail Delivery Subsystem <MAILER-DAEMON@mx.customer.example.org>"),
             ("Subject", "Returned mail: see transcript for details"),
             ("Auto-Submitted", "auto-generated (failure)"), ("MIME-Version", "1.0"),
             ("Content-Type", 'multipart/mixed; boundary="DISCLAIMER-1"')),
            b"--DISCLAIMER-1\nContent-Type: multipart/report; report-type=delivery-status;\n"
            b'\tboundary="DSN.BOUNDARY"\n\n' + dsn(headers, "text/rfc822-headers")
            + b"\n--DISCLAIMER-1\nContent-Type: text/plain; charset=us-ascii\n\n"
            b"This e-mail was scanned by GatewayAV.\n\n--DISCLAIMER-1--\n")


def marked_text_bounce(sender: str, subject: str, marker: str, returned: bytes,
                       extra: tuple[tuple[str, str], ...] = ()
                       ) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """A text bounce that returns the mail after a marker line of its own server's."""
    return ((("From", sender), ("To", "dana@support.example.com"), ("Subject", subject),
             *extra),
            b"Delivery to the following recipient failed permanently:\n\n"
            b"     pat@customer.example.org\n\n"
            b"550 5.1.1 <pat@customer.example.org>... User Unknown\n\n"
            + marker.encode() + b"\n\n" + returned)


def unmarked_text_bounce(sender: str, subject: str, lead: str, returned: bytes
                         ) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """A text bounce whose copy follows words no list of markers can know (MXLogic's
    "Included is a copy of the message header:" over a line of dashes, EZweb's line of dashes
    after its notice), without a blank line before the returned header fields."""
    return ((("From", sender), ("To", "dana@support.example.com"), ("Subject", subject)),
            b"A message that you have sent could not be delivered to one or more\n"
            b"recipients.  This is a permanent error.  The following address failed:\n\n"
            b"  <pat@customer.example.org>: 550 5.1.1 User unknown\n\n\n"
            + lead.encode() + b"\n" + returned)


NON_DSN_BOUNCES: dict[str, Callable[[bytes], tuple[tuple[tuple[str, str], ...], bytes]]] = {
    "qmail": qmail_bounce,
    "yahoo": partial(qmail_bounce, yahoo=True),
    "exim text": exim_text_bounce,
    "mdaemon": mdaemon_bounce,
    "gateway-wrapped dsn": wrapped_dsn,
    # Gmail's former text bounce.
    "gmail text": partial(marked_text_bounce,
                          "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
                          "Delivery Status Notification (Failure)",
                          "----- Original message -----",
                          extra=(("X-Failed-Recipients", "pat@customer.example.org"),)),
    # Sendmail without MIME (savemail.c), its V5 ancestor and a headers-only return.
    "sendmail text": partial(marked_text_bounce,
                             "Mail Delivery Subsystem <MAILER-DAEMON@mx.customer.example.org>",
                             "Returned mail: User unknown",
                             "   ----- Original message follows -----"),
    "sendmail v5 text": partial(marked_text_bounce, "MAILER-DAEMON@mx.customer.example.org",
                                "Returned mail: User unknown",
                                "   ----- Unsent message follows -----"),
    "sendmail headers only": partial(marked_text_bounce,
                                     "MAILER-DAEMON@mx.customer.example.org",
                                     "Returned mail: User unknown",
                                     "   ----- Message header follows -----"),
    "lotus notes": partial(marked_text_bounce, "postmaster@notes.customer.example.org",
                           "Undeliverable message", "------- Returned Message --------"),
    "original message follows": partial(marked_text_bounce,
                                        "MAILER-DAEMON@customer.example.org",
                                        "Delivery failure", "--- Original message follows."),
    "exchange text headers": partial(marked_text_bounce, "postmaster@customer.example.org",
                                     "Undeliverable: Printer jam", "Original message headers:"),
    # 1&1 and GMX (the same mail system): the returned header fields after a line of theirs.
    "1und1 gmx": partial(marked_text_bounce,
                         '"Mail Delivery System" <mailer-daemon@kundenserver.customer.example.org>',
                         "Mail delivery failed: returning message to sender",
                         "--- The header of the original message is following. ---"),
    "mxlogic": partial(unmarked_text_bounce,
                       "Mail Delivery System <MAILER-DAEMON@relay0.customer.example.org>",
                       "Mail delivery failed",
                       "Included is a copy of the message header:\n"
                       "-----------------------------------------"),
    "ezweb": partial(unmarked_text_bounce, "<Postmaster@ezweb.customer.example.org>",
                     "Mail System Error - Returned Mail",
                     "Each of the following recipients was rejected by a remote mail server.\n"
                     "---------------------------------------------------"),
}


@pytest.mark.parametrize("server", NON_DSN_BOUNCES)
def test_a_bounce_without_a_dsn_returns_our_message_id(harness: Any, server: str) -> None:
    """Only the returned copy names the case, by its Message-ID (a DKIM-signed mail keeps its
    Subject untagged): read as a DSN's returned part is, with the same rules."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    fields, body = NON_DSN_BOUNCES[server](returned_message(out.one("Message-ID")))
    r = harness.inbound(*fields, body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", "bounce")
    assert harness.case("C-000001").state is CaseState.RESOLVED


@pytest.mark.parametrize("server", NON_DSN_BOUNCES)
def test_a_bounce_without_a_dsn_of_other_mail_opens_no_case(harness: Any, server: str) -> None:
    start_case(harness)
    fields, body = NON_DSN_BOUNCES[server](returned_message("<never-seen@support.example.com>"))
    r = harness.inbound(*fields, body=body, mail_from="<>")
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "bounce")]
    assert harness.index.last_number() == 1


_REPORT_NUMBERS = itertools.count(1)


def bounce_of(server: str, returned: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """A structured DSN (`dsn`, the header returned) or a bounce of `NON_DSN_BOUNCES`."""
    if server == "dsn":  # each a report of its own: a Message-ID of its own
        fields = tuple(("Message-ID", f"<{next(_REPORT_NUMBERS)}.dsn@mx.example>")
                       if name == "Message-ID" else (name, value) for name, value in DSN_HEADERS)
        return fields, dsn(returned.partition(b"\n\n")[0] + b"\n", "text/rfc822-headers")
    return NON_DSN_BOUNCES[server](returned)


@pytest.mark.parametrize("server", ["dsn", *NON_DSN_BOUNCES])
def test_a_bounce_of_a_message_id_our_mail_carried_for_two_cases(harness: Any,
                                                                  server: str) -> None:
    """An app's template with a fixed Message-ID mailed Alice, then Bob: each got a case of
    their own, and the Message-ID's record names Bob's. The bounce of Alice's mail names her
    case by its returned token, its recipient being hers, not Bob's: text bounces and DSNs
    alike."""
    mid = ("Message-ID", "<notification@app.example.com>")
    mails = [harness.outbound(AGENT, ("To", to), ("Subject", subject), mid)
             for to, subject in (("alice@customer-a.example", "Password reset"),
                                 ("bob@customer-b.example", "Invoice"))]
    assert [m.case_id for m in mails] == ["C-000001", "C-000002"]
    for mail in mails:
        returned = (f"From: {AGENT[1]}\nTo: {mail.one('To')}\nSubject: {mail.one('Subject')}\n"
                    f"Message-ID: {mid[1]}\n\nHello\n").encode()
        fields, body = bounce_of(server, returned)
        r = harness.inbound(*fields, body=body, mail_from="<>")
        assert (r.case_id, r.one("X-Case-Match")) == (mail.case_id, "bounce"), server
    # A bounce returning the Message-ID alone tells no more than its record: the newer case.
    fields, body = bounce_of(server, f"Message-ID: {mid[1]}\n\nHello\n".encode())
    r = harness.inbound(*fields, body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "bounce")


def test_a_bounce_keeps_the_message_ids_case_its_recipient_is_a_participant_of(
        harness: Any) -> None:
    """Our mail whose Subject kept an older case's tag (DKIM-signed, left unstamped) names
    its own case by its Message-ID: the customer is a participant of both, and the recorded
    Message-ID is the mail's own, not one carried for two cases."""
    older = start_case(harness)
    newer = start_case(harness, "Toner")
    returned = (f"From: {AGENT[1]}\nTo: {TO_CUSTOMER[1]}\nSubject: Re: {older.one('Subject')}\n"
                f"Message-ID: {newer.one('Message-ID')}\n\nHello\n").encode()
    fields, body = bounce_of("dsn", returned)
    r = harness.inbound(*fields, body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match")) == (newer.case_id, "bounce")
    assert newer.case_id != older.case_id


def carrier_notice(returned: bytes) -> bytes:
    """A mobile carrier's error notice (au/KDDI's): multipart/mixed under a null sender, its
    subject no failure phrase ("メールエラー通知"), the mail attached as message/rfc822."""
    return (b"--CARRIER\nContent-Type: text/plain; charset=us-ascii\n\n"
            b"Your mail could not be delivered to: <pat@customer.example.org>\n"
            b"     As their mailbox is full.\n\n"
            b"--CARRIER\nContent-Type: message/rfc822\nContent-Description: Original message\n\n"
            + returned + b"\n--CARRIER--\n")


CARRIER_FIELDS = (("From", "no-reply@mail.carrier.example.net"),
                  ("To", "dana@support.example.com"),
                  ("Subject", "=?UTF-8?B?44Oh44O844Or44Ko44Op44O86YCa55+l?="),
                  ("MIME-Version", "1.0"),
                  ("Content-Type", 'multipart/mixed; boundary="CARRIER"'))


def test_a_null_sender_notice_returning_our_mail_attached_threads(harness: Any) -> None:
    """Mail under the null sender is the mail system's (RFC 5321 4.5.5) or a responder's: the
    mail it attaches is read for ours as a DSN's returned part is, whatever its From and
    Subject say. It stays what it is (auto-generated), and changes no state."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    body = carrier_notice(returned_message(out.one("Message-ID")))
    r = harness.inbound(*CARRIER_FIELDS, body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", "auto-generated")
    assert not is_participant(harness, "C-000001", "no-reply@mail.carrier.example.net")


def test_a_person_attaching_our_mail_is_no_bounce(harness: Any) -> None:
    """The same mail under a person's envelope sender is a person's mail: what it attaches is
    no returned copy (here it names nothing of ours otherwise: a new case)."""
    out = start_case(harness)
    body = carrier_notice(returned_message(out.one("Message-ID")))
    r = harness.inbound(*CARRIER_FIELDS, body=body, mail_from="<pat@customer.example.org>")
    assert (r.one("X-Case-Match"), r.case_id) == ("new", "C-000002")


def test_a_postmaster_failure_notice_under_its_own_sender_is_a_bounce(harness: Any) -> None:
    """m-FILTER and MailMarshal send their failure notices from postmaster@ under an envelope
    sender of their own: the failure subject makes it a bounce, read for its returned copy."""
    out = start_case(harness)
    fields, body = marked_text_bounce("POSTMASTER <postmaster@customer.example.org>",
                                      "failure notice", "-------original message",
                                      returned_message(out.one("Message-ID")))
    r = harness.inbound(*fields, body=body, mail_from="<postmaster@customer.example.org>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")


def test_a_postmaster_notice_in_its_own_language_attaching_our_mail_threads(
        harness: Any) -> None:
    """A gateway's notice (InterScan MSS's) from postmaster@ under that envelope sender, its
    subject no failure phrase we know ("メッセージを配信できません。"), the mail attached
    as message/rfc822 in multipart/mixed: postmaster@ is the mail system's address (RFC 5321
    4.5.1), so what it attaches is read as a returned copy. It stays auto-generated, changes
    no state, and the gateway's address joins no case."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    body = carrier_notice(returned_message(out.one("Message-ID")))
    fields = (("From", '"Mail Gateway" <postmaster@customer.example.org>'),
              ("To", "dana@support.example.com"),
              ("Subject", "=?UTF-8?B?44Oh44OD44K744O844K444KS6YWN5L+h44Gn44GN44G+44Gb44KT44CC?="),
              ("MIME-Version", "1.0"),
              ("Content-Type", 'multipart/mixed; boundary="CARRIER"'))
    r = harness.inbound(*fields, body=body, mail_from="<postmaster@customer.example.org>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", "auto-generated")
    assert not is_participant(harness, "C-000001", "postmaster@customer.example.org")
    # Its notice of mail we never sent opens nothing.
    body = carrier_notice(returned_message("<never-seen@support.example.com>"))
    r = harness.inbound(*fields, body=body, mail_from="<postmaster@customer.example.org>")
    assert (r.one("X-Case-Match"), harness.index.last_number()) == ("none", 1)


def headers_file_notice(attached: bytes) -> bytes:
    """A notice (multipart of a subtype of its own) whose text quotes our Subject in its own
    words and whose second part attaches the returned header as a text file."""
    return (b"This is a multi-part message in MIME format.\n\n--X6\n"
            b"Content-Type: text/plain; charset=us-ascii\n\n"
            b"We had trouble delivering your message. Full details follow:\n\n"
            b"Subject: 'Printer jam'\n\n1 error(s):\n\n"
            b"The following recipients returned permanent errors: pat@customer.example.org.\n\n"
            b"The attachment contains the original mail headers.\n\n--X6\n"
            b'Content-Type: text/plain;\n\tname="mailheaders-1035422417.txt"\n'
            b'Content-Disposition: attachment;\n\tfilename="mailheaders-1035422417.txt"\n\n'
            + attached + b"\n--X6--\n")


HEADERS_FILE_FIELDS = (("From", "mailer-daemon"), ("To", "dana@support.example.com"),
                       ("Subject", "There was an error sending your mail"),
                       ("Auto-Submitted", "auto-replied"), ("MIME-Version", "1.0"),
                       ("Content-Type", 'multipart/mx6d; boundary="X6"'))


def test_a_notice_attaching_the_returned_header_as_a_text_file_threads(harness: Any) -> None:
    """A notice whose text names our mail only by its Subject without the tag, and attaches
    the returned header as a text file (text/plain, "mailheaders-....txt"): that part, a
    message's header from its first line, is read as the returned copy."""
    out = start_case(harness)
    header = (b"Received: from mx.support.example.com ([192.0.2.25])\n"
              b"\tby mx.customer.example.org; Mon, 2 Mar 2026 10:00:00 +0000\n"
              b"To: pat@customer.example.org\nFrom: Dana Agent <dana@support.example.com>\n"
              b"Subject: Printer jam\nMessage-ID: " + out.one("Message-ID").encode() + b"\n"
              b"MIME-Version: 1.0\n")
    r = harness.inbound(*HEADERS_FILE_FIELDS, body=headers_file_notice(header), mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")
    # A later text part that is no header (prose naming a Message-ID) is no returned copy.
    prose = b"Please quote Message-ID: " + out.one("Message-ID").encode() + b" when you call.\n"
    r = harness.inbound(*HEADERS_FILE_FIELDS, body=headers_file_notice(prose), mail_from="<>")
    assert r.one("X-Case-Match") == "none"


def test_a_notice_pasting_the_returned_message_as_a_part_threads(harness: Any) -> None:
    """A notice (multipart/mixed from MAILER-DAEMON) whose second part is the returned
    message pasted in after the delimiter line, with no part header of its own: its
    Received, Message-ID, From, ... fields stand where the part's MIME fields would (an old
    Japanese gateway's, "Mail2000"). No body part carries a Message-ID or Received field, so
    that header section is read as the returned header."""
    out = start_case(harness)
    pasted = (b"Received: from mx.support.example.com ([192.0.2.25])\n"
              b"    by relay.customer.example.org; Mon, 2 Mar 2026 10:00:00 +0000\n"
              b"Message-Id: " + out.one("Message-ID").encode() + b"\n"
              b"From: Dana Agent <dana@support.example.com>\nTo: pat@customer.example.org\n"
              b"Content-Type: text/plain; charset=US-ASCII\nSubject: Printer jam\n\n"
              b"Hello Pat,\n")
    body = (b"This is a multi-part message in MIME format.\n\n--PASTED\n"
            b"Content-Type: text/plain;\n   charset=\"iso-2022-jp\"\n\n"
            b"---The following addresses had delivery errors---\n\n"
            b"pat@customer.example.org [User unknown]\n\n\n--PASTED\n" + pasted
            + b"\n--PASTED--\n")
    fields = (("From", '"Mail Deliver System" <MAILER-DAEMON@mx.customer.example.org>'),
              ("To", "dana@support.example.com"), ("Subject", "Returned Mail: User unknown"),
              ("Content-Type", 'multipart/mixed; boundary="PASTED"'))
    r = harness.inbound(*fields, body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")
    other = body.replace(out.one("Message-ID").encode(), b"<never-seen@support.example.com>")
    r = harness.inbound(*fields, body=other, mail_from="<>")
    assert (r.one("X-Case-Match"), harness.index.last_number()) == ("none", 1)


def exchange_online_ndr(returned_header: bytes) -> bytes:
    """Exchange Online's NDR as it comes without the returned mail attached: a report whose
    text (multipart/alternative, quoted-printable) copies the header under "Original message
    headers:", and a delivery-status part."""
    qp = returned_header.replace(b"=", b"=3D")
    return (b"--NDR\nContent-Type: multipart/alternative; differences=Content-Type;\n"
            b'\tboundary="ALT"\n\n'
            b"--ALT\nContent-Type: text/plain; charset=\"us-ascii\"\n"
            b"Content-Transfer-Encoding: quoted-printable\n\n"
            b"Delivery has failed to these recipients or groups:\n\n"
            b"pat@customer.example.org<mailto:pat@customer.example.org>\n"
            b"The email address wasn't found at the destination domain. It might be mis=\n"
            b"spelled or it might not exist any longer.\n\n"
            b"Diagnostic information for administrators:\n\n"
            b"Generating server: DM6PR01MB0001.prod.outlook.example\n\n"
            b"Original message headers:\n\n" + qp + b"\n"
            b"--ALT\nContent-Type: text/html; charset=\"us-ascii\"\n\n"
            b"<html><body><p>Delivery has failed.</p></body></html>\n"
            b"--ALT--\n\n"
            b"--NDR\nContent-Type: message/delivery-status\n\n"
            b"Reporting-MTA: dns;DM6PR01MB0001.prod.outlook.example\n\n"
            b"Final-Recipient: rfc822;pat@customer.example.org\nAction: failed\n"
            b"Status: 5.1.10\n\n"
            b"--NDR--\n")


EXCHANGE_ONLINE_FIELDS = (
    ("From", "Microsoft Outlook <postmaster@customer.example.org>"),
    ("To", "dana@support.example.com"),
    ("Subject", "Undeliverable: Printer jam"),
    ("Auto-Submitted", "auto-replied"),
    ("MIME-Version", "1.0"),
    ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="NDR"'),
)


def test_a_report_without_the_returned_mail_threads_by_the_header_in_its_text(
        harness: Any) -> None:
    """Exchange Online's NDR without an attachment copies the returned header into its text
    ("Original message headers:", quoted-printable): with no part returning the message, the
    report's text is read as a text notice's is."""
    out = start_case(harness)
    header = (b"Received: from DM6PR01MB0002.prod.outlook.example (192.0.2.3) by\n"
              b" DM6PR01MB0001.prod.outlook.example (192.0.2.4) with Microsoft SMTP\n"
              b" Server id 15.1.112.19; Mon, 2 Mar 2026 10:00:00 +0000\n"
              b"From: Dana Agent <dana@support.example.com>\n"
              b"To: <pat@customer.example.org>\n"
              b"Subject: Printer jam\n"
              b"Message-ID: " + out.one("Message-ID").encode() + b"\n"
              b'Content-Type: text/plain; charset="us-ascii"\nMIME-Version: 1.0\n')
    r = harness.inbound(*EXCHANGE_ONLINE_FIELDS, body=exchange_online_ndr(header),
                        mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")
    unknown = header.replace(out.one("Message-ID").encode(), b"<never-seen@support.example.com>")
    r = harness.inbound(*EXCHANGE_ONLINE_FIELDS, body=exchange_online_ndr(unknown),
                        mail_from="<>")
    assert (r.one("X-Case-Match"), harness.index.last_number()) == ("none", 1)


@pytest.mark.parametrize("server", ["exchange", "domino", "delay"])
def test_a_notice_found_by_our_quoted_subject_adds_no_participant(
        harness: Any, server: str) -> None:
    """Exchange's and Domino's text notices (and a delay warning) quote our Subject, tag and
    all, and return nothing else: the token strategy finds the case, but the MTA's address
    (and the To it wrote, our sender's) joins nobody's case."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    subject = out.one("Subject")
    sender, notice_subject = {
        "exchange": ("postmaster@customer.example.org", "Undeliverable: " + subject),
        "domino": ("Postmaster@customer.example.org", "DELIVERY FAILURE: User Pat not listed"),
        "delay": ("MAILER-DAEMON@customer.example.org", "Delayed Mail (still being retried)"),
    }[server]
    body = (f"Your message\n\n  Subject: {subject}\n\nwas not delivered to:\n\n"
            "  pat@customer.example.org\n").encode()
    r = harness.inbound(("From", sender), ("To", "Someone Else <someone@elsewhere.example>"),
                        ("Subject", notice_subject), body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State")) == (
        "C-000001", "token", "resolved")
    assert r.one("X-Case-Auto") == ("auto-generated" if server == "delay" else "bounce")
    for address in (sender.lower(), "someone@elsewhere.example"):
        assert not is_participant(harness, "C-000001", address)


@pytest.mark.parametrize("separator", ["", "-----Original Message-----\n"])
def test_a_text_notice_returning_a_quote_of_another_case_threads_by_our_subject(
        harness: Any, separator: str) -> None:
    """A text notice without a marker line that quotes our Subject in its own words and
    returns our mail's body (no header): the body quotes the customer's mail of another case
    Outlook's way ("From: / Sent: / To: / Subject: RE: ... [ref:...]", under Outlook's
    separator line, which also reads as a marker line, "----- Original message -----"). That
    block is no returned header (no Message-ID, no Received): the notice threads by our
    Subject into the case of the mail that bounced, not by the quote into the other one."""
    first = start_case(harness, "Printer jam")
    second = start_case(harness, "Toner order")
    body = (f"Your message\n\n  To: pat@customer.example.org\n  Subject: {second.one('Subject')}"
            "\n\nwas not delivered to:\n\n  pat@customer.example.org\n\n"
            f"Hello Pat,\n\nthe toner ships today.\n\nDana\n\n{separator}"
            "From: Pat Customer\nSent: Monday, 2 March 2026 10:00\nTo: Support\n"
            f"Subject: RE: {first.one('Subject')}\n\nAnd we need toner too.\n").encode()
    r = harness.inbound(("From", "postmaster@customer.example.org"),
                        ("To", "dana@support.example.com"),
                        ("Subject", "Undeliverable: " + second.one("Subject")), body=body,
                        mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "token")
    # Returned with its header, the mail is found by that (here after the notice's words).
    returned = (f"Received: from mx.support.example.com\nMessage-ID: {second.one('Message-ID')}\n"
                f"Subject: {second.one('Subject')}\n\n").encode()
    r = harness.inbound(("From", "postmaster@customer.example.org"),
                        ("To", "dana@support.example.com"),
                        ("Subject", "Undeliverable: Toner order"),
                        body=body.replace(b"Hello Pat,", returned + b"Hello Pat,"),
                        mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "bounce")


def test_a_person_forwarding_a_text_bounce_is_no_bounce(harness: Any) -> None:
    """Only the mail system's notices are read for a returned copy: a customer's mail that
    quotes one is a person's mail (here a new one: it names nothing of ours otherwise)."""
    out = start_case(harness)
    _, body = qmail_bounce(returned_message(out.one("Message-ID")))
    r = harness.inbound(CUSTOMER, ("Subject", "Fwd: failure notice"), body=body)
    assert (r.one("X-Case-Match"), r.case_id) == ("new", "C-000002")


def test_a_text_bounce_is_read_within_the_scan_budget(make_harness: Any) -> None:
    h = make_harness()
    h = make_harness(settings_with(h, scan_budget=4096))
    out = start_case(h)
    fields, body = qmail_bounce(returned_message(out.one("Message-ID")))
    padded = body.replace(b"(#5.1.1)\n", b"(#5.1.1)\n" + b"Transcript line.\n" * 300)
    assert h.inbound(*fields, body=body, mail_from="<>").one("X-Case-Match") == "bounce"
    assert h.inbound(*fields, body=padded, mail_from="<>").one("X-Case-Match") == "none"


def read_receipt(original_id: str, part_type: str = "message/disposition-notification") -> bytes:
    """Thunderbird's read receipt (RFC 8098): a text part and the report, no third part."""
    return (
        "--MDN\n"
        "Content-Type: text/plain; charset=UTF-8\n\n"
        "Dies ist eine Empfangsbestaetigung fuer eine E-Mail.\n\n"
        "--MDN\n"
        f'Content-Type: {part_type}; name="MDNPart2.txt"\n'
        "Content-Disposition: inline\n\n"
        "Reporting-UA: customer.example.org; Thunderbird 128.5.0\n"
        "Final-Recipient: rfc822;pat@customer.example.org\n"
        f"Original-Message-ID: {original_id}\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\n\n"
        "--MDN--\n"
    ).encode()


MDN_HEADERS = (
    CUSTOMER, TO_SUPPORT, ("Subject", "Empfangsbestaetigung (angezeigt) - Ihre Druckerfrage"),
    ("Message-ID", "<mdn-tb-1@customer.example.org>"), ("MIME-Version", "1.0"),
    ("Content-Type", 'multipart/report; report-type=disposition-notification; boundary="MDN"'),
)


@pytest.mark.parametrize("part_type", ["message/disposition-notification",
                                       "message/global-disposition-notification"])
def test_read_receipt_naming_our_mail_only_by_original_message_id(
    harness: Any, part_type: str
) -> None:
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.WAITING)
    r = harness.inbound(*MDN_HEADERS, body=read_receipt(out.one("Message-ID"), part_type))
    assert r.ours() == [
        ("X-Case-ID", "C-000001"),
        ("X-Case-Match", "bounce"),
        ("X-Case-State", "waiting"),  # a receipt is no answer: the case still waits
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "auto-generated"),
        ("X-Case-Sender", "known"),
    ]
    assert harness.case("C-000001").state is CaseState.WAITING
    # A receipt for mail we never sent opens nothing.
    other = harness.inbound(*MDN_HEADERS[:3], ("Message-ID", "<mdn-tb-2@customer.example.org>"),
                            *MDN_HEADERS[4:], body=read_receipt("<theirs@customer.example.org>"))
    assert other.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "auto-generated")]
    assert harness.index.last_number() == 1


# --------------------------------------------------------------------------- token


# Our fields on the customer's reply by token to the open case C-000001, by the engine and
# through the filter alike.
TOKEN_REPLY_FIELDS = [
    ("X-Case-ID", "C-000001"),
    ("X-Case-Match", "token"),
    ("X-Case-State", "open"),
    ("X-Case-Queue", "support"),
    ("X-Case-Auto", "no"),
    ("X-Case-Sender", "known"),
]


def test_token_in_subject(harness: Any) -> None:
    out = start_case(harness)
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", f"Re: {out.one('Subject')}"))
    assert r.ours() == TOKEN_REPLY_FIELDS


def test_token_in_subject_any_case_and_spacing(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    subject = f"AW: Printer jam [REF: {tok[:9].lower()} {tok[9:]} ]"
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"


def b_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def encoded_subjects(subject: str) -> list[str]:
    """`subject` as clients re-encode a whole non-ASCII subject, our ASCII tag included."""
    tok = token_of(subject)
    cut = subject.index(tok) + 7
    return [
        b_word(f"Re: {subject}"),
        # Q encoding, as Thunderbird writes it.
        "=?utf-8?Q?" + "".join(
            c if c.isascii() and c.isalnum() else "_" if c == " "
            else "".join(f"={b:02X}" for b in c.encode())
            for c in f"Re: {subject}") + "?=",
        # Two encoded words, split inside the token; the blank between them is not text.
        f"{b_word('Re: ' + subject[:cut])}\n {b_word(subject[cut:])}",
        b_word(f"Re: {subject}", "iso-2022-jp"),
        # Only the tag encoded, after a subject in clear.
        f"Re: Printer jam {b_word(subject[subject.index('[ref:'):])}",
    ]


@pytest.mark.parametrize("which", range(5))
def test_token_inside_an_encoded_subject(harness: Any, which: int) -> None:
    # The app wrote a non-ASCII subject, encoded; casethread appended its tag in clear.
    out = start_case(harness, b_word("プリンターが詰まる"))
    stamped = decode_subject(out.one("Subject"))
    assert stamped.startswith("プリンターが詰まる [ref:")
    subject = encoded_subjects(stamped)[which]
    assert f"[ref:{token_of(stamped)}]" not in subject  # not in clear
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


@pytest.mark.parametrize(("opening", "closing"),
                         [("\uff3b", "\uff3d"), ("【", "】"), ("「", "」"), ("〔", "〕")])
def test_a_tag_in_an_input_methods_forms_threads(
        harness: Any, opening: str, closing: str) -> None:
    """A CJK input method in full-width mode retypes the tag as `［ref：TOKEN］` (NFKC: ASCII);
    in its punctuation mode a Chinese one types `[` `]` as `【` `】`, a Japanese one as `「` `」`
    (`〔` `〕` among its conversions). The client encodes that Subject, and a quoted body may
    hold it too. Such replies opened new cases. The agent's answer under such a Subject is
    not tagged a second time, and its Thread-Topic drops the tag in this form too."""
    tag = token_of(start_case(harness).one("Subject"))
    typed = f"{opening}ref\uff1a{tag}{closing}"
    r = harness.inbound(CUSTOMER, ("Subject", b_word(f"Re: Printer jam {typed}")))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Printer jam"),
                        ("Content-Type", "text/plain; charset=utf-8"),
                        body=f"\u627f\u77e5\u3057\u307e\u3057\u305f\n\n> {typed}\n".encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    subject = b_word(f"Re: Printer jam {typed}")
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject))
    assert out.case_id == "C-000001"
    assert out.all("Subject") == [subject]
    assert out.one("Thread-Topic") == "Printer jam"


# Labels Python does not know, on a Subject re-encoded whole, our ASCII tag included: the
# bytes of the encoded text in each. Exchange writes Microsoft's own names for ISO-2022-JP
# (`_iso-2022-jp$ESC`, code page 50221; `$SIO`, 50222; its charset table holds them);
# `unknown-8bit` (RFC 1428) and `x-user-defined` label bytes of no known charset; Microsoft's
# `unicode` is UTF-16 (little-endian, with or without its byte order mark).
UNKNOWN_LABELS = [
    ("_iso-2022-jp$ESC", "iso-2022-jp", "プリンターが詰まる"),
    ("_iso-2022-jp$SIO", "iso-2022-jp", "プリンターが詰まる"),
    ("unknown-8bit", "latin-1", "Drucker für Köln"),
    ("x-user-defined", "cp1252", "Imprimante bloquée"),
    ("unicode", "utf-16", "Принтер"),
    ("unicode", "utf-16-le", "Принтер"),
]


@pytest.mark.parametrize(("label", "codec", "text"), UNKNOWN_LABELS)
def test_a_tag_in_an_encoded_word_of_an_unknown_charset_threads(
        harness: Any, label: str, codec: str, text: str) -> None:
    """An encoded word whose label Python does not know stayed as written, its tag hidden by
    B encoding: a reply that kept no In-Reply-To or References (a phone's, a web form's)
    opened a new case. Such a word is read as a body part so labelled is (UTF-16 labels, a
    byte order mark, else UTF-8); the tag's ASCII reads alike, also split over two words.
    The agent's next answer under such a Subject continues the case, not tagged twice (it
    opened a new one, tagged for it)."""
    tag = f"[ref:{token_of(start_case(harness).one('Subject'))}]"

    def word(raw: str) -> str:
        return f"=?{label}?B?{base64.b64encode(raw.encode(codec)).decode()}?="

    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", word(f"RE: {text} {tag}")))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    if "16" not in codec:  # a UTF-16 word split inside the tag is two texts, each with a BOM
        split = f"{word(f'RE: {text} {tag[:12]}')}\r\n {word(tag[12:])}"
        r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", split))
        assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", word(f"RE: {text} {tag}")))
    assert out.case_id == "C-000001"
    assert out.all("Subject") == [word(f"RE: {text} {tag}")]


def test_a_word_of_an_unknown_charset_names_no_case_it_does_not_hold(harness: Any) -> None:
    """Read leniently, such a word holds only what its bytes hold: a forged or broken tag is
    no match, and the Subject's text is no tag."""
    tok = token_of(start_case(harness).one("Subject"))
    forged = tok[:-1] + ("A" if tok[-1] != "A" else "B")
    r = harness.inbound(CUSTOMER, TO_SUPPORT,
                        ("Subject", b_word(f"RE: x [ref:{forged}]", "utf-8").replace(
                            "=?utf-8?", "=?x-unknown?")))
    assert r.one("X-Case-Match") == "new"
    assert r.one("X-Case-Token") == "invalid"


# Labels mail carries that Python knows by another name, and a text in each.
LABELLED_TEXTS = [
    ("windows-874", "cp874", "สอบถามเรื่อง"),  # Thai Outlook
    ("Windows-31J", "cp932", "①プリンター"),  # NEC row 13, Japanese Outlook
    ("x-sjis", "cp932", "プリンター"),
    ("x-euc-jp", "euc_jp", "プリンター"),
    ("x-mac-roman", "mac_roman", "Drucker für Köln"),
    ("x-mac-cyrillic", "mac_cyrillic", "Вопрос о принтере"),
    ("koi8-ru", "koi8_u", "Питання щодо принтера"),
]


def labelled_word(text: str, label: str, codec: str) -> str:
    return f"=?{label}?B?{base64.b64encode(text.encode(codec)).decode()}?="


@pytest.mark.parametrize(("label", "codec", "text"), LABELLED_TEXTS)
def test_token_inside_a_subject_in_a_charset_python_knows_by_another_name(
        harness: Any, label: str, codec: str, text: str) -> None:
    """The subject decoder ignored the charset aliases the body code uses: make_header raised
    LookupError, the whole Subject stayed undecoded and the reply opened a new case."""
    tag = token_of(start_case(harness, text).one("Subject"))
    subject = labelled_word(f"RE: {text} [ref:{tag}]", label, codec)
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


def test_a_word_in_an_unknown_charset_does_not_hide_the_tag_beside_it(harness: Any) -> None:
    """RFC 2047 §6: each word is decoded on its own; one unknown word stopped them all."""
    tag = token_of(start_case(harness).one("Subject"))
    subject = f"=?x-unknown?Q?Re=3A?= {b_word(f'Grüße [ref:{tag}]')}"
    assert decode_subject(subject) == f"=?x-unknown?Q?Re=3A?= Grüße [ref:{tag}]"
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


@pytest.mark.parametrize("answering", [True, False])
def test_an_agent_reply_with_our_tag_in_a_windows_874_word_gets_no_second_tag(
        harness: Any, answering: bool) -> None:
    """Thai Outlook re-encodes the whole subject, our tag included: the tag was not seen, so
    a second one was appended (a new case without In-Reply-To) and Thread-Topic carried the
    encoded word with `RE:` and the tag inside it."""
    first = start_case(harness, "สอบถามเรื่อง")
    tag = token_of(first.one("Subject"))
    subject = labelled_word(f"RE: สอบถามเรื่อง [ref:{tag}]", "windows-874", "cp874")
    extra = [("In-Reply-To", first.one("Message-ID"))] if answering else []
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject), *extra)
    assert r.case_id == "C-000001"
    assert r.one("Subject") == subject  # the tag is there: nothing to add
    assert decode_subject(r.one("Thread-Topic")) == "สอบถามเรื่อง"


@pytest.mark.parametrize("with_references", [True, False])
def test_a_reply_to_a_moved_conversation_with_its_subject_re_encoded(
    harness: Any, with_references: bool
) -> None:
    """The app moved the conversation to TICKET-9; the old tag stayed inside an encoded word
    and ours went after it in clear. The customer's client re-encodes all of it: the newest
    tag (and the References anchor) win, not the old one."""
    old = start_case(harness, "Réservation")  # C-000001
    encoded_old = b_word(f"RE: {decode_subject(old.one('Subject'))}")
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"),
                             ("Subject", encoded_old))
    shown = decode_subject(moved.one("Subject"))
    assert shown.count("[ref:") == 2
    headers = [("Subject", b_word(f"Re: {shown}"))]
    if with_references:
        headers.append(("References", moved.one("References")))
    r = harness.inbound(CUSTOMER, *headers)
    assert (r.case_id, r.one("X-Case-Match")) == ("TICKET-9", "token")


def test_a_tag_in_clear_wins_over_an_encoded_one(harness: Any) -> None:
    """The tag outbound appends in clear after an encoded one is the newest: it decides."""
    first = start_case(harness, "Drucker klemmt").one("Subject")
    second = start_case(harness, "Scanner").one("Subject")
    subject = f"{b_word('Re: ' + first)} {second[second.index('[ref:'):]}"
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert r.case_id == "C-000002"


def test_forged_token_inside_an_encoded_subject_never_matches(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    forged = tok[:-1] + ("A" if tok[-1] != "A" else "B")
    r = harness.inbound(CUSTOMER, ("Subject", b_word(f"Re: Drucker [ref:{forged}]")))
    assert r.decision.match == "new"
    assert r.one("X-Case-Token") == "invalid"


def test_bounce_returning_an_encoded_subject(harness: Any) -> None:
    out = start_case(harness, "Drucker klemmt")
    returned = (
        "From: Dana Agent <dana@support.example.com>\n"
        f"Subject: {b_word(out.one('Subject'))}\n"
        "\n"
        "Hello Pat,\n"
    ).encode()
    r = harness.inbound(*DSN_HEADERS, body=dsn(returned, "text/rfc822-headers"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "bounce")


@pytest.mark.parametrize("stamped_body", [True, False])
def test_token_in_a_message_forwarded_as_an_attachment(harness: Any, stamped_body: bool) -> None:
    """Gmail, Thunderbird and Outlook mark a forwarded message `attachment`; the customer
    retitled the forward. The attached message's body, or else its Subject, names the case."""
    out = start_case(harness, "Drucker klemmt")
    tok = token_of(out.one("Subject"))
    inner_body = f"Hello Pat,\n[ref:{tok}]\n" if stamped_body else "Hello Pat,\n"
    body = (
        "--f\nContent-Type: text/plain\n\nSee the mail below, still broken.\n"
        "--f\nContent-Type: message/rfc822\n"
        'Content-Disposition: attachment; filename="Drucker klemmt.eml"\n\n'
        f"From: Dana Agent <dana@support.example.com>\n"
        f"Subject: {b_word(decode_subject(out.one('Subject')))}\n\n{inner_body}"
        "--f--\n"
    ).encode()
    r = harness.inbound(CUSTOMER, ("Subject", "Fwd: still broken"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


@pytest.mark.parametrize(("label", "codec", "text"), UNKNOWN_LABELS)
def test_token_in_an_attached_messages_subject_of_an_unknown_charset(
        harness: Any, label: str, codec: str, text: str) -> None:
    """The attached message's Subject is read as the mail's own is: an encoded word whose
    charset label Python does not know (Exchange's `_iso-2022-jp$ESC`) hid the tag there."""
    tok = token_of(start_case(harness).one("Subject"))
    raw = f"RE: {text} [ref:{tok}]".encode(codec)
    body = (
        "--f\nContent-Type: text/plain\n\nSee the mail below, still broken.\n"
        "--f\nContent-Type: message/rfc822\n\n"
        "From: Dana Agent <dana@support.example.com>\n"
        f"Subject: =?{label}?B?{base64.b64encode(raw).decode()}?=\n\nHello Pat,\n--f--\n"
    ).encode()
    r = harness.inbound(CUSTOMER, ("Subject", "Fwd: still broken"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


@pytest.mark.parametrize(("ctype", "name"), [
    ("message/rfc822", "fwd.eml"), ("application/octet-stream", "fwd.eml"),
    # RFC 2047 words in the name (Outlook's and Gmail's non-ASCII file names), B encoding
    # hiding the `.eml`: the file was passed over as an attachment.
    ("application/octet-stream", "=?UTF-8?B?RHJ1Y2tlciBrbGVtbXQg4oCTIEdyw7bDn2UuZW1s?="),
    ("application/octet-stream", "=?utf-8?q?Gr=C3=B6=C3=9Fe?= =?utf-8?q?=2Eeml?="),
])
def test_token_in_a_forwarded_message_attached_in_base64(
        harness: Any, ctype: str, name: str) -> None:
    """Phones and gateways base64-encode a forwarded message (invalid for message/rfc822, RFC
    2046 5.2.1) or attach the .eml as an opaque file: it is decoded and read as text."""
    out = start_case(harness, "Printer jam")
    tok = token_of(out.one("Subject"))
    inner = (f"From: Dana Agent <dana@support.example.com>\nSubject: Printer jam [ref:{tok}]\n"
             "\nHello Pat,\n").encode()
    body = (
        b"--f\nContent-Type: text/plain\n\nSee the mail below, still broken.\n"
        b"--f\nContent-Type: " + ctype.encode() + b'; name="' + name.encode() + b'"\n'
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(inner) + b"--f--\n"
    )
    r = harness.inbound(CUSTOMER, ("Subject", "Fwd: still broken"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


def test_an_attached_message_file_is_read_as_a_message(harness: Any) -> None:
    """Its own attachments cost no scan budget (a vendor's 1.2 MB mail with a PDF, attached
    above the reply's text, hid the token after it); a file merely named .eml that is no
    message is read as text."""
    out = start_case(harness, body=b"Hello Pat,\r\n")
    vendor = (b"From: vendor@example.net\nSubject: Invoice\nMIME-Version: 1.0\n"
              b"Content-Type: multipart/mixed; boundary=v\n\n--v\nContent-Type: text/plain\n\n"
              b"See attached.\n--v\nContent-Type: application/pdf\n"
              b"Content-Transfer-Encoding: base64\n\n"
              + base64.encodebytes(bytes(range(256)) * 3500) + b"--v--\n")
    assert len(vendor) > harness.settings.inbound.scan_budget
    body = (
        b"--f\r\nContent-Type: application/octet-stream; name=vendor.eml\r\n"
        b"Content-Disposition: attachment; filename=vendor.eml\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(vendor)
        + b"--f\r\nContent-Type: application/octet-stream; name=notes.eml\r\n"
        b"Content-Disposition: attachment; filename=notes.eml\r\n\r\n"
        b"\x00\x01 not a message [ref:" + harness.token("C-000001").encode() + b"]\r\n"
        + b"--f\r\nContent-Type: text/plain\r\n\r\nStill broken.\r\n\r\n"
        + quote(out.body).encode() + b"--f--\r\n"
    )
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    # The same junk file alone: read as text, its token found.
    junk = body[body.index(b"--f\r\nContent-Type: application/octet-stream; name=notes"):
                body.index(b"--f\r\nContent-Type: text/plain")] + b"--f--\r\n"
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=junk)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


def test_attached_message_files_are_opened_one_level_deep(harness: Any) -> None:
    """An .eml inside an .eml inside ... (each level decoded anew) once took 2.4 GB and a
    RecursionError: only the outer file is opened; what it holds is not."""
    start_case(harness)
    inner = b"Subject: deepest [ref:" + harness.token("C-000001").encode() + b"]\n\nhi\n"
    for level in range(300):  # 7bit files, so the message grows linearly
        inner = (b"Subject: level %d\nContent-Type: multipart/mixed; boundary=b%d\n\n--b%d\n"
                 b"Content-Type: application/octet-stream; name=x.eml\n"
                 b"Content-Disposition: attachment; filename=x.eml\n\n" % (level, level, level)
                 + inner + b"\n--b%d--\n" % level)
    body = (b"--f\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            b"--f\r\nContent-Type: application/octet-stream; name=a.eml\r\n"
            b"Content-Disposition: attachment; filename=a.eml\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(inner)
            + b"--f--\r\n")
    r = harness.inbound(CUSTOMER, ("Subject", "Fwd"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert r.one("X-Case-Match") == "new"  # the token is 300 files down: not read


def test_the_anchor_of_the_mail_answered_wins_over_a_quoted_token(harness: Any) -> None:
    """The app answered under its ticket TICKET-9, quoting a mail of C-000001 (with its
    token) above the new token line; the reply lost the Subject's token."""
    old_tok = token_of(start_case(harness).one("Subject"))
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"),
                             ("Subject", "Your request"),
                             body=f"New answer.\n\n> Earlier: [ref:{old_tok}]\n".encode())
    assert moved.case_id == "TICKET-9"
    reply_body = "Thanks.\n\n> New answer.\n>\n> > Earlier: " f"[ref:{old_tok}]\n".encode()
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Your request"),
                        ("In-Reply-To", moved.one("Message-ID")),
                        ("References", moved.one("References")), body=reply_body)
    assert (r.case_id, r.one("X-Case-Match")) == ("TICKET-9", "token")


def test_token_only_in_the_quoted_body_wrapped_inside_the_bracket(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    body = (
        f"It is the LaserThing 3000.\n"
        f"\n"
        f"On Mon, 2 Mar 2026, Dana Agent wrote:\n"
        f"> Subject: Printer jam [ref:{tok[:8]}\n"
        f">  {tok[8:]}]\n"
        f"> Hello Pat,\n"
    ).encode()
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Printer jam"), body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"
    assert r.all("X-Case-Token") == []


def test_a_reply_with_the_signature_above_its_quote_keeps_a_token_a_quote_keeps(
        harness: Any) -> None:
    """The agent's second mail has its signature above its quote of the first (Thunderbird
    with `sig_bottom` off, Gmail's signature before the quoted text). Thunderbird and
    Roundcube quote it without the signature, from its `-- ` line to the end: the token in
    the quote of the first mail goes too, so the second mail gets a line of its own above
    the separator, and the customer's new mail quoting it (no Subject tag, no References)
    still threads."""
    text = ("Content-Type", "text/plain; charset=utf-8")
    first = start_case(harness, body=b"Please restart it.\n-- \nDana\n")
    quote = "".join(f"> {line}\n" for line in first.body.decode().splitlines())
    second = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"), text,
                              ("X-Case-ID", first.case_id),
                              body=f"Also check the tray.\n-- \nDana\n\n{quote}".encode())
    kept = second.body.decode().split("\n-- \n", 1)[0]
    assert f"[ref:{harness.token(first.case_id)}]" in kept
    reply = "Still jammed.\n\n" + "".join(f"> {line}\n" for line in kept.splitlines())
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "printer"), text, body=reply.encode())
    assert (r.case_id, r.one("X-Case-Match")) == (first.case_id, "token")


def test_token_whose_opening_literal_a_client_wrapped(harness: Any) -> None:
    """Apple Mail (format=flowed; delsp=yes) breaks a long quoted line inside a word, a blank
    before the line break that readers delete (RFC 3676); other clients hard-wrap. "[ref:" is
    broken as the token is, and read the same."""
    tok = token_of(start_case(harness).one("Subject"))
    apple = ("It is a LaserThing 3000.\r\n\r\nSent from my iPhone\r\n\r\n"
             "> On 30. Nov 2026, at 10:15, Dana Agent <support@support.example.com> wrote:\r\n"
             ">\r\n> could you tell us the model number of the printer? Dana [re \r\n"
             f"> f:{tok}]\r\n")
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer model"),
                        ("Content-Type", "text/plain; charset=utf-8; format=flowed; delsp=yes"),
                        ("Content-Transfer-Encoding", "7bit"), ("X-Mailer", "iPhone Mail (22B83)"),
                        body=apple.encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")
    wrapped = ("It is a LaserThing 3000.\r\n\r\nOn Mon, Nov 30, 2026 Dana Agent wrote:\r\n"
               "> Hello Pat,\r\n> could you tell us the model number? See our guide. Dana"
               f" [ref\r\n> :{tok}]\r\n")
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer model"),
                        ("Content-Type", 'text/plain; charset="UTF-8"'), body=wrapped.encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token")


def test_token_in_quoted_printable_text_after_transfer_decoding(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    # A soft line break splits the token: only the decoded text has it whole.
    body = (
        b"--b1\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        b"Gr=C3=BC=C3=9Fe, see [ref:" + tok[:10].encode() + b"=\n" + tok[10:].encode() + b"]\n"
        b"--b1--\n"
    )
    r = harness.inbound(
        CUSTOMER, ("Content-Type", 'multipart/mixed; boundary="b1"'), body=body
    )
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"


def test_token_across_a_quoted_printable_soft_break_with_blanks_after_it(harness: Any) -> None:
    """RFC 2045 6.7 (3): blanks a gateway added after a soft break's "=" are deleted when
    decoding; the break still joins the token's halves."""
    tok = token_of(start_case(harness).one("Subject")).encode()
    body = (b"It is a LaserThing 3000.\r\n\r\nOn Mon, Nov 30, 2026 Dana Agent wrote:\r\n"
            b"> Hello Pat,\r\n> Dana\r\n> [ref:" + tok[:7] + b"=  \r\n" + tok[7:] + b"]\r\n")
    for padded in (body, body.replace(b"=  \r\n", b"= \t\r\n")):
        r = harness.inbound(CUSTOMER, ("Subject", "Re: printer model"),
                            ("Content-Type", 'text/plain; charset="UTF-8"'),
                            ("Content-Transfer-Encoding", "quoted-printable"), body=padded)
        assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "token"), padded


def test_token_in_html_body_with_entities(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    html = f"<p>Thanks!</p><blockquote><p>&#91;ref&#58;<b>{tok}</b>&#x5D;</p></blockquote>"
    body = (
        b"--alt\nContent-Type: text/plain; charset=utf-8\n\nThanks!\n"
        b"--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(html.encode())
        + b"--alt--\n"
    )
    r = harness.inbound(
        CUSTOMER,
        ("Subject", "Re: Printer jam"),
        ("Content-Type", 'multipart/alternative; boundary="alt"'),
        body=body,
    )
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"


@pytest.mark.parametrize("field", ["References", "In-Reply-To"])
def test_anchor_only_in_reply_headers(harness: Any, field: str) -> None:
    out = start_case(harness)
    anchor = out.one("References")
    assert re.fullmatch(r"<[0-9A-Z]+\.case@support\.example\.com>", anchor)
    # A relay rewrote every Message-ID: only the anchor is left (never recorded as a
    # Message-ID: it verifies by its signature alone).
    r = harness.inbound(
        CUSTOMER, ("Subject", "Re: Printer jam"), (field, f"<x@relay.example> {anchor}")
    )
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"
    assert harness.index.find(AliasKind.MESSAGE, anchor.strip("<>")) is None


def test_anchor_first_in_a_long_references_is_still_found(harness: Any) -> None:
    """The anchor goes first because trimming keeps the first ID; the scan must look there."""
    out = start_case(harness)
    newer = " ".join(f"<n{i}@customer.example.org>" for i in range(150))
    r = harness.inbound(CUSTOMER, ("References", f"{out.one('References')} {newer}"))
    assert r.one("X-Case-Match") == "token", r.ours()
    assert r.case_id == "C-000001"


@pytest.mark.parametrize("how", ["moved", "split"])
def test_the_newest_anchor_wins_after_a_move(harness: Any, how: str) -> None:
    """The conversation of C-000001 moved on (an app's X-Case-ID; a split child): outbound
    put the new case's anchor before the old one. The customer's client re-encoded the whole
    Subject (no tag in clear), as Thunderbird and Outlook do with a non-ASCII one: the reply
    goes to the case of the newest anchor, the first one written."""
    first = start_case(harness, "Druckerstörung")  # C-000001
    start_case(harness, "Other")  # C-000002
    if how == "split":
        start_case(harness, "Other too")  # C-000003
        harness.set_case("C-000001", children=("C-000002", "C-000003"))
    refs = f"{first.one('References')} {first.one('Message-ID')}"
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"AW: {first.one('Subject')}"),
                             ("In-Reply-To", first.one("Message-ID")), ("References", refs),
                             ("X-Case-ID", "C-000002"))
    assert moved.case_id == "C-000002"
    references = moved.one("References")
    assert msgid.id_list(references, 9, oldest_first=True)[:2] == [
        f"{harness.token(c)}.case@support.example.com" for c in ("C-000002", "C-000001")]
    subject = email.header.Header(f"Re: {decode_subject(moved.one('Subject'))}",
                                  "utf-8").encode()
    assert "[ref:" not in subject
    r = harness.inbound(CUSTOMER, ("Subject", subject),
                        ("In-Reply-To", moved.one("Message-ID")),
                        ("References", f"{references} {moved.one('Message-ID')}"))
    assert r.all("X-Case-ID") == ["C-000002"]
    assert r.one("X-Case-Match") == "token"
    if how == "split":
        return
    # The app moves it back: C-000001's anchor, already in References, goes first again.
    back = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", moved.one("Subject")),
                            ("References", f"{references} {moved.one('Message-ID')}"),
                            ("X-Case-ID", "C-000001"))
    back_refs = back.one("References")
    assert msgid.id_list(back_refs, 9, oldest_first=True)[:2] == [
        f"{harness.token(c)}.case@support.example.com" for c in ("C-000001", "C-000002")]
    assert len(msgid.id_list(back_refs, 99)) == len(msgid.id_list(references, 99)) + 1
    r = harness.inbound(CUSTOMER, ("Subject", subject), ("References", back_refs))
    assert r.all("X-Case-ID") == ["C-000001"]


def test_trimming_keeps_the_threads_first_id_not_an_old_anchor(harness: Any) -> None:
    start_case(harness)  # C-000001
    start_case(harness, "Other")  # C-000002
    old_anchor = f"<{harness.token('C-000001')}.case@support.example.com>"
    ids = [old_anchor, "<root@customer.example.org>",
           *(f"<n{i}@customer.example.org>" for i in range(60))]
    r = harness.outbound(AGENT, TO_CUSTOMER, ("References", " ".join(ids)),
                         ("X-Case-ID", "C-000002"))
    kept = msgid.written_ids(r.one("References"))
    assert kept[:2] == [f"<{harness.token('C-000002')}.case@support.example.com>",
                        "<root@customer.example.org>"]
    assert kept[-1] == ids[-1] and len(kept) == outbound.REFERENCES_KEEP


def test_outbound_copies_the_ids_of_references_as_written(harness: Any) -> None:
    """Exchange writes upper-case domains; a quoted local part may hold a space. Threading
    clients compare IDs byte for byte, so the agent's reply must carry them unchanged."""
    outlook = "<AM0PR01MB0001@AM0PR01MB0001.eurprd01.prod.outlook.com>"
    quoted = '<"quinn smith"@Odd.Example.ORG>'
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "RE: Printer broken"),
                         ("In-Reply-To", outlook), ("References", f"{quoted}\n {outlook}"))
    anchor = f"<{harness.token(r.case_id)}.case@support.example.com>"
    assert unfold(r.one("References")) == f"{anchor} {quoted} {outlook}"


def test_the_first_id_of_a_long_references_still_threads(harness: Any) -> None:
    """Our first mail of the case, then more IDs than `inbound.references_limit` reads from
    the newest: the thread's first ID, which trimming clients keep, still names the case."""
    out = start_case(harness)
    newer = " ".join(f"<n{i}@customer.example.org>" for i in range(150))
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Printer jam"),
                        ("References", f"{out.one('Message-ID')} {newer}"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "references")


# --------------------------------------------------------------------------- reply headers


def test_in_reply_to(harness: Any) -> None:
    out = start_case(harness)
    r = harness.inbound(
        CUSTOMER, ("Subject", "Re: Printer jam"), ("In-Reply-To", out.one("Message-ID"))
    )
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "in-reply-to"


def test_references_newest_known_id(harness: Any) -> None:
    first = start_case(harness)  # C-000001
    second = start_case(harness, "Toner")  # C-000002
    refs = f"<a@x.example> {first.one('Message-ID')} {second.one('Message-ID')} <b@x.example>"
    r = harness.inbound(CUSTOMER, ("In-Reply-To", "<b@x.example>"), ("References", refs))
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "references"


# --------------------------------------------------------------------------- thread-index


def outlook_reply_index(our_value: str, when: float) -> str:
    """What Outlook writes on a reply: the parent's conversation index plus one child block."""
    parent = thread_index.decode(our_value)
    assert parent is not None
    return thread_index.encode(thread_index.child(parent, when))


def test_thread_index_only_outlook_reply(harness: Any) -> None:
    out = start_case(harness)
    ti = outlook_reply_index(out.one("Thread-Index"), harness.clock.now + 60)
    # Outlook dropped References and the token; the Thread-Index is the only link left.
    r = harness.inbound(
        CUSTOMER,
        TO_SUPPORT,
        ("Subject", "RE: Printer jam"),
        ("Thread-Topic", "Printer jam"),
        ("Thread-Index", ti),
        ("Message-ID", "<AM0PR01MB0001.outlook@customer.example.org>"),
    )
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "thread-index"
    assert r.one("X-Case-Sender") == "known"


@pytest.mark.parametrize("keeps_tag", [False, True])
def test_an_outlook_conversation_follows_a_merge_that_is_moved(
        harness: Any, keeps_tag: bool) -> None:
    """An Outlook reply to a merged case (by its Thread-Index alone, or keeping our Subject
    tag) goes to the survivor and leaves the root with the case that holds it (found in audit
    and review: it was re-recorded for the survivor, so a wrong merge, once corrected, kept
    the conversation on the wrong case)."""
    out = start_case(harness)
    start_case(harness, "Other")
    start_case(harness, "Third")
    harness.set_case("C-000001", merged_into="C-000002")
    ti = outlook_reply_index(out.one("Thread-Index"), harness.clock.now + 60)
    subject = f"RE: {out.one('Subject')}" if keeps_tag else "RE: Printer jam"
    r = harness.inbound(CUSTOMER, ("Subject", subject), ("Thread-Index", ti),
                        ("Message-ID", "<outlook-1@customer.example.org>"))
    match = "token" if keeps_tag else "thread-index"
    assert (r.one("X-Case-Match"), r.case_id) == (match, "C-000002")
    harness.set_case("C-000001", merged_into="C-000003")  # the wrong merge, moved
    r = harness.inbound(CUSTOMER, ("Subject", "RE: Printer jam"),
                        ("Thread-Index", outlook_reply_index(ti, harness.clock.now + 120)),
                        ("Message-ID", "<outlook-2@customer.example.org>"))
    assert (r.one("X-Case-Match"), r.case_id) == ("thread-index", "C-000003")


def test_our_answer_in_a_merged_cases_outlook_conversation_leaves_its_root(
        harness: Any) -> None:
    """The agent answers the survivor in the merged case's Outlook conversation: the root
    stays with the merged case, so moving the merge takes the conversation along (review)."""
    out = start_case(harness)
    start_case(harness, "Other")
    start_case(harness, "Third")
    harness.set_case("C-000001", merged_into="C-000002")
    ti = outlook_reply_index(out.one("Thread-Index"), harness.clock.now + 60)
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "RE: Printer jam"),
                              ("X-Case-ID", "C-000002"), ("Thread-Index", ti))
    assert answer.case_id == "C-000002"
    harness.set_case("C-000001", merged_into="C-000003")
    r = harness.inbound(CUSTOMER, ("Subject", "RE: Printer jam"),
                        ("Thread-Index", outlook_reply_index(ti, harness.clock.now + 120)),
                        ("Message-ID", "<outlook-9@customer.example.org>"))
    assert (r.one("X-Case-Match"), r.case_id) == ("thread-index", "C-000003")


def test_thread_index_root_of_a_new_inbound_case_is_recorded(harness: Any) -> None:
    root = thread_index.new_root(harness.clock.now, bytes(range(16)))
    first = harness.inbound(
        CUSTOMER, ("Subject", "Scanner"), ("Thread-Index", thread_index.encode(root))
    )
    assert first.one("X-Case-Match") == "new"
    # Pat's second mail in the same Outlook conversation, with no other link.
    again = harness.inbound(
        CUSTOMER,
        ("Subject", "Scanner, again"),
        ("Thread-Index", thread_index.encode(thread_index.child(root, harness.clock.now))),
    )
    assert again.case_id == first.case_id
    assert again.one("X-Case-Match") == "thread-index"


def test_answers_continue_the_outlook_conversation_the_customer_started(harness: Any) -> None:
    """Pat wrote from Outlook: our answers carry Pat's conversation root plus a child block
    (MS-OXOMSG), so they join Pat's own conversation instead of starting another one; so
    does a follow-up case that a later mail of the same conversation opens."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16)))
    first = harness.inbound(CUSTOMER, ("Subject", "Scanner"),
                            ("Thread-Index", thread_index.encode(root)))
    assert harness.case(first.case_id).thread_root == root.hex()
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Scanner"),
                              ("In-Reply-To", "<m1@customer.example.org>"),
                              ("X-Case-ID", first.case_id))
    sent = thread_index.decode(answer.one("Thread-Index"))
    assert sent is not None and thread_index.root_of(sent) == root and len(sent) == 27
    # A case opened by outbound mail keeps a random root of its own.
    ours = start_case(harness, "Toner")
    assert harness.case(ours.case_id).thread_root is not None
    assert thread_index.decode(ours.one("Thread-Index")) == outbound.case_thread_root(
        harness.case(ours.case_id))
    # The case closed, Pat writes again in the same conversation: the follow-up keeps it.
    harness.set_case(first.case_id, state=CaseState.CLOSED)
    again = harness.inbound(CUSTOMER, ("Subject", "RE: Scanner"), ("Thread-Index",
                            thread_index.encode(thread_index.child(root, harness.clock.now))))
    assert again.one("X-Case-Related") == first.case_id
    assert harness.case(again.case_id).thread_root == root.hex()


def test_a_constant_thread_index_without_a_guid_joins_no_mail(harness: Any) -> None:
    """A writer whose every mail carries the same index with the Nil GUID (a template's
    constant value) gives no conversation: two customers' questions opened one case, the
    second a stranger's mail in the first's case, before."""
    constant = thread_index.encode(thread_index.new_root(harness.clock.now, bytes(16)))
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Invoice 17"),
                            ("Thread-Index", constant))
    assert first.one("X-Case-Match") == "new"
    assert harness.case(first.case_id).thread_root != thread_index.decode(constant).hex()
    other = harness.inbound(STRANGER, TO_SUPPORT, ("Subject", "Delivery 4"),
                            ("Thread-Index", constant))
    assert other.one("X-Case-Match") == "new"
    assert other.case_id != first.case_id
    # --explain says why the field did not count.
    assert "  the Thread-Index names no conversation" in "\n".join(
        map(str, other.decision.trace))


def test_a_damaged_thread_index_field_does_not_hide_the_next(harness: Any) -> None:
    """Outlook's reply with a second Thread-Index field above its own, one that names no
    conversation (another writer's, damaged): the reply threads by Outlook's, and a case
    such mail opens keeps that root. Only the first field was read before."""
    out = start_case(harness)
    ti = outlook_reply_index(out.one("Thread-Index"), harness.clock.now + 60)
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "RE: Printer jam"),
                        ("Thread-Index", "AQHaF0fG!damaged"), ("Thread-Index", ti))
    assert (r.one("X-Case-Match"), r.case_id) == ("thread-index", "C-000001")
    root = thread_index.new_root(harness.clock.now, b"\x42" * 16)
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Scanner"),
                            ("Thread-Index", thread_index.encode(thread_index.new_root(
                                harness.clock.now, bytes(16)))),
                            ("Thread-Index", thread_index.encode(root)))
    assert first.one("X-Case-Match") == "new"
    assert harness.case(first.case_id).thread_root == root.hex()


def test_a_thread_index_hundreds_of_lines_long_threads(harness: Any) -> None:
    """A mail answered or forwarded on for years: its index grows 5 bytes a level, to
    hundreds of folded lines. 1,000 levels (6,700 characters) opened a new case before, as
    the reader gave up after 4,096 characters."""
    out = start_case(harness)
    raw = thread_index.decode(out.one("Thread-Index"))
    assert raw is not None
    for level in range(1000):
        raw = thread_index.child(raw, harness.clock.now + level * DAY)
    value = thread_index.encode(raw)
    folded = "\r\n\t".join(value[i:i + 76] for i in range(0, len(value), 76))
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "FW: Printer jam"),
                        ("Thread-Index", folded))
    assert (r.one("X-Case-Match"), r.case_id) == ("thread-index", "C-000001")


def test_thread_index_of_another_conversation_does_not_match(harness: Any) -> None:
    start_case(harness)
    other = thread_index.new_root(harness.clock.now, b"\x42" * 16)
    unrelated = thread_index.encode(thread_index.child(other, harness.clock.now))
    r = harness.inbound(CUSTOMER, ("Thread-Index", unrelated))
    assert r.one("X-Case-Match") == "new"


# --------------------------------------------------------------------------- human references


@pytest.mark.parametrize("subject", ["Still broken [Case C-000001]",
                                     b_word("Immer noch kaputt [Case C-000001]")])
def test_subject_ref_from_a_participant_threads(harness: Any, subject: str) -> None:
    start_case(harness)
    r = harness.inbound(CUSTOMER, ("Subject", subject))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "subject-ref"
    assert r.one("X-Case-Sender") == "known"


@pytest.mark.parametrize(("label", "codec", "text"), UNKNOWN_LABELS)
def test_a_subject_ref_in_an_encoded_word_of_an_unknown_charset_threads(
        harness: Any, label: str, codec: str, text: str) -> None:
    """A case number a participant typed into a Subject that Exchange re-encoded under its
    own label (`_iso-2022-jp$ESC`) stayed hidden in the encoded word: read as the token search
    reads such a word, it threads; from a stranger it still does not."""
    start_case(harness)
    encoded = f"=?{label}?B?{base64.b64encode(f'{text} [Case C-000001]'.encode(codec)).decode()}?="
    r = harness.inbound(CUSTOMER, ("Subject", encoded))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-ref")
    stranger = harness.inbound(STRANGER, ("Subject", encoded))
    assert stranger.one("X-Case-Match") == "new"


@pytest.mark.parametrize("forged", ["Support <support@example.com>",
                                    "Dana Agent <dana@support.example.com>"])
def test_a_forged_support_or_agent_sender_is_no_participant(harness: Any, forged: str) -> None:
    """The support address is on every case's mail and the agent's on every answer: anyone
    can write either as From, so neither makes a guessable case number count."""
    start_case(harness)  # Dana -> Pat: C-000001
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "A new question"))  # C-000002
    assert first.case_id == "C-000002"
    for case_id in ("C-000001", "C-000002"):
        r = harness.inbound(("From", forged), ("Subject", f"Update [Case {case_id}]"))
        assert r.one("X-Case-Match") == "new", case_id
    # The customer, a real participant of both, still threads by number.
    r = harness.inbound(CUSTOMER, ("Subject", "Update [Case C-000001]"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-ref")


def test_an_address_listed_as_ours_later_is_no_participant(make_harness: Any) -> None:
    """billing@ was Cc'd on Pat's mail before the sysadmin listed it in `inbound.addresses`:
    it was recorded as a participant then. Listed now, it is ours: anyone can write it as
    From, so its recorded participation makes no guessable case number count."""
    h = make_harness()
    first = h.inbound(CUSTOMER, TO_SUPPORT, ("Cc", "Billing <billing@example.com>"),
                      ("Subject", "Invoice"))
    assert first.case_id == "C-000001"
    assert is_participant(h, "C-000001", "billing@example.com")
    listed = make_harness(settings_with(h, addresses=(*h.settings.inbound.addresses,
                                                      "billing@example.com")), index=h.index)
    r = listed.inbound(("From", "billing@example.com"), ("Subject", "Update [Case C-000001]"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "new")


GROUP = "team@googlegroups.com"
GROUP_COPY = (("Reply-To", f"Pat Customer <{CUSTOMER_ADDR}>"), ("To", f"Team <{GROUP}>"),
              ("List-Id", "<team.googlegroups.com>"), ("Precedence", "list"),
              ("List-Post", f"<https://groups.google.com/group/team/post>, <mailto:{GROUP}>"))


@pytest.mark.parametrize("direct_cc", [False, True])
def test_a_mailing_lists_address_is_no_participant(harness: Any, direct_cc: bool) -> None:
    """Google Groups (and Mailman's DMARC mitigation) re-send a member's mail under the list's
    From: a list copy of Pat's reply with our token, or Pat's own mail Cc'ing the list, must
    not make the list a participant, or every member's `[Case C-...]` would thread as
    `known` (and add its Cc)."""
    start_case(harness)  # Dana -> Pat: C-000001
    if direct_cc:
        harness.inbound(CUSTOMER, TO_SUPPORT, ("Cc", f"Team <{GROUP}>"),
                        ("Subject", f"Re: Printer jam [ref:{harness.token('C-000001')}]"))
    else:
        relayed = harness.inbound(("From", f"'Pat Customer' via Team <{GROUP}>"), *GROUP_COPY,
                                  ("Subject", f"Re: Printer jam [ref:{harness.token('C-000001')}]"))
        assert (relayed.case_id, relayed.one("X-Case-Sender")) == ("C-000001", "unknown")
    post = harness.inbound(("From", f"'Eve Elsewhere' via Team <{GROUP}>"), *GROUP_COPY,
                           ("Cc", "eve@elsewhere.example"), ("Subject", "About [Case C-000001]"))
    assert post.one("X-Case-Match") == "none"
    assert post.all("X-Case-ID") == []
    r = harness.inbound(STRANGER, ("Subject", "Update [Case C-000001]"))
    assert r.one("X-Case-Match") == "new"  # the Cc'd stranger did not join either


@pytest.mark.parametrize("field", [
    ("List-Id", "team.lists.customer.example.org"),  # no angle brackets
    ("List-Id", '"Team <all>" <team.lists.customer.example.org>'),  # brackets in the phrase
    ("List-Id", "<team@lists.customer.example.org>"),  # an address for the id
    ("List-Post", "< mailto:team@lists.customer.example.org >"),  # RFC 2369 whitespace
])
def test_a_lists_address_is_read_from_list_id_and_list_post_variants(
        harness: Any, field: tuple[str, str]) -> None:
    """Pat Cc'd their own list, which made it a participant; the list's post under its own
    From naming the case is no participant's however its List-Id or List-Post is written
    (RFC 2919's phrase is a quoted string that may hold brackets, RFC 2369 ignores whitespace
    inside the brackets, and some list managers write the id bare or as an address)."""
    team = "team@lists.customer.example.org"
    start_case(harness)
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Cc", f"Team <{team}>"),
                        ("Subject", f"Re: Printer jam [ref:{harness.token('C-000001')}]"))
    assert r.one("X-Case-Sender") == "known"
    post = harness.inbound(("From", f"'Eve' via Team <{team}>"), TO_SUPPORT, field,
                           ("Reply-To", "eve@customer.example.org"),
                           ("Subject", "About [Case C-000001]"))
    assert post.one("X-Case-Match") == "none"


def test_subject_ref_from_a_stranger_does_not_thread(harness: Any) -> None:
    start_case(harness)
    r = harness.inbound(STRANGER, ("Subject", "Hijack [Case C-000001]"))
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "new"
    assert r.all("X-Case-Sender") == []  # nothing matched: the question does not arise


def test_subject_ref_to_an_unknown_case_opens_a_new_one(harness: Any) -> None:
    r = harness.inbound(CUSTOMER, ("Subject", "[Case C-000042]"))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "new"


def test_x_case_sender_known_and_unknown_on_a_token_match(harness: Any) -> None:
    subject = start_case(harness).one("Subject")
    # Pat forwarded the mail to Eve, who answers with the token: it threads, flagged unknown.
    eve = harness.inbound(STRANGER, ("Subject", f"Fwd: {subject}"))
    assert eve.case_id == "C-000001"
    assert eve.one("X-Case-Sender") == "unknown"
    pat = harness.inbound(CUSTOMER, ("Subject", f"Re: {subject}"))
    assert pat.one("X-Case-Sender") == "known"
    # Eve's threaded mail made her a participant: her human reference counts now.
    again = harness.inbound(STRANGER, ("Subject", "About [Case C-000001]"))
    assert again.one("X-Case-Match") == "subject-ref"
    assert again.one("X-Case-Sender") == "known"


@pytest.mark.parametrize("display", [
    CUSTOMER_ADDR,  # an address for a name, unquoted
    f"=?utf-8?Q?{CUSTOMER_ADDR}?=",
    f"=?utf-8?Q?Customer=2C_P=C3=A4t_=3C{CUSTOMER_ADDR}=3E?=",
])
def test_a_customer_whose_display_name_is_an_address_is_known(harness: Any,
                                                               display: str) -> None:
    """Mailers write the address as the display name when there is none (`pat@x <pat@x>`),
    unquoted or in an encoded word: the strict stdlib parser read no From at all, so the
    reply said `X-Case-Sender: unknown` and the customer's `[Case C-...]` opened a new case."""
    subject = start_case(harness).one("Subject")
    sender = ("From", f"{display} <{CUSTOMER_ADDR}>")
    r = harness.inbound(sender, ("Subject", f"Re: {subject}"))
    assert (r.case_id, r.one("X-Case-Sender")) == ("C-000001", "known")
    r = harness.inbound(sender, ("Subject", "About [Case C-000001]"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-ref")
    # The angle address is the mailbox, also when the name holds another one.
    r = harness.inbound(("From", f"{CUSTOMER_ADDR} <eve@elsewhere.example>"),
                        ("Subject", "About [Case C-000001]"))
    assert r.one("X-Case-Match") == "new"


def is_participant(h: Any, case_id: str, address: str) -> bool:
    return h.index.find(AliasKind.PARTICIPANT, f"{case_id} {address}") is not None


PATS_OWN_ID = ("Message-ID", "<pat-1@customer.example.org>")
EVE = "eve@elsewhere.example"


def test_a_strangers_reply_to_a_customers_message_id_makes_nobody_a_participant(
        harness: Any) -> None:
    """Pat's reply went to a list (Cc): its Message-ID is public. Eve answers it: her mail
    threads by In-Reply-To, `unknown`, and adds nobody, so her guess of the case number
    afterwards threads nothing (the audit's b2, then a6)."""
    subject = start_case(harness).one("Subject")
    pat = harness.inbound(CUSTOMER, ("Subject", f"Re: {subject}"), PATS_OWN_ID,
                          ("Cc", "list@lists.example.org"))
    assert pat.one("X-Case-Match") == "token"
    eve = harness.inbound(STRANGER, TO_SUPPORT, ("Subject", "Re: Printer jam"),
                          ("In-Reply-To", PATS_OWN_ID[1]), ("Cc", "mal@evil.example"))
    assert (eve.case_id, eve.one("X-Case-Match")) == ("C-000001", "in-reply-to")
    assert eve.one("X-Case-Sender") == "unknown"
    assert not is_participant(harness, "C-000001", EVE)
    assert not is_participant(harness, "C-000001", "mal@evil.example")
    assert any("participants: none added" in line for line in eve.decision.trace)
    guess = harness.inbound(STRANGER, ("Subject", "Re: x [Case C-000001]"))
    assert (guess.case_id, guess.one("X-Case-Match")) == ("C-000002", "new")
    again = harness.inbound(STRANGER, ("In-Reply-To", PATS_OWN_ID[1]))
    assert (again.case_id, again.one("X-Case-Sender")) == ("C-000001", "unknown")


def test_a_strangers_weak_match_of_a_closed_case_adds_nobody_to_its_follow_up(
        harness: Any) -> None:
    """The follow-up continues the closed case (its later replies go there): Eve's mail
    that opened it by a customer's Message-ID makes her no participant of it either."""
    subject = start_case(harness).one("Subject")
    harness.inbound(CUSTOMER, ("Subject", f"Re: {subject}"), PATS_OWN_ID)
    harness.set_case("C-000001", state=CaseState.CLOSED)
    eve = harness.inbound(STRANGER, ("In-Reply-To", PATS_OWN_ID[1]))
    assert (eve.case_id, eve.one("X-Case-Related")) == ("C-000002", "C-000001")
    assert not is_participant(harness, "C-000002", EVE)
    guess = harness.inbound(STRANGER, ("Subject", "[Case C-000002]"))
    assert guess.one("X-Case-Match") == "new"


@pytest.mark.parametrize("evidence", ["subject", "anchor"])
def test_a_strangers_reply_with_our_token_makes_them_a_participant(
        harness: Any, evidence: str) -> None:
    """Our token or case anchor proves its sender saw our mail (Pat forwarded it)."""
    out = start_case(harness)
    proof = (("Subject", f"Fwd: {out.one('Subject')}") if evidence == "subject"
             else ("References", out.one("References")))
    eve = harness.inbound(STRANGER, proof, ("Cc", "kim@elsewhere.example"))
    assert (eve.one("X-Case-Match"), eve.one("X-Case-Sender")) == ("token", "unknown")
    assert is_participant(harness, "C-000001", EVE)
    assert is_participant(harness, "C-000001", "kim@elsewhere.example")
    again = harness.inbound(STRANGER, ("Subject", "About [Case C-000001]"))
    assert (again.one("X-Case-Match"), again.one("X-Case-Sender")) == ("subject-ref", "known")


@pytest.mark.parametrize("evidence", ["in-reply-to", "subject-ref"])
def test_a_known_customers_weakly_matched_mail_adds_the_people_in_its_cc(
        harness: Any, evidence: str) -> None:
    out = start_case(harness)
    link = (("In-Reply-To", out.one("Message-ID")) if evidence == "in-reply-to"
            else ("Subject", "Still broken [Case C-000001]"))
    pat = harness.inbound(CUSTOMER, link, ("Cc", "Kim <kim@customer.example.org>"))
    assert (pat.one("X-Case-Match"), pat.one("X-Case-Sender")) == (evidence, "known")
    assert is_participant(harness, "C-000001", "kim@customer.example.org")
    kim = harness.inbound(("From", "kim@customer.example.org"), ("Subject", "[Case C-000001]"))
    assert (kim.case_id, kim.one("X-Case-Sender")) == ("C-000001", "known")


def test_a_bcc_recipient_of_agent_mail_is_a_participant(harness: Any) -> None:
    """Bcc'd customers are on the envelope only: their replies come from a known sender. Our
    support addresses and the agent's own From (a Bcc to self) are no participants."""
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Outage notice"), rcpts=(
        CUSTOMER_ADDR, "<Kim@Other.Example>", "support@example.com", "dana@support.example.com"))
    kim = harness.inbound(("From", "kim@other.example"), ("In-Reply-To", out.one("Message-ID")))
    assert (kim.case_id, kim.one("X-Case-Sender")) == (out.case_id, "known")
    dana = harness.inbound(AGENT, ("In-Reply-To", out.one("Message-ID")))
    assert dana.one("X-Case-Sender") == "unknown"


def test_an_unqualified_envelope_recipient_is_no_participant(harness: Any) -> None:
    """`RCPT TO:<postmaster>` (no domain: RFC 5321 §4.1.1.3 lets it in) names nobody."""
    out = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Outage notice"),
                           rcpts=(CUSTOMER_ADDR, "<postmaster>"))
    assert harness.index.find(AliasKind.PARTICIPANT, f"{out.case_id} postmaster") is None
    assert harness.index.find(AliasKind.PARTICIPANT, f"{out.case_id} {CUSTOMER_ADDR}")


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_participants_past_the_cap_are_noted(harness: Any, direction: str) -> None:
    """At most 50 people a message become participants: the log line says when some were
    left out (the mail still goes to its case)."""
    many = ("Cc", ", ".join(f"c{i:02d}@customer.example.org" for i in range(60)))
    send = harness.outbound if direction == "outbound" else harness.inbound
    capped = send(CUSTOMER, TO_SUPPORT, many, ("Subject", "Notice"))
    assert "participants-capped" in capped.decision.notes
    # Duplicates and our own addresses do not count towards the cap.
    fine = send(CUSTOMER, TO_SUPPORT, ("Subject", "Notice"), ("Cc", ", ".join(
        ["c00@customer.example.org"] * 60 + ["support@example.com", "late@customer.example.org"])))
    assert "participants-capped" not in fine.decision.notes
    reply = harness.inbound(("From", "late@customer.example.org"),
                            ("Subject", "[Case C-000002]"))
    assert reply.case_id == "C-000002"


def test_body_ref_from_a_participant_threads_from_a_stranger_not(harness: Any) -> None:
    start_case(harness)
    body = b"Hello,\n\nthis is about [Case C-000001], the printer.\n"
    r = harness.inbound(CUSTOMER, ("Subject", "printer"), body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "body-ref"
    assert r.one("X-Case-Sender") == "known"
    r = harness.inbound(STRANGER, ("Subject", "printer"), body=body)
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "new"


# --------------------------------------------------------------------------- external-ref


SERVICENOW = ExternalRefRule(
    name="servicenow", pattern=r"\b(INC\d{7})\b", sender=("@servicenow.example.net",)
)
NOW_SENDER = ("From", "ServiceNow <noreply@servicenow.example.net>")


def external_harness(make_harness: Any) -> Any:
    base = make_harness()
    strategies = (*base.settings.inbound.strategies, "external-ref")
    return make_harness(
        settings_with(base, external_refs=(SERVICENOW,), strategies=strategies)
    )


def test_external_ref_first_sight_maps_then_threads(make_harness: Any) -> None:
    h = external_harness(make_harness)
    first = h.inbound(NOW_SENDER, ("Subject", "INC0012345 opened: printer"))
    assert first.case_id == "C-000001"
    assert first.one("X-Case-Match") == "new"
    later = h.inbound(NOW_SENDER, ("Subject", "Update"), body=b"Incident INC0012345 was updated.\n")
    assert later.case_id == "C-000001"
    assert later.one("X-Case-Match") == "external-ref"
    # Another incident number is another case.
    other = h.inbound(NOW_SENDER, ("Subject", "INC0099999 opened"))
    assert other.case_id == "C-000002"
    assert other.one("X-Case-Match") == "new"


def test_external_ref_from_another_sender_is_not_used(make_harness: Any) -> None:
    h = external_harness(make_harness)
    h.inbound(NOW_SENDER, ("Subject", "INC0012345 opened"))
    r = h.inbound(STRANGER, ("Subject", "Re: INC0012345"))
    assert r.one("X-Case-Match") == "new"
    assert r.case_id == "C-000002"


def test_external_ref_is_off_unless_listed(make_harness: Any) -> None:
    base = make_harness()
    h = make_harness(settings_with(base, external_refs=(SERVICENOW,)))
    h.inbound(NOW_SENDER, ("Subject", "INC0012345 opened"))
    r = h.inbound(NOW_SENDER, ("Subject", "INC0012345 updated"))
    assert r.one("X-Case-Match") == "new"


def test_external_ref_seen_on_a_reply_that_threaded_otherwise_is_recorded(
    make_harness: Any,
) -> None:
    """We write to ServiceNow; its answer threads by In-Reply-To and names its incident. That
    first sight must map the incident, or its later updates (no In-Reply-To) open new cases."""
    h = external_harness(make_harness)
    out = h.outbound(AGENT, ("To", "servicedesk@servicenow.example.net"), ("Subject", "Printer"))
    reply = h.inbound(
        NOW_SENDER, ("Subject", "INC0012345 created"), ("In-Reply-To", out.one("Message-ID"))
    )
    assert reply.one("X-Case-Match") == "in-reply-to"
    update = h.inbound(NOW_SENDER, ("Subject", "INC0012345 updated"))
    assert update.one("X-Case-Match") == "external-ref", update.ours()
    assert update.case_id == "C-000001"


def test_external_ref_of_a_vendor_that_marks_its_mail_automatic(make_harness: Any) -> None:
    """ServiceNow marks every notification Precedence: bulk and Auto-Submitted:
    auto-generated (a Zammad test fixture keeps a real one). Its first notice of an incident
    no case knows opens a case (the rule names its senders: the sysadmin asked for its
    tickets), still `X-Case-Auto: auto-generated`; its later notices thread by the number
    and stay automatic; a notice that repeats our Subject tag threads by the token."""
    h = external_harness(make_harness)
    auto = (("Precedence", "bulk"), ("Auto-Submitted", "auto-generated"))
    first = h.inbound(NOW_SENDER, *auto, ("Subject", "Incident INC0099999 opened"))
    assert (first.case_id, first.one("X-Case-Match")) == ("C-000001", "new")
    assert first.one("X-Case-Auto") == "auto-generated"
    update = h.inbound(NOW_SENDER, *auto, ("Subject", "Incident INC0099999 -- work notes added"))
    assert (update.case_id, update.one("X-Case-Match")) == ("C-000001", "external-ref")
    assert update.one("X-Case-Auto") == "auto-generated"
    out = h.outbound(AGENT, ("To", "servicedesk@servicenow.example.net"), ("Subject", "Printer"))
    opened = h.inbound(NOW_SENDER, *auto,
                       ("Subject", f"Incident INC0012345 opened -- {out.one('Subject')}"))
    assert (opened.case_id, opened.one("X-Case-Match")) == (out.case_id, "token")
    later = h.inbound(NOW_SENDER, *auto, ("Subject", "Incident INC0012345 -- resolved"))
    assert (later.case_id, later.one("X-Case-Match")) == (out.case_id, "external-ref")


def test_a_vendor_over_the_flood_limit_opens_no_case(make_harness: Any) -> None:
    """A looping ticket system whose every notice names a new incident: past the flood
    limit its notices are a loop and open no case, whatever `external_refs` says."""
    h = external_harness(make_harness)
    h = make_harness(dataclasses.replace(h.settings, inbound=dataclasses.replace(
        h.settings.inbound, flood=FloodSettings(limit=2, window=3600))))
    auto = (("Precedence", "bulk"), ("Auto-Submitted", "auto-generated"))
    seen = [h.inbound(NOW_SENDER, *auto, ("Subject", f"Incident INC00{n}0000 opened"))
            for n in range(1, 5)]
    assert [(r.all("X-Case-ID"), r.all("X-Case-Loop")) for r in seen] == [
        (["C-000001"], []), (["C-000002"], []), ([], ["yes"]), ([], ["yes"])]
    assert h.index.last_number() == 2


@pytest.mark.parametrize("marks", [
    (NOW_SENDER, ("Auto-Submitted", "auto-replied"),
     ("Subject", "Out of office: INC0077777 opened")),
    (("From", "MAILER-DAEMON@servicenow.example.net"),
     ("Subject", "Undelivered Mail Returned to Sender: INC0077777")),
])
def test_a_vendors_out_of_office_or_bounce_opens_no_case(make_harness: Any,
                                                        marks: tuple[tuple[str, str], ...]
                                                        ) -> None:
    h = external_harness(make_harness)
    r = h.inbound(*marks)
    assert r.one("X-Case-Auto") in ("auto-replied", "bounce")
    assert r.one("X-Case-Match") == "none"
    assert r.all("X-Case-ID") == []


def test_an_external_ref_rule_for_any_sender_opens_no_case_for_automatic_mail(
        make_harness: Any) -> None:
    """Without a `sender`, anyone's automatic mail may hold a number of the rule's shape (a
    newsletter quoting an incident): it threads to a known ticket, opens none."""
    base = make_harness()
    anyone = dataclasses.replace(SERVICENOW, sender=())
    h = make_harness(settings_with(base, external_refs=(anyone,), strategies=(
        *base.settings.inbound.strategies, "external-ref")))
    r = h.inbound(NOW_SENDER, ("Precedence", "bulk"), ("Subject", "Incident INC0055555 opened"))
    assert r.one("X-Case-Match") == "none"
    assert r.all("X-Case-ID") == []


class AliasCountingIndex:
    """A MemoryIndex that counts alias lookups and writes per kind (work, not time)."""

    def __init__(self) -> None:
        self.inner = MemoryIndex()
        self.found: Counter[AliasKind] = Counter()
        self.recorded: Counter[AliasKind] = Counter()
        self.cases_read = 0

    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        self.found[kind] += 1
        return self.inner.find(kind, key)

    def get_case(self, case_id: str) -> CaseRecord | None:
        self.cases_read += 1
        return self.inner.get_case(case_id)

    def record(self, aliases: Sequence[Alias], now: int, bumps: Sequence[CounterBump] = (),
               changes: Sequence[tuple[str, CaseChange]] = ()) -> dict[str, CaseRecord]:
        self.recorded.update(a.kind for a in aliases)
        return self.inner.record(aliases, now, bumps, changes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_external_refs_of_one_message_are_bounded(make_harness: Any) -> None:
    """A body of thousands of ticket-number look-alikes: bounded lookups and writes."""
    base = make_harness()
    index = AliasCountingIndex()
    h = make_harness(
        settings_with(
            base,
            external_refs=(ExternalRefRule(name="servicenow", pattern=r"\b(INC\d{7})\b"),),
            strategies=(*base.settings.inbound.strategies, "external-ref"),
        ),
        index=index,
    )
    body = "".join(f"INC{i:07d}\n" for i in range(5_000)).encode()
    r = h.inbound(NOW_SENDER, ("Subject", "digest"), body=body)
    assert r.case_id == "C-000001"
    assert index.found[AliasKind.EXTERNAL] <= 64, index.found
    assert index.recorded[AliasKind.EXTERNAL] <= 64, index.recorded


def test_human_references_of_one_message_are_bounded(make_harness: Any) -> None:
    """A stranger's body full of case references (known and guessed): bounded lookups."""
    index = AliasCountingIndex()
    h = make_harness(index=index)
    start_case(h)
    index.found.clear()
    index.cases_read = 0
    body = "".join(f"[Case C-000001] [Case C-{i:06d}]\n" for i in range(2, 2_500)).encode()
    r = h.inbound(STRANGER, ("Subject", "guessing"), body=body)
    assert r.one("X-Case-Match") == "new"
    assert index.found[AliasKind.PARTICIPANT] <= 64, index.found
    assert index.cases_read <= 64, index.cases_read


# --------------------------------------------------------------------------- subject-match


def subject_match_harness(make_harness: Any, window: int = 2 * DAY,
                          list_authors: bool = False) -> Any:
    base = make_harness()
    inbound = base.settings.inbound
    return make_harness(
        settings_with(
            base,
            strategies=(*inbound.strategies, "subject-match"),
            subject_match=dataclasses.replace(inbound.subject_match, window=window),
            list_authors=list_authors,
        )
    )


def test_subject_match_is_off_by_default(harness: Any) -> None:
    harness.inbound(CUSTOMER, ("Subject", "Printer jam in room 4"))
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Printer jam in room 4"))
    assert r.one("X-Case-Match") == "new"


@pytest.mark.parametrize(
    "subject",
    ["Re: Printer jam in room 4", "AW: WG: printer JAM  in room 4", "回复: Printer jam in room 4",
     "Fwd: RE: [ref:{token}] Printer jam in room 4",
     # a spam filter's default tag on a follow-up it let through (Amavis, SpamAssassin,
     # MailScanner): it opened a new case
     "***SPAM*** Re: Printer jam in room 4", "Re: *** SPAM *** Printer jam in room 4",
     "*****SPAM***** Printer jam in room 4", "{Spam?} RE: Printer jam in room 4"],
)
def test_subject_match_within_the_window(make_harness: Any, subject: str) -> None:
    h = subject_match_harness(make_harness)
    h.inbound(CUSTOMER, ("Subject", "Printer jam in room 4"))
    h.advance(DAY)
    # A tag that does not verify (another key's): not a token match, removed for comparing.
    retired = Keyring([(9, b"r" * 32)]).make(7)
    r = h.inbound(CUSTOMER, ("Subject", subject.replace("{token}", retired)))
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "subject-match"
    assert r.one("X-Case-Sender") == "known"


def test_subject_match_reads_a_subject_in_microsofts_iso_2022_jp_label(make_harness: Any) -> None:
    """Exchange re-encodes a Japanese reply's Subject under its own label, `_iso-2022-jp$ESC`
    (code page 50221), which Python does not know: read as the token search reads it, the
    reply's Subject compares equal to the first mail's UTF-8 one (it stayed encoded, and the
    reply opened a case of its own)."""
    h = subject_match_harness(make_harness)
    h.inbound(CUSTOMER, ("Subject", "=?UTF-8?B?6KuL5rGC5pu444Gr44Gk44GE44Gm?="))  # 請求書について
    h.advance(DAY)
    r = h.inbound(CUSTOMER, ("Subject", "=?_iso-2022-jp$ESC?B?UmU6IBskQkBBNWE9cSRLJEQkJCRGGyhC?="))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-match")


def test_subject_match_outside_the_window_or_from_a_stranger(make_harness: Any) -> None:
    h = subject_match_harness(make_harness, window=2 * DAY)
    h.inbound(CUSTOMER, ("Subject", "Printer jam in room 4"))
    stranger = h.inbound(STRANGER, ("Subject", "Re: Printer jam in room 4"))
    assert stranger.one("X-Case-Match") == "new"
    h.inbound(CUSTOMER, ("Subject", "Toner"))  # C-000003
    h.advance(2 * DAY + 10)
    late = h.inbound(CUSTOMER, ("Subject", "Re: Toner"))
    assert late.one("X-Case-Match") == "new"
    assert late.case_id == "C-000004"


def test_subject_match_at_the_windows_end_still_matches(make_harness: Any) -> None:
    """`within inbound.subject_match.window`: a mail exactly the window after still matches."""
    h = subject_match_harness(make_harness, window=2 * DAY)
    h.inbound(CUSTOMER, ("Subject", "Printer jam in room 4"))
    h.advance(2 * DAY - 1)  # each message moves the harness's clock on by a second
    r = h.inbound(CUSTOMER, ("Subject", "Re: Printer jam in room 4"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-match")


def test_subject_match_is_not_taken_over_by_another_sender(make_harness: Any) -> None:
    h = subject_match_harness(make_harness)
    h.inbound(CUSTOMER, ("Subject", "Invoice question"))  # Pat's case C-000001
    eve = h.inbound(STRANGER, ("Subject", "Invoice question"))  # Eve's own case
    assert (eve.case_id, eve.one("X-Case-Match")) == ("C-000002", "new")
    r = h.inbound(CUSTOMER, ("Subject", "Re: Invoice question"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-match")
    # And Eve's follow-up goes to Eve's case, not Pat's.
    r = h.inbound(STRANGER, ("Subject", "Re: Invoice question"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "subject-match")


WEB_FORM = ("From", "Example Website <wordpress@www.example.net>")


def visitor(n: int) -> tuple[str, str]:
    return ("Reply-To", f"Visitor {n} <visitor{n}@customer.example.org>")


def test_subject_match_tells_a_web_forms_visitors_apart(make_harness: Any) -> None:
    """A web form sends every visitor's question under its own From, with one Subject, and
    the visitor in Reply-To: one visitor's second question joins their case, another
    visitor's opens their own."""
    h = subject_match_harness(make_harness)
    first = h.inbound(WEB_FORM, visitor(1), ("Subject", "Contact form: new message"))
    other = h.inbound(WEB_FORM, visitor(2), ("Subject", "Contact form: new message"))
    again = h.inbound(WEB_FORM, visitor(1), ("Subject", "Contact form: new message"))
    assert [r.one("X-Case-Match") for r in (first, other, again)] == [
        "new", "new", "subject-match"]
    assert [r.case_id for r in (first, other, again)] == ["C-000001", "C-000002", "C-000001"]


def test_subject_match_form_mail_without_reply_to_opens_its_own_case(make_harness: Any) -> None:
    """A visitor who left the form's address field empty: the form's From alone names nobody's
    case, so its mail does not join the last visitor's."""
    h = subject_match_harness(make_harness)
    h.inbound(WEB_FORM, visitor(1), ("Subject", "Contact form: new message"))
    r = h.inbound(WEB_FORM, ("Subject", "Contact form: new message"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "new")


def test_subject_match_is_not_taken_over_through_a_reply_to(make_harness: Any) -> None:
    """A stranger's mail that names a customer in Reply-To, under the subject of the
    customer's case, makes the customer a participant of the stranger's case, but the
    customer's next mail of that subject still goes to their own case."""
    h = subject_match_harness(make_harness)
    h.inbound(CUSTOMER, ("Subject", "Printer jam"))  # Pat's C-000001
    lure = h.inbound(STRANGER, ("Reply-To", CUSTOMER_ADDR), ("Subject", "Printer jam"))
    assert (lure.case_id, lure.one("X-Case-Match")) == ("C-000002", "new")
    r = h.inbound(CUSTOMER, ("Subject", "Re: Printer jam"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "subject-match")


# --------------------------------------------------------------------------- forged tokens


def forged_tokens() -> list[tuple[str, str, str]]:
    """(kind, token, why it fails: the log note's reason)."""
    genuine = Keyring([(1, bytes(range(32)))]).make(1)  # the harness key, case 1
    other_secret = Keyring([(1, b"\xa5" * 32)]).make(1)
    other_id = Keyring([(7, bytes(range(32)))]).make(1)  # right secret, unknown key id
    return [
        ("random", "1" + "1" + "1" + "ABCDEFGHJKMNPQRS", "bad-mac"),
        ("another-key", other_secret, "bad-mac"),
        ("unknown-key-id", other_id, "unknown-key"),
        ("other-case-same-mac", genuine[:2] + "2" + genuine[3:], "bad-mac"),
        ("last-symbol", genuine[:-1] + ("0" if genuine[-1] != "0" else "1"), "bad-mac"),
        # Its second symbol says two case-number symbols, its length one: no token's shape.
        ("wrong-length", "1" + "2" + "1" + "ABCDEFGHJKMNPQRS", "malformed"),
    ]


@pytest.mark.parametrize(("kind", "forged", "why"), forged_tokens(), ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("where", ["subject", "body", "references"])
def test_forged_token_never_matches(harness: Any, kind: str, forged: str, why: str,
                                    where: str) -> None:
    start_case(harness)
    genuine = harness.token("C-000001")
    assert genuine != forged
    if kind in ("other-case-same-mac", "last-symbol"):  # one symbol off the real token
        assert sum(a != b for a, b in zip(genuine, forged, strict=True)) == 1
    headers: list[tuple[str, str]] = [CUSTOMER]
    body = b""
    if where == "subject":
        headers.append(("Subject", f"Re: Printer jam [ref:{forged}]"))
    elif where == "body":
        body = f"> [ref:{forged}]\n".encode()
    else:
        headers.append(("References", f"<{forged}.case@support.example.com>"))
    r = harness.inbound(*headers, body=body)
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Match") == "new"
    assert r.one("X-Case-Token") == "invalid"
    # The log line says so too, and why: a retired key's replies open new cases.
    assert [n for n in r.decision.notes if n.startswith("token-")] == [f"token-invalid:{why}"]
    assert r.decision.log_fields().endswith(f",token-invalid:{why}")  # after no-message-id


def test_an_agents_mail_with_a_failed_token_says_so_in_its_log_line(harness: Any) -> None:
    start_case(harness)
    retired = Keyring([(2, bytes(range(32)))]).make(1)  # a key id the harness does not have
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: Printer jam [ref:{retired}]"))
    assert r.decision.match == "new"
    assert "token-invalid:unknown-key" in r.decision.notes


def test_every_one_character_change_of_a_token_fails(harness: Any) -> None:
    tok = token_of(start_case(harness).one("Subject"))
    for i, symbol in enumerate(tok):
        for other in {ALPHABET[(ALPHABET.index(symbol) + 1) % 32], ALPHABET[0]} - {symbol}:
            changed = tok[:i] + other + tok[i + 1 :]
            # A sender per mail: one sender's 21st mail in an hour would be a loop.
            sender = ("From", f"pat+{i}{other}@customer.example.org")
            r = harness.inbound(sender, ("Subject", f"Re: [ref:{changed}]"))
            assert r.one("X-Case-Match") == "new", (i, changed)
            assert r.one("X-Case-Token") == "invalid", (i, changed)


def test_token_shaped_garbage_outside_the_bracket_is_not_invalid(harness: Any) -> None:
    r = harness.inbound(CUSTOMER, ("Subject", "order 1ABCDEFGHJKMNPQRSTVW"))
    assert r.all("X-Case-Token") == []


# --------------------------------------------------------------------------- strategy order


def test_strategy_order_decides_the_winner(make_harness: Any) -> None:
    def run(h: Any) -> Any:
        a = start_case(h, "First")  # C-000001
        b = start_case(h, "Second")  # C-000002
        # In-Reply-To names case 1, the Subject token case 2.
        return h.inbound(
            CUSTOMER, ("Subject", b.one("Subject")), ("In-Reply-To", a.one("Message-ID"))
        )

    default = run(make_harness())
    assert (default.case_id, default.one("X-Case-Match")) == ("C-000002", "token")
    base = make_harness()
    reordered = make_harness(
        settings_with(base, strategies=("in-reply-to", "token", "references", "thread-index"))
    )
    r = run(reordered)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "in-reply-to")


def test_a_strategy_left_out_is_not_used(make_harness: Any) -> None:
    base = make_harness()
    h = make_harness(settings_with(base, strategies=("in-reply-to",)))
    subject = start_case(h).one("Subject")
    r = h.inbound(CUSTOMER, ("Subject", f"Re: {subject}"))
    assert r.one("X-Case-Match") == "new"


# --------------------------------------------------------------------------- case rules


def reply_to(h: Any, case_id: str, *headers: tuple[str, str], **kw: Any) -> Any:
    """Pat replies with the case's token in the Subject."""
    return h.inbound(CUSTOMER, ("Subject", f"Re: x [ref:{h.token(case_id)}]"), *headers, **kw)


def test_merged_case_goes_to_the_survivor(harness: Any) -> None:
    start_case(harness)  # C-000001
    start_case(harness, "Dup")  # C-000002
    harness.set_case("C-000001", merged_into="C-000002")
    r = reply_to(harness, "C-000001", ("Message-ID", "<m1@customer.example.org>"))
    assert r.ours()[:3] == [
        ("X-Case-ID", "C-000002"),
        ("X-Case-Match", "token"),
        ("X-Case-State", "open"),
    ]
    # The reply is recorded for the survivor, and no case was created.
    assert harness.index.case_for_message("m1@customer.example.org") == "C-000002"
    assert harness.index.last_number() == 2


def test_merge_chain_and_cycle_terminate(harness: Any) -> None:
    for _ in range(3):
        start_case(harness)
    harness.set_case("C-000001", merged_into="C-000002")
    harness.set_case("C-000002", merged_into="C-000003")
    assert reply_to(harness, "C-000001").case_id == "C-000003"
    harness.set_case("C-000003", merged_into="C-000001")  # a cycle 1 -> 2 -> 3 -> 1
    r = reply_to(harness, "C-000001")
    assert r.decision.case_ids in (("C-000001",), ("C-000002",), ("C-000003",))
    assert harness.index.last_number() == 3


def test_a_merge_chain_longer_than_the_bound_terminates(harness: Any) -> None:
    for _ in range(40):
        start_case(harness)
    for n in range(1, 40):
        harness.set_case(f"C-{n:06d}", merged_into=f"C-{n + 1:06d}")
    r = reply_to(harness, "C-000001")
    (case_id,) = r.decision.case_ids
    assert 1 < int(case_id[2:]) <= 40
    assert harness.index.last_number() == 40


def test_a_split_with_more_children_than_the_bound_reaches_the_first_ones_only(
        harness: Any) -> None:
    """`case split` refuses more than MAX_SPLIT_CHILDREN children; an index that holds more
    (corrupt, hostile, hand-edited) sends one mail to no more than that many cases."""
    many = rules.MAX_SPLIT_CHILDREN + 4
    for _ in range(many + 1):
        start_case(harness)
    children = tuple(f"C-{n:06d}" for n in range(2, many + 2))
    harness.set_case("C-000001", children=children)
    r = reply_to(harness, "C-000001")
    assert r.all("X-Case-ID") == list(children[:rules.MAX_SPLIT_CHILDREN])
    assert harness.index.last_number() == many + 1


def test_split_case_yields_one_header_per_child(harness: Any) -> None:
    for subject in ("Parent", "Child A", "Child B", "Child C"):
        start_case(harness, subject)
    harness.set_case("C-000001", children=("C-000002", "C-000003", "C-000004"))
    # Child C was merged into child A later: it is the same live case.
    harness.set_case("C-000004", merged_into="C-000002")
    harness.set_case("C-000003", state=CaseState.WAITING, state_changed=int(harness.clock.now))
    r = reply_to(harness, "C-000001")
    assert r.all("X-Case-ID") == ["C-000002", "C-000003"]
    assert r.all("X-Case-State") == ["open", "open"]
    assert r.decision.case_ids == ("C-000002", "C-000003")
    assert harness.case("C-000003").state is CaseState.OPEN
    assert r.one("X-Case-Match") == "token"


def test_closed_case_goes_to_its_first_open_ancestor(harness: Any) -> None:
    for subject in ("Grandparent", "Parent", "Child"):
        start_case(harness, subject)
    harness.set_case("C-000003", state=CaseState.CLOSED, parent="C-000002")
    harness.set_case("C-000002", state=CaseState.CLOSED, parent="C-000001")
    r = reply_to(harness, "C-000003")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-State") == "open"
    assert r.all("X-Case-Related") == []


def test_closed_case_whose_parent_was_merged_goes_to_the_survivor(harness: Any) -> None:
    """`case merge` leaves the merged case's state as it was (open): the closed child's
    mail goes on to the case its parent was merged into, not to the merged case."""
    for subject in ("Parent", "Survivor", "Child"):
        start_case(harness, subject)
    harness.set_case("C-000003", state=CaseState.CLOSED, parent="C-000001")
    harness.set_case("C-000001", merged_into="C-000002")
    for automatic in ((), (("Auto-Submitted", "auto-replied"),)):
        r = reply_to(harness, "C-000003", *automatic)
        assert (r.all("X-Case-ID"), r.all("X-Case-Related")) == (["C-000002"], [])
    assert harness.index.last_number() == 3


def test_closed_case_without_open_ancestor_opens_a_related_case(harness: Any) -> None:
    start_case(harness)  # C-000001
    start_case(harness, "Parent")  # C-000002
    harness.set_case("C-000002", state=CaseState.CLOSED)
    harness.set_case("C-000001", state=CaseState.CLOSED, parent="C-000002")
    r = reply_to(harness, "C-000001")
    assert r.ours() == [
        ("X-Case-ID", "C-000003"),
        ("X-Case-Match", "token"),
        ("X-Case-State", "new"),
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "no"),
        ("X-Case-Related", "C-000001"),
        ("X-Case-Sender", "known"),
    ]
    assert harness.case("C-000001").state is CaseState.CLOSED
    assert harness.case("C-000003").state is CaseState.OPEN


@pytest.mark.parametrize("link", ["followup", "parent"])
def test_a_cycle_of_closed_cases_opens_one_related_case(harness: Any, link: str) -> None:
    """A corrupt or hostile index: two closed cases naming each other as follow-up, or as
    parent: the walk ends, and the reply opens one case."""
    start_case(harness)
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.CLOSED, **{link: "C-000002"})
    harness.set_case("C-000002", state=CaseState.CLOSED, **{link: "C-000001"})
    r = reply_to(harness, "C-000001")
    assert (r.case_id, harness.index.last_number()) == ("C-000003", 3)
    assert r.one("X-Case-Related") == "C-000001"


@pytest.mark.parametrize("link", ["merged", "closed-with-parent", "split"])
def test_sender_of_the_case_the_mail_names_is_known_after_a_link(harness: Any, link: str) -> None:
    """Pat takes part in C-000001; it was merged into (closed under, split into) C-000002, where
    Pat never wrote. Pat's reply is from a participant of the case it names: `known`."""
    start_case(harness)  # C-000001, Pat in To
    other = harness.inbound(("From", "someone@else.example"), ("Subject", "other"))
    assert other.case_id == "C-000002"
    if link == "merged":
        harness.set_case("C-000001", merged_into="C-000002")
    elif link == "closed-with-parent":
        harness.set_case("C-000001", state=CaseState.CLOSED, parent="C-000002")
    else:
        harness.set_case("C-000001", children=("C-000002",))
    r = reply_to(harness, "C-000001")
    assert r.case_id == "C-000002"
    assert r.one("X-Case-Sender") == "known"


def test_an_agents_answer_after_a_related_case_opened_goes_to_that_case(harness: Any) -> None:
    """Pat wrote to closed C-000001: related case C-000002 opened. Dana answers from her mail
    client (no X-Case-ID), the Subject still holding C-000001's token: the answer, and Pat's
    next reply, belong to C-000002, not to one more new case."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    pat = reply_to(harness, "C-000001", ("Message-ID", "<again.1@customer.example.org>"))
    assert (pat.case_id, pat.one("X-Case-Related")) == ("C-000002", "C-000001")
    answer = harness.outbound(AGENT, TO_CUSTOMER,
                              ("Subject", f"Re: x [ref:{harness.token('C-000001')}]"),
                              ("In-Reply-To", "<again.1@customer.example.org>"))
    assert (answer.case_id, answer.decision.match) == ("C-000002", "in-reply-to")
    assert token_of(answer.one("Subject")) == harness.token("C-000002")  # the tag replaced
    again = harness.inbound(CUSTOMER, ("Subject", f"Re: {answer.one('Subject')}"),
                            ("In-Reply-To", answer.one("Message-ID")))
    assert (again.case_id, again.one("X-Case-Match")) == ("C-000002", "token")
    # Without a mail answered, the closed case's token yields to where its replies go now.
    lone = harness.outbound(AGENT, TO_CUSTOMER,
                            ("Subject", f"Re: x [ref:{harness.token('C-000001')}]"))
    assert lone.case_id == "C-000002"


@pytest.mark.parametrize("link", ["followup", "parent"])
def test_an_agents_answer_to_an_older_mail_of_a_closed_case_goes_where_its_replies_go(
        harness: Any, link: str) -> None:
    """Dana answers, from her mail client, a mail of closed C-000001 older than the one that
    opened its follow-up (or C-000001 has an open parent): Pat's reply to the answer goes to
    the follow-up (the parent), and so does the answer, with that case's tag, not to the
    closed case where nobody looks."""
    start_case(harness)  # C-000001
    first = reply_to(harness, "C-000001", ("Message-ID", "<first.1@customer.example.org>"))
    start_case(harness, "Parent")  # C-000002
    harness.set_case("C-000001", state=CaseState.CLOSED,
                     **({"parent": "C-000002"} if link == "parent" else {}))
    if link == "followup":
        again = reply_to(harness, "C-000001", ("Message-ID", "<again.1@customer.example.org>"))
        assert (again.case_id, again.one("X-Case-Related")) == ("C-000003", "C-000001")
    goes = "C-000003" if link == "followup" else "C-000002"
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {first.one('Subject')}"),
                              ("In-Reply-To", "<first.1@customer.example.org>"))
    assert (answer.case_id, answer.decision.match) == (goes, "token")
    assert token_of(answer.one("Subject")) == harness.token(goes)
    pat = harness.inbound(CUSTOMER, ("Subject", f"Re: {answer.one('Subject')}"),
                          ("In-Reply-To", answer.one("Message-ID")))
    assert pat.case_id == goes
    assert harness.case("C-000001").state is CaseState.CLOSED


@pytest.mark.parametrize("answered", ["the-reply", "an-older-mail"])
def test_an_agents_answer_to_a_case_resolved_long_ago_goes_to_its_follow_up(
        harness: Any, answered: str) -> None:
    """C-000001 was resolved longer ago than `cases.reopen_within`: Pat's reply opened related
    C-000002. Dana's answer from her mail client, C-000001's tag in its Subject, to that reply
    or to an older mail of C-000001, goes to C-000002, where Pat's next reply goes too. Within
    the window the answer stays with the resolved case, which Pat's reply reopens."""
    start_case(harness)  # C-000001
    first = reply_to(harness, "C-000001", ("Message-ID", "<first.1@customer.example.org>"))
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    harness.advance(15 * DAY)
    again = reply_to(harness, "C-000001", ("Message-ID", "<again.1@customer.example.org>"))
    assert (again.case_id, again.one("X-Case-Related")) == ("C-000002", "C-000001")
    mail = f"<{'again' if answered == 'the-reply' else 'first'}.1@customer.example.org>"
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {first.one('Subject')}"),
                              ("In-Reply-To", mail))
    assert answer.case_id == "C-000002"
    assert token_of(answer.one("Subject")) == harness.token("C-000002")
    pat = harness.inbound(CUSTOMER, ("Subject", f"Re: {answer.one('Subject')}"),
                          ("In-Reply-To", answer.one("Message-ID")))
    assert pat.case_id == "C-000002"
    assert harness.case("C-000001").state is CaseState.RESOLVED
    # Resolved within the window: the answer stays, and does not reopen it.
    start_case(harness, "Other")  # C-000003
    harness.set_case("C-000003", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    recent = harness.outbound(AGENT, TO_CUSTOMER,
                              ("Subject", f"Re: x [ref:{harness.token('C-000003')}]"))
    assert recent.case_id == "C-000003"
    assert harness.case("C-000003").state is CaseState.RESOLVED


def test_an_agents_answer_to_a_closed_case_with_nowhere_else_stays_there(harness: Any) -> None:
    """A closed case without an open parent or a follow-up: the answer keeps its case (Pat's
    reply to it opens the follow-up), and opens none itself."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    answer = harness.outbound(AGENT, TO_CUSTOMER,
                              ("Subject", f"Re: x [ref:{harness.token('C-000001')}]"))
    assert (answer.case_id, harness.index.last_number()) == ("C-000001", 1)
    pat = harness.inbound(CUSTOMER, ("Subject", f"Re: {answer.one('Subject')}"),
                          ("In-Reply-To", answer.one("Message-ID")))
    assert (pat.case_id, pat.one("X-Case-Related")) == ("C-000002", "C-000001")


def test_resolved_within_reopen_within_is_reopened(harness: Any) -> None:
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    harness.advance(13 * DAY)
    r = reply_to(harness, "C-000001")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-State") == "reopened"
    case = harness.case("C-000001")
    assert case.state is CaseState.OPEN
    assert case.state_changed == int(harness.clock.now)


def test_resolved_longer_ago_opens_a_new_related_case(harness: Any) -> None:
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    harness.advance(15 * DAY)
    r = reply_to(harness, "C-000001")
    assert r.case_id == "C-000002"
    assert r.one("X-Case-State") == "new"
    assert r.one("X-Case-Related") == "C-000001"
    assert harness.case("C-000001").state is CaseState.RESOLVED


@pytest.mark.parametrize("why", ["closed", "resolved-long-ago"])
def test_later_replies_join_the_follow_up_the_first_opened(harness: Any, why: str) -> None:
    """Pat writes twice to a closed case before anyone answers ("forgot the attachment"): one
    follow-up case, not one per reply. The earlier case names its follow-up."""
    start_case(harness)  # C-000001
    if why == "closed":
        harness.set_case("C-000001", state=CaseState.CLOSED)
    else:
        harness.set_case("C-000001", state=CaseState.RESOLVED,
                         state_changed=int(harness.clock.now))
        harness.advance(15 * DAY)
    first = reply_to(harness, "C-000001", ("Message-ID", "<f1@customer.example.org>"))
    assert (first.case_id, first.one("X-Case-Related")) == ("C-000002", "C-000001")
    second = reply_to(harness, "C-000001", ("Message-ID", "<f2@customer.example.org>"))
    assert second.case_id == "C-000002"
    assert second.one("X-Case-State") == "open"
    assert second.all("X-Case-Related") == []
    assert harness.case("C-000001").followup == "C-000002"
    assert harness.index.last_number() == 2
    # The follow-up closed in turn: the next reply opens one more, related to the follow-up,
    # and from then on the conversation goes there.
    harness.set_case("C-000002", state=CaseState.CLOSED)
    third = reply_to(harness, "C-000001", ("Message-ID", "<f3@customer.example.org>"))
    assert (third.case_id, third.one("X-Case-Related")) == ("C-000003", "C-000002")
    fourth = reply_to(harness, "C-000002", ("Message-ID", "<f4@customer.example.org>"))
    assert fourth.case_id == "C-000003"
    # Automatic mail stays with the case it names and opens nothing: a follow-up may be
    # another customer's (a new question in an old thread), and a bounce reports on one
    # case's mail (review).
    ooo = reply_to(harness, "C-000001", ("Auto-Submitted", "auto-replied"))
    assert ooo.case_id == "C-000001" and harness.index.last_number() == 3


def test_a_follow_up_names_the_case_it_follows(harness: Any) -> None:
    """The earlier case links forward (`followup`); the follow-up back (`follows`, what its
    first mail's X-Case-Related said), so `case show` of it tells an agent what it continues.
    The back-link stays through its later mail and state changes, and when the earlier case
    is reopened (which drops its forward link)."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    first = reply_to(harness, "C-000001", ("Message-ID", "<f1@customer.example.org>"))
    assert (first.case_id, first.one("X-Case-Related")) == ("C-000002", "C-000001")
    assert (harness.case("C-000001").followup, harness.case("C-000002").follows) == (
        "C-000002", "C-000001")
    assert harness.case("C-000001").follows is None
    reply_to(harness, "C-000001", ("Message-ID", "<f2@customer.example.org>"))
    case_admin.set_state(harness.index, "C-000002", "waiting", int(harness.clock.now))
    reply_to(harness, "C-000002", ("Message-ID", "<f3@customer.example.org>"))
    case_admin.set_state(harness.index, "C-000001", "open", int(harness.clock.now))
    assert harness.case("C-000001").followup is None
    follow_up = harness.case("C-000002")
    assert (follow_up.state, follow_up.follows) == (CaseState.OPEN, "C-000001")
    assert case_admin.record_dict(follow_up)["follows"] == "C-000001"


def test_a_copy_of_mail_to_a_case_closed_since_stays_with_that_case(harness: Any) -> None:
    """The first copy went to C-000001; a follow-up opened later never had it (review)."""
    start_case(harness)
    m1 = ("Message-ID", "<m1@customer.example.org>")
    assert reply_to(harness, "C-000001", m1).case_id == "C-000001"
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"  # the follow-up
    copy = reply_to(harness, "C-000001", m1)
    assert (copy.one("X-Case-Match"), copy.all("X-Case-ID")) == ("duplicate", ["C-000001"])


def test_automatic_mail_to_a_closed_child_goes_to_its_open_parent(harness: Any) -> None:
    start_case(harness)  # C-000001, the parent
    start_case(harness, "Child")
    harness.set_case("C-000002", state=CaseState.CLOSED, parent="C-000001")
    harness.set_case("C-000001", state=CaseState.WAITING)
    ooo = reply_to(harness, "C-000002", ("Auto-Submitted", "auto-replied"))
    assert (ooo.case_id, ooo.one("X-Case-State")) == ("C-000001", "waiting")  # not activated


def test_a_follow_up_that_was_split_or_merged_passes_the_mail_on(harness: Any) -> None:
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"  # the follow-up
    for subject in ("Part A", "Part B"):
        start_case(harness, subject)  # C-000003, C-000004
    harness.set_case("C-000002", children=("C-000003", "C-000004"))
    assert reply_to(harness, "C-000001").all("X-Case-ID") == ["C-000003", "C-000004"]
    harness.set_case("C-000002", children=(), merged_into="C-000004")
    assert reply_to(harness, "C-000001").all("X-Case-ID") == ["C-000004"]


def test_a_dangling_follow_up_link_stops_at_the_last_good_follow_up(harness: Any) -> None:
    """C-1's follow-up C-2 names a follow-up the index does not hold (a restore, an
    import): the mail goes to C-2, as far as the chain is good, not to a new case."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"
    harness.set_case("C-000002", followup="C-000099")
    r = reply_to(harness, "C-000001")
    assert (r.all("X-Case-ID"), r.all("X-Case-Related")) == (["C-000002"], [])
    assert harness.index.last_number() == 2


def test_a_follow_up_merged_since_passes_the_mail_where_its_survivor_does(harness: Any) -> None:
    """C-1's follow-up C-2 was closed (its own follow-up C-3 opened), then merged into C-4:
    a reply to C-1 goes where a reply to C-2 goes, C-2's survivor, not to the follow-up C-2
    had before the merge."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"
    harness.set_case("C-000002", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000002").case_id == "C-000003"
    start_case(harness, "Survivor")  # C-000004
    harness.set_case("C-000002", merged_into="C-000004")
    assert reply_to(harness, "C-000002").all("X-Case-ID") == ["C-000004"]
    assert reply_to(harness, "C-000001").all("X-Case-ID") == ["C-000004"]


def test_a_split_follow_ups_children_keep_their_own_follow_ups(harness: Any) -> None:
    """C-1's follow-up C-2 was split into C-3 and C-4, all resolved long ago: the first reply
    opens one new case, the next ones go there (not one more case each)."""
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"
    for subject in ("Part A", "Part B"):
        start_case(harness, subject)  # C-000003, C-000004
    harness.set_case("C-000002", children=("C-000003", "C-000004"))
    for case_id in ("C-000002", "C-000003", "C-000004"):
        harness.set_case(case_id, state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    harness.advance(400 * DAY)
    opened = {reply_to(harness, "C-000001").case_id for _ in range(3)}
    assert opened == {"C-000005"}


@pytest.mark.parametrize("state", ["open", "waiting"])
def test_a_case_reopened_by_the_app_forgets_its_follow_up(harness: Any, state: str) -> None:
    start_case(harness)  # C-000001
    harness.set_case("C-000001", state=CaseState.CLOSED)
    assert reply_to(harness, "C-000001").case_id == "C-000002"
    harness.outbound(AGENT, ("X-Case-ID", "C-000001"), ("X-Case-State", state))
    assert harness.case("C-000001").followup is None
    harness.set_case("C-000001", state=CaseState.CLOSED)
    again = reply_to(harness, "C-000001")
    assert (again.case_id, again.one("X-Case-Related")) == ("C-000003", "C-000001")


def test_a_follow_up_keeps_its_cases_queue(make_harness: Any) -> None:
    h = routing_harness(make_harness)
    first = h.inbound(CUSTOMER, ("Subject", "About my invoice"))
    assert (first.case_id, first.one("X-Case-Queue")) == ("C-000001", "billing")
    h.set_case("C-000001", state=CaseState.CLOSED)
    # No routing rule matches this reply: the follow-up stays in the case's queue.
    again = h.inbound(CUSTOMER, ("Subject", f"Re: x [ref:{h.token('C-000001')}]"))
    assert (again.case_id, again.one("X-Case-Queue")) == ("C-000002", "billing")
    # A rule that overrides still moves it.
    urgent = h.inbound(CUSTOMER, ("Subject", f"Re: x [ref:{h.token('C-000002')}]"),
                       ("X-Priority", "1"))
    assert urgent.case_id == "C-000002"
    h.set_case("C-000002", state=CaseState.CLOSED, followup=None)
    moved = h.inbound(CUSTOMER, ("Subject", f"Re: x [ref:{h.token('C-000002')}]"),
                      ("X-Priority", "1"))
    assert (moved.case_id, moved.one("X-Case-Queue")) == ("C-000003", "urgent")


def test_a_split_case_names_each_case_once_and_opens_one_case_at_most(harness: Any) -> None:
    for subject in ("Parent", "Child A", "Child B"):
        start_case(harness, subject)
    harness.set_case("C-000001", children=("C-000002", "C-000003"))
    harness.set_case("C-000002", state=CaseState.CLOSED, parent="C-000001")
    harness.set_case("C-000003", parent="C-000001")
    # One child open: the mail goes there, and no case is opened for the closed one, nor does
    # it walk up to the case that was split (`case split --create` makes it their parent).
    r = reply_to(harness, "C-000001")
    assert r.all("X-Case-ID") == ["C-000003"]
    assert harness.index.last_number() == 3
    # Every child closed, the case that was split still open: it is nobody's open ancestor
    # (its conversation went on in its children): one new case, related to the first child.
    harness.set_case("C-000003", state=CaseState.CLOSED)
    r = reply_to(harness, "C-000001")
    assert r.all("X-Case-ID") == ["C-000004"]
    assert r.one("X-Case-Related") == "C-000002"
    assert harness.index.last_number() == 4
    # A reply to a closed child's own mail goes the same way: to its follow-up now.
    assert reply_to(harness, "C-000002").all("X-Case-ID") == ["C-000004"]


def test_mail_that_went_to_every_child_of_a_split_case_stays_with_them_all(harness: Any) -> None:
    """Its Message-ID and Outlook root are recorded for the case it named, not the first
    child: its copies, the replies to it and the next mail of its Outlook conversation are
    sent on to every child again (found in audit: they went to the first child only)."""
    out = start_case(harness)
    for subject in ("Child A", "Child B"):
        start_case(harness, subject)
    harness.set_case("C-000001", children=("C-000002", "C-000003"))
    for child in ("C-000002", "C-000003"):
        harness.set_case(child, parent="C-000001")
    children = ["C-000002", "C-000003"]
    kim = ("Message-ID", "<kim-1@customer.example.org>")
    ti = outlook_reply_index(out.one("Thread-Index"), harness.clock.now + 60)
    first = reply_to(harness, "C-000001", kim, ("Thread-Index", ti))
    assert first.all("X-Case-ID") == children
    again = reply_to(harness, "C-000001", kim, ("Thread-Index", ti))
    assert (again.one("X-Case-Match"), again.all("X-Case-ID")) == ("duplicate", children)
    assert again.all("X-Case-State") == ["open", "open"]
    # A third child, closed: the first copy would not have gone there, nor does a copy.
    start_case(harness, "Child C")
    harness.set_case("C-000004", state=CaseState.CLOSED, parent="C-000001")
    harness.set_case("C-000001", children=("C-000002", "C-000003", "C-000004"))
    third = reply_to(harness, "C-000001", kim, ("Thread-Index", ti))
    assert (third.one("X-Case-Match"), third.all("X-Case-ID")) == ("duplicate", children)
    harness.set_case("C-000001", children=("C-000002", "C-000003"))
    answer = harness.inbound(CUSTOMER, ("Subject", "Re: Printer jam"),
                             ("Message-ID", "<pat-2@customer.example.org>"),
                             ("In-Reply-To", "<kim-1@customer.example.org>"))
    assert (answer.one("X-Case-Match"), answer.all("X-Case-ID")) == ("in-reply-to", children)
    outlook = harness.inbound(CUSTOMER, ("Subject", "RE: Printer jam"),
                              ("Message-ID", "<kim-3@customer.example.org>"),
                              ("Thread-Index", outlook_reply_index(ti, harness.clock.now + 120)))
    assert (outlook.one("X-Case-Match"), outlook.all("X-Case-ID")) == ("thread-index", children)


def test_a_closed_case_walks_up_past_a_split_case_to_its_open_parent(harness: Any) -> None:
    for subject in ("Account", "Printer", "Child A", "Child B"):
        start_case(harness, subject)
    # C-000002 (under C-000001 by `case parent`) was split into C-000003 and C-000004.
    harness.set_case("C-000002", parent="C-000001", children=("C-000003", "C-000004"))
    for child in ("C-000003", "C-000004"):
        harness.set_case(child, state=CaseState.CLOSED, parent="C-000002")
    r = reply_to(harness, "C-000003")
    assert (r.all("X-Case-ID"), r.all("X-Case-State")) == (["C-000001"], ["open"])


def test_reopen_within_is_configurable(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(cases={"reopen_within": 3600}))
    start_case(h)
    h.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    h.advance(3700)
    assert reply_to(h, "C-000001").one("X-Case-Related") == "C-000001"


def test_a_case_resolved_exactly_reopen_within_ago_is_reopened(make_harness: Any,
                                                                tweak: Any) -> None:
    """README: a new related case only when it was resolved *longer* ago than the setting."""
    h = make_harness(tweak(cases={"reopen_within": 3600}))
    start_case(h)
    h.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    h.advance(3600 - 1)  # each message moves the harness's clock on by a second
    r = reply_to(h, "C-000001")
    assert (r.case_id, r.one("X-Case-State")) == ("C-000001", "reopened")


def test_waiting_case_becomes_open(harness: Any) -> None:
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.WAITING)
    r = reply_to(harness, "C-000001")
    assert r.one("X-Case-State") == "open"
    assert harness.case("C-000001").state is CaseState.OPEN


class _Cases:
    """A case lookup over a dict, for the rules alone."""

    def __init__(self, cases: Sequence[CaseRecord]) -> None:
        self.cases = {c.case_id: c for c in cases}

    def get_case(self, case_id: str) -> CaseRecord | None:
        return self.cases.get(case_id)


def _split_levels(levels: int, case: str, kid: str) -> list[CaseRecord]:
    """`levels` open cases, each split into the most closed children, every child naming the
    next level's case as its follow-up (`case` formats a level's name, `kid` a child's)."""
    cases = []
    for level in range(levels):
        kids = tuple(kid.format(level, n) for n in range(rules.MAX_SPLIT_CHILDREN))
        cases.append(CaseRecord(case.format(level), 1, CaseState.OPEN, "q", 0, 0,
                                children=kids))
        cases += [CaseRecord(k, 1, CaseState.CLOSED, "q", 0, 0, followup=case.format(level + 1))
                  for k in kids]
    return cases


def test_a_walk_past_its_bound_never_threads_into_a_closed_case() -> None:
    """A hostile or corrupt index: levels of splits whose closed children all name the next
    level's case as their follow-up. Past the walk's bound (MAX_HOPS * MAX_SPLIT_CHILDREN
    steps) a closed case still takes no mail: a new related case is opened instead."""
    cases = _split_levels(rules.MAX_HOPS + 4, "L{}", "L{}-{}")
    targets = rules.apply(cases[0], _Cases(cases), automatic=False, now=DAY,
                          reopen_within=DAY)
    assert [t.action for t in targets] == [rules.Action.NEW_RELATED]


def test_a_long_chain_of_split_follow_ups_is_bounded_not_a_recursion_error() -> None:
    """Each follow-up split into one closed child that names the next follow-up: one step
    per level, so the steps' bound (256) let the walk recurse past Python's recursion limit
    (RecursionError on every mail to the case). Follow-ups taken per walk are bounded too."""
    cases = [CaseRecord("X", 1, CaseState.CLOSED, "q", 0, 0, followup="Y0")]
    for level in range(rules.MAX_HOPS * rules.MAX_SPLIT_CHILDREN + 40):
        cases += [CaseRecord(f"Y{level}", 1, CaseState.OPEN, "q", 0, 0, children=(f"Z{level}",)),
                  CaseRecord(f"Z{level}", 1, CaseState.CLOSED, "q", 0, 0,
                             followup=f"Y{level + 1}")]
    targets = rules.apply(cases[0], _Cases(cases), automatic=False, now=DAY,
                          reopen_within=DAY)
    assert [t.action for t in targets] == [rules.Action.NEW_RELATED]


def test_every_child_of_a_split_follow_up_hands_mail_to_its_own_follow_up() -> None:
    """The follow-ups' bound is a chain's depth, not their count: a closed case whose
    follow-up was split into the most children, each closed with an open follow-up of its
    own (17 follow-ups in all, two deep), sends the mail to each of those."""
    n = rules.MAX_SPLIT_CHILDREN
    cases = [CaseRecord("X", 1, CaseState.CLOSED, "q", 0, 0, followup="Y"),
             CaseRecord("Y", 1, CaseState.OPEN, "q", 0, 0,
                        children=tuple(f"Z{i}" for i in range(n)))]
    for i in range(n):
        cases += [CaseRecord(f"Z{i}", 1, CaseState.CLOSED, "q", 0, 0, followup=f"F{i}"),
                  CaseRecord(f"F{i}", 1, CaseState.OPEN, "q", 0, 0)]
    targets = rules.apply(cases[0], _Cases(cases), automatic=False, now=DAY,
                          reopen_within=DAY)
    assert [(t.case.case_id, t.action) for t in targets] == [
        (f"F{i}", rules.Action.THREAD) for i in range(n)]


class _CountingCases(_Cases):
    """A case lookup that counts its reads."""

    reads = 0

    def get_case(self, case_id: str) -> CaseRecord | None:
        self.reads += 1
        return super().get_case(case_id)


@pytest.mark.parametrize("links", [rules.MAX_HOPS + 1, rules.MAX_HOPS ** 2 + 1])
def test_a_plain_follow_up_chain_longer_than_the_bound_reaches_its_newest_case(
        links: int) -> None:
    """A case closed and followed up again and again: each follow-up closed in turn, one
    chain. The follow-ups' depth bound counts hand-overs from one chain's end to the next,
    each reading up to MAX_HOPS links: a chain of MAX_HOPS ** 2 + 1 cases still threads the
    mail into its newest, open case (README Upgrading)."""
    cases = [CaseRecord(f"C{n}", n, CaseState.CLOSED, "q", 0, 0, followup=f"C{n + 1}")
             for n in range(1, links)]
    cases.append(CaseRecord(f"C{links}", links, CaseState.OPEN, "q", 0, 0))
    targets = rules.apply(cases[0], _Cases(cases), automatic=False, now=DAY,
                          reopen_within=DAY)
    assert [(t.case.case_id, t.action) for t in targets] == [
        (f"C{links}", rules.Action.THREAD)]


def test_a_wide_index_is_walked_a_bounded_number_of_steps() -> None:
    """A hostile or corrupt index: each follow-up split into the most children, each closed
    with a follow-up of its own, three levels (4,096 open cases at the bottom). The chain is
    short (the follow-ups' depth bound never acts): the steps' bound (MAX_HOPS *
    MAX_SPLIT_CHILDREN) alone keeps one mail from reading every record and going to every
    case. (test_a_walk_past_its_bound_never_threads_into_a_closed_case passes without the
    steps' bound since the depth bound came: its chain is 20 follow-ups deep.)"""
    width, bound = rules.MAX_SPLIT_CHILDREN, rules.MAX_HOPS * rules.MAX_SPLIT_CHILDREN
    cases = [CaseRecord("X", 1, CaseState.CLOSED, "q", 0, 0, followup="F")]
    frontier = ["F"]
    for _ in range(3):
        below = []
        for name in frontier:
            kids = tuple(f"{name}.{n}" for n in range(width))
            cases.append(CaseRecord(name, 1, CaseState.OPEN, "q", 0, 0, children=kids))
            cases += [CaseRecord(kid, 1, CaseState.CLOSED, "q", 0, 0, followup=f"{kid}F")
                      for kid in kids]
            below += [f"{kid}F" for kid in kids]
        frontier = below
    cases += [CaseRecord(name, 1, CaseState.OPEN, "q", 0, 0) for name in frontier]
    reader = _CountingCases(cases)
    targets = rules.apply(cases[0], reader, automatic=False, now=DAY, reopen_within=DAY)
    assert 0 < len(targets) <= bound
    assert reader.reads <= 2 * bound


def test_a_follow_up_reached_twice_in_one_walk_is_walked_once() -> None:
    """Split children that share a follow-up, twelve levels deep (each level's children all
    name the next level's case): each shared follow-up is walked once, not once per child
    (16 ** 12 ways down), so the walk's steps last to the split's other child, whose own
    follow-up takes the mail. Walking each again used the steps up: that child was past the
    bound, a new related case was opened, and the follow-up got nothing."""
    levels = 12
    cases = [CaseRecord("X", 1, CaseState.CLOSED, "q", 0, 0, followup="Y"),
             CaseRecord("Y", 1, CaseState.OPEN, "q", 0, 0, children=("D", "Z")),
             CaseRecord("D", 1, CaseState.CLOSED, "q", 0, 0, followup="F0"),
             CaseRecord("Z", 1, CaseState.CLOSED, "q", 0, 0, followup="G"),
             CaseRecord("G", 1, CaseState.OPEN, "q", 0, 0),
             CaseRecord(f"F{levels}", 1, CaseState.CLOSED, "q", 0, 0),
             *_split_levels(levels, "F{}", "K{}.{}")]
    targets = rules.apply(cases[0], _Cases(cases), automatic=False, now=DAY,
                          reopen_within=DAY)
    assert [(t.case.case_id, t.action) for t in targets] == [("G", rules.Action.THREAD)]


@pytest.mark.parametrize("action", list(rules.Action))
def test_a_transition_changes_only_the_state_and_its_times(action: rules.Action) -> None:
    case = CaseRecord("C-7", 7, CaseState.WAITING, "billing", 10, 20, 15, "C-1", "C-2", ("C-3",))
    expected = {
        rules.Action.THREAD: dataclasses.replace(case, updated=99),
        rules.Action.ACTIVATE: dataclasses.replace(case, state=CaseState.OPEN, state_changed=99,
                                                   updated=99),
        rules.Action.NEW_RELATED: None,
    }
    expected[rules.Action.REOPEN] = expected[rules.Action.ACTIVATE]
    assert rules.transition(rules.Target(case, action), 99) == expected[action]


def test_auto_reply_to_a_resolved_case_threads_without_reopening(harness: Any) -> None:
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    r = reply_to(harness, "C-000001", ("Auto-Submitted", "auto-replied"))
    assert r.ours() == [
        ("X-Case-ID", "C-000001"),
        ("X-Case-Match", "token"),
        ("X-Case-State", "resolved"),
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "auto-replied"),
        ("X-Case-Sender", "known"),
    ]
    assert harness.case("C-000001").state is CaseState.RESOLVED
    # Nor does an out-of-office to a closed case open a related one.
    harness.set_case("C-000001", state=CaseState.CLOSED)
    r = reply_to(harness, "C-000001", ("X-Autoreply", "yes"))
    assert r.decision.case_ids == ("C-000001",)
    assert r.all("X-Case-Related") == []
    assert harness.index.last_number() == 1


def test_mail_relayed_by_our_own_group_opens_and_reopens_cases(harness: Any) -> None:
    """support@ is a Google Group in front of the MTA: its list fields are no bulk signal."""
    group = (("From", "'Pat Customer' via Support <support@example.com>"),
             ("Reply-To", f"Pat Customer <{CUSTOMER_ADDR}>"), ("List-Id", "<support.example.com>"),
             ("Precedence", "list"), ("List-Post", "<mailto:support@example.com>"))
    first = harness.inbound(*group, ("Subject", "My printer jams"))
    assert (first.decision.match, first.one("X-Case-Auto")) == ("new", "no")
    harness.set_case(first.case_id, state=CaseState.RESOLVED)
    again = harness.inbound(*group, ("Subject", f"Re: x [ref:{harness.token(first.case_id)}]"))
    assert (again.case_id, again.one("X-Case-State")) == (first.case_id, "reopened")
    # Another list's mail stays bulk.
    news = harness.inbound(("From", "Shop <news@shop.example>"), ("List-Id", "<news.shop.example>"),
                           ("Subject", "Sale!"))
    assert (news.decision.match, news.one("X-Case-Auto")) == ("none", "bulk")


# support@ is a Google Workspace group: a customer whose domain publishes DMARC reject or
# quarantine reaches us under the group's From, as Google Groups writes it (X-Original-From
# and Reply-To after the poster's fields, the list fields naming our own address).
VIA_GROUP = (("From", "\"'Pat Customer' via Support\" <support@example.com>"),
             ("To", "Support <support@example.com>"),
             ("X-Original-Sender", CUSTOMER_ADDR),
             ("X-Original-From", f"Pat Customer <{CUSTOMER_ADDR}>"),
             ("Reply-To", f"Pat Customer <{CUSTOMER_ADDR}>"), ("Precedence", "list"),
             ("Mailing-list", "list support@example.com; contact support+owners@example.com"),
             ("List-ID", "Support <support.example.com>"),
             ("List-Post", "<https://groups.google.com/a/example.com/group/support/post>, "
                           "<mailto:support@example.com>"))
# Mailman 3's DMARC mitigation (`munge_from`): Pat appended to the Reply-To, no X-Original-From.
VIA_MAILMAN = (("From", "Pat Customer via Support <support@example.com>"),
               ("To", "support@example.com"), ("Reply-To", f"Pat Customer <{CUSTOMER_ADDR}>"),
               ("List-Id", "<support.example.com>"), ("List-Post", "<mailto:support@example.com>"),
               ("Precedence", "list"))


def _without(fields: tuple[tuple[str, str], ...], *names: str) -> tuple[tuple[str, str], ...]:
    return tuple(f for f in fields if f[0] not in names)


@pytest.fixture
def list_harness(make_harness: Any, tweak: Any) -> Any:
    """The sysadmin said support@ is such a list (`inbound.list_authors: true`)."""
    return make_harness(tweak(inbound={"list_authors": True}))


@pytest.mark.parametrize("relay", [VIA_GROUP, VIA_MAILMAN], ids=["google", "mailman"])
def test_our_own_groups_copy_is_the_lists_unless_asked(harness: Any,
                                                       relay: tuple[tuple[str, str], ...]) -> None:
    """By default our own list's copy is the list's, as any list's is: the customer it names
    may be anyone who can send mail From our support address (our domain's DMARC decides),
    so their later copies are `unknown` and `[Case C-...]` does not thread them."""
    first = harness.inbound(*relay, ("Subject", "Printer jams"),
                            ("Message-ID", "<q1@customer.example.org>"))
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer jams"),
                              ("In-Reply-To", "<q1@customer.example.org>"))
    by_token = harness.inbound(*relay, ("Subject", f"Re: {answer.one('Subject')}"))
    by_ref = harness.inbound(*relay, ("Subject", f"More on [Case {first.case_id}]"))
    assert (by_token.case_id, by_token.one("X-Case-Sender")) == (first.case_id, "unknown")
    assert by_ref.one("X-Case-Match") == "new"


@pytest.mark.parametrize("list_authors", [False, True])
def test_our_groups_copies_naming_only_the_group_count_apart_for_each_customer(
        make_harness: Any, tweak: Any, list_authors: bool) -> None:
    """Review 19d: a copy whose Reply-To names only the group was counted against the group's
    From alone: without `inbound.list_authors` every customer through our own group shared
    one count, and the hour's 21st opened no case. The customer its X-Original-From names
    splits the count, as a Reply-To does, whatever the setting (a count, not trust)."""
    h = make_harness(tweak(inbound={"list_authors": list_authors}))
    relay = _without(VIA_GROUP, "From", "X-Original-Sender", "X-Original-From", "Reply-To")
    results = [h.inbound(("From", f"\"'C{i}' via Support\" <support@example.com>"), *relay,
                         ("X-Original-From", f"C{i} <c{i}@customer{i}.example.org>"),
                         ("Reply-To", "Support <support@example.com>"),
                         ("Subject", f"Question {i}"), ("Message-ID", f"<q{i}@example.org>"))
               for i in range(21)]
    assert all(r.one("X-Case-Match") == "new" for r in results[:20])
    last = results[20]
    assert (last.one("X-Case-Match"), last.all("X-Case-Loop")) == ("new", [])
    # The same customer's 21st copy of the hour is still a loop.
    same = [h.inbound(("From", "\"'C0' via Support\" <support@example.com>"), *relay,
                      ("X-Original-From", "C0 <c0@customer0.example.org>"),
                      ("Subject", f"Again {i}"), ("Message-ID", f"<a{i}@example.org>"))
            for i in range(20)]
    assert same[-1].all("X-Case-Loop") == ["yes"]
    assert same[-2].all("X-Case-Loop") == []


@pytest.mark.parametrize("relay", [VIA_GROUP, VIA_MAILMAN,
                                   _without(VIA_GROUP, "Reply-To"),
                                   _without(VIA_GROUP, "X-Original-From")],
                         ids=["google", "mailman", "x-original-from-only", "reply-to-only"])
def test_our_own_groups_copy_is_its_members_mail(list_harness: Any,
                                                 relay: tuple[tuple[str, str], ...]) -> None:
    """Our own group's copy of a customer's mail is the customer's: they become the new
    case's participant (also when Google names them only in X-Original-From), and their later
    mail through the group is `known` (by our token, by In-Reply-To alone, which then adds its
    Cc, and by `[Case C-...]`), as their mail sent straight to us is."""
    first = list_harness.inbound(*relay, ("Subject", "Printer jams"),
                            ("Message-ID", "<q1@customer.example.org>"))
    case_id = first.case_id
    assert first.one("X-Case-Match") == "new"
    answer = list_harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer jams"),
                              ("In-Reply-To", "<q1@customer.example.org>"))
    by_token = list_harness.inbound(*relay, ("Subject", f"Re: {answer.one('Subject')}"))
    by_id = list_harness.inbound(*relay, ("Subject", "Re: Printer jams"),
                            ("In-Reply-To", answer.one("Message-ID")),
                            ("Cc", "Kim Colleague <kim@customer.example.org>"))
    by_ref = list_harness.inbound(*relay, ("Subject", f"More on [Case {case_id}]"))
    assert [(r.case_id, r.one("X-Case-Match"), r.one("X-Case-Sender"))
            for r in (by_token, by_id, by_ref)] == [
        (case_id, "token", "known"), (case_id, "in-reply-to", "known"),
        (case_id, "subject-ref", "known")]
    direct = list_harness.inbound(("From", "kim@customer.example.org"), TO_SUPPORT,
                             ("Subject", f"Also [Case {case_id}]"))
    assert (direct.case_id, direct.one("X-Case-Sender")) == (case_id, "known")


def test_our_own_groups_copy_names_the_author_the_list_wrote(list_harness: Any) -> None:
    """The member is who the list wrote from the original From, never a Reply-To the poster
    chose: Eve posts to the group with Pat in her own Reply-To. Google's X-Original-From (its
    last field) names Eve; Mailman appends Eve after Pat in the Reply-To. Either way Eve is
    no participant of Pat's case, and one that names one of ours names nobody."""
    start_case(list_harness)  # Dana -> Pat: C-000001
    eve = "Eve Elsewhere <eve@elsewhere.example>"
    google = list_harness.inbound(("From", "\"'Eve Elsewhere' via Support\" <support@example.com>"),
                             ("X-Original-From", f"Pat <{CUSTOMER_ADDR}>"),
                             ("Reply-To", f"Pat <{CUSTOMER_ADDR}>"),
                             ("X-Original-From", eve),
                             *_without(VIA_GROUP, "From", "Reply-To", "X-Original-From"),
                             ("Subject", "About [Case C-000001]"))
    mailman = list_harness.inbound(*_without(VIA_MAILMAN, "Reply-To"),
                              ("Reply-To", f"Pat <{CUSTOMER_ADDR}>, {eve}"),
                              ("Subject", "About [Case C-000001]"))
    ours = list_harness.inbound(*_without(VIA_GROUP, "X-Original-From"),
                           ("X-Original-From", "Support <support@example.com>"),
                           ("Subject", "About [Case C-000001]"))
    assert [r.one("X-Case-Match") for r in (google, mailman, ours)] == ["new"] * 3
    assert [r.case_id for r in (google, mailman, ours)] == ["C-000002", "C-000003", "C-000004"]


def test_our_own_groups_copies_count_against_their_member(make_harness: Any,
                                                          tweak: Any) -> None:
    """The member stands in for the From in the flood count too: Pat's mail through the group
    and Pat's own share one count, another customer's through the group has its own."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600),
                                    "list_authors": True}))
    loops = [h.inbound(*VIA_GROUP, ("Subject", "one")).all("X-Case-Loop"),
             h.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "two")).all("X-Case-Loop"),
             h.inbound(*VIA_MAILMAN, ("Subject", "three")).all("X-Case-Loop")]
    assert loops == [[], [], ["yes"]]
    other = h.inbound(*_without(VIA_GROUP, "X-Original-From", "Reply-To"),
                      ("X-Original-From", "Kim <kim@corp.example>"), ("Subject", "four"))
    assert (other.one("X-Case-Match"), other.all("X-Case-Loop")) == ("new", [])


def test_our_groups_copies_of_a_notifiers_mail_loop_whatever_its_reply_address(
        make_harness: Any, tweak: Any) -> None:
    """Review 19e: a notification system writing a reply address per message in its own
    domain (`reply+KEY@`) counts against its From when it writes to us, so its loop is one;
    relayed by our own group (its From the group's) each copy was counted apart for its
    Reply-To without `inbound.list_authors`, and 25 an hour were never a loop. A Reply-To in
    the member's (X-Original-From's) domain is the member's."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=3, window=3600)}))
    relay = _without(VIA_GROUP, "From", "X-Original-Sender", "X-Original-From", "Reply-To")
    loops = [h.inbound(("From", "\"'Notify' via Support\" <support@example.com>"), *relay,
                       ("X-Original-From", "Notify <notify@vendor.example>"),
                       ("Reply-To", f"reply+k{i}@mail.vendor.example"),
                       ("Auto-Submitted", "auto-generated"), ("Subject", f"Build {i} failed"),
                       ("Message-ID", f"<n{i}@vendor.example>")).all("X-Case-Loop")
             for i in range(5)]
    assert loops == [[], [], [], ["yes"], ["yes"]]


def test_subject_match_reads_our_own_groups_member(make_harness: Any) -> None:
    h = subject_match_harness(make_harness, list_authors=True)
    first = h.inbound(*VIA_GROUP, ("Subject", "Printer jams"))
    again = h.inbound(*VIA_GROUP, ("Subject", "Re: Printer jams"))
    direct = h.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "RE: Printer jams"))
    assert [(r.case_id, r.one("X-Case-Match")) for r in (first, again, direct)] == [
        ("C-000001", "new"), ("C-000001", "subject-match"), ("C-000001", "subject-match")]


# support@ is an Exchange Online shared mailbox whose inbox rule redirects its mail to the
# milter's host (cases@help.example.com): the customer's mail as they wrote it (From,
# Message-ID, Subject), with the mailbox named in X-MS-Exchange-Inbox-Rules-Loop and the
# envelope sender rewritten by SRS. The customer's tenant stamps X-Auto-Response-Suppress on
# its people's ordinary mail (Cisco's Exchange Online does so in public list archives).
VIA_OUR_RULE = (("X-MS-Exchange-Inbox-Rules-Loop", "support@example.com"),
                ("X-Auto-Response-Suppress", "DR, OOF, AutoReply"))
REDIRECTED = {"rcpts": ("cases@help.example.com",),
              "mail_from": "<support+SRS=44ldt=IX=customer.example.org=pat@example.com>"}


def test_mail_our_own_exchange_mailbox_redirected_is_the_customers(harness: Any) -> None:
    """The customer's new question opens a case (it was `auto-replied` and opened none: our
    own rule's field with the suppress field of their tenant read as an Exchange
    out-of-office), their reply by our token reopens the resolved case, one by In-Reply-To
    alone adds its Cc, and a forward of our answer they sent without a word (a person's,
    which only an Exchange rule of theirs makes automatic) reopens it too."""
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Printer jams"),
                            ("Message-ID", "<q1@customer.example.org>"), *VIA_OUR_RULE,
                            **REDIRECTED)
    assert (first.one("X-Case-Match"), first.one("X-Case-Auto")) == ("new", "no")
    case_id = first.case_id
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer jams"),
                              ("In-Reply-To", "<q1@customer.example.org>"))
    harness.set_case(case_id, state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    by_token = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", f"Re: {answer.one('Subject')}"),
                               *VIA_OUR_RULE, **REDIRECTED)
    assert [by_token.case_id, by_token.one("X-Case-State"), by_token.one("X-Case-Auto"),
            by_token.one("X-Case-Sender")] == [case_id, "reopened", "no", "known"]
    by_id = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer jams"),
                            ("In-Reply-To", answer.one("Message-ID")),
                            ("Cc", "Kim Colleague <kim@customer.example.org>"),
                            *VIA_OUR_RULE, **REDIRECTED)
    assert (by_id.case_id, by_id.one("X-Case-Sender")) == (case_id, "known")
    direct = harness.inbound(("From", "kim@customer.example.org"), TO_SUPPORT,
                             ("Subject", f"Also [Case {case_id}]"))
    assert (direct.case_id, direct.one("X-Case-Sender")) == (case_id, "known")
    harness.set_case(case_id, state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    quoted = (f"---------- Forwarded message ---------\r\nFrom: Support <support@example.com>"
              f"\r\nDate: Mon, 30 Nov 2026 09:15\r\nSubject: {answer.one('Subject')}\r\n"
              "To: Pat Customer <pat@customer.example.org>\r\n\r\nHello\r\n").encode()
    forward = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", f"Fwd: {answer.one('Subject')}"),
                              *VIA_OUR_RULE, body=quoted, **REDIRECTED)
    assert (forward.case_id, forward.one("X-Case-State"), forward.one("X-Case-Auto")) == (
        case_id, "reopened", "no")


def test_a_customers_exchange_out_of_office_our_mailbox_redirected_stays_automatic(
        harness: Any) -> None:
    """An out-of-office reply of the customer's Exchange names the customer's mailbox in its
    own X-MS-Exchange-Inbox-Rules-Loop; our rule's field beside it takes nothing away."""
    first = start_case(harness)
    harness.set_case(first.case_id, state=CaseState.RESOLVED,
                     state_changed=int(harness.clock.now))
    ooo = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", f"Away: {first.one('Subject')}"),
                          ("X-MS-Exchange-Inbox-Rules-Loop", CUSTOMER_ADDR), *VIA_OUR_RULE,
                          **REDIRECTED)
    assert (ooo.case_id, ooo.one("X-Case-State"), ooo.one("X-Case-Auto")) == (
        first.case_id, "resolved", "auto-replied")


EVE_VIA = (("From", "Eve Elsewhere via Support <support@example.com>"),
           *_without(VIA_MAILMAN, "From", "Reply-To"), ("X-Mailman-Version", "3.3.9"))


@pytest.mark.parametrize("fields", [
    # Mailman appends Eve's From to her Reply-To only when it is not there: hers comes as is.
    (("Reply-To", f"{EVE_ADDR}, Pat <{CUSTOMER_ADDR}>"),),
    (("Reply-To", f"grp: {EVE_ADDR};, Pat <{CUSTOMER_ADDR}>"),),
    (("Reply-To", EVE_ADDR), ("Reply-To", f"Pat <{CUSTOMER_ADDR}>")),
    # Mailman writes no X-Original-From and keeps the poster's.
    (("X-Original-From", f"Pat <{CUSTOMER_ADDR}>"), ("Reply-To", EVE_ADDR)),
], ids=["reply-to-poster-first", "reply-to-group", "two-reply-to-fields", "poster-x-original-from"])
def test_our_own_mailman_lists_copy_names_no_author_its_poster_chose(
        list_harness: Any, fields: tuple[tuple[str, str], ...]) -> None:
    """Eve posts to our own Mailman list (support@, DMARC mitigation) naming Pat where
    Mailman keeps what the poster wrote: Pat last in her own Reply-To (Mailman then appends
    nothing, as Eve is in it), or an X-Original-From of her own. The copy is nobody's: it
    does not thread into Pat's case by `[Case C-...]`."""
    start_case(list_harness)  # Dana -> Pat: C-000001
    r = list_harness.inbound(*EVE_VIA, *fields, ("Subject", "About [Case C-000001]"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "new")


@pytest.mark.parametrize("how", ["token", "in-reply-to"])
def test_mail_from_our_own_address_changes_no_case(harness: Any, how: str) -> None:
    """Mail whose From is one of our support addresses and that names nobody else (an agent's
    answer sent as support@ from elsewhere, Cc support@; a script writing as support@) is our
    own mail come back: it threads, but reopens nothing, opens no follow-up, routes nothing;
    its recipients join as an agent's answer's do. Noted `from-our-address`."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    ours = (("From", "Support <support@example.com>"),
            ("To", "Kim <kim@customer.example.org>"), ("Cc", "support@example.com"))
    r = harness.inbound(*ours, *answer_of(harness, out, how))
    assert (r.case_id, r.one("X-Case-State"), r.one("X-Case-Auto"), r.one("X-Case-Sender")) == (
        "C-000001", "resolved", "no", "unknown")
    assert "from-our-address" in r.decision.notes
    assert harness.case("C-000001").state is CaseState.RESOLVED
    harness.set_case("C-000001", state=CaseState.CLOSED)
    closed = harness.inbound(*ours, *answer_of(harness, out, how))
    assert (closed.case_id, closed.all("X-Case-Related")) == ("C-000001", [])
    # Its new mail (a monitoring alert) still opens a case.
    alert = harness.inbound(("From", "support@example.com"), TO_SUPPORT,
                            ("Subject", "Disk full on db1"))
    assert (alert.case_id, alert.one("X-Case-Match")) == ("C-000002", "new")
    assert "from-our-address" not in alert.decision.notes


@pytest.mark.parametrize("how", ["token", "in-reply-to"])
def test_our_own_groups_copy_of_our_own_mail_changes_no_case(harness: Any, how: str) -> None:
    """An answer sent as support@ from elsewhere with support@ in Cc, where support@ is a
    Google Group: the group's copy names support@ in X-Original-From. It is our own mail come
    back, as the same mail's direct copy is: the resolved case stays resolved."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    copy = (*_without(VIA_GROUP, "X-Original-From", "Reply-To", "X-Original-Sender"),
            ("X-Original-From", "Support <support@example.com>"),
            ("Cc", "Kim <kim@customer.example.org>"))
    r = harness.inbound(*copy, *answer_of(harness, out, how))
    assert (r.case_id, r.one("X-Case-State")) == ("C-000001", "resolved")
    assert "from-our-address" in r.decision.notes


@pytest.mark.parametrize("sender", [
    (("From", "Website <support@example.com>"), ("Reply-To", "visitor1@customer.example.org")),
    (*_without(VIA_GROUP, "X-Original-From", "Reply-To"), ("Reply-To", "support@example.com")),
    (*_without(VIA_GROUP, "X-Original-From", "Reply-To"),
     ("X-Original-From", "Website <support@example.com>"),
     ("Reply-To", "visitor1@customer.example.org")),
], ids=["web-form", "group-replying-to-itself", "web-form-through-our-group"])
def test_mail_from_our_address_naming_a_person_still_reopens(
        harness: Any, sender: tuple[tuple[str, str], ...]) -> None:
    """Not our own mail: a web form's, whose visitor is in Reply-To, and our group's copy whose
    author it does not name (Mailman set to reply to the list puts them in Cc) are a
    person's, and reopen a resolved case as before. So is our group's copy of the web form's
    mail (review 19e: its X-Original-From is ours, the visitor in the Reply-To the group
    keeps; it was `from-our-address` and left the case resolved, its direct copy did not)."""
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    r = harness.inbound(*sender, ("Subject", f"Re: x [ref:{harness.token('C-000001')}]"))
    assert (r.case_id, r.one("X-Case-State")) == ("C-000001", "reopened")
    assert "from-our-address" not in r.decision.notes


# A person's reply that reaches us as bulk mail: Mailman's copy (Pat's From, the list's
# fields), and a ticket system that marks all its mail bulk (RT's DefaultMailPrecedence).
MAILMAN = (CUSTOMER, ("Precedence", "list"),
           ("List-Id", "Customer team <team.lists.example.org>"),
           ("List-Post", "<mailto:team@lists.example.org>"),
           ("Sender", "team-bounces+support=example.com@lists.example.org"))
RT = (("From", '"Kim via RT" <it@customer.example.org>'), ("Precedence", "bulk"),
      ("RT-Ticket", "customer.example.org #4567"))


def answer_of(h: Any, out: Any, how: str) -> tuple[tuple[str, str], ...]:
    """The header fields by which a reply names our mail `out`, one strategy's evidence."""
    anchor = f"<{h.token(out.case_id)}.case@example.com>"
    return {
        "token": (("Subject", f"Re: {out.one('Subject')}"),),
        "anchor": (("Subject", "Re: Printer jam"), ("References", anchor)),
        "in-reply-to": (("In-Reply-To", out.one("Message-ID")),),
        "references": (("References", f"<x@customer.example.org> {out.one('Message-ID')}"),),
        "thread-index": (("Thread-Index",
                          outlook_reply_index(out.one("Thread-Index"), h.clock.now + 60)),),
    }[how]


@pytest.mark.parametrize("relay", [MAILMAN, RT], ids=["mailman", "rt"])
@pytest.mark.parametrize("how", ["token", "anchor", "in-reply-to", "references", "thread-index"])
def test_bulk_mail_that_answers_our_mail_moves_the_case(
    harness: Any, relay: tuple[tuple[str, str], ...], how: str
) -> None:
    """RFC 3834 says not to auto-respond to list or bulk mail, nothing more: a person's reply
    that a list relayed, or a ticket system sent, takes a waiting case back to open."""
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.WAITING)
    r = harness.inbound(*relay, *answer_of(harness, out, how))
    match = "token" if how == "anchor" else how
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", match, "open", "bulk")
    assert harness.case("C-000001").state is CaseState.OPEN


@pytest.mark.parametrize("relay", [MAILMAN, RT], ids=["mailman", "rt"])
def test_bulk_mail_that_answers_our_mail_reopens_and_follows_up(
    harness: Any, relay: tuple[tuple[str, str], ...]
) -> None:
    out = start_case(harness)
    reply = answer_of(harness, out, "token")
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    r = harness.inbound(*relay, *reply)
    assert (r.case_id, r.one("X-Case-State")) == ("C-000001", "reopened")
    harness.set_case("C-000001", state=CaseState.CLOSED)
    r = harness.inbound(*relay, *reply)
    assert (r.case_id, r.one("X-Case-State"), r.one("X-Case-Related")) == (
        "C-000002", "new", "C-000001")
    assert harness.case("C-000001").followup == "C-000002"


def test_bulk_mail_matched_otherwise_stays_automatic(make_harness: Any, tweak: Any) -> None:
    """A case number is guessable (a newsletter may name one): bulk mail matched by it does
    not reopen. Nor do a looping sender's list mail, nor an out-of-office a list relayed."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    out = start_case(h)
    h.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    by_number = h.inbound(*MAILMAN, ("Subject", "Re: [Case C-000001]"))
    assert by_number.one("X-Case-Match") == "subject-ref"
    relayed_ooo = h.inbound(*MAILMAN, ("Auto-Submitted", "auto-replied"),
                            *answer_of(h, out, "token"))
    assert relayed_ooo.one("X-Case-Auto") == "auto-replied"
    # A ticket system's "request received", bulk and machine-made, naming our mail.
    notice = h.inbound(("From", "desk@vendor.example"), ("Precedence", "bulk"),
                       ("Auto-Submitted", "auto-generated"), *answer_of(h, out, "in-reply-to"))
    assert notice.one("X-Case-Auto") == "auto-generated"
    looping = h.inbound(*MAILMAN, *answer_of(h, out, "in-reply-to"))
    assert looping.one("X-Case-Loop") == "yes"
    for r in (by_number, relayed_ooo, notice, looping):
        assert (r.case_id, r.one("X-Case-State")) == ("C-000001", "resolved")
    assert h.case("C-000001").state is CaseState.RESOLVED
    # Bulk mail that answers nothing opens no case.
    news = h.inbound(STRANGER, ("Precedence", "bulk"), ("Subject", "Re: Printer jam"))
    assert (news.decision.match, news.one("X-Case-Auto")) == ("none", "bulk")


# vacation(1) (and its clones) answers with the person's From, `Precedence: junk` and
# nothing else, and quotes the Subject it answers, our tag included.
VACATION = (CUSTOMER, ("Precedence", "junk"))


def test_a_vacation_reply_marked_only_junk_never_moves_its_case(harness: Any) -> None:
    """`Precedence: junk` is an autoresponder's mark, not a list's: no person's reply."""
    out = start_case(harness)
    away = ("Subject", f"away from my mail (was: Re: {out.one('Subject')})")
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    r = harness.inbound(*VACATION, away)
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "token", "resolved", "auto-replied")
    harness.set_case("C-000001", state=CaseState.CLOSED)
    r = harness.inbound(*VACATION, away)
    assert (r.case_id, r.one("X-Case-State"), r.all("X-Case-Related")) == (
        "C-000001", "closed", [])
    assert harness.case("C-000001").followup is None
    assert harness.index.last_number() == 1


# What RT sends for a ticket our mail opened at a vendor's RT: its AutoReply action adds
# `Auto-Submitted: auto-replied` to what all RT mail carries; RT 3 and templates that drop
# it still name the transaction's creator, our address, in `X-RT-Originator`.
RT_VENDOR = (("From", '"Vendor RT" <rt@vendor.example.com>'), ("Precedence", "bulk"),
             ("X-RT-Loop-Prevention", "vendor.example.com"),
             ("X-RT-Ticket", "vendor.example.com #4711"),
             ("X-Managed-BY", "RT 5.0.5 (http://www.bestpractical.com/rt/)"))


@pytest.mark.parametrize(("marks", "kind"), [
    ((("Auto-Submitted", "auto-replied"),
      ("X-RT-Originator", "support@example.com")), "auto-replied"),
    ((("X-RT-Originator", "support@example.com"),), "auto-generated"),
    ((("RT-Originator", "support@example.com"),), "auto-generated"),
], ids=["rt-autoreply", "rt-autoreply-without-auto-submitted", "rt3-autoreply"])
def test_an_rt_autoreply_to_our_mail_never_moves_its_case(
    harness: Any, marks: tuple[tuple[str, str], ...], kind: str
) -> None:
    out = start_case(harness)
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    r = harness.inbound(*RT_VENDOR, *marks, ("In-Reply-To", out.one("Message-ID")),
                        ("Subject", f"[vendor.example.com #4711] AutoReply: {out.one('Subject')}"))
    assert (r.case_id, r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "resolved", kind)
    # The vendor's agent answering in RT names the agent as the transaction's creator.
    r = harness.inbound(*RT_VENDOR, ("X-RT-Originator", "kim@vendor.example.com"),
                        ("In-Reply-To", out.one("Message-ID")),
                        ("Subject", f"Re: [vendor.example.com #4711] {out.one('Subject')}"))
    assert (r.case_id, r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "reopened", "bulk")


@pytest.mark.parametrize("first", ["direct", "list"])
def test_a_reply_cc_a_list_reopens_whichever_copy_comes_first(harness: Any, first: str) -> None:
    """Pat writes To support, Cc a list we are on: one copy direct, one through the list."""
    out = start_case(harness)
    reply = (("Message-ID", "<a1b2c3@customer.example.org>"), *answer_of(harness, out, "token"))
    copies = {"direct": (CUSTOMER, *reply), "list": (*MAILMAN, *reply)}
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    second = "list" if first == "direct" else "direct"
    r1 = harness.inbound(*copies[first])
    r2 = harness.inbound(*copies[second])
    assert (r1.one("X-Case-Match"), r1.one("X-Case-State")) == ("token", "reopened")
    assert (r2.one("X-Case-Match"), r2.one("X-Case-State")) == ("duplicate", "open")
    assert harness.case("C-000001").state is CaseState.OPEN


@pytest.mark.parametrize(
    ("headers", "envelope", "kind"),
    [
        ((("Auto-Submitted", "auto-replied"),), {}, "auto-replied"),
        ((("Auto-Submitted", "auto-generated"),), {}, "auto-generated"),
        ((("Precedence", "bulk"),), {}, "bulk"),
        ((("List-Id", "<users.lists.example.org>"),), {}, "bulk"),
        ((), {"mail_from": "<>"}, "auto-generated"),
    ],
)
def test_auto_mail_without_a_match_opens_no_case(
    harness: Any, headers: tuple[tuple[str, str], ...], envelope: dict[str, str], kind: str
) -> None:
    r = harness.inbound(CUSTOMER, ("Subject", "Out of office"), *headers, **envelope)
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", kind)]
    assert r.decision.case_ids == ()
    assert r.decision.match == "none"
    assert harness.index.last_number() == 0


# --------------------------------------------------------------------------- flood guard


def test_flood_21st_message_within_the_hour_is_a_loop(harness: Any) -> None:
    for n in range(1, 21):
        r = harness.inbound(CUSTOMER, ("Subject", f"mail {n}"))
        assert r.case_id == f"C-{n:06d}"
        assert r.all("X-Case-Loop") == []
    loop = harness.inbound(CUSTOMER, ("Subject", "mail 21"))
    assert loop.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "no"), ("X-Case-Loop", "yes")]
    assert harness.index.last_number() == 20
    # A looping sender's mail still threads to its case, but does not reopen it.
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    threaded = reply_to(harness, "C-000001")
    assert threaded.case_id == "C-000001"
    assert threaded.one("X-Case-State") == "resolved"
    assert threaded.one("X-Case-Loop") == "yes"
    # Another sender is not affected.
    assert harness.inbound(STRANGER).case_id == "C-000021"
    # The counter expires with its window.
    harness.advance(3600)
    fresh = harness.inbound(CUSTOMER, ("Subject", "next hour"))
    assert fresh.case_id == "C-000022"
    assert fresh.all("X-Case-Loop") == []


@pytest.mark.parametrize("form_from", [WEB_FORM, ("From", "Website <support@example.com>")])
def test_flood_counts_a_web_forms_mail_against_its_visitor(
        make_harness: Any, tweak: Any, form_from: tuple[str, str]) -> None:
    """A web form's From (its own address, or our support address) is every visitor's: each
    visitor, named in Reply-To, has a count of their own and becomes the case's participant,
    whose own mail naming the case then threads as `known`."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    opened = [h.inbound(form_from, TO_SUPPORT, visitor(n), ("Subject", "Contact form"))
              for n in range(1, 5)]
    assert [(r.case_id, r.all("X-Case-Loop")) for r in opened] == [
        (f"C-{n:06d}", []) for n in range(1, 5)]
    own = h.inbound(("From", "visitor3@customer.example.org"), TO_SUPPORT,
                    ("Subject", "Re: my question [Case C-000003]"))
    assert (own.case_id, own.one("X-Case-Match"), own.one("X-Case-Sender")) == (
        "C-000003", "subject-ref", "known")
    # One visitor's third mail within the hour is over this limit of two.
    looped = [h.inbound(form_from, TO_SUPPORT, visitor(1), ("Subject", "Contact form"))
              for _ in range(2)]
    assert [r.all("X-Case-Loop") for r in looped] == [[], ["yes"]]


def test_a_reply_to_never_charges_that_addresss_own_count(make_harness: Any, tweak: Any) -> None:
    """Anyone may name a customer in the Reply-To of mail from their own domain (DMARC checks
    From only): a stranger's flood with Pat in Reply-To is a loop of its own, and Pat's own
    mail of that hour still opens a case; so does the stranger's without a Reply-To."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    forged = [h.inbound(STRANGER, TO_SUPPORT, ("Reply-To", f"Pat <{CUSTOMER_ADDR}>"),
                        ("Subject", f"Spam {n}")).all("X-Case-Loop") for n in range(3)]
    assert forged == [[], [], ["yes"]]
    own = h.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "My printer"))
    assert (own.one("X-Case-Match"), own.all("X-Case-Loop")) == ("new", [])
    plain = h.inbound(STRANGER, TO_SUPPORT, ("Subject", "Plain"))
    assert (plain.one("X-Case-Match"), plain.all("X-Case-Loop")) == ("new", [])


@pytest.mark.parametrize("garbled", ["garbage <<<>>> @@", "<<visitor@", '"Pat'])
def test_a_garbled_reply_to_leaves_the_other_participants(make_harness: Any,
                                                          garbled: str) -> None:
    """A web form fills Reply-To from what the visitor typed: a garbled one reads as no
    address, and the From, To and Cc still become participants."""
    h = make_harness()
    h.inbound(CUSTOMER, TO_SUPPORT, ("Cc", "Sam <sam@customer.example.org>"),
              ("Reply-To", garbled), ("Subject", "Printer"))
    for who in (CUSTOMER, ("From", "sam@customer.example.org")):
        r = h.inbound(who, TO_SUPPORT, ("Subject", "Re: Printer [Case C-000001]"))
        assert (r.case_id, r.one("X-Case-Sender")) == ("C-000001", "known"), who


def test_automatic_mail_counts_against_its_from_whatever_its_reply_to(
        make_harness: Any, tweak: Any) -> None:
    """A notification system writes a reply address of its own per message or thread into
    Reply-To (GitLab's gitlab+KEY@, Discourse's replies+KEY@): its automatic mail counts
    against its From, or a loop with it would never be one."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    # A reply domain of its own, not the From's: the mark alone keeps the count together.
    loops = [h.inbound(("From", "Pat (@pat) <gitlab@git.example.net>"), TO_SUPPORT,
                       ("Reply-To", f"Project <gitlab+{n:032x}@replies.example.org>"),
                       ("Auto-Submitted", "auto-generated"),
                       ("Subject", f"Issue {n}")).all("X-Case-Loop") for n in range(3)]
    assert loops == [[], [], ["yes"]]


@pytest.mark.parametrize(("from_domain", "reply_domain"), [
    ("crm.example", "crm.example"), ("crm.example", "mail.crm.example"),
    ("mail.crm.example", "crm.example")])
def test_unmarked_mail_with_a_reply_address_of_its_own_domain_counts_against_its_from(
        make_harness: Any, tweak: Any, from_domain: str, reply_domain: str) -> None:
    """Another helpdesk's acknowledgements without any automatic mark, each with a reply
    address of its own in its own domain (or one below or above it): the same sender, so a
    loop with it is one."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    loops = [h.inbound(("From", f"Help <help@{from_domain}>"), TO_SUPPORT,
                       ("Reply-To", f"reply+{n:04d}@{reply_domain}"),
                       ("Subject", f"We got your mail [#{n}]")).all("X-Case-Loop")
             for n in range(3)]
    assert loops == [[], [], ["yes"]]


def test_flood_limit_is_configurable(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=60)}))
    assert [h.inbound(CUSTOMER).all("X-Case-Loop") for _ in range(3)] == [[], [], ["yes"]]
    h.advance(60)
    assert h.inbound(CUSTOMER).all("X-Case-Loop") == []


GMAIL_NDR = ("From", "Mail Delivery Subsystem <mailer-daemon@googlemail.com>")


def gmail_bounce(h: Any, out: Any) -> Any:
    """Gmail's DSN of our mail `out`, from its shared bounce address."""
    return h.inbound(GMAIL_NDR, ("Subject", "Delivery Status Notification (Failure)"),
                     *DSN_HEADERS[4:], body=dsn(returned_message(out.one("Message-ID"))),
                     mail_from="<>")


def test_a_shared_bounce_address_counts_per_case(make_harness: Any, tweak: Any) -> None:
    """mailer-daemon@googlemail.com bounces mail of many cases an hour: each is one report on
    one case, no loop. The same case's mail bounced again and again is one."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=3, window=3600)}))
    sent = [start_case(h, f"Order {n}") for n in range(5)]
    for out in sent:
        r = gmail_bounce(h, out)
        assert (r.one("X-Case-Match"), r.all("X-Case-Loop")) == ("bounce", [])
    looping = [gmail_bounce(h, sent[0]).all("X-Case-Loop") for _ in range(3)]
    assert looping == [[], [], ["yes"]]  # the 4th bounce of C-000001 within the hour
    assert gmail_bounce(h, sent[1]).all("X-Case-Loop") == []
    # Its other mail (a bounce of mail we never sent, a notice) counts against the address.
    strays = [h.inbound(GMAIL_NDR, ("Subject", f"Notice {n}"), mail_from="<>").all(
        "X-Case-Loop") for n in range(4)]
    assert strays == [[], [], [], ["yes"]]


LITERAL = ("From", "a@[192.0.2.1]")  # a domain literal (RFC 5322 §3.4.1): an address


@pytest.mark.parametrize("sender", [
    ("From", "Pat Customer"),  # no address: counted by the envelope sender
    ("From", "undisclosed-recipients:;"),
    ("From", '"Doe, J" <a@[192.0.2.1]>'),  # a shape the stdlib's strict parser refuses
    None,  # no From at all
    LITERAL,  # by From, whatever the envelope says, as ordinary mail
    CUSTOMER,
])
def test_flood_counts_automatic_mail_without_a_usable_from_by_its_envelope_sender(
        make_harness: Any, tweak: Any, sender: tuple[str, str] | None) -> None:
    """A From the parser reads no address from must not exempt an autoresponder from the
    limit (the audit's F4): three such mails with limit 1, the second and third are a loop."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=1, window=3600)}))
    fields = (sender,) if sender else ()
    by_from = sender in (LITERAL, CUSTOMER)
    loops = [h.inbound(*fields, ("Subject", f"hello {n}"), ("Auto-Submitted", "auto-replied"),
                       mail_from=f"<Flood{n if by_from else ''}@Example.NET>")
             .all("X-Case-Loop") for n in range(3)]
    assert loops == [[], ["yes"], ["yes"]]


def test_a_web_forms_questions_each_open_a_case(make_harness: Any, tweak: Any) -> None:
    """A contact form sends each visitor's question from one envelope sender with the
    visitor's name as From, no address: a person's mail, not counted against the form."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=1, window=3600)}))
    for n in range(3):
        r = h.inbound(("From", f"Visitor {n} via contact form"),
                      ("Subject", f"Contact form: question {n}"),
                      mail_from="<www-data@web.example.com>")
        assert (r.one("X-Case-Match"), r.all("X-Case-Loop")) == ("new", [])


OWN_GROUP = (("List-Id", "<support.example.com>"), ("Precedence", "list"),
             ("List-Post", "<mailto:support@example.com>"))


def test_a_list_under_its_own_from_counts_each_member(make_harness: Any, tweak: Any) -> None:
    """support@ is a Google Group: it re-sends every customer whose domain asks for DMARC
    under its own From ("'Pat' via Support <support@example.com>", Reply-To: Pat). Counted
    against the group, the hour's customers past the limit opened no case; each member is
    counted, and one member's own flood still is a loop."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    for n in range(4):
        r = h.inbound(("From", f"'Customer {n}' via Support <support@example.com>"),
                      ("Reply-To", f"Customer {n} <c{n}@corp{n}.example>"), *OWN_GROUP,
                      ("Subject", f"Question {n}"))
        assert (r.one("X-Case-Match"), r.all("X-Case-Loop")) == ("new", []), n
    loops = [h.inbound(("From", "'Pat' via Support <support@example.com>"),
                       ("Reply-To", f"Pat <{CUSTOMER_ADDR}>"), *OWN_GROUP,
                       ("Subject", f"Again {n}")).all("X-Case-Loop") for n in range(3)]
    assert loops == [[], [], ["yes"]]
    # Without a Reply-To the list's From counts, as before.
    bare = [h.inbound(("From", "'X' via Support <support@example.com>"), *OWN_GROUP,
                      ("Subject", f"Bare {n}")).all("X-Case-Loop") for n in range(3)]
    assert bare == [[], [], ["yes"]]


def test_a_lists_bulk_copies_count_against_each_member(make_harness: Any, tweak: Any) -> None:
    """Another list (Precedence: list, so `bulk`) re-sends its members' replies to our mail
    under its own From, each member in Reply-To: counted against the list's From, the
    hour's third member over a limit of 2 was a loop and reopened nothing."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    out = start_case(h)
    h.set_case(out.case_id, state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    for n in range(4):
        r = h.inbound(("From", f"'Member {n}' via Users <users@lists.example>"),
                      ("Reply-To", f"Member {n} <m{n}@corp{n}.example>"),
                      ("List-Id", "<users.lists.example>"), ("Precedence", "list"),
                      ("Subject", f"Re: {out.one('Subject')}"))
        assert (r.one("X-Case-Auto"), r.all("X-Case-Loop")) == ("bulk", []), n
        assert r.one("X-Case-State") == ("reopened" if n == 0 else "open"), n


def test_flood_does_not_count_the_null_sender(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=1, window=3600)}))
    loops = [h.inbound(("Subject", f"hello {n}"), mail_from="<>").all("X-Case-Loop")
             for n in range(3)]
    assert loops == [[], [], []]


# --------------------------------------------------------------------------- routing


ROUTING = RoutingSettings(
    default_queue="support",
    rules=(
        RoutingRule(queue="billing", subject=r"\binvoice\b"),
        RoutingRule(queue="vip", sender=("@bigcorp.example",)),
        RoutingRule(queue="never", sender=("@bigcorp.example",), subject="invoice"),
        RoutingRule(queue="sales", rcpt=("sales@example.com",)),
        RoutingRule(queue="urgent", header="X-Priority", header_regex=r"^\s*1\b", override=True),
    ),
)
BIGCORP = ("From", "Boss <boss@bigcorp.example>")


def routing_harness(make_harness: Any) -> Any:
    base = make_harness()
    return make_harness(dataclasses.replace(base.settings, routing=ROUTING))


def test_routing_first_match_wins_and_new_cases_take_the_queue(make_harness: Any) -> None:
    h = routing_harness(make_harness)
    cases = [
        (h.inbound(BIGCORP, ("Subject", "Your invoice 42")), "billing"),  # rule 1 before 2, 3
        (h.inbound(BIGCORP, ("Subject", "Hello")), "vip"),
        (h.inbound(CUSTOMER, ("Subject", "Hi"), rcpts=("sales@example.com",)), "sales"),
        (h.inbound(CUSTOMER, ("Subject", "Hi"), ("X-Priority", "1 (Highest)")), "urgent"),
        (h.inbound(CUSTOMER, ("Subject", "Hi")), "support"),
    ]
    for r, queue in cases:
        assert r.one("X-Case-Queue") == queue
        assert h.case(r.case_id).queue == queue


def test_existing_case_keeps_its_queue_unless_the_rule_overrides(make_harness: Any) -> None:
    h = routing_harness(make_harness)
    q1 = ("Message-ID", "<q1@customer.example.org>")
    first = h.inbound(CUSTOMER, ("Subject", "Your invoice"), q1)
    assert first.one("X-Case-Queue") == "billing"
    # Routed elsewhere (sales), but an existing case keeps its queue.
    r = h.inbound(CUSTOMER, ("In-Reply-To", q1[1]), rcpts=("sales@example.com",))
    assert (r.case_id, r.one("X-Case-Queue")) == ("C-000001", "billing")
    assert h.case("C-000001").queue == "billing"
    # An override rule moves it.
    r = h.inbound(CUSTOMER, ("In-Reply-To", q1[1]), ("X-Priority", "1"))
    assert (r.case_id, r.one("X-Case-Queue")) == ("C-000001", "urgent")
    assert h.case("C-000001").queue == "urgent"


def test_a_case_opened_by_outbound_mail_is_routed_by_its_first_inbound_mail(
    make_harness: Any,
) -> None:
    h = routing_harness(make_harness)
    out = start_case(h, "Your invoice")
    assert h.case("C-000001").queue == ""
    r = h.inbound(BIGCORP, ("In-Reply-To", out.one("Message-ID")))
    assert r.one("X-Case-Queue") == "vip"
    assert h.case("C-000001").queue == "vip"


def test_automatic_mail_does_not_route_a_case_opened_by_outbound_mail(make_harness: Any) -> None:
    """The bounce or out-of-office that follows our mail within seconds must not decide the
    queue: the customer's own first reply does."""
    h = routing_harness(make_harness)
    out = start_case(h, "Your invoice")
    ooo = h.inbound(BIGCORP, ("Subject", "Automatic reply: Away until Monday"),
                    ("Auto-Submitted", "auto-replied"), ("In-Reply-To", out.one("Message-ID")))
    assert (ooo.case_id, ooo.one("X-Case-Auto")) == ("C-000001", "auto-replied")
    assert ooo.one("X-Case-Queue") == "vip"  # what this mail routes to, shown, not kept
    assert h.case("C-000001").queue == ""
    r = h.inbound(BIGCORP, ("Subject", "Re: Your invoice"), ("In-Reply-To", out.one("Message-ID")))
    assert r.one("X-Case-Queue") == h.case("C-000001").queue == "billing"


def test_a_list_copy_of_the_first_reply_routes_a_case_opened_by_outbound_mail(
    make_harness: Any,
) -> None:
    h = routing_harness(make_harness)
    out = start_case(h, "Your invoice")
    r = h.inbound(BIGCORP, ("Precedence", "list"), ("List-Id", "<team.lists.example.org>"),
                  ("In-Reply-To", out.one("Message-ID")))
    assert (r.one("X-Case-Auto"), r.one("X-Case-Queue")) == ("bulk", "vip")
    assert h.case("C-000001").queue == "vip"


# --------------------------------------------------------------------------- outbound


def test_app_case_state_is_consumed_and_applied(harness: Any) -> None:
    first = start_case(harness)
    r = harness.outbound(
        AGENT,
        TO_CUSTOMER,
        ("Subject", f"Re: {first.one('Subject')}"),
        ("In-Reply-To", "<q1@customer.example.org>"),
        ("X-Case-State", "Resolved"),
    )
    assert r.case_id == "C-000001"
    assert r.decision.state == "resolved"
    assert r.all("X-Case-State") == []  # consumed, not sent on
    assert r.ours() == [("X-Case-ID", "C-000001")]
    case = harness.case("C-000001")
    assert case.state is CaseState.RESOLVED
    assert case.state_changed == int(harness.clock.now)
    # Pat answers the resolution: reopened.
    assert reply_to(harness, "C-000001").one("X-Case-State") == "reopened"


def test_app_case_state_with_an_unknown_value_is_removed_and_ignored(harness: Any) -> None:
    start_case(harness)
    r = harness.outbound(AGENT, ("X-Case-ID", "C-000001"), ("X-Case-State", "deleted"))
    assert r.ours() == [("X-Case-ID", "C-000001")]
    assert harness.case("C-000001").state is CaseState.OPEN
    # A typo in the app shows in the log line.
    assert "bad-app-case-state" in r.decision.notes
    fine = harness.outbound(AGENT, ("X-Case-ID", "C-000001"), ("X-Case-State", "Resolved"))
    assert "bad-app-case-state" not in fine.decision.notes


def test_repeated_app_fields_that_disagree_are_noted_and_the_first_wins(harness: Any) -> None:
    start_case(harness)
    start_case(harness, "Invoice")
    r = harness.outbound(AGENT, ("X-Case-ID", "C-000001"), ("X-Case-State", "waiting"),
                         ("X-Case-ID", "C-000002"), ("X-Case-State", "closed"))
    assert r.ours() == [("X-Case-ID", "C-000001")]
    assert harness.case("C-000001").state is CaseState.WAITING
    assert harness.case("C-000002").state is CaseState.OPEN
    assert {"app-case-id-repeated", "app-case-state-repeated"} <= set(r.decision.notes)
    # The same value twice (a client that copies the app's fields) is no disagreement.
    same = harness.outbound(AGENT, ("X-Case-ID", "C-000001"), ("x-case-id", "C-000001 "),
                            ("X-Case-State", "Open"), ("X-Case-State", "open"))
    assert not [n for n in same.decision.notes if n.endswith("-repeated")]


def test_mail_signed_before_us_keeps_its_dkim_signature_valid(harness: Any) -> None:
    """An app that DKIM-signs its own mail: the body and every field its h= names stay as
    they are (a broken signature fails DMARC at the recipient); the rest is stamped, and the
    mail is recorded, so replies still thread by In-Reply-To and Thread-Index."""
    signature = ("v=1; a=rsa-sha256; d=support.example.com; s=app; c=relaxed/relaxed;\r\n"
                 "\th=From:To:Subject:Date:Message-ID:References:In-Reply-To; bh=abc=; b=def=")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your printer"),
                         ("DKIM-Signature", signature), body=b"Hello Pat,\r\n")
    assert r.decision.match == "new"
    assert r.decision.body_splices == ()
    assert {e.name.lower() for e in r.decision.edits} == {"x-case-id", "thread-index",
                                                         "thread-topic"}
    assert "dkim-signed" in ",".join(r.decision.notes)
    assert "body-not-stamped:dkim-signed" in r.decision.notes
    assert "subject-not-changed:dkim-signed" in r.decision.notes
    assert "message-id-added" not in r.decision.notes
    # The Message-ID it could not add is not recorded either: no reply can name it.
    message_kind = keys.alias_key(AliasKind.MESSAGE, "x")[:1]
    assert [k for k in harness.index._aliases if k[:1] == message_kind] == []
    # Threads by the Outlook root it did get.
    reply = harness.inbound(CUSTOMER, ("Subject", "RE: Your printer"),
                            ("Thread-Index", outlook_reply_index(r.one("Thread-Index"),
                                                                 harness.clock.now)))
    assert (reply.case_id, reply.one("X-Case-Match")) == ("C-000001", "thread-index")
    # Unsigned fields of a signed mail are stamped: here the Subject.
    partial = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Another"),
                               ("DKIM-Signature", "v=1; h=from:to; bh=x; b=y"))
    assert "[ref:" in partial.one("Subject")


def test_mail_signed_before_us_is_stamped_whole_when_told(make_harness: Any,
                                                           tweak: Any) -> None:
    """A relay that signs again after casethread (stamp.dkim_signed: stamp)."""
    h = make_harness(tweak(stamp={"dkim_signed": "stamp"}))
    r = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your printer"),
                   ("DKIM-Signature", "v=1; h=from:to:subject:message-id; bh=x; b=y"),
                   body=b"Hello Pat,\r\n")
    assert "[ref:" in r.one("Subject") and r.decision.body_splices
    assert not any("dkim" in note for note in r.decision.notes)


def test_token_is_never_added_twice(harness: Any) -> None:
    first = start_case(harness)
    subject = f"Re: {first.one('Subject')}"
    r = harness.outbound(AGENT, ("Subject", subject))
    assert r.case_id == "C-000001"
    assert r.decision.match == "token"
    assert r.one("Subject") == subject
    assert not any(getattr(e, "name", "") == "Subject" for e in r.decision.edits)
    # Also when the customer's client lower-cased and rewrapped it: left exactly as it was.
    tok = token_of(subject)
    wrapped = f"AW: Printer jam [ref:{tok[:5].lower()}\n {tok[5:]}]"
    r = harness.outbound(AGENT, ("Subject", wrapped))
    assert (r.case_id, r.decision.match) == ("C-000001", "token")
    assert r.one("Subject") == wrapped


def test_token_inside_an_encoded_subject_is_not_added_again(harness: Any) -> None:
    """The agent's client re-encoded the whole subject of its reply: the tag is there."""
    first = start_case(harness, "Drucker klemmt")
    subject = b_word(f"AW: {first.one('Subject')}")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", subject))
    assert (r.case_id, r.decision.match) == ("C-000001", "token")
    assert r.one("Subject") == subject


def test_another_cases_token_inside_an_encoded_subject_gets_ours_in_clear(harness: Any) -> None:
    """Left as it is (never re-encoded); ours, appended in clear, is where replies look first."""
    old = start_case(harness, "Drucker klemmt")  # C-000001
    subject = b_word(f"AW: {old.one('Subject')}")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"), ("Subject", subject))
    assert r.case_id == "TICKET-9"
    stamped = unfold(r.one("Subject"))  # folded: the line would be long
    assert stamped.startswith(subject + " [ref:")
    reply = harness.inbound(CUSTOMER, ("Subject", b_word(f"Re: {old.one('Subject')}")
                                       + stamped[len(subject):]))
    assert reply.case_id == "TICKET-9"


def test_subject_tag_follows_the_template(make_harness: Any, tweak: Any) -> None:
    h = make_harness(tweak(tokens={"subject_template": " (Ticket {token})"}))
    r = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Hello"))
    tok = h.token("C-000001")
    assert r.one("Subject") == f"Hello (Ticket {tok})"
    reply = h.inbound(CUSTOMER, ("Subject", f"Re: Hello (ticket {tok.lower()})"))
    assert (reply.case_id, reply.one("X-Case-Match")) == ("C-000001", "token")


def test_subject_is_never_re_encoded(harness: Any) -> None:
    encoded = "=?utf-8?q?Dr=C3=BCcker_kaputt?="
    r = harness.outbound(AGENT, ("Subject", encoded))
    assert r.one("Subject") == f"{encoded} [ref:{harness.token('C-000001')}]"
    assert r.one("Thread-Topic") == "=?utf-8?q?Dr=C3=BCcker_kaputt?="


@pytest.mark.parametrize("length", [200, 400])
def test_a_long_subject_is_folded_never_over_the_line_limit(harness: Any, length: int) -> None:
    """A 200-character Japanese subject, as Thunderbird encodes and folds it: the stamped
    Subject and the Thread-Topic keep to 78-character lines and unfold to the same text."""
    text = ("紙詰まりが発生しました、" * 40)[:length]
    words = [b_word(text[i:i + 12]) for i in range(0, length, 12)]
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "\n ".join(words)))
    for name in ("Subject", "Thread-Topic"):
        value = r.one(name)
        lines = f"{name}: {value}".split("\n")
        assert len(lines) > 1 and max(map(len, lines)) <= 78, lines
        assert all(line.startswith(" ") for line in lines[1:])
    assert decode_subject(r.one("Subject")) == f"{text} [ref:{harness.token('C-000001')}]"
    assert decode_subject(r.one("Thread-Topic")) == text[:thread_index.TOPIC_MAX]
    reply = harness.inbound(CUSTOMER, ("Subject", "Re: " + r.one("Subject")))
    assert (reply.case_id, reply.one("X-Case-Match")) == ("C-000001", "token")


@given(st.text(alphabet=st.sampled_from("ab =?日\t"), max_size=400),
       st.sampled_from(["Subject", "Thread-Topic"]))
def test_folding_unfolds_to_the_same_value(value: str, name: str) -> None:
    folded = outbound.fold(name, value)
    assert unfold(folded) == value
    lines = f"{name}: {folded}".split("\n")
    assert all(line.strip() for line in lines[1:]), lines  # no blank continuation line
    # Over the width only where one word (and the blanks before it) is that long.
    assert all(len(line) <= 78 or len(line.split()) <= 1 + (i == 0) for i, line in
               enumerate(lines)), lines


def test_a_subject_folded_with_tabs_is_refolded_under_998() -> None:
    words = [b_word(f"紙詰まり{i}") for i in range(14)]
    folded = outbound.fold("Subject", "\t".join(words) + " [ref:X]")
    assert max(len(line) for line in f"Subject: {folded}".split("\n")) <= 78


def test_references_with_50_ids_is_trimmed_first_and_newest_with_the_anchor_first(
    harness: Any,
) -> None:
    harness.inbound(CUSTOMER, ("Message-ID", "<m49@customer.example.org>"))  # C-000001
    ids = [f"<m{i}@customer.example.org>" for i in range(50)]
    r = harness.outbound(AGENT, ("In-Reply-To", ids[-1]), ("References", " ".join(ids)))
    assert r.case_id == "C-000001"
    anchor = f"<{harness.token('C-000001')}.case@support.example.com>"
    refs = r.one("References").split()
    assert refs[0] == anchor
    assert refs[1] == ids[0], "the thread's first ID is kept (RFC 5537 §3.4.4)"
    assert refs[2:] == ids[-(len(refs) - 2) :]
    assert len(refs) <= outbound.REFERENCES_KEEP
    assert len(refs) >= 10


def test_anchor_is_not_added_twice(harness: Any) -> None:
    first = start_case(harness)
    refs = f"{first.one('References')} {first.one('Message-ID')}"
    r = harness.outbound(AGENT, ("References", refs))
    assert r.one("References") == refs


def test_thread_index_of_a_follow_up_is_the_root_plus_one_child(harness: Any) -> None:
    first = start_case(harness)
    root = thread_index.decode(first.one("Thread-Index"))
    assert root is not None and len(root) == thread_index.HEADER_LEN
    harness.advance(3600)
    r = harness.outbound(AGENT, ("Subject", f"RE: {first.one('Subject')}"))
    assert r.case_id == "C-000001"
    raw = thread_index.decode(r.one("Thread-Index"))
    assert raw is not None
    assert len(raw) == thread_index.HEADER_LEN + thread_index.CHILD_LEN
    assert raw[: thread_index.HEADER_LEN] == root
    parsed = conversation_index.parse(raw)
    (child,) = parsed.children
    assert child.delta_code == 0
    assert abs(parsed.child_times[0] - harness.clock.now) < 2  # the header time's resolution


def test_thread_topic_is_the_same_for_every_mail_of_the_case(harness: Any) -> None:
    """Outlook groups by topic too: the follow-up (whose Subject already carries the tag) must
    not get a different Thread-Topic than the first mail."""
    first = start_case(harness)
    assert first.one("Thread-Topic") == "Printer jam"
    r = harness.outbound(AGENT, ("Subject", f"RE: {first.one('Subject')}"))
    assert r.case_id == "C-000001"
    assert r.one("Thread-Topic") == "Printer jam"


def test_thread_index_of_the_first_answer_to_an_inbound_case(harness: Any) -> None:
    harness.inbound(CUSTOMER, ("Message-ID", "<q@customer.example.org>"), ("Subject", "Help"))
    r = harness.outbound(
        AGENT, ("In-Reply-To", "<q@customer.example.org>"), ("Subject", "Re: Help")
    )
    raw = thread_index.decode(r.one("Thread-Index"))
    root = outbound.case_thread_root(harness.case("C-000001"))
    assert raw is not None and raw[:22] == root and len(raw) == 27
    assert r.one("Thread-Topic") == "Help"
    # A reply carrying that root threads.
    reply = harness.inbound(CUSTOMER, ("Thread-Index", thread_index.encode(raw + b"\0\0\0\1\2")))
    assert reply.one("X-Case-Match") == "thread-index"


def test_thread_roots_of_equal_case_ids_differ_between_installations(make_harness: Any) -> None:
    """Exchange takes the conversation id from the root's GUID ([MS-OXOMSG] 2.2.1.2): two
    installations (or one whose index was rebuilt) must not give their C-000001 one GUID."""
    one = start_case(make_harness())
    other_site = make_harness()
    other_site.keyring = other_site.engine.keyring = Keyring([(3, b"\x17" * 32)])
    other_site.advance(DAY)
    two = start_case(other_site)
    assert two.case_id == one.case_id == "C-000001"
    guid = conversation_index.parse(thread_index.decode(one.one("Thread-Index")) or b"").guid
    guid2 = conversation_index.parse(thread_index.decode(two.one("Thread-Index")) or b"").guid
    assert guid != guid2


def test_thread_topic_has_no_tag_also_when_it_was_inside_an_encoded_word(harness: Any) -> None:
    old = start_case(harness, "Grüße")  # C-000001; the app then moves on to TICKET-9
    subject = b_word(f"AW: {old.one('Subject')}")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"), ("Subject", subject))
    assert decode_subject(r.one("Thread-Topic")) == "Grüße"


def test_an_agents_out_of_office_opens_no_case(harness: Any) -> None:
    headers = (AGENT, ("To", "News <news@shop.example>"), ("Subject", "Out of office: Sale!"),
               ("Auto-Submitted", "auto-replied"))
    r = harness.outbound(*headers)
    assert (r.decision.case_ids, r.decision.match) == ((), "none")
    assert r.one("Subject") == "Out of office: Sale!"
    # The log line says why nothing was stamped (it said `case=- match=none`, nothing more).
    assert "auto-replied" in r.decision.notes
    # Answering a case's mail, it continues that case (and is stamped).
    out = start_case(harness)
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Out of office: Printer jam"),
                         ("Auto-Submitted", "auto-replied"), ("In-Reply-To", out.one("Message-ID")))
    assert (r.case_id, r.decision.match) == ("C-000001", "in-reply-to")
    assert token_of(r.one("Subject")) == harness.token("C-000001")


def report(kind: str, answered: str) -> tuple[tuple[str, str], bytes]:
    """An agent's read receipt (MDN) or delivery report for the mail `answered`."""
    part = ("Original-Message-ID" if kind == "disposition-notification" else
            "Original-Envelope-Id")
    body = (f"--R\r\nContent-Type: text/plain\r\n\r\nDisplayed.\r\n--R\r\n"
            f"Content-Type: message/{kind}\r\n\r\n{part}: {answered}\r\n--R--\r\n")
    ctype = f'multipart/report; report-type={kind}; boundary="R"'
    return ("Content-Type", ctype), body.encode()


@pytest.mark.parametrize("kind", ["disposition-notification", "delivery-status"])
def test_an_agents_receipt_or_report_opens_no_case(harness: Any, kind: str) -> None:
    """A read receipt for a colleague's lunch invitation is no case; one for a case's mail
    continues that case like any answer."""
    ctype, body = report(kind, "<lunch-77@other.example.com>")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Read: Lunch next week?"), ctype,
                         ("References", "<lunch-77@other.example.com>"), body=body)
    assert (r.decision.case_ids, r.decision.match) == ((), "none")
    assert r.one("Subject") == "Read: Lunch next week?"
    assert "report" in r.decision.notes
    out = start_case(harness)
    ctype, body = report(kind, out.one("Message-ID"))
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Read: Printer jam"), ctype,
                         ("References", out.one("Message-ID")), body=body)
    assert (r.case_id, r.decision.match) == ("C-000001", "references")


@pytest.mark.parametrize("field", [("List-Id", "<news.lists.example.com>"),
                                   ("List-Unsubscribe", "<mailto:news-leave@example.com>"),
                                   ("Precedence", "list")])
def test_our_announcement_list_mail_opens_no_case(harness: Any, field: tuple[str, str]) -> None:
    """An announcement or newsletter sent through the outbound path: one case for it would
    take every customer's reply, each company's beside the others', and make every recipient
    a participant. It passes unstamped (`notes=list-mail`); each reply opens its own case."""
    ann = harness.outbound(("From", "News <news@example.com>"),
                           ("To", "Customers <news@lists.example.com>"), field,
                           ("Subject", "Maintenance on Sunday"),
                           ("Message-ID", "<ann@example.com>"),
                           rcpts=(CUSTOMER_ADDR, "joe@vendor.example"))
    assert (ann.decision.case_ids, ann.decision.match) == ((), "none")
    assert "list-mail" in ann.decision.notes
    assert ann.one("Subject") == "Maintenance on Sunday"
    replies = [harness.inbound(sender, TO_SUPPORT, ("Subject", "Re: Maintenance on Sunday"),
                               ("In-Reply-To", "<ann@example.com>"))
               for sender in (CUSTOMER, ("From", "joe@vendor.example"))]
    assert [(r.case_id, r.one("X-Case-Match")) for r in replies] == [
        ("C-000001", "new"), ("C-000002", "new")]
    # An answer on a list's mail that names a case continues it; our own group is no list.
    out = start_case(harness)
    r = harness.outbound(AGENT, TO_CUSTOMER, field, ("Subject", f"Re: {out.one('Subject')}"))
    assert (r.case_id, r.decision.match) == (out.case_id, "token")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("List-Post", "<mailto:support@example.com>"),
                         ("Subject", "Hello"))
    assert r.decision.match == "new"


def test_list_unsubscribe_alone_on_mail_to_one_customer_still_opens_its_case(
        harness: Any) -> None:
    """Apps put List-Unsubscribe on their transactional mail too: an answer to one customer
    (a web form's ticket) with nothing else of a list opens its case, and the customer's
    reply continues it. The same field on one message to several outside recipients is a
    mailing (test_our_announcement_list_mail_opens_no_case)."""
    unsubscribe = ("List-Unsubscribe", "<https://app.example.com/unsubscribe/4711>")
    r = harness.outbound(AGENT, TO_CUSTOMER, unsubscribe, ("Subject", "Your request"),
                         rcpts=(CUSTOMER_ADDR, "support@example.com"))
    assert (r.decision.match, "list-mail" in r.decision.notes) == ("new", False)
    reply = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", f"Re: {r.one('Subject')}"))
    assert (reply.case_id, reply.one("X-Case-Match")) == (r.case_id, "token")
    r = harness.outbound(AGENT, TO_CUSTOMER, unsubscribe, ("Subject", "Maintenance"),
                         rcpts=(CUSTOMER_ADDR, "joe@vendor.example"))
    assert (r.decision.match, "list-mail" in r.decision.notes) == ("none", True)


@pytest.mark.parametrize("field", [
    ("List-Id", "support.example.com"),
    ("List-Id", '"Support <help>" <support.example.com>'),
    ("List-Post", "<\r\n mailto:support@example.com>"),
])
def test_our_own_group_is_told_however_its_list_fields_are_written(
        harness: Any, field: tuple[str, str]) -> None:
    """support@ is a group whose list fields name it: an agent's mail that carries them is no
    list mail (it opens a case), and so the list fields of our own front door say nothing,
    also when List-Id has no angle brackets, a phrase with brackets in quotes, or List-Post
    folds inside them (RFC 2369: whitespace there is ignored)."""
    r = harness.outbound(AGENT, TO_CUSTOMER, field, ("Subject", "Hello"))
    assert (r.decision.match, "list-mail" in r.decision.notes) == ("new", False)
    r = harness.inbound(CUSTOMER, TO_SUPPORT, field, ("Subject", "A question"))
    assert (r.one("X-Case-Match"), r.one("X-Case-Auto")) == ("new", "no")


def test_a_helpdesk_marking_its_mail_bulk_still_opens_cases(harness: Any) -> None:
    """RT (DefaultMailPrecedence) and Jira send `Precedence: bulk`: only an out-of-office is
    kept from opening a case."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Ticket update"), ("Precedence", "bulk"))
    assert r.decision.match == "new"
    assert token_of(r.one("Subject"))


def test_an_empty_body_is_noted_not_stamped(harness: Any) -> None:
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Hi"), body=b"")
    assert "body-not-stamped:empty" in r.decision.notes
    assert token_of(r.one("Subject"))


def test_present_thread_index_and_topic_are_kept(harness: Any) -> None:
    app_root = thread_index.new_root(harness.clock.now, b"\x01" * 16)
    value = thread_index.encode(app_root)
    r = harness.outbound(AGENT, ("Subject", "x"), ("Thread-Index", value), ("Thread-Topic", "t"))
    assert r.all("Thread-Index") == [value]
    assert r.all("Thread-Topic") == ["t"]
    # The app's root is recorded: Outlook replies to it thread.
    reply = harness.inbound(CUSTOMER, ("Thread-Index", thread_index.encode(app_root + b"\0" * 5)))
    assert reply.case_id == "C-000001"


def test_app_case_id_with_an_old_token_in_the_subject_gets_its_own_token(harness: Any) -> None:
    """The agent moves a conversation to another ticket (app X-Case-ID): replies must go there."""
    old = start_case(harness)  # C-000001
    r = harness.outbound(
        AGENT, TO_CUSTOMER, ("X-Case-ID", "TICKET-9"), ("Subject", f"Re: {old.one('Subject')}")
    )
    assert r.case_id == "TICKET-9"
    reply = harness.inbound(CUSTOMER, ("Subject", f"Re: {r.one('Subject')}"))
    assert reply.case_id == "TICKET-9", r.one("Subject")


@pytest.mark.parametrize("between", ["nothing", "another case"])
def test_the_same_message_submitted_again_keeps_its_case(harness: Any, between: str) -> None:
    """A client's resend after a timeout, an app's retry after a later milter's 4xx: the
    same Message-ID again is the same mail, stamped for the case it got the first time."""
    mail = (AGENT, TO_CUSTOMER, ("Subject", "Your order"), ("Message-ID", "<o1@app.example>"))
    first = harness.outbound(*mail)
    if between == "another case":
        start_case(harness)
    again = harness.outbound(*mail)
    assert (again.case_id, again.decision.match) == (first.case_id, "duplicate")
    assert token_of(again.one("Subject")) == token_of(first.one("Subject"))
    assert harness.index.get_case("C-000003") is None
    # The Message-ID still names the first case: the customer's reply goes there.
    reply = harness.inbound(CUSTOMER, ("In-Reply-To", "<o1@app.example>"))
    assert reply.case_id == first.case_id


@pytest.mark.parametrize("cc", [None, "archive@partner.example"])
def test_an_apps_fixed_message_id_to_another_customer_is_no_resend(harness: Any,
                                                                    cc: str | None) -> None:
    """An app whose template reuses one Message-ID: the mail to Bob is not Alice's mail sent
    again (a recipient is not one of her case's participants), and gets its own case; also
    when both Cc the same archive address, a participant of Alice's case (review 21b: that
    mail was taken for her mail's resend and stamped for her case)."""
    mid = ("Message-ID", "<notification@app.example.com>")
    copy = () if cc is None else (("Cc", cc),)
    alice = [harness.outbound(AGENT, ("To", "alice@customer-a.example"),
                              ("Subject", "Password reset"), mid, *copy) for _ in range(2)]
    # Alice's mail sent again, Cc and all, is her mail's resend.
    assert [(m.case_id, m.decision.match) for m in alice] == [
        ("C-000001", "new"), ("C-000001", "duplicate")]
    bob = harness.outbound(AGENT, ("To", "bob@customer-b.example"), ("Subject", "Invoice"), mid,
                           *copy)
    assert (bob.case_id, bob.decision.match) == ("C-000002", "new")
    assert "duplicate: C-000001 not taken: a customer it names is not one of its " \
        "participants" in bob.decision.trace
    assert token_of(bob.one("Subject")) != token_of(alice[0].one("Subject"))


def test_a_bcc_copy_sent_apart_is_the_same_mail(harness: Any) -> None:
    """A relay that gives each Bcc'd recipient a transaction of its own (review 21c) submits
    the agent's mail again, its envelope the Bcc'd customer alone: the same mail, the same
    case and token (To and Cc name the very people the first copy recorded)."""
    mail = (AGENT, TO_CUSTOMER, ("Subject", "Your order"), ("Message-ID", "<o2@app.example>"))
    first = harness.outbound(*mail, rcpts=(f"<{CUSTOMER_ADDR}>",))
    bcc = harness.outbound(*mail, rcpts=("<boss@customer-b.example>",))
    assert (bcc.case_id, bcc.decision.match) == (first.case_id, "duplicate")
    assert token_of(bcc.one("Subject")) == token_of(first.one("Subject"))
    # Mail that names nobody in To or Cc is told by its envelope, as before: any participant.
    hidden = (AGENT, ("To", "undisclosed-recipients:;"), ("Subject", "Notice"),
              ("Message-ID", "<o3@app.example>"))
    first = harness.outbound(*hidden, rcpts=("<pat@customer.example.org>",))
    again = harness.outbound(*hidden, rcpts=("<pat@customer.example.org>", "<x@other.example>"))
    assert (again.case_id, again.decision.match) == (first.case_id, "duplicate")


def outlook_mail(h: Any, root: bytes, *headers: tuple[str, str]) -> Any:
    """The agent's Outlook mail in the conversation of `root`, with nothing else to link it."""
    index = thread_index.encode(thread_index.child(root, h.clock.now))
    return h.outbound(AGENT, TO_CUSTOMER, ("Thread-Index", index), *headers)


@pytest.mark.parametrize("subject", ["Recall: Maintenance window",
                                     "Canceled: Maintenance window", "FW: Maintenance window"])
def test_outlook_mail_of_a_cases_conversation_continues_it(harness: Any, subject: str) -> None:
    """A recall, a meeting update or cancel, a "Resend" or a forward carries the
    conversation's Thread-Index, no token and no References: it threads by the root, and the
    customer's next Outlook reply still goes to the case."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16, 32)))
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Maintenance window"),
                             ("Thread-Index", thread_index.encode(root)))
    again = outlook_mail(harness, root, ("Subject", subject))
    assert (again.case_id, again.decision.match) == (first.case_id, "thread-index")
    assert harness.index.get_case("C-000002") is None
    reply = harness.inbound(CUSTOMER, ("Subject", "RE: Maintenance window"),
                            ("Thread-Index", outlook_reply_index(again.one("Thread-Index"),
                                                                 harness.clock.now)))
    assert (reply.case_id, reply.one("X-Case-Match")) == (first.case_id, "thread-index")


def test_an_agents_old_answer_forwarded_to_a_new_customer_opens_a_case(harness: Any) -> None:
    """Outlook's Forward (or Resend) of the agent's own Sent Items copy, never stamped, to
    another customer carries only the old conversation's Thread-Index: a new case, not
    Alice's."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16, 32)))
    alice = harness.outbound(AGENT, ("To", "alice@customer-a.example"),
                             ("Subject", "Router reset"),
                             ("Thread-Index", thread_index.encode(root)))
    index = thread_index.encode(thread_index.child(root, harness.clock.now))
    bob = harness.outbound(AGENT, ("To", "bob@customer-b.example"),
                           ("Subject", "FW: Router reset"), ("Thread-Index", index))
    assert bob.case_id != alice.case_id and bob.decision.match == "new"


@pytest.mark.parametrize("how", ["app X-Case-ID", "token"])
def test_another_cases_mail_never_takes_over_a_live_cases_outlook_root(
        harness: Any, how: str) -> None:
    """Mail of another case that carries this conversation's Thread-Index (the app moved a
    forward to a new ticket; an Outlook reply with another case's tag) leaves the root
    where it is: the customer's Outlook replies stay with the case they answer."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16, 32)))
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Maintenance window"),
                             ("Thread-Index", thread_index.encode(root)))
    other = start_case(harness, "Invoice")  # C-000002
    link = (("X-Case-ID", "TKT-9") if how == "app X-Case-ID"
            else ("Subject", f"FW: {other.one('Subject')}"))
    moved = outlook_mail(harness, root, link)
    assert moved.case_id != first.case_id
    reply = harness.inbound(CUSTOMER, ("Subject", "RE: Maintenance window"),
                            ("Thread-Index", outlook_reply_index(first.one("Thread-Index"),
                                                                 harness.clock.now)))
    assert (reply.case_id, reply.one("X-Case-Match")) == (first.case_id, "thread-index")
    # Once that case is closed, the conversation may move on with the mail of another case.
    harness.set_case(first.case_id, state=CaseState.CLOSED)
    moved = outlook_mail(harness, root, link)
    reply = harness.inbound(CUSTOMER, ("Subject", "RE: Maintenance window"),
                            ("Thread-Index", outlook_reply_index(first.one("Thread-Index"),
                                                                 harness.clock.now)))
    assert reply.case_id == moved.case_id


def test_an_app_case_id_of_a_merged_case_follows_the_merge(harness: Any) -> None:
    """The app still names the case it knew (C-000001), merged into C-000002 since: the mail,
    its token and its X-Case-State go to the survivor, as inbound mail does, and say so."""
    start_case(harness)
    start_case(harness, "Printer jam again")
    harness.set_case("C-000001", merged_into="C-000002")
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Re: Printer jam"),
                         ("X-Case-ID", "C-000001"), ("X-Case-State", "waiting"))
    assert (r.case_id, r.decision.match) == ("C-000002", "app")
    assert token_of(r.one("Subject")) == harness.token("C-000002")
    assert harness.case("C-000002").state is CaseState.WAITING
    assert harness.case("C-000001").state is CaseState.OPEN
    assert "app-case-merged" in r.decision.notes
    assert "app X-Case-ID C-000001 is merged into C-000002" in r.decision.trace


@pytest.mark.parametrize("state", ["closed", "Resolved"])
def test_an_app_ending_a_merged_ticket_leaves_the_survivor_open(
        make_harness: Callable[..., Any], tmp_path: Path, state: str) -> None:
    """A helpdesk closes the ticket it merged away and mails its requester (X-Case-ID of the
    merged case, X-Case-State: closed). The mail goes to the survivor, the state does not:
    it would close the survivor, and its own customer's next reply would open a new case."""
    index = LmdbIndex(tmp_path / "index", 1 << 24)
    try:
        h = make_harness(index=index)
        start_case(h, "VPN disconnects")
        kim = h.outbound(AGENT, ("To", "Kim <kim@example.net>"), ("Subject", "VPN drops"))
        case_admin.merge(index, "C-000001", "C-000002", int(h.clock.now))
        notice = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your request was merged"),
                            ("X-Case-ID", "C-000001"), ("X-Case-State", state))
        assert (notice.case_id, notice.decision.state) == ("C-000002", "open")
        assert {"app-case-merged", "app-state-ignored:merged"} <= set(notice.decision.notes)
        assert "app X-Case-State" in notice.decision.trace[-1]
        assert h.case("C-000002").state is CaseState.OPEN
        reply = h.inbound(("From", "Kim <kim@example.net>"), TO_SUPPORT,
                          ("Subject", f"Re: {kim.one('Subject')}"))
        assert (reply.case_id, reply.one("X-Case-State")) == ("C-000002", "open")
        assert reply.all("X-Case-Related") == []
    finally:
        index.close()


def test_an_app_ending_a_merged_ticket_by_its_token_leaves_the_survivor_open(
        harness: Any) -> None:
    """The same notice without X-Case-ID, answering in the merged ticket's thread (its token):
    the case it continues was merged away (review: the survivor was closed)."""
    first = start_case(harness)
    start_case(harness, "Printer jam again")
    harness.set_case("C-000001", merged_into="C-000002")
    notice = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: {first.one('Subject')}"),
                              ("X-Case-State", "closed"))
    assert (notice.case_id, notice.decision.state) == ("C-000002", "open")
    assert "app-state-ignored:merged" in notice.decision.notes
    assert harness.case("C-000002").state is CaseState.OPEN


@pytest.mark.parametrize("resent", ["Resent-From", "Resent-Sender"])
def test_a_redirected_mail_passes_as_mail_of_neither_direction(
        harness: Any, build: Callable[..., Any], resent: str) -> None:
    """A redirect (Thunderbird's "Redirect", mutt's bounce) of an old delivered copy, sent by
    an agent to a colleague, goes on unchanged (RFC 5322 §3.6.6). Its X-Case-* fields are our
    inbound ones, not the app's instructions: a closed case stays closed, and they are
    removed."""
    start_case(harness)
    harness.set_case("C-000001", state=CaseState.CLOSED)
    msg = build(
        CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer jam"), ("Message-ID", "<r1@x.example>"),
        ("X-Case-ID", "C-000001"), ("X-Case-State", "open"), ("X-Case-Match", "token"),
        (resent, "Dana Agent <dana@support.example.com>"), ("Resent-To", "kim@example.net"),
        body=b"Still broken.\r\n", rcpts=("kim@example.net",), auth_user="dana")
    assert harness.engine.classify(msg) is Direction.OTHER
    assert harness.engine.body_wanted(msg, Direction.OTHER).room == 0
    # The milter's classification, and `filter --direction outbound`'s.
    for direction in (None, harness.engine.classify(msg, Direction.OUTBOUND)):
        r = harness.run(msg, direction)
        assert r.decision.direction is Direction.OTHER
        assert r.decision.notes == ("resent", "case-fields-removed")
        assert r.ours() == [] and len(r.removals()) == len(r.decision.edits) == 3
        assert r.decision.body_splices == ()
    assert harness.case("C-000001").state is CaseState.CLOSED
    assert harness.index.case_for_message("r1@x.example") is None


def test_a_customer_mail_an_agent_redirects_to_support_is_inbound(
        harness: Any, build: Callable[..., Any]) -> None:
    """Pat answered Dana's own address; Dana redirects it to the support address through her
    authenticated submission: the helpdesk gets it threaded, as if Pat had written there."""
    first = start_case(harness)
    msg = build(
        CUSTOMER, ("To", "Dana Agent <dana@support.example.com>"),
        ("Subject", f"Re: Printer jam [ref:{harness.token(first.case_id)}]"),
        ("Message-ID", "<r2@customer.example.org>"),
        ("Resent-From", "Dana Agent <dana@support.example.com>"),
        ("Resent-To", "support@example.com"), body=b"Still broken.\r\n",
        rcpts=("support@example.com",), auth_user="dana")
    assert harness.engine.classify(msg) is Direction.INBOUND
    r = harness.run(msg)
    assert (r.decision.direction, r.case_id, r.decision.match) == (
        Direction.INBOUND, first.case_id, "token")
    assert r.one("X-Case-Sender") == "known"
    assert r.decision.body_splices == ()


def test_a_token_of_a_case_the_index_lost_never_lands_in_a_strangers_case(
        make_harness: Callable[..., Any]) -> None:
    """The index was lost (or an older backup restored) and the key kept: Pat's reply names
    case number 3, which the new index does not hold. Her reply opens a case numbered past it,
    so no stranger's new case can take number 3 and receive her later mail."""
    old = make_harness()
    for subject in ("Router", "Printer", "Invoice"):
        last = old.outbound(AGENT, TO_CUSTOMER, ("Subject", subject))
    tok = old.token(last.case_id)  # C-000003
    new = make_harness()  # the same key, an empty index
    reply = new.inbound(CUSTOMER, ("Subject", f"Re: Invoice [ref:{tok}]"))
    assert reply.case_id == "C-000004" and reply.one("X-Case-Match") == "new"
    assert "token-case-unknown" in reply.decision.notes
    stranger = new.inbound(STRANGER, ("Subject", "Hello"))
    assert stranger.case_id == "C-000005"
    # Pat's next reply (her mail client kept the old tag) finds no stranger's case either.
    again = new.inbound(CUSTOMER, ("Subject", f"Re: Invoice [ref:{tok}]"),
                        ("In-Reply-To", "<none@example.org>"))
    assert again.case_id not in ("C-000003", "C-000005")
    # The agent answering from a mail client, the old tag still in the Subject: the same.
    agent = new.outbound(AGENT, TO_CUSTOMER, ("Subject", f"Re: Invoice [ref:{tok}]"))
    assert agent.case_id not in ("C-000003", "C-000005")
    assert "token-case-unknown" in agent.decision.notes


# --------------------------------------------------------------------------- duplicates


def test_our_own_mail_coming_back_shows_a_queue(harness: Any) -> None:
    """The customer's server forwards our mail back to support: a duplicate of a case no
    inbound mail routed yet. Its queue header is the route, never empty."""
    out = start_case(harness)
    back = harness.inbound(CUSTOMER, ("Subject", out.one("Subject")),
                           ("Message-ID", out.one("Message-ID")))
    assert back.one("X-Case-Match") == "duplicate"
    assert back.one("X-Case-Queue") == "support"
    assert harness.case("C-000001").queue == ""


def test_duplicate_delivery_changes_nothing(harness: Any) -> None:
    start_case(harness)
    first = reply_to(harness, "C-000001", ("Message-ID", "<d1@customer.example.org>"))
    assert first.one("X-Case-Match") == "token"
    harness.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(harness.clock.now))
    again = reply_to(harness, "C-000001", ("Message-ID", "<d1@customer.example.org>"))
    assert again.ours() == [
        ("X-Case-ID", "C-000001"),
        ("X-Case-Match", "duplicate"),
        ("X-Case-Duplicate", "yes"),
        ("X-Case-State", "resolved"),  # a second delivery does not reopen
        ("X-Case-Queue", "support"),
        ("X-Case-Auto", "no"),
        ("X-Case-Sender", "known"),
    ]
    assert harness.case("C-000001").state is CaseState.RESOLVED
    assert harness.index.last_number() == 1


def test_duplicates_do_not_count_against_the_flood_limit(make_harness: Any, tweak: Any) -> None:
    """The same mail to two support addresses, or delivered again, is one mail from its
    sender: it must not push a customer over the limit (and lose the next real mail's case)."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=3, window=3600)}))
    first = h.inbound(CUSTOMER, ("Message-ID", "<same@customer.example.org>"))
    for _ in range(4):
        again = h.inbound(CUSTOMER, ("Message-ID", "<same@customer.example.org>"))
        assert (again.one("X-Case-Match"), again.all("X-Case-Loop")) == ("duplicate", [])
    new = h.inbound(CUSTOMER, ("Subject", "Another question"))
    assert (first.case_id, new.case_id, new.all("X-Case-Loop")) == ("C-000001", "C-000002", [])


def test_a_duplicate_is_a_loop_as_its_first_copy_was(make_harness: Any, tweak: Any) -> None:
    """A duplicate is not counted: it says `X-Case-Loop: yes` only when its sender is over the
    limit without it, as its first copy was. It was judged as one more mail: the copy of
    the limit's last mail (the 2nd of 2 an hour) said loop, its first copy did not, and a
    Sieve script filed the two copies into different folders."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    start_case(h)
    ask = reply_to(h, "C-000001", ("Message-ID", "<q1@customer.example.org>"))
    last = reply_to(h, "C-000001", ("Message-ID", "<q2@customer.example.org>"))
    copy = reply_to(h, "C-000001", ("Message-ID", "<q2@customer.example.org>"))
    assert [r.all("X-Case-Loop") for r in (ask, last, copy)] == [[], [], []]
    assert copy.one("X-Case-Match") == "duplicate"
    # Past the limit, a reply still threads (and is recorded): its copy is a loop too.
    over = reply_to(h, "C-000001", ("Message-ID", "<q3@customer.example.org>"))
    copy = reply_to(h, "C-000001", ("Message-ID", "<q3@customer.example.org>"))
    assert (over.one("X-Case-Match"), over.all("X-Case-Loop")) == ("token", ["yes"])
    assert (copy.one("X-Case-Match"), copy.all("X-Case-Loop")) == ("duplicate", ["yes"])
    # A new window: the sender is under the limit again, and so is a later copy.
    h.advance(3600)
    copy = reply_to(h, "C-000001", ("Message-ID", "<q3@customer.example.org>"))
    assert (copy.one("X-Case-Match"), copy.all("X-Case-Loop")) == ("duplicate", [])


def test_a_duplicate_report_is_judged_on_its_cases_counter(make_harness: Any,
                                                           tweak: Any) -> None:
    """A report the bounce strategy matched counts per sender and case; its copy read the
    sender's own counter (its reports on no case): a loop there made the copy of a first
    bounce `X-Case-Loop: yes`."""
    h = make_harness(tweak(inbound={"flood": FloodSettings(limit=2, window=3600)}))
    out = start_case(h)
    strays = [h.inbound(GMAIL_NDR, ("Subject", f"Notice {n}"), mail_from="<>").all(
        "X-Case-Loop") for n in range(3)]
    assert strays == [[], [], ["yes"]]
    copies = [h.inbound(GMAIL_NDR, ("Subject", "Delivery Status Notification (Failure)"),
                        ("Message-ID", "<dsn.1@mx.google.com>"), *DSN_HEADERS[4:],
                        body=dsn(returned_message(out.one("Message-ID"))), mail_from="<>")
              for _ in range(2)]
    assert [(r.one("X-Case-Match"), r.all("X-Case-Loop")) for r in copies] == [
        ("bounce", []), ("duplicate", [])]


@pytest.mark.parametrize(("order", "expected"), [
    (("bounce", "token"), "C-000002"),
    (("in-reply-to", "bounce", "token"), "C-000002"),
    (("token", "bounce"), None),  # the token strategy finds C-000001 first
    (("token", "in-reply-to"), None),  # no bounce strategy
])
def test_bounce_hit_is_resolves_hit_by_bounce(make_harness: Any, tweak: Any, build: Any,
                                              order: tuple[str, ...],
                                              expected: str | None) -> None:
    """`Resolver.bounce_hit` (a duplicate report's flood counter) is the case `resolve` takes
    when the bounce strategy found it, else None, in any order: a report whose Subject holds
    one case's token and whose returned mail is another case's."""
    h = make_harness(tweak(inbound={"strategies": order}))
    first = start_case(h)
    second = start_case(h, "Order 7")
    report = build(GMAIL_NDR, ("Subject", f"Undelivered: Printer jam [ref:{h.token('C-000001')}]"),
                   *DSN_HEADERS[4:], body=dsn(returned_message(second.one("Message-ID"))),
                   mail_from="<>")
    assert first.case_id == "C-000001"
    resolver = Resolver(h.settings, h.keyring)
    hit = resolver.bounce_hit(resolver.evidence(report, h.index, 0))
    assert (hit.case.case_id if hit else None) == expected
    full = resolver.resolve(resolver.evidence(report, h.index, 0))
    assert full is not None
    assert hit == (full if full.match == "bounce" else None)


def test_duplicate_of_a_mail_whose_case_was_merged_since(harness: Any) -> None:
    harness.inbound(CUSTOMER, ("Message-ID", "<d2@customer.example.org>"))
    harness.inbound(CUSTOMER)
    harness.set_case("C-000001", merged_into="C-000002")
    r = harness.inbound(CUSTOMER, ("Message-ID", "<d2@customer.example.org>"))
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000002", "duplicate")


# --------------------------------------------------------------------------- casethread filter


INBOUND = ("--direction", "inbound", "--rcpt", "support@example.com", "-")
OUTBOUND = ("--direction", "outbound", "-")


def fields(output: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for h in parse_raw(output)[0]:
        found.setdefault(h.name.lower(), []).append(h.value)
    return found


def ours(output: bytes) -> list[tuple[str, str]]:
    return [(h.name, h.value) for h in parse_raw(output)[0] if h.name.lower().startswith("x-case-")]


def filter_ok(run_filter: Any, args: tuple[str, ...], raw: bytes) -> bytes:
    p = run_filter(*args, stdin=raw)
    assert p.returncode == 0, p.stderr
    out: bytes = p.stdout
    return out


AGENT_MAIL = (
    b"From: Dana Agent <dana@support.example.com>\n"
    b"To: Pat Customer <pat@customer.example.org>\n"
    b"Subject: Printer jam\n"
    b"Message-ID: <agent-1@support.example.com>\n"
    b"\n"
    b"Hello Pat,\n"
)


def filter_start(run_filter: Any, raw: bytes = AGENT_MAIL) -> dict[str, list[str]]:
    found = fields(filter_ok(run_filter, OUTBOUND, raw))
    assert found["x-case-id"] == ["C-000001"]
    return found


def test_filter_token_only_in_the_quoted_body(run_filter: Any) -> None:
    out = filter_ok(run_filter, OUTBOUND, AGENT_MAIL)
    tok = token_of(fields(out)["subject"][0]).encode()
    # Pat's client quotes our stamped body and wraps the token line inside the bracket.
    stamped = out.partition(b"\n\n")[2]
    assert stamped.endswith(b"\n[ref:" + tok + b"]\n")
    quoted = b"".join(b"> " + line for line in stamped.splitlines(keepends=True))
    quoted = quoted.replace(b"[ref:" + tok, b"[ref:" + tok[:6] + b"\n>  " + tok[6:])
    reply = (
        b"From: Pat Customer <pat@customer.example.org>\n"
        b"To: support@example.com\n"
        b"Subject: Re: Printer jam\n"
        b"Message-ID: <r1@customer.example.org>\n"
        b"\n"
        b"Thanks.\n"
        b"\n"
        b"On Mon, Dana Agent wrote:\n" + quoted
    )
    out = filter_ok(run_filter, INBOUND, reply)
    assert ours(out) == TOKEN_REPLY_FIELDS
    assert out.endswith(reply.partition(b"\n\n")[2])  # the body is untouched


def test_filter_outlook_reply_with_only_a_thread_index(run_filter: Any) -> None:
    ti = filter_start(run_filter)["thread-index"][0]
    raw = thread_index.decode(ti)
    assert raw is not None
    reply_ti = thread_index.encode(thread_index.child(raw, 2_000_000_000))
    reply = (
        b"From: Pat Customer <pat@customer.example.org>\n"
        b"To: support@example.com\n"
        b"Subject: RE: Printer jam\n"
        b"Thread-Topic: Printer jam\n"
        b"Thread-Index: " + reply_ti.encode() + b"\n"
        b"Message-ID: <outlook-1@customer.example.org>\n"
        b"\n"
        b"It is the LaserThing 3000.\n"
    )
    found = fields(filter_ok(run_filter, INBOUND, reply))
    assert found["x-case-id"] == ["C-000001"]
    assert found["x-case-match"] == ["thread-index"]


def test_filter_forged_token(run_filter: Any) -> None:
    tok = token_of(filter_start(run_filter)["subject"][0])
    forged = tok[:-1] + ("A" if tok[-1] != "A" else "B")
    reply = b"From: pat@customer.example.org\nSubject: Re: [ref:" + forged.encode() + b"]\n\nhi\n"
    found = fields(filter_ok(run_filter, INBOUND, reply))
    assert found["x-case-id"] == ["C-000002"]
    assert found["x-case-match"] == ["new"]
    assert found["x-case-token"] == ["invalid"]


def test_filter_bounce_of_our_message(run_filter: Any) -> None:
    filter_start(run_filter)
    head = "".join(f"{name}: {value}\n" for name, value in DSN_HEADERS).encode()
    raw = head + b"\n" + dsn(returned_message("<agent-1@support.example.com>"))
    p = run_filter("--mail-from", "<>", *INBOUND, stdin=raw)
    assert p.returncode == 0, p.stderr
    found = fields(p.stdout)
    assert found["x-case-id"] == ["C-000001"]
    assert found["x-case-match"] == ["bounce"]
    assert found["x-case-auto"] == ["bounce"]
    assert "match=bounce" in p.stderr.decode()


def test_filter_reply_to_a_merged_case(run_filter: Any) -> None:
    tok = token_of(filter_start(run_filter)["subject"][0])
    second = AGENT_MAIL.replace(b"agent-1@", b"agent-2@").replace(b"Printer jam", b"Toner")
    assert fields(filter_ok(run_filter, OUTBOUND, second))["x-case-id"] == ["C-000002"]
    index = LmdbIndex(run_filter.index, 1 << 24)  # what `casethread case merge` does
    try:
        merged = index.modify_case("C-000001",
                                   lambda case: dataclasses.replace(case, merged_into="C-000002"))
        assert merged is not None
    finally:
        index.close()
    reply = b"From: pat@customer.example.org\nSubject: Re: Printer jam [ref:%s]\n\nhi\n" % (
        tok.encode()
    )
    found = fields(filter_ok(run_filter, INBOUND, reply))
    assert found["x-case-id"] == ["C-000002"]
    assert found["x-case-match"] == ["token"]


def test_filter_agents_answer_to_a_closed_cases_older_mail(run_filter: Any) -> None:
    """On the real index, mail after mail: the app closes C-000001, Pat's reply opens
    related C-000002, and Dana answers her own first mail again from her mail client (C-000001's
    tag, In-Reply-To of that mail): the answer is C-000002's, and so is Pat's reply to it."""
    tag = f"[ref:{token_of(filter_start(run_filter)['subject'][0])}]".encode()
    close = (b"From: Dana Agent <dana@support.example.com>\nTo: pat@customer.example.org\n"
             b"Subject: Re: Printer jam " + tag + b"\nX-Case-State: closed\n\nDone.\n")
    filter_ok(run_filter, OUTBOUND, close)
    pat = b"From: pat@customer.example.org\nSubject: Re: Printer jam " + tag + b"\n\nStill.\n"
    found = fields(filter_ok(run_filter, INBOUND, pat))
    assert (found["x-case-id"], found["x-case-related"]) == (["C-000002"], ["C-000001"])
    answer = (b"From: Dana Agent <dana@support.example.com>\nTo: pat@customer.example.org\n"
              b"Subject: Re: Printer jam " + tag + b"\n"
              b"In-Reply-To: <agent-1@support.example.com>\n\nTry this.\n")
    out = fields(filter_ok(run_filter, OUTBOUND, answer))
    assert out["x-case-id"] == ["C-000002"]
    assert tag.decode() not in out["subject"][0]
    again = b"From: pat@customer.example.org\nSubject: Re: " + out["subject"][0].encode() + (
        b"\n\nThanks.\n")
    assert fields(filter_ok(run_filter, INBOUND, again))["x-case-id"] == ["C-000002"]


def test_filter_auto_reply_to_a_resolved_case(run_filter: Any) -> None:
    tok = token_of(filter_start(run_filter)["subject"][0])
    resolve = (
        b"From: Dana Agent <dana@support.example.com>\nTo: pat@customer.example.org\n"
        b"Subject: Re: Printer jam [ref:" + tok.encode() + b"]\n"
        b"X-Case-State: resolved\n\nDone.\n"
    )
    out = filter_ok(run_filter, OUTBOUND, resolve)
    assert ours(out) == [("X-Case-ID", "C-000001")]  # X-Case-State consumed
    oof = (
        b"From: pat@customer.example.org\nAuto-Submitted: auto-replied\n"
        b"Subject: Automatic reply: Re: Printer jam [ref:" + tok.encode() + b"]\n\nAway.\n"
    )
    found = fields(filter_ok(run_filter, INBOUND, oof))
    assert found["x-case-id"] == ["C-000001"]
    assert found["x-case-state"] == ["resolved"]
    assert found["x-case-auto"] == ["auto-replied"]
    # A human answer reopens it.
    human = oof.replace(b"Auto-Submitted: auto-replied\n", b"").replace(b"Automatic reply: ", b"")
    assert fields(filter_ok(run_filter, INBOUND, human))["x-case-state"] == ["reopened"]


def test_filter_external_ref_from_config(
    run_filter: Any, tmp_path: Path
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text(
        "inbound:\n"
        "  strategies: [in-reply-to, token, external-ref]\n"
        "  external_refs:\n"
        "    - name: jira\n"
        '      pattern: "\\\\b(OPS-[0-9]+)\\\\b"\n'
    )
    first = b"From: jira@tracker.example\nSubject: OPS-17 created\n\nx\n"
    p = run_filter("--config", str(config), *INBOUND, stdin=first)
    assert p.returncode == 0, p.stderr
    assert fields(p.stdout)["x-case-id"] == ["C-000001"]
    later = b"From: jira@tracker.example\nSubject: [JIRA] OPS-17 commented\n\ny\n"
    p = run_filter("--config", str(config), *INBOUND, stdin=later)
    assert p.returncode == 0, p.stderr
    found = fields(p.stdout)
    assert (found["x-case-id"], found["x-case-match"]) == (["C-000001"], ["external-ref"])


def quote(body: bytes) -> str:
    return "".join(f"> {line}\r\n" for line in body.decode().splitlines())


def test_of_several_cases_quoted_in_a_body_the_mail_answered_wins(harness: Any) -> None:
    """Our token line ends our mail, below the older mail it quotes: after a move, a reply
    with no header links quotes the old case's token first. The last token of the first part
    that holds one is the mail answered's: after a move, and after a move back."""
    old = start_case(harness)  # C-000001
    moved = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", "T-900"),
                             ("Subject", "Your refund"),
                             body=(b"I moved your refund to its own ticket.\r\n\r\n"
                                   b"> here is your invoice.\r\n> [ref:"
                                   + harness.token(old.case_id).encode() + b"]\r\n"))
    assert moved.case_id == "T-900"
    stamped = moved.body.decode()
    assert stamped.index(harness.token(old.case_id)) < stamped.index(harness.token("T-900"))
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Your refund"),
                        body=f"Thanks, order 42.\r\n\r\n{quote(moved.body)}".encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("T-900", "token")
    back = harness.outbound(AGENT, TO_CUSTOMER, ("X-Case-ID", old.case_id),
                            ("Subject", "Your refund"),
                            body=f"Back to your first ticket.\r\n\r\n{quote(moved.body)}"
                            .encode())
    r = harness.inbound(CUSTOMER, ("Subject", "Re: Your refund"),
                        body=f"OK.\r\n\r\n{quote(back.body)}".encode())
    assert r.case_id == old.case_id
    # A forged token after the winner does not make the mail `invalid`; one before does.
    forged = harness.token(old.case_id)[:-1] + "Z"
    r = harness.inbound(CUSTOMER, ("Subject", "Re: x"),
                        body=f"{quote(back.body)}\r\n[ref:{forged}]\r\n".encode())
    assert (r.case_id, r.all("X-Case-Token")) == (old.case_id, [])
    assert not any(n.startswith("token-invalid") for n in r.decision.notes)
    r = harness.inbound(CUSTOMER, ("Subject", "Re: x"),
                        body=f"[ref:{forged}]\r\n{quote(back.body)}".encode())
    assert (r.case_id, r.all("X-Case-Token")) == (old.case_id, ["invalid"])
    assert "token-invalid:bad-mac" in r.decision.notes


HTML_QUOTES = {
    # Gmail: the attribution line, then the quoted mail's body in a gmail_quote blockquote.
    "gmail": ('<div class="gmail_quote gmail_quote_container"><div dir="ltr" '
              'class="gmail_attr">On Mon, Nov 30, 2026 at 10:15\u202fAM {who} wrote:<br></div>'
              '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px'
              ' solid rgb(204,204,204);padding-left:1ex">{mail}</blockquote></div>'),
    "apple": ('<div dir="ltr"><br><blockquote type="cite">On 30. Nov 2026, at 10:15, {who} '
              'wrote:<br><br></blockquote></div><blockquote type="cite"><div dir="ltr">{mail}'
              '</div></blockquote>'),
    "thunderbird": ('<div class="moz-cite-prefix">On 30.11.26 10:15, {who} wrote:<br>\n</div>\n'
                    '<blockquote type="cite" cite="mid:x@example.com">\n{mail}\n</blockquote>'),
}


@pytest.mark.parametrize("client", list(HTML_QUOTES))
def test_html_quote_depth_ranks_body_tokens(harness: Any, client: str) -> None:
    """An HTML reply quotes with nested <blockquote>s: our tag ends the mail answered, one
    blockquote deep, below the older case's tag it quotes two deep. The least deeply quoted
    wins, as with ">" (the older tag, first from the top, won)."""
    def quote(who: str, body: bytes) -> str:
        mail = body.decode().split("<body>", 1)[1].split("</body>", 1)[0]
        return HTML_QUOTES[client].format(who=who, mail=mail)

    html = ("Content-Type", 'text/html; charset="UTF-8"')
    first = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer"), html,
                             body=b"<html><body><p>Hello Pat,</p><p>could you tell us the "
                             b"model number?</p></body></html>")
    moved = harness.outbound(
        AGENT, TO_CUSTOMER, ("X-Case-ID", "SCAN-7"), ("Subject", "Scanner"), html,
        body=(f'<html><body><div dir="ltr">I opened a separate ticket for the scanner.</div>'
              f'{quote("Dana Agent", first.body)}</body></html>').encode())
    assert moved.case_id == "SCAN-7" and harness.token("C-000001") in moved.body.decode()
    reply = (f'<div dir="ltr">Scanner model is ScanThing 5.</div><br>'
             f'{quote("Dana Agent", moved.body)}')
    r = harness.inbound(CUSTOMER, ("Subject", "Scanner model"), html,
                        ("In-Reply-To", "<20850002.932532440@mail.gmail.com>"),
                        body=reply.encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("SCAN-7", "token")
    # A plain-text alternative without the quote (Gmail's when the quote was trimmed).
    body = ('--alt\r\nContent-Type: text/plain; charset="UTF-8"\r\n\r\nScanner model is '
            'ScanThing 5.\r\n\r\n--alt\r\nContent-Type: text/html; charset="UTF-8"\r\n\r\n'
            f'{reply}\r\n--alt--\r\n')
    r = harness.inbound(CUSTOMER, ("Subject", "Scanner model"),
                        ("Content-Type", 'multipart/alternative; boundary="alt"'),
                        body=body.encode())
    assert (r.case_id, r.one("X-Case-Match")) == ("SCAN-7", "token")


def test_body_token_shapes_of_real_replies(harness: Any) -> None:
    """Outlook quotes without marks but starts with the newest mail's header block; a clipped
    quote loses our last line; an interleaved reply quotes two mails at one level."""
    start_case(harness)  # C-000001
    start_case(harness, "Other")  # C-000002
    one, two = (f"[ref:{harness.token(c)}]" for c in ("C-000001", "C-000002"))

    def reply(body: str) -> str:
        r = harness.inbound(CUSTOMER, ("Subject", "Re: x"), body=body.encode())
        assert r.one("X-Case-Match") == "token", body
        return str(r.case_id)

    outlook = (f"Thanks!\r\n\r\nFrom: Dana\r\nSent: Monday\r\nSubject: RE: x {two}\r\n\r\n"
               f"Moved.\r\n\r\nFrom: Dana\r\nSent: Sunday\r\nSubject: x {one}\r\n\r\nHi.\r\n")
    assert reply(outlook) == "C-000002"
    clipped = (f"Thanks!\r\n\r\n> Subject: RE: x {two}\r\n> Moved.\r\n>\r\n"
               f"> > Hi.\r\n> > {one}\r\n")
    assert reply(clipped) == "C-000002"
    interleaved = (f"> About the toner {two}\r\nYes.\r\n\r\nYou wrote earlier:\r\n"
                   f"> {one}\r\n")
    assert reply(interleaved) == "C-000002"


def test_a_forwarded_mail_of_another_case_does_not_take_the_reply(harness: Any) -> None:
    """The reply's own text comes first: a newer case's mail forwarded along with it (as an
    attachment) does not take the reply."""
    first = start_case(harness, body=b"Hello Pat,\r\n")  # C-000001
    other = start_case(harness, "Toner", body=b"About the toner.\r\n")  # C-000002
    assert harness.token(first.case_id) in first.body.decode()
    body = (
        f"--f\r\nContent-Type: text/plain\r\n\r\nSee also the other one.\r\n\r\n"
        f"{quote(first.body)}"
        f"--f\r\nContent-Type: message/rfc822\r\n"
        f'Content-Disposition: attachment; filename="toner.eml"\r\n\r\n'
        f"Subject: {other.one('Subject')}\r\n\r\n{other.body.decode()}\r\n--f--\r\n"
    ).encode()
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=body)
    assert r.case_id == "C-000001"
    # Attached above the text: the reply's own text is still read first.
    text_part, attached = body.split(b"--f\r\nContent-Type: message/rfc822")
    above = (b"--f\r\nContent-Type: message/rfc822" + attached.replace(b"--f--\r\n", b"")
             + text_part + b"--f--\r\n")
    r = harness.inbound(CUSTOMER, ("Subject", "Re: printer"),
                        ("Content-Type", "multipart/mixed; boundary=f"), body=above)
    assert r.case_id == "C-000001"


def test_a_ticket_the_apps_outlook_mail_opens_keeps_that_conversation(harness: Any) -> None:
    """Outlook audit: the app's X-Case-ID opens a ticket with mail that carries a Thread-Index
    (sent through Exchange or from Outlook, which write one) whose root names no case. The
    ticket keeps that root, as a case an agent's Outlook mail opens does: the app's next
    answers, without a Thread-Index, continue the conversation in the customer's Outlook
    (they started a second one, with a random root)."""
    root = thread_index.new_root(harness.clock.now, bytes(range(16, 32)))
    harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your renewal"), ("X-Case-ID", "TKT-1"),
                     ("Thread-Index", thread_index.encode(root)))
    assert harness.case("TKT-1").thread_root == root.hex()
    again = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "RE: Your renewal"),
                             ("X-Case-ID", "TKT-1"))
    sent = thread_index.decode(again.one("Thread-Index"))
    assert sent is not None and thread_index.root_of(sent) == root and len(sent) == 27
    # A root another case holds is not taken: that ticket gets a random one.
    other = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "FW: Your renewal"),
                             ("X-Case-ID", "TKT-2"),
                             ("Thread-Index", thread_index.encode(
                                 thread_index.child(root, harness.clock.now))))
    assert other.case_id == "TKT-2"
    assert harness.case("TKT-2").thread_root not in (None, root.hex())
