"""Mail from a customer whose own mail goes through their helpdesk (audit realmail24): its
acknowledgement of our mail, its notifications, and its agents' typed replies. The fixtures
are written here after the fields the vendors' sources and documentation name, not copied
from anyone's mail:

- Salesforce Help, knowledge article 000390062 ("Auto-Response emails do not create Email
  message or Case"): an auto-response rule's mail (Email-to-Case's, Web-to-Case's
  acknowledgement) is told by the presence of `X-SFDC-AutoResponse`, which Salesforce's own
  Email-to-Case reads to drop it; its other mail carries `X-SFDC-LK`, `X-SFDC-User`,
  `X-SFDC-EmailCategory` and no mark of automatic mail;
- Frappe Helpdesk's `HDTicket` (frappe/helpdesk): its acknowledgement ("Ticket #N: We've
  received your request"; some versions "[Request received] <the Subject>"), feedback request
  and inactivity reminder carry `X-Auto-Generated: hd-acknowledgement` (`hd-email-feedback`,
  `hd-inactivity`) and no other mark (Frappe's mail adds `X-Frappe-Site`); an agent's reply
  ("Re: <the Subject> (#N)") carries none;
- FreeScout's `SendAutoReply` job: a mailbox's auto-reply to a new conversation carries
  In-Reply-To and References naming the mail that opened it, and no mark of an auto-reply
  but its Message-ID, `autoreply-THREAD-MD5@domain` (`MailHelper::
  MESSAGE_ID_PREFIX_AUTO_REPLY`; later versions a 16-digit hash, and a prefix of theirs,
  `FS_autoreply-...`; FreeScout issue #2445 shows one in a loop with Freshdesk);
- GLPI's `NotificationMailing::sendNotification` (`Auto-Submitted: auto-generated`,
  `X-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN` in every queued notification's headers, a
  technician's followup to the requester too: such a reply is `auto-generated`, as Zendesk's
  agents' replies are, README *Known to go wrong*);
- Zammad's `Channel::EmailBuild.build`: `X-Loop: yes`, `Precedence: bulk`, `Auto-Submitted:
  auto-generated` and `X-Auto-Response-Suppress: All` on notifications and trigger mail
  only; an agent's article carries `X-Mailer: Zammad Mail Service` and nothing else of it,
  under "Agent via Group <support@...>" and a Subject with its `[Ticket#...]` hook.
"""

from __future__ import annotations

from typing import Any

import pytest

from casethread.core.autoreply import classify_auto_detail
from casethread.core.message import Envelope, Header, Message
from casethread.core.model import CaseState, Direction

AGENT = ("From", "Dana Agent <dana@support.example.com>")
HELPDESK = "support@customer.example.org"
TO_HELPDESK = ("To", f"Customer IT <{HELPDESK}>")
# Salesforce's fields on all the mail an org sends (ids of our own).
SFDC = [("X-SFDC-LK", "00Dx0000000AbCd"), ("X-SFDC-User", "005x0000001EfGh"),
        ("X-Sender", "postmaster@salesforce.com"), ("X-SFDC-EmailCategory", "caseAutoResponse")]


def message(*fields: tuple[str, str], body: bytes = b"Thank you, we received it.\r\n",
            mail_from: str = "<bounce@customer.example.org>") -> Message:
    return Message(Envelope(mail_from=mail_from, rcpts=("support@example.com",)),
                   tuple(Header(n, v) for n, v in fields), body)


def resolved_case(h: Any) -> Any:
    """Our answer to the customer's helpdesk address, its case since resolved."""
    sent = h.outbound(AGENT, TO_HELPDESK, ("Subject", "Printer jam"),
                      ("Message-ID", "<answer-1@support.example.com>"))
    h.set_case(sent.case_id, state=CaseState.RESOLVED)
    return sent


@pytest.mark.parametrize("value", ["1", "true", ""])
def test_a_salesforce_auto_response_is_an_auto_reply(value: str) -> None:
    """Present with any value, as Salesforce's own Email-to-Case reads it."""
    m = message(("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "Case 00001234 received"), *SFDC, ("X-SFDC-AutoResponse", value))
    assert classify_auto_detail(m) == ("auto-replied", "x-sfdc-autoresponse")


def test_salesforce_mail_without_the_field_is_a_persons() -> None:
    """An agent's answer from a Salesforce case carries the org's fields, no mark."""
    m = message(("From", f"Kim <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "RE: Printer jam"), *SFDC[:3],
                ("X-SFDC-EmailCategory", "emailPublisherEmail"))
    assert classify_auto_detail(m) == ("no", "")


def test_a_salesforce_acknowledgement_of_our_mail_does_not_reopen_its_case(
        harness: Any) -> None:
    """Email-to-Case answers our answer with its auto-response rule's template, which keeps
    our Subject (our tag): it threads, and the case stays resolved (before, it was read as
    a person's reply and reopened the case; an app that acknowledges it in turn starts the
    ping-pong of two helpdesks)."""
    sent = resolved_case(harness)
    r = harness.run(message(
        ("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", f"Case 00001234 created: {sent.one('Subject')}"),
        ("Message-ID", "<sf-ack-1@customer.example.org>"), *SFDC,
        ("X-SFDC-AutoResponse", "1")), Direction.INBOUND)
    assert r.case_id == sent.case_id, r.ours()
    assert (r.one("X-Case-Auto"), r.one("X-Case-State")) == ("auto-replied", "resolved")


def test_a_salesforce_acknowledgement_that_names_no_case_opens_none(harness: Any) -> None:
    r = harness.run(message(
        ("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", "Case 00001235 created: Your order"),
        ("Message-ID", "<sf-ack-2@customer.example.org>"), *SFDC,
        ("X-SFDC-AutoResponse", "1")), Direction.INBOUND)
    assert r.all("X-Case-ID") == [] and r.one("X-Case-Match") == "none", r.ours()
    assert r.one("X-Case-Auto") == "auto-replied"


FRAPPE_SITE = ("X-Frappe-Site", "https://helpdesk.customer.example.org")


@pytest.mark.parametrize("value", ["hd-acknowledgement", "hd-email-feedback", "hd-inactivity"])
def test_frappe_helpdesks_own_mail_is_auto_generated(value: str) -> None:
    m = message(("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "Ticket #4711: We've received your request"), FRAPPE_SITE,
                ("X-Auto-Generated", value))
    assert classify_auto_detail(m) == ("auto-generated", "x-auto-generated")


@pytest.mark.parametrize("value", ["", "no", "false"])
def test_a_negative_x_auto_generated_is_no_mark(value: str) -> None:
    m = message(("From", f"Kim <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "Re: Printer jam (#4711)"), FRAPPE_SITE, ("X-Auto-Generated", value))
    assert classify_auto_detail(m) == ("no", "")


def test_frappe_helpdesks_acknowledgement_neither_reopens_nor_opens_a_case(
        harness: Any) -> None:
    """Its acknowledgement of our answer, under "[Request received] <our Subject>", reopened
    the resolved case; under "Ticket #N: We've received your request" (no tag, no
    In-Reply-To) it opened a new case, which an app's acknowledgement answers in turn."""
    sent = resolved_case(harness)
    r = harness.run(message(
        ("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", f"[Request received] {sent.one('Subject')}"), FRAPPE_SITE,
        ("Message-ID", "<hd-ack-1@customer.example.org>"),
        ("X-Auto-Generated", "hd-acknowledgement")), Direction.INBOUND)
    assert r.case_id == sent.case_id, r.ours()
    assert (r.one("X-Case-Auto"), r.one("X-Case-State")) == ("auto-generated", "resolved")
    r = harness.run(message(
        ("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", "Ticket #4712: We've received your request"), FRAPPE_SITE,
        ("Message-ID", "<hd-ack-2@customer.example.org>"),
        ("X-Auto-Generated", "hd-acknowledgement")), Direction.INBOUND)
    assert r.all("X-Case-ID") == [] and r.one("X-Case-Auto") == "auto-generated", r.ours()


FREESCOUT_IDS = ["<autoreply-4711-5f4dcc3b5aa765d61d8327deb882cf99@customer.example.org>",
                 "<FS_autoreply-4711-5f4dcc3b5aa765d6@customer.example.org>",
                 " <autoreply-4711-5f4dcc3b5aa765d6@customer.example.org>"]


@pytest.mark.parametrize("message_id", FREESCOUT_IDS)
def test_a_freescout_auto_reply_is_told_by_its_message_id(message_id: str) -> None:
    m = message(("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "Re: Printer jam"), ("Message-ID", message_id),
                ("In-Reply-To", "<answer-1@support.example.com>"))
    assert classify_auto_detail(m) == ("auto-replied", "freescout-autoreply")


@pytest.mark.parametrize("message_id", [
    "<autoreply@customer.example.org>", "<autoreply-4711@customer.example.org>",
    "<autoreply-4711-xyz@customer.example.org>", "<reply-4711-5f4dcc3b5aa765d6@x.example>",
    "<CAautoreply-4711-5f4dcc3b5aa765d6@mail.gmail.com>",
    "<conversation-4711-5f4dcc3b5aa765d6@customer.example.org>"])
def test_other_message_ids_are_no_mark(message_id: str) -> None:
    """FreeScout's agents' replies (`reply-...`) and notifications are a person's or no
    auto-reply; an ID that only holds the word is no FreeScout auto-reply's."""
    m = message(("From", f"Kim <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", "Re: Printer jam"), ("Message-ID", message_id))
    assert classify_auto_detail(m) == ("no", "")


def test_a_freescout_auto_reply_leaves_a_waiting_case_waiting(harness: Any) -> None:
    """Our answer opens a conversation in the customer's FreeScout, which auto-replies with
    In-Reply-To naming it: the case waiting for the customer was taken back to open, as if
    the customer had answered."""
    sent = harness.outbound(AGENT, TO_HELPDESK, ("Subject", "Printer jam"),
                            ("Message-ID", "<answer-1@support.example.com>"))
    harness.set_case(sent.case_id, state=CaseState.WAITING)
    r = harness.run(message(
        ("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", "Re: Printer jam"), ("Message-ID", FREESCOUT_IDS[0]),
        ("In-Reply-To", "<answer-1@support.example.com>"),
        ("References", "<answer-1@support.example.com>")), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match")) == (sent.case_id, "in-reply-to")
    assert (r.one("X-Case-Auto"), r.one("X-Case-State")) == ("auto-replied", "waiting")


# Shapes that were already read right: (fields, envelope sender, Subject, expected).
ALREADY_RIGHT = [
    # GLPI's notification (its acknowledgement and its followups alike).
    ([("Auto-Submitted", "auto-generated"),
      ("X-Auto-Response-Suppress", "OOF, DR, NDR, RN, NRN")], "<glpi@customer.example.org>",
     "[GLPI #0004711] New ticket Printer jam", ("auto-generated", "auto-submitted")),
    # Zammad's trigger mail ("Request received").
    ([("X-Loop", "yes"), ("Precedence", "bulk"), ("Auto-Submitted", "auto-generated"),
      ("X-Auto-Response-Suppress", "All"), ("X-Mailer", "Zammad Mail Service")],
     "<zammad@customer.example.org>", "Thanks for your inquiry (Printer jam) [Ticket#31001]",
     ("auto-generated", "auto-submitted")),
    # A Zammad agent's article: a person's mail.
    ([("X-Mailer", "Zammad Mail Service")], "<zammad@customer.example.org>",
     "RE: Printer jam [Ticket#31001]", ("no", "")),
    # A Frappe Helpdesk agent's reply: a person's mail.
    ([FRAPPE_SITE], "<helpdesk@customer.example.org>", "Re: Printer jam (#4711)", ("no", "")),
]


@pytest.mark.parametrize(("fields", "mail_from", "subject", "expected"), ALREADY_RIGHT)
def test_helpdesk_shapes_already_read_right(fields: list[tuple[str, str]], mail_from: str,
                                            subject: str, expected: tuple[str, str]) -> None:
    m = message(("From", f"Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
                ("Subject", subject), *fields, mail_from=mail_from)
    assert classify_auto_detail(m) == expected


def test_an_agents_reply_from_their_helpdesk_threads_as_a_persons(harness: Any) -> None:
    """Zammad puts its ticket hook after our tag and writes "Agent via Group" over the
    helpdesk's address; the reply reopens the case and its sender is known (the address our
    answer went to)."""
    sent = resolved_case(harness)
    r = harness.run(message(
        ("From", f"Kim Tech via Customer IT <{HELPDESK}>"), ("To", "support@example.com"),
        ("Subject", f"RE: {sent.one('Subject')} [Ticket#31001]"),
        ("Message-ID", "<z-1@customer.example.org>"), ("X-Mailer", "Zammad Mail Service")),
        Direction.INBOUND)
    assert r.case_id == sent.case_id
    assert r.one("X-Case-Auto") == "no" and r.one("X-Case-State") == "reopened"
    assert r.one("X-Case-Sender") == "known"
