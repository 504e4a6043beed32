"""Automated mail checked in audit notices22: Exchange read reports and Outlook recalls that
are no `multipart/report`, list managers' notices other than Mailman's, and notices of mail
filters and list servers that quote our mail. The fixtures are written here after what the
senders' documentation and source say (Microsoft's table "Mapping PR_MESSAGE_CLASS to
DAV:contentclass" and MS-OXCMAIL; the fields of Exchange Online's recalls as public list
archives show them; RFC 2369, Groups.io's help center, ezmlm-idx, Majordomo's and sendmail's
`owner-` convention; LISTSERV's notices under the null sender, RFC 5321 §4.5.1, §4.5.5);
none is third-party mail."""

from __future__ import annotations

from typing import Any

import pytest

from casethread.core import autoreply
from casethread.core.autoreply import classify_auto_detail
from casethread.core.model import AliasKind, CaseState

AGENT = ("From", "Dana Agent <dana@support.example.com>")
PAT = ("From", "Pat Customer <pat@customer.example.org>")
TO_SUPPORT = ("To", "support@example.com")
TEXT = ("Content-Type", "text/plain; charset=us-ascii")


def stamped_case(harness: Any, state: CaseState) -> Any:
    """The agent's stamped mail to Pat opens C-000001, then the case is put in `state`."""
    sent = harness.outbound(AGENT, ("To", "Pat Customer <pat@customer.example.org>"),
                            ("Subject", "Printer jam"), TEXT,
                            body=b"Hello Pat,\n\nplease try again.\n")
    harness.set_case(sent.case_id, state=state, state_changed=int(harness.clock.now))
    return sent


def is_participant(harness: Any, case_id: str, address: str) -> bool:
    return harness.index.find(AliasKind.PARTICIPANT, f"{case_id} {address}") is not None


# -- Exchange read reports and Outlook recalls without a report type ---------------------------

MDN_CLASS = ("Content-Class", "urn:content-classes:mdn")


def read_report(prefix: str, subject: str, *marks: tuple[str, str]) -> tuple[Any, bytes]:
    """A read report as Exchange words it, as text (TNEF, or a gateway that rewrote it): the
    reader's language in the Subject, no report type, no Disposition fields."""
    fields = (PAT, ("To", "Dana Agent <dana@support.example.com>"),
              ("Subject", f"{prefix} {subject}"), ("Message-ID", "<rr.1@customer.example.org>"),
              TEXT, *marks)
    body = (f"Your message\r\n\r\n  To: Pat Customer\r\n  Subject: {subject}\r\n\r\n"
            "was read on Monday, March 2, 2026 10:05 AM.\r\n").encode()
    return fields, body


@pytest.mark.parametrize("prefix", ["Read:", "Not read:", "Gelesen:", "Lu :", "Leído:",
                                    "Letto:", "Gelezen:"])
def test_an_exchange_read_report_without_a_report_type_moves_no_case(
        harness: Any, prefix: str) -> None:
    """It threads by our Subject tag and leaves the resolved case as it is: it reopened it
    (`X-Case-Auto: no`), a text receipt being read as the customer's reply."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = read_report(prefix, sent.one("Subject"), MDN_CLASS)
    r = harness.inbound(*fields, body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == "resolved"
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_a_read_subject_alone_is_still_a_persons_mail(harness: Any) -> None:
    """Without the class, "Read:" is a Subject any person may write: a subject alone never
    makes mail automatic (*Known to go wrong*)."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = read_report("Gelesen:", sent.one("Subject"))
    r = harness.inbound(*fields, body=body)
    assert r.one("X-Case-Auto") == "no"
    assert r.one("X-Case-State") == "reopened"


RECALL_FIELDS = (("X-MS-TrafficTypeDiagnostic", "AM9PR04MB8604:EE_MessageRecallEmail"),
                 ("X-MS-Exchange-RecallReportGenerated", "true"),
                 ("X-MS-Exchange-RecallReportCfmGenerated", "true"))


def recall(subject: str, *marks: tuple[str, str]) -> tuple[Any, bytes]:
    """Exchange Online's recall to a recipient outside the organisation: text, the recalled
    mail's Subject after "Recall:", its Thread-Topic and Thread-Index."""
    fields = (PAT, TO_SUPPORT, ("Subject", f"Recall: {subject}"),
              ("Thread-Topic", subject), ("Message-ID", "<recall.1@customer.example.org>"),
              TEXT, *marks)
    body = f'Pat Customer would like to recall the message, "{subject}".\r\n'.encode()
    return fields, body


@pytest.mark.parametrize("marks", [
    RECALL_FIELDS,
    (("Content-Class", "urn:content-classes:recallmessage"),),
], ids=["exchange-online", "content-class"])
def test_a_recall_of_a_reply_moves_no_case(harness: Any, marks: Any) -> None:
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = recall("Re: " + sent.one("Subject"), *marks)
    r = harness.inbound(*fields, body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == "resolved"


def test_a_recall_of_a_new_question_opens_no_second_case(harness: Any) -> None:
    """Pat's new question opened C-000001; the recall, seconds later, opened C-000002 for the
    same question. It threads by the question's Outlook Thread-Index, which it repeats."""
    index = ("Thread-Index", "AQHbax0+kiyZjrqUmUKKTcGGrPTyxg==")
    first = harness.inbound(PAT, TO_SUPPORT, ("Subject", "Toner order"), index, TEXT,
                            ("Message-ID", "<q.1@customer.example.org>"),
                            body=b"Please send toner.\r\n")
    assert first.case_id == "C-000001"
    fields, body = recall("Toner order", index, *RECALL_FIELDS)
    r = harness.inbound(*fields, body=body)
    assert r.all("X-Case-ID") == ["C-000001"]
    assert r.one("X-Case-Match") == "thread-index"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert harness.index.get_case("C-000002") is None


def test_a_lists_copy_of_a_recall_is_no_persons_reply(build: Any) -> None:
    """A list relays the recall as it relays its poster's mail (`Precedence: bulk`,
    `List-Id`): bulk mail that names our mail would count as a person's reply."""
    fields, body = recall("Re: Printer jam", *RECALL_FIELDS)
    msg = build(*fields, ("Precedence", "bulk"), ("List-Id", "<team.lists.example.org>"),
                body=body)
    assert classify_auto_detail(msg) == ("auto-generated", "outlook-recall")


@pytest.mark.parametrize(("field", "value", "kind"), [
    ("Content-Class", "urn:content-classes:mdn", "auto-generated"),
    ("content-class", " URN:Content-Classes:MDN ", "auto-generated"),
    ("Content-Class", "urn:content-classes:recallmessage", "auto-generated"),
    ("X-MS-Exchange-RecallReportGenerated", "True", "auto-generated"),
    # Outlook's ordinary mail, and values that are no recall
    ("Content-Class", "urn:content-classes:message", "no"),
    ("Content-Class", "urn:content-classes:mdnx", "no"),
    ("X-MS-Exchange-RecallReportGenerated", "false", "no"),
    ("X-MS-Exchange-RecallReportGenerated", "", "no"),
])
def test_the_exchange_class_and_recall_field(build: Any, field: str, value: str,
                                             kind: str) -> None:
    msg = build(PAT, TO_SUPPORT, ("Subject", "Re: Printer jam"), (field, value))
    assert autoreply.classify_auto(msg) == kind


# -- list managers' notices other than Mailman's -----------------------------------------------

LIST_ID = ("List-Id", "Team <team.lists.customer.example.org>")
# Each manager's own address and the list fields that name it (RFC 2369; `Mailing-List` as
# ezmlm and Groups.io write it), on a notice with `Precedence: bulk`, as Mailman's carry.
LIST_NOTICES = {
    "groups.io": (("From", "Team Moderators <team+owner@groups.io>"),
                  ("List-Id", "<team.groups.io>"),
                  ("Mailing-List", "list team@groups.io; contact team+owner@groups.io")),
    "majordomo": (("From", "owner-team@lists.customer.example.org"), LIST_ID),
    "list-help": (("From", "SYMPA <sympa@lists.customer.example.org>"), LIST_ID,
                  ("List-Help", "<mailto:sympa@lists.customer.example.org?subject=help>")),
    "list-subscribe": (("From", "LISTSERV@LISTS.CUSTOMER.EXAMPLE.ORG"), LIST_ID,
                       ("List-Subscribe",
                        "<mailto:LISTSERV@LISTS.CUSTOMER.EXAMPLE.ORG?body=SUB%20TEAM>")),
    "ezmlm": (("From", "team-help@lists.customer.example.org"),
              ("Mailing-List", "contact team-help@lists.customer.example.org; run by ezmlm")),
}


def list_notice(name: str, subject: str) -> tuple[Any, bytes]:
    fields = (*LIST_NOTICES[name], TO_SUPPORT, ("Subject", "Your message awaits approval"),
              ("Message-ID", "<notice.1@lists.customer.example.org>"), ("Precedence", "bulk"),
              TEXT)
    body = f'Your message with the subject "{subject}" is held for the moderator.\r\n'
    return fields, body.encode()


@pytest.mark.parametrize("name", sorted(LIST_NOTICES))
def test_a_list_managers_notice_from_an_address_of_the_list_moves_no_case(
        harness: Any, name: str) -> None:
    """The notice quotes our Subject, tag and all: bulk mail naming our mail, it counted as
    the list's copy of a person's reply, reopened the resolved case and made the list's
    address one of its people."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = list_notice(name, sent.one("Subject"))
    r = harness.inbound(*fields, body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == "resolved"
    sender = dict(fields)["From"]
    assert not is_participant(harness, "C-000001", sender.rpartition("<")[2].strip(">").lower())


@pytest.mark.parametrize(("sender", "fields"), [
    # a post the list relays: its poster's From
    ("pat@customer.example.org", LIST_NOTICES["groups.io"][1:]),
    # List-Owner may name the owner's own mailbox, who posts from it
    ("kim@customer.example.org",
     (LIST_ID, ("List-Owner", "<mailto:kim@customer.example.org>"))),
    # List-Unsubscribe: on apps' and people's mail too
    ("pat@customer.example.org",
     (LIST_ID, ("List-Unsubscribe", "<mailto:pat@customer.example.org?subject=unsubscribe>"))),
    # the role of another list, or of another domain
    ("other+owner@groups.io", LIST_NOTICES["groups.io"][1:2]),
    ("owner-team@customer.example.org", (LIST_ID,)),
])
def test_a_post_from_no_address_of_the_list_stays_bulk(build: Any, sender: str,
                                                      fields: Any) -> None:
    msg = build(("From", sender), TO_SUPPORT, ("Subject", "Re: Printer jam"), *fields)
    assert autoreply.classify_auto(msg) == "bulk"


def test_a_post_from_the_list_itself_that_its_command_fields_name_is_a_persons_reply(
        harness: Any) -> None:
    """RFC 2369's own examples name the posting address as the command address
    (`<mailto:list@host.com?subject=help>`, `?subject=subscribe`), and under DMARC mitigation
    the list relays a post under that address: Pat's reply through the list is the list's
    copy of a person's reply, which reopens its case, not a list manager's notice."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    team = "team@lists.customer.example.org"
    r = harness.inbound(("From", f"Pat Customer via Team <{team}>"),
                        ("Reply-To", "pat@customer.example.org"), TO_SUPPORT,
                        ("Subject", "Re: " + sent.one("Subject")), TEXT, ("Precedence", "list"),
                        ("List-Id", "<team.lists.customer.example.org>"),
                        ("List-Post", f"<mailto:{team}>"),
                        ("List-Help", f"<mailto:{team}?subject=help>"),
                        ("List-Subscribe", f"<mailto:{team}?subject=subscribe>"),
                        ("Message-ID", "<post.1@customer.example.org>"),
                        body=b"It jams again.\r\n")
    assert r.one("X-Case-Auto") == "bulk"
    assert r.one("X-Case-State") == "reopened"


@pytest.mark.parametrize("field", ["List-Help", "List-Subscribe"])
def test_a_command_field_names_no_list_on_mail_that_names_none(build: Any, field: str) -> None:
    """Without `List-Id`, `List-Post` or `Mailing-List` the mail is no list's: an app that
    writes RFC 2369's command fields on a person's own mail, naming that person, makes
    no list manager of them."""
    msg = build(PAT, TO_SUPPORT, ("Subject", "Re: Printer jam"),
                (field, "<mailto:pat@customer.example.org?subject=help>"))
    assert classify_auto_detail(msg) == ("no", "")


# -- notices of the mail system that quote our mail ---------------------------------------------


def test_a_null_sender_notice_that_quotes_our_mail_adds_nobody(harness: Any) -> None:
    """LISTSERV sends its notices under the null sender (RFC 5321 §4.5.5), quoting the
    Subject of the post it holds: our tag found the case, and the list server's address
    became one of its people."""
    sent = stamped_case(harness, CaseState.OPEN)
    r = harness.inbound(
        ("From", '"L-Soft list server at LISTS.CUSTOMER.EXAMPLE.ORG (17.0)" '
                 "<LISTSERV@LISTS.CUSTOMER.EXAMPLE.ORG>"),
        TO_SUPPORT, ("Subject", "TEAM-L: your message is held for the editor"),
        ("Message-ID", "<held.1@LISTS.CUSTOMER.EXAMPLE.ORG>"), TEXT,
        body=f'Your message with subject "{sent.one("Subject")}" was held.\r\n'.encode(),
        mail_from="<>")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert not is_participant(harness, "C-000001", "listserv@lists.customer.example.org")


# Sympa's own notices, as its templates (`send_auth.tt2`, `reject.tt2`) and
# `Sympa::Message::Template` write them: `Auto-Submitted: auto-generated`, a Message-ID of
# Sympa's form, from the robot's `sympa@` or the list's `team-request@`, no list field.
SYMPA_FIELDS = (TO_SUPPORT, ("Auto-Submitted", "auto-generated"), ("MIME-Version", "1.0"))


def sympa_confirmation(sent: Any) -> tuple[Any, bytes]:
    """Sympa holds the agent's mail to a list it may not post to unconfirmed, and asks to
    confirm it, the held mail attached (`X-Sympa-Attach`), our token in its Subject."""
    attached = "".join(f"{h.name}: {h.value}\r\n" for h in sent.headers).encode() + b"\r\n" + (
        sent.body)
    fields = (("From", "SYMPA <sympa@lists.customer.example.org>"),
              ("Reply-To", "sympa@lists.customer.example.org"), *SYMPA_FIELDS,
              ("Subject", "Confirm 5f2a9c0d1e7b"),
              ("Message-Id", "<sympa.1772443000.4242.517@lists.customer.example.org>"),
              ("Content-Type", 'multipart/mixed; boundary="----------=_sympa.1"'))
    body = (b"------------=_sympa.1\r\nContent-Disposition: inline\r\n\r\n"
            b"To distribute the attached message in list team, follow the link below:\r\n"
            b"\r\nCONFIRM 5f2a9c0d1e7b\r\n"
            b"------------=_sympa.1\r\nContent-Type: message/rfc822\r\n"
            b"Content-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n"
            b"X-Sympa-Attach: yes\r\n\r\n" + attached + b"\r\n------------=_sympa.1--\r\n")
    return fields, body


def test_sympas_confirmation_request_that_attaches_our_mail_adds_nobody(harness: Any) -> None:
    """The token of the attached mail finds the case; Sympa's robot (and the address its
    Reply-To names) became one of the case's people, its list fields being none to tell a
    list manager's notice by."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = sympa_confirmation(sent)
    r = harness.inbound(*fields, body=body,
                        mail_from="team-owner@lists.customer.example.org")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == "resolved"
    assert not is_participant(harness, "C-000001", "sympa@lists.customer.example.org")


def test_sympas_rejection_that_quotes_our_subject_adds_nobody(harness: Any) -> None:
    """Its text quotes our Subject, tag and all, from the list's `team-request@`."""
    sent = stamped_case(harness, CaseState.OPEN)
    r = harness.inbound(
        ("From", "team-request@lists.customer.example.org"), *SYMPA_FIELDS,
        ("Subject", "Your message has been rejected."),
        ("Message-Id", "<sympa.1772443001.4242.12@lists.customer.example.org>"), TEXT,
        body=(f"Your message for list team@lists.customer.example.org\r\nhas been rejected "
              f"by the moderator (kim@customer.example.org).\r\n\r\n(Subject of your "
              f"mail: {sent.one('Subject')})\r\n").encode())
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert not is_participant(harness, "C-000001", "team-request@lists.customer.example.org")


@pytest.mark.parametrize("message_id", [
    "<sympa.1772443000.4242@lists.customer.example.org>",  # not Sympa's three numbers
    "<1772443000.4242.517.sympa@lists.customer.example.org>",
    "<sympa.a.b.c@lists.customer.example.org>",
])
def test_automatic_mail_of_another_message_id_still_adds_its_sender(
        harness: Any, message_id: str) -> None:
    """Another system's automatic mail that our token found (a vendor's helpdesk answering
    our mail, `Auto-Submitted: auto-generated` on all it sends) adds its sender as before."""
    sent = stamped_case(harness, CaseState.OPEN)
    r = harness.inbound(("From", "Vendor Support <help@vendor.example.net>"), *SYMPA_FIELDS,
                        ("Subject", "Re: " + sent.one("Subject")), ("Message-Id", message_id),
                        TEXT, body=b"We looked into it.\r\n")
    assert r.one("X-Case-Auto") == "auto-generated"
    assert is_participant(harness, "C-000001", "help@vendor.example.net")


def test_a_postmaster_digest_that_lists_a_customers_reply_adds_nobody(harness: Any) -> None:
    """Mimecast sends its digest of held mail from `postmaster@` of the organisation's own
    domain (RFC 5321 §4.5.1: the mail system's address), listing each held mail's Subject."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    r = harness.inbound(
        ("From", "Postmaster <postmaster@example.com>"), TO_SUPPORT,
        ("Subject", "Digest: 1 message on hold"), ("Message-ID", "<digest.1@example.com>"),
        ("Content-Type", "text/html; charset=utf-8"),
        body=(f"<table><tr><td>pat@customer.example.org</td><td>Re: {sent.one('Subject')}"
              "</td><td><a href='https://gw.example.net/r'>Release</a></td></tr></table>"
              ).encode())
    assert r.case_id == "C-000001"
    assert r.one("X-Case-State") == "resolved"
    assert not is_participant(harness, "C-000001", "postmaster@example.com")


def test_an_auto_reply_under_the_null_sender_still_adds_its_person(harness: Any) -> None:
    """An out-of-office of Pat's colleague Kim, Cc'd on our mail, comes under the null sender
    too (RFC 3834 §3.3): it is Kim's responder, not the mail system."""
    sent = stamped_case(harness, CaseState.OPEN)
    r = harness.inbound(("From", "Kim Colleague <kim@customer.example.org>"), TO_SUPPORT,
                        ("Subject", "Out of Office: " + sent.one("Subject")),
                        ("Auto-Submitted", "auto-replied"), TEXT,
                        body=b"I am away until Monday.\r\n", mail_from="<>")
    assert r.one("X-Case-Auto") == "auto-replied"
    assert is_participant(harness, "C-000001", "kim@customer.example.org")


# -- a mail filter's notices, from the senders the sysadmin names --------------------------------

DIGEST_FROM = "Mail Filter <quarantine-digest@mailfilter.example.com>"


def digest(listed_subject: str) -> tuple[Any, bytes]:
    """A gateway's digest of the mail it holds for support@, as Proofpoint's, Barracuda's or
    IronPort's are described: no mark of automatic mail, from the sender the site chose."""
    fields = (("From", DIGEST_FROM), TO_SUPPORT, ("Subject", "End User Digest: 1 New Message"),
              ("Message-ID", "<digest.7@mailfilter.example.com>"),
              ("Content-Type", "text/html; charset=utf-8"))
    body = ("<table><tr><td>pat@customer.example.org</td>"
            f"<td>{listed_subject}</td><td>Score 82</td>"
            "<td><a href='https://mailfilter.example.com/release?id=7'>Release</a></td></tr>"
            "</table>").encode()
    return fields, body


def with_notice_senders(make_harness: Any, tweak: Any, *senders: str) -> Any:
    return make_harness(tweak(inbound={"addresses": ("support@example.com",),
                                       "notice_senders": senders}))


@pytest.mark.parametrize("named", ["quarantine-digest@mailfilter.example.com",
                                   "@mailfilter.example.com", "*-digest@mailfilter.*"])
def test_a_named_filters_digest_threads_without_moving_the_case(
        make_harness: Any, tweak: Any, named: str) -> None:
    """Listed with our tag, the held reply made the digest a person's reply: it reopened the
    resolved case and made the filter's address one of its people."""
    h = with_notice_senders(make_harness, tweak, named)
    sent = stamped_case(h, CaseState.RESOLVED)
    fields, body = digest("Re: " + sent.one("Subject"))
    r = h.inbound(*fields, body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert "auto: auto-generated (notice-sender)" in r.decision.trace
    assert r.one("X-Case-State") == "resolved"
    assert not is_participant(h, "C-000001", "quarantine-digest@mailfilter.example.com")


def test_a_named_filters_digest_of_a_new_question_opens_no_case(make_harness: Any,
                                                                 tweak: Any) -> None:
    h = with_notice_senders(make_harness, tweak, "quarantine-digest@mailfilter.example.com")
    fields, body = digest("Printer jam")
    r = h.inbound(*fields, body=body)
    assert r.one("X-Case-Match") == "none"
    assert r.all("X-Case-ID") == []


def test_an_unnamed_filters_digest_is_read_as_any_mail(harness: Any) -> None:
    """Nothing in the digest tells it from a person's mail (*Known to go wrong*)."""
    fields, body = digest("Printer jam")
    r = harness.inbound(*fields, body=body)
    assert r.one("X-Case-Auto") == "no"
    assert r.one("X-Case-Match") == "new"


@pytest.mark.parametrize("sender", [
    "Pat Customer <pat@customer.example.org>",
    '"quarantine-digest@mailfilter.example.com" <eve@elsewhere.example>',  # the name only
    "quarantine-digest@mailfilter.example.com.example.net",
])
def test_only_the_named_senders_mail_is_a_notice(make_harness: Any, tweak: Any,
                                                 sender: str) -> None:
    h = with_notice_senders(make_harness, tweak, "quarantine-digest@mailfilter.example.com")
    r = h.inbound(("From", sender), TO_SUPPORT, ("Subject", "Printer jam"), TEXT,
                  body=b"Hello\r\n")
    assert r.one("X-Case-Auto") == "no"
