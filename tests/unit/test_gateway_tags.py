"""A gateway in front of our MX (Microsoft 365's mail flow rules, Mimecast, Proofpoint, Cisco,
Barracuda) tags the Subject of mail from outside before the first words that tell what the
mail is: `[EXTERNAL] Accepted: ...`, `[SUSPECTED SPAM] Warning: message ... delayed`. Each
reader of those words (`subject.untagged`) looks past the tag, as the out-of-office reading
did: a calendar click stays a click, a delay warning no bounce, a failure notice a bounce.
The tags are the vendors' documented defaults (Cisco's `[SPAM]`, `[SUSPECTED SPAM]`,
`[SUSPICIOUS MESSAGE]`; Barracuda's `[BULK]`, `[SPAM?]`) and the mail flow rules' forms their
guides show (`[EXTERNAL]`, `EXTERNAL:`, `#External:`, `*EXTERNAL*`). Fixtures written here."""

from __future__ import annotations

from typing import Any

import pytest
from tests.conftest import make_message

from casethread.core import feedback
from casethread.core.message import Envelope, Header, Message
from casethread.core.model import AliasKind, CaseState
from casethread.core.subject import strip_prefixes, untagged

PAT = ("From", "Pat Customer <pat@customer.example.org>")
TO_SUPPORT = ("To", "Support <support@example.com>")
TAGS = ["[EXTERNAL] ", "[External Sender] ", "EXTERNAL: ", "#External: ", "*EXTERNAL* ",
        "[SUSPECTED SPAM] ", "[SUSPICIOUS MESSAGE] ", "[SPAM?] "]
ICS = ("BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\n"
       "ATTENDEE;PARTSTAT=ACCEPTED;CN=Pat:mailto:pat@customer.example.org\r\n"
       "UID:call-42@example.com\r\nDTSTART:20261201T100000Z\r\nEND:VEVENT\r\n"
       "END:VCALENDAR\r\n")
# Google Calendar's and Thunderbird's shape: no Content-Class, so the Subject says "reply".
CLICK = ("--cal\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPat has accepted.\r\n"
         "--cal\r\nContent-Type: text/calendar; charset=utf-8; method=REPLY\r\n\r\n"
         f"{ICS}--cal--\r\n").encode()


def resolved_case(h: Any) -> tuple[str, str]:
    """Our mail to Pat (C-000001), resolved: (its tagged Subject, its Message-ID)."""
    out = h.outbound(("From", "Support <support@example.com>"),
                     ("To", "Pat Customer <pat@customer.example.org>"),
                     ("Subject", "Printer call"), body=b"Hello Pat,\r\n")
    h.set_case(out.case_id, state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    return out.one("Subject"), out.one("Message-ID")


@pytest.mark.parametrize("tag", TAGS)
def test_tags_before_the_first_words_are_looked_past(tag: str) -> None:
    assert untagged(f"{tag}Accepted: Call") == "Accepted: Call"
    assert untagged(f"=?utf-8?q?{tag.replace(' ', '_')}Accepted=3A?= Call") == "Accepted: Call"
    assert strip_prefixes(f"RE: {tag}Printer") == "Printer"


@pytest.mark.parametrize("subject", ["[Case C-000123] Accepted: x", "[PATCH 1/2] x",
                                     "[ref:ABCD] x", "[Ticket: X] x", "Extra: x", "[ x] y"])
def test_identifiers_are_no_tags(subject: str) -> None:
    assert untagged(subject) == subject


@pytest.mark.parametrize("tag", TAGS)
def test_a_tagged_calendar_click_threads_without_reopening(harness: Any, tag: str) -> None:
    subject, _ = resolved_case(harness)
    r = harness.inbound(PAT, TO_SUPPORT, ("Subject", f"{tag}Accepted: {subject}"),
                        ("MIME-Version", "1.0"),
                        ("Content-Type", 'multipart/alternative; boundary="cal"'), body=CLICK)
    assert (r.case_id, r.one("X-Case-Auto")) == ("C-000001", "auto-generated")
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_a_tagged_google_calendar_click_opens_no_case(harness: Any) -> None:
    """Its Subject is the event's title, without our tag: it named nothing, and opened a
    case as a person's new mail."""
    resolved_case(harness)
    r = harness.inbound(PAT, TO_SUPPORT, ("Subject", "[EXTERNAL] Accepted: Printer call @ Tue "
                                          "Dec 1, 2026 10am (UTC) (support@example.com)"),
                        ("MIME-Version", "1.0"),
                        ("Content-Type", 'multipart/alternative; boundary="cal"'), body=CLICK)
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("none", [])


@pytest.mark.parametrize("tag", ["[EXTERNAL] ", "[SUSPECTED SPAM] "])
def test_a_tagged_delay_warning_is_no_bounce(harness: Any, tag: str) -> None:
    subject, message_id = resolved_case(harness)
    body = ("A message that you sent has not yet been delivered to one or more of its\r\n"
            "recipients after more than 24 hours on the queue.\r\n\r\n"
            "------ This is a copy of the message's headers. ------\r\n\r\n"
            f"Message-ID: {message_id}\r\nSubject: {subject}\r\n").encode()
    r = harness.inbound(("From", "Mail Delivery System <Mailer-Daemon@mx.customer.example.org>"),
                        TO_SUPPORT, ("Subject", f"{tag}Warning: message 1abcDE-000001-XY "
                                                "delayed 24 hours"),
                        body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "bounce")
    assert r.one("X-Case-Auto") == "auto-generated"


@pytest.mark.parametrize("tag", ["[EXTERNAL] ", "[SUSPECTED SPAM] "])
def test_a_tagged_failure_notice_under_the_null_sender_is_a_bounce(harness: Any,
                                                                   tag: str) -> None:
    """qmail's text notice from an address of its own: only its Subject says it failed."""
    subject, message_id = resolved_case(harness)
    body = ("I'm afraid I wasn't able to deliver your message.\r\n\r\n"
            "--- Below this line is a copy of the message.\r\n\r\n"
            f"Message-ID: {message_id}\r\nSubject: {subject}\r\n\r\nHello Pat,\r\n").encode()
    r = harness.inbound(("From", "<noreply@mx.customer.example.org>"), TO_SUPPORT,
                        ("Subject", f"{tag}failure notice"), body=body, mail_from="<>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "bounce")


def test_a_tagged_out_of_office_with_blanks_in_its_tag_is_auto_replied(harness: Any) -> None:
    subject, _ = resolved_case(harness)
    r = harness.inbound(PAT, TO_SUPPORT, ("Precedence", "bulk"),
                        ("Subject", f"[SUSPICIOUS MESSAGE] Automatic reply: {subject}"),
                        body=b"I am away.\r\n")
    assert (r.case_id, r.one("X-Case-Auto")) == ("C-000001", "auto-replied")
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_a_tagged_jmrp_complaint_is_told_by_its_subject() -> None:
    msg = Message(Envelope(), (Header("From", "staff@hotmail.com"),
                               Header("Subject", "[EXTERNAL] complaint about message from "
                                                 "192.0.2.1")))
    assert feedback.provider(msg, "staff@hotmail.com") == feedback.JMRP


def test_a_reply_to_a_subaddress_of_a_support_address_threads(harness: Any) -> None:
    """An app that writes `Reply-To: support+C-000001@` (as GitHub's and Zendesk's
    `reply+KEY@`): the milter sees that envelope recipient, which was no support address, so
    the reply passed as nobody's mail (no `X-Case-*` at all). The subaddress is ours: no
    participant."""
    subject, _ = resolved_case(harness)
    to_case = "support+C-000001@example.com"
    r = harness.run(make_message(PAT, ("To", to_case), ("Subject", f"Re: {subject}"),
                                 body=b"Thanks\r\n", rcpts=(to_case,)))
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State")) == (
        "C-000001", "token", "reopened")
    assert harness.index.find(AliasKind.PARTICIPANT, f"C-000001 {to_case}") is None


def test_an_exchange_journal_report_adds_nobody(harness: Any) -> None:
    """A journal report (MS-XJRNL: from Exchange's system mailbox, the report's lines, the
    journaled mail attached) of a customer's reply, where support@ is a journal recipient:
    it threads by the reply's token and changes nothing, and Exchange's system mailbox became
    one of the case's people."""
    subject, _ = resolved_case(harness)
    exchange = "microsoftexchange329e71ec88ae4615bbc36ab6ce41109e@customer.example.org"
    reply = (f"From: Pat Customer <pat@customer.example.org>\r\nTo: support@example.com\r\n"
             f"Subject: Re: {subject}\r\nMessage-ID: <r1@customer.example.org>\r\n\r\n"
             "Thanks\r\n").encode()
    body = (b"--j\r\nContent-Type: text/plain\r\n\r\nSender: pat@customer.example.org\r\n"
            b"Subject: Re: Printer call\r\nMessage-Id: <r1@customer.example.org>\r\n"
            b"To: support@example.com\r\n--j\r\nContent-Type: message/rfc822\r\n\r\n"
            + reply + b"--j--\r\n")
    r = harness.inbound(("From", f"Microsoft Exchange <{exchange}>"), TO_SUPPORT,
                        ("Subject", "Re: Printer call"), ("X-MS-Journal-Report", ""),
                        ("MIME-Version", "1.0"),
                        ("Content-Type", 'multipart/mixed; boundary="j"'), body=body)
    assert (r.case_id, r.one("X-Case-Auto")) == ("C-000001", "auto-generated")
    assert harness.index.find(AliasKind.PARTICIPANT, f"C-000001 {exchange}") is None
