"""Automated and semi-automated mail a support address receives (audit realmail21): the
list manager's own notices, a bounce's returned header under a type name of its own, a mail
filter's quarantine notification. The fixtures are written here after the senders' formats
(Mailman 2's `Message.UserNotification` and `postheld.txt`, Mailman 3's hold notice,
Microsoft's description of its quarantine notification); none is third-party mail."""

from __future__ import annotations

from typing import Any

import pytest

from casethread.core import autoreply
from casethread.core.message import parse_raw
from casethread.core.model import AliasKind, CaseState
from casethread.core.settings import ExternalRefRule, Settings

AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_CUSTOMER = ("To", "Pat Customer <pat@customer.example.org>")


def stamped_case(harness: Any, state: CaseState) -> Any:
    """The agent's stamped mail to Pat opens C-000001, then the case is put in `state`."""
    sent = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"),
                            ("Content-Type", "text/plain; charset=us-ascii"),
                            body=b"Hello Pat,\n\nplease try again.\n")
    harness.set_case(sent.case_id, state=state, state_changed=int(harness.clock.now))
    return sent


def mailman_hold_notice(version: str, administrivia: str | None) -> list[tuple[str, str]]:
    """What Mailman 2 sends the poster of a held post (`Message.UserNotification`, CookHeaders'
    reduced list headers): from the list's -owner address, `Precedence: bulk`, `List-Id` and
    `X-List-Administrivia: yes`; its text quotes the held post's Subject."""
    fields = [
        ("From", "team-owner@lists.customer.example.org"),
        ("To", "support@example.com"),
        ("Subject", "Your message to Team awaits moderator approval"),
        ("Message-ID", "<mailman.7.1772443000.1234.team@lists.customer.example.org>"),
        ("Content-Type", "text/plain; charset=us-ascii"),
        ("Precedence", "bulk"),
        ("X-BeenThere", "team@lists.customer.example.org"),
        ("X-Mailman-Version", version),
        ("List-Id", "Team <team.lists.customer.example.org>"),
    ]
    if administrivia is not None:
        fields.append(("X-List-Administrivia", administrivia))
    return fields


def mailman3_hold_notice(sender: str = "team-bounces@lists.customer.example.org",
                         ) -> list[tuple[str, str]]:
    """Mailman 3's (`chains/hold.py`: from the list's -bounces address; `UserNotification`'s
    `Precedence: bulk`; the rfc-2369 handler's List-* fields without List-Post, and no
    `X-List-Administrivia`)."""
    return [
        ("From", sender),
        ("To", "support@example.com"),
        ("Subject", "Your message to team@lists.customer.example.org awaits moderator approval"),
        ("Message-ID", "<177244300012.4321.99@lists.customer.example.org>"),
        ("Content-Type", "text/plain; charset=us-ascii"),
        ("Precedence", "bulk"),
        ("List-Id", "<team.lists.customer.example.org>"),
        ("List-Help", "<mailto:team-request@lists.customer.example.org?subject=help>"),
        ("List-Owner", "<mailto:team-owner@lists.customer.example.org>"),
        ("List-Subscribe", "<mailto:team-join@lists.customer.example.org>"),
        ("List-Unsubscribe", "<mailto:team-leave@lists.customer.example.org>"),
    ]


HOLD_TEXT = ("Your mail to 'Team' with the subject\n\n    {subject}\n\n"
             "Is being held until the list moderator can review it for approval.\n\n"
             "The reason it is being held:\n\n    Post by non-member to a members-only list\n")

HOLD_NOTICES = {
    "mailman2": lambda: mailman_hold_notice("2.1.39", "yes"),
    "mailman3": mailman3_hold_notice,
}


@pytest.mark.parametrize("notice", sorted(HOLD_NOTICES))
@pytest.mark.parametrize("state", [CaseState.RESOLVED, CaseState.WAITING])
def test_a_mailman_hold_notice_threads_without_changing_the_case(
        harness: Any, notice: str, state: CaseState) -> None:
    """The agent's answer went to Pat and Cc to Pat's team list, which holds mail of
    non-members: Mailman's notice to support@ quotes our Subject, tag and all. It belongs
    with the case, but it is no one's reply: it reopened a resolved case and took a waiting
    one back to open (`bulk` mail whose token names our mail counted as a list's copy of a
    person's reply)."""
    sent = stamped_case(harness, state)
    subject = sent.one("Subject")
    fields = HOLD_NOTICES[notice]()
    r = harness.inbound(*fields, body=HOLD_TEXT.format(subject=subject).encode())
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "token"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == state.value
    assert harness.case("C-000001").state is state
    # The list's own address is no person of the case (it would be `known` from then on).
    assert not is_participant(harness, "C-000001", dict(fields)["From"])


def test_a_mailman_hold_notice_that_names_no_case_opens_none(harness: Any) -> None:
    r = harness.inbound(*mailman_hold_notice("2.1.39", "yes"),
                        body=HOLD_TEXT.format(subject="Hello team").encode())
    assert r.one("X-Case-Match") == "none"
    assert r.all("X-Case-ID") == []


@pytest.mark.parametrize(("value", "kind"), [
    ("yes", "auto-generated"),
    (" Yes ", "auto-generated"),
    ("no", "bulk"),   # no mark: the list fields alone make it bulk
    ("", "bulk"),
])
def test_x_list_administrivia_reads_yes_only(build: Any, value: str, kind: str) -> None:
    fields = [f for f in mailman_hold_notice("2.1.39", value) if f[0] != "From"]
    assert autoreply.classify_auto(build(("From", "pat@customer.example.org"), *fields)) == kind


@pytest.mark.parametrize(("sender", "kind"), [
    ("team-bounces@lists.customer.example.org", "auto-generated"),
    ("Team <TEAM-Owner@Lists.Customer.Example.org>", "auto-generated"),
    ("team-request@lists.customer.example.org", "auto-generated"),
    # a post the list relays: from its poster, or from the list under DMARC mitigation
    ("pat@customer.example.org", "bulk"),
    ("'Pat' via Team <team@lists.customer.example.org>", "bulk"),
    # another list's or another domain's address of that shape
    ("other-bounces@lists.customer.example.org", "bulk"),
    ("team-bounces@customer.example.org", "bulk"),
])
def test_a_notice_from_the_lists_own_address(build: Any, sender: str, kind: str) -> None:
    assert autoreply.classify_auto(build(*mailman3_hold_notice(sender))) == kind


def test_the_list_copy_of_a_persons_reply_still_reopens(harness: Any) -> None:
    """A post the list relays (its poster's From, no administrivia field): bulk mail that
    names our mail by its token still counts as the person's reply (*Automatic mail*)."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    r = harness.inbound(("From", "Pat Customer <pat@customer.example.org>"),
                        ("To", "team@lists.customer.example.org"),
                        ("Subject", "Re: " + sent.one("Subject")),
                        ("Message-ID", "<reply.1@customer.example.org>"),
                        ("Precedence", "list"),
                        ("List-Id", "Team <team.lists.customer.example.org>"),
                        ("List-Post", "<mailto:team@lists.customer.example.org>"),
                        body=b"Thanks, it works.\n")
    assert r.one("X-Case-Auto") == "bulk"
    assert r.one("X-Case-State") == "reopened"


# A Google Group that is support@example.com (its List-Id read as that address, RFC 2919).
OUR_LIST = (("Precedence", "list"), ("List-Id", "Support <support.example.com>"),
            ("List-Post", "<mailto:support@example.com>"))


# Mailman adds `Precedence: list` only to mail that has no Precedence: its copy keeps the
# responder's `junk` alone, and its `subject_prefix` writes `[Support] ` before the Subject.
MAILMAN = (("X-Mailman-Version", "2.1.39"), *OUR_LIST[1:])


@pytest.mark.parametrize(("precedence", "prefix", "list_fields"), [
    ("junk", "Re: ", OUR_LIST),  # vacation(1)'s only mark, beside the list's own `list`
    ("bulk", "Out of Office: ", OUR_LIST),  # the vacation(1) man page's example message
    ("junk", "[Support] Out of Office: ", MAILMAN),  # told after the list's tag
])
def test_our_own_lists_copy_of_a_vacation_reply_leaves_the_case(
        harness: Any, precedence: str, prefix: str, list_fields: tuple[tuple[str, str], ...]
) -> None:
    """Our mail's envelope sender is support@, the list: the customer's vacation(1) answers
    it there and the list relays the reply, our token kept. Its list fields say nothing (it
    relays people's mail), but the responder's mark does: read as bulk mail that answers
    our mail, it reopened the resolved case."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    r = harness.inbound(("From", "'Pat Customer' via Support <support@example.com>"),
                        ("To", "support@example.com"),
                        ("Subject", prefix + sent.one("Subject")),
                        ("Message-ID", "<away.1@customer.example.org>"),
                        ("Precedence", precedence), *list_fields,
                        body=b"I am away until Monday.\n")
    assert r.one("X-Case-Match") == "token"
    assert r.one("X-Case-Auto") == "auto-replied"
    assert r.one("X-Case-State") == "resolved"
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_our_own_lists_bulk_or_junk_alone_is_no_vacation_reply(build: Any) -> None:
    """A list may write `Precedence: bulk` or `junk` on every post it relays: without its own
    `Precedence: list` beside the junk, or an out-of-office subject, it tells no reply."""
    ours = {"support@example.com"}.__contains__
    for precedence in ("junk", "bulk"):
        post = build(("From", "Pat Customer <pat@customer.example.org>"),
                     ("Subject", "Re: Printer jam"), ("Precedence", precedence), *OUR_LIST[1:])
        assert autoreply.classify_auto(post, ours) == "bulk"


def ndr(returned: str, part_type: str) -> bytes:
    """An NDR whose text is HTML alone and whose last part returns the header of our mail."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example.org>\n"
        "To: dana@support.example.com\n"
        "Subject: Undeliverable: Printer jam\n"
        "Message-ID: <ndr.1@mx.customer.example.org>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="NDR"\n'
        "\n"
        "--NDR\n"
        "Content-Type: text/html; charset=us-ascii\n"
        "\n"
        "<html><body><p>Delivery has failed to these recipients or groups:</p></body></html>\n"
        "\n"
        "--NDR\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        "Reporting-MTA: dns;mx.customer.example.org\n"
        "\n"
        "Final-Recipient: rfc822;pat@customer.example.org\n"
        "Action: failed\n"
        "Status: 5.1.1\n"
        "\n"
        "--NDR\n"
        f"Content-Type: {part_type}\n"
        "\n"
        f"{returned}\n"
        "--NDR--\n"
    ).encode()


@pytest.mark.parametrize("part_type", ["message/rfc822-headers", "text/rfc822-headers"])
def test_an_ndr_returning_the_header_as_message_rfc822_headers_finds_its_case(
        harness: Any, part_type: str) -> None:
    """`message/rfc822-headers` (no registered type; bounce generators write it for
    `text/rfc822-headers`) was not read for the returned header: the NDR, whose Subject
    kept no tag, matched nothing."""
    sent = stamped_case(harness, CaseState.OPEN)
    returned = (f"From: Dana Agent <dana@support.example.com>\n"
                f"Subject: Printer jam\nMessage-ID: {sent.one('Message-ID')}\n")
    headers, body = parse_raw(ndr(returned, part_type))
    r = harness.inbound(*((h.name, h.value) for h in headers), body=body, mail_from="<>")
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Match") == "bounce"
    assert r.one("X-Case-Auto") == "bounce"


def is_participant(harness: Any, case_id: str, address: str) -> bool:
    return harness.index.find(AliasKind.PARTICIPANT, f"{case_id} {address}") is not None


QUARANTINE_FROM = ("From", "Microsoft 365 <quarantine@messaging.microsoft.com>")


def quarantine_notification(listed_subject: str) -> tuple[list[tuple[str, str]], bytes]:
    """Microsoft 365's quarantine notification to the support mailbox, as its documentation
    describes it: the held mail's sender, Subject and date, and links to review it."""
    fields = [QUARANTINE_FROM, ("To", "support@example.com"),
              ("Subject", "Microsoft 365 security: You have messages in quarantine"),
              ("Message-ID", "<q.7f3a@messaging.microsoft.com>"),
              ("Content-Type", "text/html; charset=utf-8")]
    body = ("<html><body><p>Review these 1 messages that are being held for you</p>"
            "<table><tr><td>Sender:</td><td>pat@customer.example.org</td></tr>"
            f"<tr><td>Subject:</td><td>{listed_subject}</td></tr>"
            "<tr><td>Date:</td><td>3/2/2026 10:00:00 AM</td></tr></table>"
            "<p><a href=\"https://security.microsoft.com/quarantine\">Review Message</a></p>"
            "</body></html>\n").encode()
    return fields, body


def test_a_quarantine_notification_threads_without_reopening(harness: Any) -> None:
    """Pat's reply to our mail was quarantined; the notification lists it with our Subject tag.
    It reopened the resolved case (`X-Case-Auto: no`) and made Microsoft's address one of
    the case's participants; the reply itself arrives when it is released."""
    sent = stamped_case(harness, CaseState.RESOLVED)
    fields, body = quarantine_notification("Re: " + sent.one("Subject"))
    r = harness.inbound(*fields, body=body)
    assert r.case_id == "C-000001"
    assert r.one("X-Case-Auto") == "auto-generated"
    assert r.one("X-Case-State") == "resolved"
    assert harness.case("C-000001").state is CaseState.RESOLVED
    assert not is_participant(harness, "C-000001", "quarantine@messaging.microsoft.com")


def test_a_quarantine_notification_of_a_new_question_opens_no_case(harness: Any) -> None:
    """A new question held in quarantine: the notification opened a case of its own, from
    Microsoft's address; the question opens one when it is released."""
    fields, body = quarantine_notification("Printer jam")
    r = harness.inbound(*fields, body=body)
    assert r.one("X-Case-Match") == "none"
    assert r.all("X-Case-ID") == []


@pytest.mark.parametrize("sender", [
    "quarantine@messaging.microsoft.com.example.net",   # another domain that starts so
    "Quarantine <quarantine@example.com>",
    "\"quarantine@messaging.microsoft.com\" <eve@elsewhere.example>",  # only the name
])
def test_only_that_address_is_the_quarantine_sender(build: Any, sender: str) -> None:
    assert autoreply.classify_auto(build(("From", sender))) == "no"


def monitoring_alert(subject: str, mid: str) -> tuple[tuple[str, str], ...]:
    return (("From", "Zabbix <zabbix@mon.example.com>"), ("To", "support@example.com"),
            ("Auto-Submitted", "auto-generated"), ("Subject", subject),
            ("Message-ID", f"<{mid}@mon.example.com>"),
            ("Content-Type", "text/plain; charset=us-ascii"))


ALERT_BODY = b"Host: web01\nSeverity: High\nOriginal problem ID: 4711\n"


def test_a_marked_monitoring_alert_opens_no_case(harness: Any) -> None:
    r = harness.inbound(*monitoring_alert("Problem: web01 HTTP down", "a1"), body=ALERT_BODY)
    assert r.one("X-Case-Match") == "none"
    assert r.one("X-Case-Auto") == "auto-generated"


def test_an_external_refs_rule_gives_a_monitoring_systems_alerts_a_case(
        make_harness: Any, tweak: Any) -> None:
    """README *Automatic mail*: the recipe for alerts marked as machine mail."""
    base = tweak()
    rule = ExternalRefRule(name="zabbix", pattern=r"Original problem ID: (\d+)",
                           sender=("zabbix@mon.example.com",))
    settings: Settings = tweak(base, inbound={
        "strategies": (*base.inbound.strategies, "external-ref"), "external_refs": (rule,)})
    h = make_harness(settings)
    first = h.inbound(*monitoring_alert("Problem: web01 HTTP down", "a1"), body=ALERT_BODY)
    assert first.case_id == "C-000001"
    assert first.one("X-Case-Match") == "new"
    later = h.inbound(*monitoring_alert("Resolved in 5m: web01 HTTP down", "a2"),
                      body=ALERT_BODY)
    assert later.case_id == "C-000001"
    assert later.one("X-Case-Match") == "external-ref"
    assert later.one("X-Case-Auto") == "auto-generated"
