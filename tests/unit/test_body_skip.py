"""Inbound mail its header fields resolve is read without its body (issue 5: SKIP).

`Engine.body_wanted(headers, direction)` is 0 only when resolution finds the case before any
strategy looks at the body; the milter then answers SKIP to the first body chunk and the
engine decides on the header fields alone. The contract checked here: whenever the body is
not wanted, the decision without it is the decision with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from casethread.core.message import Envelope, Header, Message
from casethread.core.model import CaseState, Direction
from casethread.core.settings import ExternalRefRule

CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
TO_SUPPORT = ("To", "Support <support@example.com>")
MESSAGE_ID = "<reply.1@customer.example.org>"


def mail(*headers: tuple[str, str], body: bytes = b"", sender: tuple[str, str] = CUSTOMER,
         rcpts: tuple[str, ...] = ("support@example.com",), mail_from: str = "") -> Message:
    fields = (sender, TO_SUPPORT, ("Message-ID", MESSAGE_ID), *headers)
    return Message(Envelope(mail_from=mail_from, rcpts=rcpts),
                   tuple(Header(n, v) for n, v in fields), body)


def start_case(h: Any) -> Any:
    """The agent writes to Pat: case C-000001, stamped."""
    return h.outbound(("From", "Dana <dana@support.example.com>"),
                      ("To", "Pat Customer <pat@customer.example.org>"),
                      ("Subject", "Printer jam"))


def token_in_subject(h: Any) -> Message:
    tok = h.token(start_case(h).case_id)
    return mail(("Subject", f"Re: Printer jam [ref:{tok}]"), body=b"Long quote.\n" * 500)


def known_in_reply_to(h: Any) -> Message:
    sent = start_case(h)
    return mail(("Subject", "Re: Printer jam"), ("In-Reply-To", sent.one("Message-ID")),
                body=b"Thanks!\n")


def token_only_in_the_body(h: Any) -> Message:
    tok = h.token(start_case(h).case_id)
    return mail(("Subject", "Re: Printer jam"), body=f"> Earlier: [ref:{tok}]\n".encode())


def forged_subject_token_and_the_real_one_in_the_body(h: Any) -> Message:
    tok = h.token(start_case(h).case_id)
    forged = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    return mail(("Subject", f"Re: [ref:{forged}]"), body=f"[ref:{tok}]\n".encode())


def a_new_question(h: Any) -> Message:
    start_case(h)
    return mail(("Subject", "A new question"), body=b"Hello, my printer...\n")


def a_bounce_of_our_mail(h: Any) -> Message:
    sent = start_case(h)
    body = (
        "--B\nContent-Type: text/plain\n\nYour mail could not be delivered.\n"
        "--B\nContent-Type: message/delivery-status\n\nStatus: 5.1.1\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nMessage-ID: {sent.one('Message-ID')}\n"
        "Subject: Printer jam\n--B--\n"
    ).encode()
    return mail(("Subject", "Undelivered Mail Returned to Sender"),
                ("Content-Type", "multipart/report; report-type=delivery-status; boundary=B"),
                body=body, sender=("From", "MAILER-DAEMON@mx.customer.example.org"))


def a_delay_warning_with_the_token_in_its_subject(h: Any) -> Message:
    """Its Subject alone names the case, but only its body tells a delay from a bounce."""
    tok = h.token(start_case(h).case_id)
    body = (
        b"--B\nContent-Type: text/plain\n\nYour mail is delayed; no action needed.\n"
        b"--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example\n\n"
        b"Final-Recipient: rfc822; pat@customer.example.org\nAction: delayed\nStatus: 4.4.1\n"
        b"--B--\n"
    )
    return mail(("Subject", f"Delayed Mail: Printer jam [ref:{tok}]"),
                ("Content-Type", "multipart/report; report-type=delivery-status; boundary=B"),
                body=body, sender=("From", "MAILER-DAEMON@mx.customer.example.org"))


def a_text_bounce_with_the_token_in_its_subject(h: Any) -> Message:
    """A mail system's notice without a DSN: its Subject names the case, but the bounce
    strategy, first, reads the returned copy in its body."""
    sent = start_case(h)
    tok = h.token(sent.case_id)
    body = ("Your message could not be delivered.\n\n"
            "--- Below this line is a copy of the message.\n\n"
            f"Message-ID: {sent.one('Message-ID')}\nSubject: Printer jam\n\nHello\n").encode()
    return mail(("Subject", f"Undeliverable: Printer jam [ref:{tok}]"), body=body,
                sender=("From", "postmaster@customer.example.org"), mail_from="<>")


def _calendar_reply(h: Any, subject: str, note: str) -> Message:
    tok = h.token(start_case(h).case_id)
    ics = ("BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n"
           f"ATTENDEE;PARTSTAT=ACCEPTED{note}:mailto:pat@customer.example.org\r\n"
           "COMMENT;LANGUAGE=en-US:\\n\r\nUID:call@example.com\r\nEND:VEVENT\r\n"
           "END:VCALENDAR\r\n")
    body = ("--C\r\nContent-Type: text/plain\r\n\r\n\r\n--C\r\nContent-Type: text/calendar; "
            f"method=REPLY\r\n\r\n{ics}--C--\r\n").encode()
    return mail(("Subject", f"{subject}: Printer jam [ref:{tok}]"),
                ("Content-Type", "multipart/alternative; boundary=C"), body=body)


def an_outlook_calendar_click_with_the_token_in_its_subject(h: Any) -> Message:
    """Its Subject names the case; its body makes it automatic (Exchange's empty COMMENT)."""
    return _calendar_reply(h, "Accepted", "")


def a_google_calendar_reply_with_a_note_and_the_token_in_its_subject(h: Any) -> Message:
    return _calendar_reply(h, "Tentative", ';X-RESPONSE-COMMENT="Still jammed"')


def an_exchange_rule_forward_of_our_mail_with_the_token_in_its_subject(h: Any) -> Message:
    tok = h.token(start_case(h).case_id)
    body = (b"\r\n________________________________\r\nFrom: Support <support@example.com>\r\n"
            b"Sent: Monday, November 30, 2026 09:15\r\nSubject: Printer jam\r\n\r\nHello\r\n")
    return mail(("Subject", f"FW: Printer jam [ref:{tok}]"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "pat@customer.example.org"), body=body)


def a_reply_our_own_mailboxs_rule_redirected_with_the_token_in_its_subject(h: Any) -> Message:
    """support@ is an Exchange Online shared mailbox whose inbox rule redirects its mail to
    us: every mail names that mailbox in X-MS-Exchange-Inbox-Rules-Loop, which says nothing
    of the mail, so its Subject tag finds the case as it would without the field."""
    tok = h.token(start_case(h).case_id)
    return mail(("Subject", f"Re: Printer jam [ref:{tok}]"),
                ("X-MS-Exchange-Inbox-Rules-Loop", "support@example.com"),
                body=b"Long quote.\n" * 500)


SCENARIOS: dict[str, tuple[Callable[[Any], Message], bool]] = {
    # name: (the mail, whether its header fields alone find its case)
    "token in the Subject": (token_in_subject, True),
    # The token strategy comes first and looks in the body before In-Reply-To: read it.
    "known In-Reply-To": (known_in_reply_to, False),
    "token only in the body": (token_only_in_the_body, False),
    "forged Subject token, the real one in the body": (
        forged_subject_token_and_the_real_one_in_the_body, False),
    "a new question": (a_new_question, False),
    "a bounce of our mail": (a_bounce_of_our_mail, False),
    "a delay warning with the token in its Subject": (
        a_delay_warning_with_the_token_in_its_subject, False),
    "a text bounce with the token in its Subject": (
        a_text_bounce_with_the_token_in_its_subject, False),
    # The kind of these is in the body (README, *Automatic mail*): read it.
    "an Outlook calendar click with the token in its Subject": (
        an_outlook_calendar_click_with_the_token_in_its_subject, False),
    "a Google calendar reply with a note and the token in its Subject": (
        a_google_calendar_reply_with_a_note_and_the_token_in_its_subject, False),
    "an Exchange rule forward of our mail with the token in its Subject": (
        an_exchange_rule_forward_of_our_mail_with_the_token_in_its_subject, False),
    "a reply our own mailbox's rule redirected, the token in its Subject": (
        a_reply_our_own_mailboxs_rule_redirected_with_the_token_in_its_subject, True),
}


def headers_only(msg: Message) -> Message:
    return Message(msg.envelope, msg.headers)


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_body_is_skipped_only_when_the_decision_does_not_depend_on_it(
    make_harness: Any, name: str
) -> None:
    scenario, by_headers = SCENARIOS[name]
    # Two engines with the same history: one gets the whole mail, one what the milter keeps.
    # (The agent's Message-IDs are random: each engine gets its own copy of the mail.)
    whole, cut = make_harness(), make_harness()
    msg, same = scenario(whole), scenario(cut)
    plan = cut.engine.body_wanted(headers_only(same), Direction.INBOUND)
    wanted = plan.room
    assert (wanted == 0) is by_headers, wanted
    assert (plan.found is not None) is by_headers
    with_body = whole.run(msg, Direction.INBOUND)
    # As the milter: what end of headers found is decided on at end of message.
    kept = cut.run(Message(same.envelope, same.headers, same.body[:wanted]), Direction.INBOUND,
                   plan.found)
    assert kept.decision.edits == with_body.decision.edits
    assert kept.decision.case_ids == with_body.decision.case_ids
    assert kept.decision.match == with_body.decision.match
    assert kept.decision.auto == with_body.decision.auto
    reply_id = MESSAGE_ID.strip("<>")
    assert cut.index.case_for_message(reply_id) == whole.index.case_for_message(reply_id)


def test_with_in_reply_to_before_the_token_a_known_reply_skips_the_body(
    make_harness: Any,
) -> None:
    base = make_harness().settings
    order = ("in-reply-to", *[s for s in base.inbound.strategies if s != "in-reply-to"])
    h = make_harness(dataclasses.replace(
        base, inbound=dataclasses.replace(base.inbound, strategies=order)))
    msg = known_in_reply_to(h)
    assert h.engine.body_wanted(headers_only(msg), Direction.INBOUND).room == 0
    assert h.run(headers_only(msg), Direction.INBOUND).one("X-Case-Match") == "in-reply-to"


def test_an_external_ref_rule_reading_bodies_keeps_the_body(make_harness: Any) -> None:
    base = make_harness().settings
    rule = ExternalRefRule(name="servicenow", pattern=r"\b(INC\d{7})\b")

    def harness_with(external: ExternalRefRule) -> Any:
        inbound = dataclasses.replace(
            base.inbound, strategies=(*base.inbound.strategies, "external-ref"),
            external_refs=(external,))
        return make_harness(dataclasses.replace(base, inbound=inbound))

    # The Subject's token would do, but the references in a body are noted for the case too.
    h = harness_with(rule)
    assert h.engine.body_wanted(headers_only(token_in_subject(h)), Direction.INBOUND).room > 0
    h = harness_with(dataclasses.replace(rule, search_body=False))
    assert h.engine.body_wanted(headers_only(token_in_subject(h)), Direction.INBOUND).room == 0
    # A rule for another system's mail does not read this sender's bodies.
    h = harness_with(dataclasses.replace(rule, sender=("@servicenow.example.net",)))
    assert h.engine.body_wanted(headers_only(token_in_subject(h)), Direction.INBOUND).room == 0


def test_a_huge_header_section_is_not_resolved_twice(harness: Any) -> None:
    msg = token_in_subject(harness)
    assert harness.engine.body_wanted(headers_only(msg), Direction.INBOUND).room == 0
    padded = Message(msg.envelope, (*msg.headers, Header("X-Padding", "x" * (64 << 10))))
    assert harness.engine.body_wanted(padded, Direction.INBOUND).room > 0


def test_outbound_mail_is_read_whole_and_other_mail_not_at_all(harness: Any) -> None:
    msg = headers_only(mail(("Subject", "Hello")))
    assert harness.engine.body_wanted(msg, Direction.OUTBOUND).room >= 1 << 40
    assert harness.engine.body_wanted(msg, Direction.OTHER).room == 0
    # Inbound mail its header fields do not resolve: read up to inbound.read_limit.
    assert harness.engine.body_wanted(msg, Direction.INBOUND).room == (
        harness.settings.inbound.read_limit)


def test_a_delivery_report_keeps_its_body_without_the_bounce_strategy(make_harness: Any) -> None:
    """Only the report's body tells a delay warning (auto-generated) from a bounce."""
    base = make_harness().settings
    order = tuple(s for s in base.inbound.strategies if s != "bounce")
    h = make_harness(dataclasses.replace(
        base, inbound=dataclasses.replace(base.inbound, strategies=order)))
    msg = a_delay_warning_with_the_token_in_its_subject(h)
    assert h.engine.body_wanted(headers_only(msg), Direction.INBOUND).room > 0
    assert h.run(msg, Direction.INBOUND).one("X-Case-Auto") == "auto-generated"


def test_what_end_of_headers_found_is_not_resolved_again(harness: Any) -> None:
    msg = token_in_subject(harness)
    plan = harness.engine.body_wanted(headers_only(msg), Direction.INBOUND)
    assert plan.found is not None
    decision = harness.run(headers_only(msg), Direction.INBOUND, plan.found).decision
    # The token strategy's line of the trace comes from end of headers, once.
    assert [line for line in decision.trace if line.startswith("token:")] == [
        f"token: -> {decision.case_ids[0]}"]


def test_a_case_closed_between_end_of_headers_and_end_of_message_is_decided_afresh(
    make_harness: Any,
) -> None:
    """A reply whose case `casethread case set-state ID closed` closed after end of headers is
    decided as a reply arriving after the close, not on what end of headers found."""
    late, after = make_harness(), make_harness()
    msg_late, msg_after = token_in_subject(late), token_in_subject(after)
    plan = late.engine.body_wanted(headers_only(msg_late), Direction.INBOUND)
    assert plan.found is not None
    assert plan.found.hit.case.state is CaseState.OPEN
    for h in (late, after):
        h.set_case("C-000001", state=CaseState.CLOSED)
    decided_late = late.run(headers_only(msg_late), Direction.INBOUND, plan.found).decision
    decided_after = after.run(headers_only(msg_after), Direction.INBOUND).decision
    assert decided_late.case_ids == decided_after.case_ids
    assert decided_late.edits == decided_after.edits
    assert late.case("C-000001").state is CaseState.CLOSED


@pytest.mark.parametrize("scenario,auto", [
    (an_outlook_calendar_click_with_the_token_in_its_subject, "auto-generated"),
    (a_google_calendar_reply_with_a_note_and_the_token_in_its_subject, "no"),
    (an_exchange_rule_forward_of_our_mail_with_the_token_in_its_subject, "auto-generated"),
])
def test_the_kinds_told_by_the_body_are_those_scenarios_kinds(
        harness: Any, scenario: Callable[[Any], Message], auto: str) -> None:
    """The scenarios above are the kinds they are named for (else their equality with the
    milter's decision would check nothing)."""
    assert harness.run(scenario(harness), Direction.INBOUND).decision.auto == auto
