"""X-Case-Auto of auto-responders' and lists' mail that looks like something else (found in review:
an auto-reply keeping a failure-like Subject, a list marking what it relays `Precedence: junk`)."""
from __future__ import annotations

from typing import Any

from casethread.core.message import Envelope, Header, Message
from casethread.core.model import CaseState, Direction

AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_PAT = ("To", "Pat Customer <pat@customer.example.org>")


def inbound(h: Any, mail_from: str, *fields: tuple[str, str], body: bytes = b"Hi\r\n") -> Any:
    return h.run(Message(Envelope(mail_from=mail_from, rcpts=("support@example.com",)),
                         tuple(Header(n, v) for n, v in fields), body), Direction.INBOUND)


def test_an_rfc3834_auto_reply_echoing_a_failure_like_subject_is_no_bounce(harness: Any) -> None:
    """A shop's case about an undelivered parcel. Pat's responder answers as RFC 3834 §3.3
    asks (null sender, Auto-Submitted: auto-replied) and, like many, keeps the Subject as it
    was. It is auto-replied, not a bounce."""
    sent = harness.outbound(AGENT, TO_PAT, ("Subject", "Delivery failed for order 4711"))
    r = inbound(harness, "<>", ("From", "Pat Customer <pat@customer.example.org>"),
                ("To", "Support <support@example.com>"), ("Subject", sent.one("Subject")),
                ("Auto-Submitted", "auto-replied"), ("X-Autoreply", "yes"),
                body=b"I am out of the office until Monday.\r\n")
    assert r.one("X-Case-Auto") == "auto-replied", r.ours()


def test_a_list_marking_precedence_junk_without_list_fields(harness: Any) -> None:
    """A list manager that marks what it relays `Precedence: junk` (Red Hat's Mailman 2 does;
    older Majordomo/SmartList installations without List-* fields) relays Pat's reply to our
    mail: bulk, a person's reply that reopens its case."""
    sent = harness.outbound(AGENT, TO_PAT, ("To", "users@lists.customer.example.org"),
                            ("Subject", "Printer jam"))
    harness.set_case(sent.case_id, state=CaseState.RESOLVED)
    r = inbound(harness, "<owner-users@lists.customer.example.org>",
                ("From", "Pat Customer <pat@customer.example.org>"),
                ("Sender", "owner-users@lists.customer.example.org"),
                ("To", "users@lists.customer.example.org"),
                ("Subject", "Re: " + sent.one("Subject")),
                ("X-BeenThere", "users@lists.customer.example.org"),
                ("Precedence", "junk"), body=b"It jams again.\r\n")
    assert (r.one("X-Case-Auto"), r.one("X-Case-State")) == ("bulk", "reopened"), r.ours()


def test_a_vacation1_reply_marked_only_precedence_bulk_does_not_reopen(harness: Any) -> None:
    """vacation(1) sends the user's .vacation.msg, whose man-page example sets only
    `Precedence: bulk`; `Subject: Out of Office: $SUBJECT` keeps our token. It was bulk mail
    that answers our mail, counted as a person's: it reopened the resolved case."""
    sent = harness.outbound(AGENT, TO_PAT, ("Subject", "Printer jam"))
    harness.set_case(sent.case_id, state=CaseState.RESOLVED)
    r = inbound(harness, "<pat@customer.example.org>",
                ("From", "Pat Customer <pat@customer.example.org>"),
                ("To", "Dana Agent <dana@support.example.com>"),
                ("Subject", "Out of Office: " + sent.one("Subject")),
                ("Delivered-By-The-Graces-Of", "The Vacation program"),
                ("Precedence", "bulk"), body=b"I am on vacation until Monday.\r\n")
    assert r.one("X-Case-ID") == sent.case_id, r.ours()
    assert (r.one("X-Case-Auto"), r.one("X-Case-State")) == ("auto-replied", "resolved"), r.ours()
