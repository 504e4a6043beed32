"""Provider feedback that is no DSN or ARF report (`core/feedback.py`): Microsoft JMRP
complaints and Amazon SES notifications mailed by SNS. Automatic mail: it threads to the case
of the outbound mail it names (`X-Case-Match: bounce`), never reopens or opens a case, and
makes nobody a participant. The fixtures in tests/data/feedback/ were written for these tests
from the formats' public descriptions; `@@MESSAGE_ID@@` and `@@SUBJECT@@` name our mail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from casethread.core import autoreply, feedback
from casethread.core.message import Envelope, Message, parse_raw
from casethread.core.model import AliasKind, CaseState, Direction

DATA = Path(__file__).resolve().parents[1] / "data" / "feedback"
AGENT = ("From", "Dana Agent <dana@support.example.com>")
TO_CUSTOMER = ("To", "Pat Customer <pat@customer.example.org>")
JMRP_SENDER = "<staff@hotmail.com>"
SNS_SENDER = "<0100018e-bounces@amazonses.example>"
REWRITTEN = "<rewritten.by.relay@smarthost.example>"


def fixture(name: str, message_id: str, subject: str) -> bytes:
    raw = (DATA / name).read_bytes()
    return raw.replace(b"@@MESSAGE_ID@@", message_id.encode()).replace(
        b"@@SUBJECT@@", subject.encode())


def message(raw: bytes, mail_from: str) -> Message:
    headers, body = parse_raw(raw)
    return Message(Envelope(rcpts=("support@example.com",), mail_from=mail_from),
                   tuple(headers), body)


def sns_mail(notice: object, *, from_: str = "AWS Notifications <no-reply@sns.amazonaws.com>",
             subject: str = "AWS Notification Message", body: bytes | None = None) -> bytes:
    """An SNS email of this notification (JSON, then SNS's trailer), or of `body`."""
    head = (f"From: {from_}\nTo: ses-notices@support.example.com\nSubject: {subject}\n"
            "Message-ID: <sns-2@email.amazonses.example>\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=UTF-8\n\n").encode()
    if body is None:
        body = json.dumps(notice).encode() + (
            b"\n\n--\nIf you wish to stop receiving notifications from this topic, please "
            b"click or visit the link below to unsubscribe:\nhttps://sns.example/unsubscribe\n")
    return head + body


def sns_fixture_notice(message_id: str, subject: str) -> dict[str, Any]:
    """The notification of tests/data/feedback/sns-bounce.eml, as JSON."""
    body = fixture("sns-bounce.eml", message_id, subject).partition(b"\n\n")[2]
    notice: dict[str, Any] = json.JSONDecoder().raw_decode(body.decode())[0]
    return notice


def start_resolved_case(h: Any) -> Any:
    """The agent writes to Pat (C-000001), and the case is resolved."""
    out = h.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"), body=b"Hello Pat,\n")
    assert out.case_id == "C-000001"
    h.set_case("C-000001", state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    return out


def participants(h: Any, *addresses: str) -> list[str]:
    return [a for a in addresses
            if h.index.find(AliasKind.PARTICIPANT, f"C-000001 {a}") is not None]


PROVIDERS = ("staff@hotmail.com", "no-reply@sns.amazonaws.com",
             "complaints@email-abuse.amazonses.com")


# --------------------------------------------------------------------------- JMRP


def threaded_to_the_resolved_case(auto: str) -> list[tuple[str, str]]:
    """Our fields on a report that the bounce strategy threaded to the resolved C-000001,
    whose first inbound mail it is (it routes it): the state unchanged, the sender no
    participant."""
    return [("X-Case-ID", "C-000001"), ("X-Case-Match", "bounce"),
            ("X-Case-State", "resolved"), ("X-Case-Queue", "support"), ("X-Case-Auto", auto),
            ("X-Case-Sender", "unknown")]


@pytest.mark.parametrize("named_by", ["message-id", "subject token", "ses feedback forwarding"])
def test_a_jmrp_complaint_threads_to_the_case_of_the_mail_it_reports(harness: Any,
                                                                     named_by: str) -> None:
    """It was read as a person's mail: the token of the attached copy reopened the resolved
    case and made staff@hotmail.com a participant. Amazon SES's email feedback forwarding
    sends its complaints in the same format."""
    out = start_resolved_case(harness)
    message_id = out.one("Message-ID") if named_by != "subject token" else REWRITTEN
    raw = fixture("jmrp.eml", message_id, out.one("Subject"))
    if named_by == "ses feedback forwarding":
        raw = raw.replace(b"From: staff@hotmail.com",
                          b"From: <complaints@email-abuse.amazonses.com>", 1)
    r = harness.run(message(raw, JMRP_SENDER), Direction.INBOUND)
    assert r.ours() == threaded_to_the_resolved_case("auto-generated")
    assert harness.case("C-000001").state is CaseState.RESOLVED
    assert participants(harness, *PROVIDERS) == []
    assert "jmrp-complaint" in "\n".join(r.decision.trace)


def test_a_jmrp_complaint_of_other_mail_opens_no_case(harness: Any) -> None:
    """It opened a new case for staff@hotmail.com."""
    raw = fixture("jmrp.eml", "<newsletter-9@lists.example.com>", "Spring sale")
    r = harness.run(message(raw, JMRP_SENDER), Direction.INBOUND)
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "auto-generated")]
    assert harness.index.last_number() == 0


def test_a_jmrp_complaint_found_by_the_token_in_its_copys_body_adds_nobody(
        harness: Any) -> None:
    """The copy's Message-ID rewritten and its Subject tag gone, our token line in its body
    finds the case (`token`): still no participant, no reopen."""
    out = start_resolved_case(harness)
    token_line = out.body.decode().strip().splitlines()[-1]
    assert token_line.startswith("[ref:"), out.body
    raw = fixture("jmrp.eml", REWRITTEN, "Printer jam").replace(
        b"printer?\n", b"printer?\n\n" + token_line.encode() + b"\n")
    r = harness.run(message(raw, JMRP_SENDER), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "token", "resolved", "auto-generated")
    assert participants(harness, *PROVIDERS) == []


def test_an_arf_report_found_by_the_token_in_its_copys_body_adds_nobody(harness: Any) -> None:
    """The same for an ARF report (RFC 5965): its abuse desk became a participant."""
    out = start_resolved_case(harness)
    token_line = out.body.decode().strip().splitlines()[-1]
    body = ("--ARF\nContent-Type: text/plain\n\nThis is an abuse report.\n--ARF\n"
            "Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
            "User-Agent: ExampleFBL/1.0\nVersion: 1\n--ARF\nContent-Type: message/rfc822\n\n"
            f"From: dana@support.example.com\nSubject: Printer jam\nMessage-ID: {REWRITTEN}\n\n"
            f"Hello Pat,\n{token_line}\n--ARF--\n").encode()
    r = harness.inbound(("From", "Feedback Loop <fbl@isp.example.net>"),
                        ("Subject", "Abuse report"), ("MIME-Version", "1.0"),
                        ("Content-Type", 'multipart/report; report-type=feedback-report; '
                                         'boundary="ARF"'), body=body,
                        mail_from="<fbl-bounces@isp.example.net>")
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State")) == (
        "C-000001", "token", "resolved")
    assert participants(harness, "fbl@isp.example.net") == []


@pytest.mark.parametrize("fields", [
    # A person complaining in those words is a person.
    (("From", "Pat Customer <pat@customer.example.org>"),
     ("Subject", "complaint about message from 198.51.100.25")),
    # staff@hotmail.com under another subject: not JMRP's complaint (no rule for the rest).
    (("From", "staff@hotmail.com"), ("Subject", "Your question")),
])
def test_jmrp_lookalikes_stay_a_persons_mail(harness: Any,
                                             fields: tuple[tuple[str, str], ...]) -> None:
    r = harness.inbound(*fields, ("To", "support@example.com"), body=b"Hello\n")
    assert (r.one("X-Case-Match"), r.one("X-Case-Auto")) == ("new", "no")


# --------------------------------------------------------------------------- SES by SNS


@pytest.mark.parametrize("named_by", ["message-id", "subject token"])
def test_an_ses_bounce_by_sns_threads_to_the_case_of_the_mail_it_names(harness: Any,
                                                                       named_by: str) -> None:
    """It was read as a person's mail: our tag in the JSON's subject reopened the case."""
    out = start_resolved_case(harness)
    message_id = out.one("Message-ID") if named_by == "message-id" else REWRITTEN
    raw = fixture("sns-bounce.eml", message_id, out.one("Subject"))
    r = harness.run(message(raw, SNS_SENDER), Direction.INBOUND)
    assert r.ours() == threaded_to_the_resolved_case("bounce")
    assert harness.case("C-000001").state is CaseState.RESOLVED
    assert participants(harness, *PROVIDERS) == []


def test_an_ses_bounce_of_other_mail_opens_no_case(harness: Any) -> None:
    raw = fixture("sns-bounce.eml", "<newsletter-9@lists.example.com>", "Spring sale")
    r = harness.run(message(raw, SNS_SENDER), Direction.INBOUND)
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "bounce")]
    assert harness.index.last_number() == 0


def _event(notice: dict[str, Any], kind: str) -> dict[str, Any]:
    """SES event publishing's record of that type (`eventType`), for the same mail."""
    return {"eventType": kind, kind.lower(): {"timestamp": "2026-03-02T19:15:04.000Z"},
            "mail": notice["mail"]}


@pytest.mark.parametrize(("variant", "auto"), [
    ("Complaint", "auto-generated"),
    ("Delivery", "auto-generated"),
    ("event Bounce", "bounce"),
    ("event Reject", "bounce"),
    ("event Open", "auto-generated"),
    ("event DeliveryDelay", "auto-generated"),
    ("email-json Bounce", "bounce"),
])
def test_ses_notifications_are_automatic_and_bounces_only_when_they_fail(
        harness: Any, variant: str, auto: str) -> None:
    out = start_resolved_case(harness)
    notice = sns_fixture_notice(out.one("Message-ID"), out.one("Subject"))
    kind = variant.rpartition(" ")[2]
    if variant.startswith("event"):
        notice = _event(notice, kind)
    elif variant.startswith("email-json"):
        notice = {"Type": "Notification", "MessageId": "00000000-0000-0000-0000-000000000001",
                  "TopicArn": "arn:aws:sns:us-east-1:000000000000:ses-notices",
                  "Message": json.dumps(notice), "SignatureVersion": "1"}
    else:
        notice["notificationType"] = kind
        del notice["bounce"]
        notice[kind.lower()] = {"timestamp": "2026-03-02T19:15:04.000Z"}
    r = harness.run(message(sns_mail(notice), SNS_SENDER), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", auto)
    assert participants(harness, *PROVIDERS) == []


@pytest.mark.parametrize(("relay", "line_break"), [
    ("sendmail", b"!\n "), ("sendmail crlf", b"!\r\n "), ("postfix", b"\r\n "),
    ("postfix lf", b"\n ")])
@pytest.mark.parametrize("form", ["notification", "email-json"])
def test_an_ses_notice_whose_long_line_a_relay_broke_is_read(harness: Any, relay: str,
                                                            line_break: bytes,
                                                            form: str) -> None:
    """A notification is one JSON line of a few KB: a Sendmail on the way breaks it past its
    line limit with '!', a line break and a blank, a Postfix relay with a line break and a
    blank, inside a string (the corpus audit's SNS complaint, broken by Sendmail). It was no
    JSON to read, so the complaint was a person's mail and reopened the case."""
    out = start_resolved_case(harness)
    notice = sns_fixture_notice(out.one("Message-ID"), out.one("Subject"))
    notice["notificationType"] = "Complaint"
    del notice["bounce"]
    notice["complaint"] = {"complainedRecipients": [{"emailAddress": "pat@customer.example.org"}],
                           "userAgent": "x" * 900, "complaintFeedbackType": "abuse"}
    if form == "email-json":
        notice = {"Type": "Notification", "MessageId": "00000000-0000-0000-0000-000000000002",
                  "Message": json.dumps(notice), "SignatureVersion": "1"}
    raw = sns_mail(notice)
    head, _, body = raw.partition(b"\n\n")
    cut = body.index(b"x" * 900) + 500  # inside the string, past 990 characters of the line
    assert cut > 990 and b"\n" not in body[:cut]
    broken = head + b"\n\n" + body[:cut] + line_break + body[cut:]
    r = harness.run(message(broken, SNS_SENDER), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", "auto-generated")
    assert harness.index.last_number() == 1


def test_a_relays_line_break_makes_no_json_of_other_text() -> None:
    """The breaks are taken out only to read JSON the text starts with."""
    assert feedback.parse_notice('{"notificationType": "Bounce",!\n "mail": {}}') == (
        feedback.SesNotice("bounce", b""))
    assert feedback.parse_notice('{"notificationType": "Bounce", "mail": {}\n x}') is None
    assert feedback.parse_notice('You have chosen!\n to subscribe\n {"mail": {}}') is None


@pytest.mark.parametrize("crlf", [False, True])
def test_an_ses_notice_broken_by_two_relays_keeps_its_message_id(crlf: bool) -> None:
    """A line a Postfix broke (line break, blank) and a Sendmail broke again ('!', line
    break, blank): both are taken out. Postfix's join alone kept Sendmail's '!' inside
    the Message-ID (<abc@!example.com>), which named nothing of ours."""
    notice = json.dumps({"notificationType": "Complaint", "mail": {
        "headers": [{"name": "Message-ID", "value": "<abc@example.com>"}],
        "commonHeaders": {"subject": "S " + "y" * 1500}}})
    at = notice.index("<abc@") + 5
    text = notice[:at] + "!\n " + notice[at:]
    at = text.index("y" * 10) + 800
    text = text[:at] + "\n " + text[at:]
    if crlf:
        text = text.replace("\n", "\r\n")
    found = feedback.parse_notice(text)
    assert found is not None
    assert found.returned.startswith(b"Message-ID: <abc@example.com>\nSubject: S yyy")


def test_an_ses_notice_finds_our_message_id_in_its_headers_list(harness: Any) -> None:
    """SES may set `commonHeaders.messageId` to an ID of its own; the `headers` list has the
    fields as we sent them."""
    out = start_resolved_case(harness)
    notice = sns_fixture_notice(out.one("Message-ID"), "Printer jam")
    notice["mail"]["commonHeaders"]["messageId"] = "<0100018e-ses0@email.amazonses.example>"
    r = harness.run(message(sns_mail(notice), SNS_SENDER), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match")) == ("C-000001", "bounce")


@pytest.mark.parametrize("body", [
    b'{"notificationType": "Bounce", "mail": {"headers": [1, {"name": 2}, {"name": "Subject",'
    b' "value": ["x"]}], "commonHeaders": []}}\n',
    b'{"notificationType": "Bounce", "mail": {"commonHeaders": {"subject": "\\ud800 x"}}}',
], ids=["odd-headers", "lone-surrogate"])
def test_an_ses_bounce_with_odd_fields_names_nothing(harness: Any, body: bytes) -> None:
    """A notification whose fields of our mail are odd (not strings, a lone surrogate): a
    bounce of no mail of ours, which opens no case and reads nothing wrong."""
    start_resolved_case(harness)
    r = harness.run(message(sns_mail(None, body=body), SNS_SENDER), Direction.INBOUND)
    assert r.ours() == [("X-Case-Match", "none"), ("X-Case-Auto", "bounce")]
    assert harness.index.last_number() == 1


@pytest.mark.parametrize("body", [
    b"You have chosen to subscribe to the topic:\narn:aws:sns:us-east-1:0:ses-notices\n",
    b"{not json at all\n",
    b"[1, 2, 3]\n",
    b'{"notificationType": "Bounce", "mail": "not an object"}\n',
    b'{"notificationType": 7, "mail": {}}\n',
    b"[" * 200_000,
    b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
    b'{"Type": "Notification", "Message": "' + b'{\\"a\\": ' * 100 + b'1' + b'}' * 100 + b'"}',
    b"{" + b" " * (1 << 20) + b"}",
], ids=["confirmation", "garbage", "list", "mail-string", "type-number", "deep-list",
        "deep-object", "deep-envelope", "huge"])
def test_an_sns_mail_without_a_notification_is_read_as_any_mail(
        harness: Any, body: bytes) -> None:
    """No SES notification in it (a subscription confirmation someone must confirm, another
    topic's alarm, garbage): mail as any other, which opens a case; the reader stays within
    its bounds on the garbage."""
    start_resolved_case(harness)
    r = harness.run(message(sns_mail(None, body=body), SNS_SENDER), Direction.INBOUND)
    assert (r.one("X-Case-Match"), r.one("X-Case-Auto")) == ("new", "no")
    assert harness.index.last_number() == 2
    assert harness.case("C-000001").state is CaseState.RESOLVED


def test_the_json_reader_is_bounded() -> None:
    assert feedback.parse_notice("[" * 100_000) is None
    assert feedback.parse_notice('{"s": "' + "[" * 100 + '", "notificationType": "Open", '
                                 '"mail": {}}') == feedback.SesNotice("open", b"")
    nested = '{"a": ' * (feedback.MAX_DEPTH + 1) + "1" + "}" * (feedback.MAX_DEPTH + 1)
    assert feedback.parse_notice(nested) is None
    # Past the read limit a notification is not read (SNS messages are at most 256 KB).
    padded = '{"notificationType": "Bounce", "pad": "' + "x" * feedback.SNS_READ + '", "mail": {}}'
    assert feedback.parse_notice(padded) is None
    # A field of our mail never spans lines, however the JSON writes it.
    found = feedback.parse_notice('{"eventType": "Bounce", "mail": {"commonHeaders": '
                                  '{"subject": "a\\r\\nMessage-ID: <x@y>"}}}')
    assert found == feedback.SesNotice("bounce", b"Subject: a Message-ID: <x@y>\n")


@pytest.mark.parametrize("fields", [
    # A developer pasting SES's JSON to support is a person.
    (("From", "Pat Customer <pat@customer.example.org>"),
     ("Subject", "AWS Notification Message")),
    (("From", "Pat Customer <pat@customer.example.org>"),
     ("Subject", "Fwd: AWS Notification Message")),
])
def test_json_from_a_person_stays_a_persons_mail(harness: Any,
                                                 fields: tuple[tuple[str, str], ...]) -> None:
    out = start_resolved_case(harness)
    notice = sns_fixture_notice(out.one("Message-ID"), "Printer jam")
    body = sns_mail(notice).partition(b"\n\n")[2]
    r = harness.inbound(*fields, ("To", "support@example.com"), body=body)
    assert (r.one("X-Case-Match"), r.one("X-Case-Auto")) == ("new", "no")


def test_the_milter_reads_an_sns_mails_body(harness: Any) -> None:
    """Its kind is in its body: the milter must not skip it at end of headers, though its
    header fields alone named a case."""
    out = start_resolved_case(harness)
    raw = fixture("sns-bounce.eml", out.one("Message-ID"), out.one("Subject")).replace(
        b"Subject: AWS Notification Message", b"Subject: " + out.one("Subject").encode())
    msg = message(raw, SNS_SENDER)
    assert autoreply.reads_body(msg)
    plan = harness.engine.body_wanted(msg, Direction.INBOUND)
    assert plan.found is None and plan.room > 0


# --------------------------------------------------------------------------- casethread filter


def test_filter_threads_jmrp_and_ses_notices(run_filter: Any) -> None:
    agent = (b"From: Dana Agent <dana@support.example.com>\nTo: pat@customer.example.org\n"
             b"Subject: Printer jam\nMessage-ID: <agent-1@support.example.com>\n\nHello Pat,\n")
    p = run_filter("--direction", "outbound", "-", stdin=agent)
    assert p.returncode == 0, p.stderr
    subject = next(line for line in p.stdout.decode().splitlines()
                   if line.startswith("Subject: ")).partition(" ")[2]
    for name, sender, auto in (("jmrp.eml", JMRP_SENDER, "auto-generated"),
                               ("sns-bounce.eml", SNS_SENDER, "bounce")):
        raw = fixture(name, "<agent-1@support.example.com>", subject)
        p = run_filter("--direction", "inbound", "--rcpt", "support@example.com",
                       "--mail-from", sender, "-", stdin=raw)
        assert p.returncode == 0, p.stderr
        head = parse_raw(p.stdout)[0]
        found = [(h.name, h.value) for h in head if h.name.startswith("X-Case-")]
        assert ("X-Case-ID", "C-000001") in found, (name, found)
        assert ("X-Case-Match", "bounce") in found and ("X-Case-Auto", auto) in found, found


@pytest.mark.parametrize(("bounce", "auto"), [
    # SES's soft bounce of subtype General is typically the recipient's out-of-office reply:
    # the mail was delivered. It was `bounce`, as if the customer had not got it.
    ({"bounceType": "Transient", "bounceSubType": "General",
      "bouncedRecipients": [{"emailAddress": "pat@customer.example.org"}]}, "auto-generated"),
    ({"bounceType": "transient", "bounceSubType": "general"}, "auto-generated"),
    # ... unless the DSN SES got says the delivery failed.
    ({"bounceType": "Transient", "bounceSubType": "General",
      "bouncedRecipients": [{"emailAddress": "pat@customer.example.org", "action": "failed",
                             "status": "4.4.7"}]}, "bounce"),
    # SES gave up: a failure.
    ({"bounceType": "Transient", "bounceSubType": "MailboxFull"}, "bounce"),
    ({"bounceType": "Transient", "bounceSubType": "MessageTooLarge"}, "bounce"),
    ({"bounceType": "Undetermined", "bounceSubType": "Undetermined"}, "bounce"),
    ({"bounceType": "Permanent", "bounceSubType": "General"}, "bounce"),
], ids=["general", "lower-case", "general-failed", "mailbox-full", "too-large", "undetermined",
        "permanent"])
@pytest.mark.parametrize("form", ["notification", "event"])
def test_an_ses_transient_general_bounce_is_no_failure(harness: Any, bounce: dict[str, Any],
                                                       auto: str, form: str) -> None:
    out = start_resolved_case(harness)
    notice = sns_fixture_notice(out.one("Message-ID"), out.one("Subject"))
    notice["bounce"] = bounce
    if form == "event":
        notice["eventType"] = notice.pop("notificationType")
    r = harness.run(message(sns_mail(notice), SNS_SENDER), Direction.INBOUND)
    assert (r.case_id, r.one("X-Case-Match"), r.one("X-Case-State"), r.one("X-Case-Auto")) == (
        "C-000001", "bounce", "resolved", auto)
    assert participants(harness, *PROVIDERS) == []
