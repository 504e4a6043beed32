"""X-Case-Auto of challenge-response anti-spam systems' challenges to our mail, and of other
helpdesks' and responders' mail whose fields were checked against their sources (audit
ooo19). The fixtures are written here after the fields the sources name, not copied from
anyone's mail:

- SpamAssassin `rules/20_vbounce.cf` (`__CRBOUNCE_SPAMARREST exists:X-Spamarrest-noauth`,
  `__AUTO_GEN_CM exists:X-Choicemail-Registration-Request`, `__AUTO_GEN_BBTL
  exists:X-Bluebottle-Request`, `__AUTO_GEN_XBT exists:X-Boxtrapper`);
- cPanel BoxTrapper's challenge (`X-Boxtrapper`, `X-Autorespond`, `Precedence: auto_reply`,
  `X-Precedence: auto_reply`, "Your email requires verification verify#...") and its forward
  list, which adds `X-Boxtrapper` to the people's mail it forwards;
- TMDA's `TMDA/AutoResponse.py` (`Precedence: bulk`, `Auto-Submitted: auto-replied` on a
  confirmation request, `auto-generated (failure)` on a failure notice, `X-Delivery-Agent`),
  and lists' archives where `X-Delivery-Agent: TMDA/...` is on its users' own mail;
- Freshdesk's mail (`notification.freshdesk.com`: `Auto-Submitted: auto-generated`,
  `X-Auto-Response-Suppress: DR, RN, OOF, AutoReply`, also on mail an agent sent);
- Znuny/OTRS `Kernel/System/Email.pm` (`Loop`: `X-Loop: yes`, `Precedence: bulk`,
  `Auto-Submitted: auto-generated`; OTRS 0.5 put `X-OTRS-Loop` on all its mail);
- atlassian-mail's `Email.loadDefaultHeaders` (`Precedence: bulk` and `Auto-Submitted:
  auto-generated` on all Jira mail, JRA-2622, JRA-15325; an admin option removes both, and
  `X-JIRA-FingerPrint` stays);
- osTicket issue #396 (`X-Autoreply: yes`, `Auto-Submitted: auto-replied`,
  `X-Auto-Response-Suppress: AutoReply`), FreeScout issue #4226 (OpenSRS's `X-Autoresponder:
  Will not send another autoreply for 86400 seconds`), Webmin's autoreply.pl
  (`X-Webmin-Autoreply: 1`, `Auto-Submitted: auto-replied`, `Precedence: Junk`);
- Salesforce's Visualforce email header doc (`X-SFDC-LK` on a template mail an org sends),
  Mail.ru's postmaster tag `X-Mailru-Msgtype` (a bulk sender's feedback-loop id);
- (audit ooo20) an Exchange 2013 mailbox rule's reply to a support address, as camilord/utilus
  `tests/Net/EmailUtilusTest.php` holds its header (`X-Auto-Response-Suppress: All`,
  `X-MS-Exchange-Inbox-Rules-Loop`, `Auto-Submitted: auto-generated`,
  `X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent`, a Subject of the rule's own);
  ServiceNow's mail (osTicket issue #6380: `Auto-Submitted: auto-generated` on all of it, an
  agent's too; with `Precedence: bulk` in Zammad's fixture mail090); Redmine's
  `Mailer#mail` defaults (`Auto-Submitted: auto-generated`, `X-Auto-Response-Suppress: All`,
  `List-Id`); Roundcube's managesieve vacation form, whose default Subject is "Auto: <the
  Subject>" (Pigeonhole's vacation adds `Auto-Submitted: auto-replied`)."""
from __future__ import annotations

import time
from typing import Any

import pytest

from casethread.core import autoreply
from casethread.core.autoreply import classify_auto_detail
from casethread.core.message import Envelope, Header, Message

PAT = ("From", "Pat Customer <pat@customer.example.org>")

# (field, value, the signal's name): each a challenge's only mark.
CHALLENGE_MARKS = [
    ("X-Spamarrest-noauth", "1", "x-spamarrest-noauth"),  # Spam Arrest
    ("X-Choicemail-Registration-Request", "1", "x-choicemail-registration-request"),  # ChoiceMail
    ("X-Bluebottle-Request", "pat@customer.example.org", "x-bluebottle-request"),  # Bluebottle
]


def msg(*fields: tuple[str, str], mail_from: str = "<pat@customer.example.org>",
        subject: str = "Re: Printer jam") -> Message:
    base = (PAT, ("To", "support@example.com"), ("Subject", subject))
    return Message(Envelope(mail_from=mail_from, rcpts=("support@example.com",)),
                   tuple(Header(n, v) for n, v in (*base, *fields)))


@pytest.mark.parametrize(("name", "value", "signal"), CHALLENGE_MARKS)
def test_a_challenge_response_systems_field_is_an_auto_reply(
        name: str, value: str, signal: str) -> None:
    """Its challenge quotes our mail and keeps our Subject (our token): before, it was a
    person's reply and reopened a resolved case, or opened a case of its own."""
    assert classify_auto_detail(msg((name, value))) == ("auto-replied", signal)
    assert classify_auto_detail(msg((name.upper(), value))) == ("auto-replied", signal)
    # SpamAssassin's rules ask only that the field exists: an empty value counts too.
    assert classify_auto_detail(msg((name, ""))) == ("auto-replied", signal)


# Shapes that were already read right: (fields, envelope sender, Subject, expected).
KNOWN_SHAPES = [
    # cPanel BoxTrapper's challenge: its X-Autorespond tells it.
    ([("X-Boxtrapper", "k2pG7wXZ"), ("X-Autorespond", "k2pG7wXZ"), ("Precedence", "auto_reply"),
      ("X-Precedence", "auto_reply")], "<pat@customer.example.org>",
     "Your email requires verification verify#rytsCps-1755808398",
     ("auto-replied", "x-autorespond")),
    # TMDA's confirmation request and its failure notice.
    ([("Precedence", "bulk"), ("Auto-Submitted", "auto-replied"),
      ("X-Delivery-Agent", "TMDA/1.1.12 (Macallan)")], "<>", "Re: Printer jam",
     ("auto-replied", "auto-submitted")),
    ([("Precedence", "bulk"), ("Auto-Submitted", "auto-generated (failure)"),
      ("X-Delivery-Agent", "TMDA/1.1.12 (Macallan)")], "<pat-bounce@customer.example.org>",
     "Message delivery failure notice", ("auto-generated", "auto-submitted")),
    # Freshdesk: its acknowledgement and its agents' mail alike.
    ([("Auto-Submitted", "auto-generated"),
      ("X-Auto-Response-Suppress", "DR, RN, OOF, AutoReply")], "<bounce@freshdesk.example>",
     "Ticket Received - 286614", ("auto-generated", "auto-submitted")),
    # Znuny/OTRS auto response (`Loop`).
    ([("X-Loop", "yes"), ("Precedence", "bulk"), ("Auto-Submitted", "auto-generated")],
     "<otrs@customer.example.org>", "[Ticket#2026113010000012] Re: Printer jam",
     ("auto-generated", "auto-submitted")),
    # Jira (Service Management) mail of atlassian-mail's defaults: agents' comments too.
    ([("Precedence", "bulk"), ("Auto-Submitted", "auto-generated"),
      ("X-JIRA-FingerPrint", "ba86a44d1de16baf461a884e98837e6f")], "<jira@customer.example.org>",
     "[JIRA] (SUP-17) Printer jam", ("auto-generated", "auto-submitted")),
    # RT: an agent's reply (the agent in X-RT-Originator) is bulk.
    ([("Precedence", "bulk"), ("X-RT-Loop-Prevention", "rt.customer.example.org"),
      ("X-RT-Ticket", "rt.customer.example.org #4711"),
      ("X-RT-Originator", "kim@customer.example.org")], "<rt@customer.example.org>",
     "[rt.customer.example.org #4711] Re: Printer jam", ("bulk", "precedence")),
    # osTicket's autoresponse.
    ([("X-Autoreply", "yes"), ("Auto-Submitted", "auto-replied"),
      ("X-Auto-Response-Suppress", "AutoReply")], "<tickets@customer.example.org>",
     "Support Ticket Opened [#118204]", ("auto-replied", "auto-submitted")),
    # OpenSRS's responder as FreeScout #4226 shows it.
    ([("X-Autoresponder", "Will not send another autoreply for 86400 seconds")],
     "<pat@customer.example.org>", "Re: Printer jam", ("auto-replied", "x-autoresponder")),
    # Webmin's autoreply.pl.
    ([("X-Webmin-Autoreply", "1"), ("Auto-Submitted", "auto-replied"), ("Precedence", "Junk")],
     "<pat@customer.example.org>", "Re: Printer jam", ("auto-replied", "auto-submitted")),
    # An Exchange 2013 mailbox rule's reply: its Subject is the rule's, no out-of-office phrase.
    ([("X-Auto-Response-Suppress", "All"),
      ("X-MS-Exchange-Inbox-Rules-Loop", "pat@customer.example.org"),
      ("Auto-Submitted", "auto-generated"),
      ("X-MS-Exchange-Generated-Message-Source", "Mailbox Rules Agent")],
     "<pat@customer.example.org>", "Customer Autoreply", ("auto-replied", "exchange-rule-reply")),
    # ServiceNow's notification (its acknowledgement and its agents' comments alike).
    ([("Precedence", "bulk"), ("Auto-Submitted", "auto-generated")],
     "<instance@service-now.example.net>", "Incident INC0012345 has been opened on your behalf",
     ("auto-generated", "auto-submitted")),
    # Redmine (a helpdesk plugin's acknowledgement too): machine mail before list mail.
    ([("X-Mailer", "Redmine"), ("X-Auto-Response-Suppress", "All"),
      ("Auto-Submitted", "auto-generated"), ("List-Id", "<redmine.customer.example.org>")],
     "<redmine@customer.example.org>", "[Helpdesk - Support #4711] (New) Printer jam",
     ("auto-generated", "auto-submitted")),
    # Sieve vacation under Roundcube's default Subject.
    ([("Auto-Submitted", "auto-replied (vacation)"), ("Precedence", "bulk")], "<>",
     "Auto: Re: Printer jam", ("auto-replied", "auto-submitted")),
]


@pytest.mark.parametrize(("fields", "mail_from", "subject", "expected"), KNOWN_SHAPES)
def test_shapes_already_read_right(fields: list[tuple[str, str]], mail_from: str, subject: str,
                                   expected: tuple[str, str]) -> None:
    assert classify_auto_detail(msg(*fields, mail_from=mail_from, subject=subject)) == expected


@pytest.mark.parametrize("fields", [
    [("X-Boxtrapper", "k2pG7wXZewdqT")],  # BoxTrapper's forward of a person's mail
    [("X-Delivery-Agent", "TMDA/1.1.12 (Macallan)")],  # a TMDA user's own mail
    [("X-Mailru-Msgtype", "letter-shop")],  # a sender's feedback-loop id, no responder's
    [("X-JIRA-FingerPrint", "ba86a44d1de16baf461a884e98837e6f")],  # Jira without its defaults
    [("X-SFDC-LK", "00Dx000000099jh"), ("X-SFDC-User", "005x0000000upVu")],  # Salesforce mail
    [("X-OTRS-Loop", "support@customer.example.org")],  # OTRS 0.5 put it on every mail
    [("X-RT-Loop-Prevention", "rt.customer.example.org")],
    [("X-Spamarrest-speedcode", "1234")],  # not the field SpamAssassin reads
    [("X-Choicemail-Registered", "yes")],
    [("X-Amazon-Auto-Reply", "")],  # ezmlm-weed's list: an empty value, like any unknown field
])
def test_lookalike_fields_of_a_persons_mail_are_no_mark(
        fields: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fields these systems also put on a person's mail, or on mail that is no responder's:
    the mail stays a person's (`no`), told by the one test of mail with no signal field."""
    def slow_path(*args: Any) -> Any:
        raise AssertionError("the steps of mail with a signal field were taken")

    monkeypatch.setattr(autoreply, "_submitted", slow_path)
    assert classify_auto_detail(msg(*fields), lambda address: False) == ("no", "")


def test_a_hundred_100_kb_challenge_fields_are_read_in_linear_time() -> None:
    """Their presence is the mark: no value is read."""
    m = msg(*[("X-Spamarrest-noauth", "(" * 100_000)] * 100,
            *[("X-Bluebottle-Request", "x\r\n " * 25_000)] * 100, mail_from="<>")
    started = time.process_time()
    assert classify_auto_detail(m) == ("auto-replied", "x-spamarrest-noauth")
    autoreply.is_delivery_notice(m)
    assert time.process_time() - started < 0.5
