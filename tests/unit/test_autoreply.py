"""Machine-mail classification, the X-Case-Auto value (core.autoreply)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread.core import autoreply, field_values, mail_lists, system_notices
from casethread.core.autoreply import KINDS, classify_auto, classify_auto_detail, is_auto
from casethread.core.message import Envelope, Header, Message

BASE = (
    ("From", "Dana Customer <dana@customer.example>"),
    ("To", "support@help.example"),
    ("Subject", "Printer broken"),
    ("Message-ID", "<abc@customer.example>"),
    ("Content-Type", "text/plain; charset=utf-8"),
)


def msg(
    *extra: tuple[str, str], mail_from: str = "<dana@customer.example>", replace: bool = True
) -> Message:
    """An ordinary customer mail, with `extra` fields replacing same-named ones."""
    names = {n.lower() for n, _ in extra} if replace else set()
    fields = [Header(n, v) for n, v in BASE if n.lower() not in names]
    fields += [Header(n, v) for n, v in extra]
    return Message(Envelope(mail_from=mail_from, rcpts=("<support@help.example>",)), tuple(fields))


def test_ordinary_mail_is_no() -> None:
    assert classify_auto(msg()) == "no"
    assert classify_auto_detail(msg()) == ("no", "")


def test_unknown_envelope_sender_is_not_null() -> None:
    # `casethread filter` without --mail-from gives "": unknown, not the null sender.
    assert classify_auto(msg(mail_from="")) == "no"


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        # Auto-Submitted (RFC 3834)
        ((("Auto-Submitted", "no"),), "no"),
        ((("Auto-Submitted", "No"),), "no"),
        ((("Auto-Submitted", "no (human)"),), "no"),
        ((("Auto-Submitted", ""),), "no"),
        ((("Auto-Submitted", "   "),), "no"),
        ((("Auto-Submitted", "auto-replied"),), "auto-replied"),
        ((("Auto-Submitted", "AUTO-REPLIED"),), "auto-replied"),
        ((("Auto-Submitted", 'auto-replied; owner-email="x@y.example"'),), "auto-replied"),
        ((("Auto-Submitted", "auto-replied (vacation)"),), "auto-replied"),
        ((("Auto-Submitted", "auto-generated"),), "auto-generated"),
        ((("Auto-Submitted", "Auto-Generated"),), "auto-generated"),
        ((("Auto-Submitted", "auto-notified"),), "auto-generated"),
        ((("Auto-Submitted", "what-is-this"),), "auto-generated"),  # any value but no
        ((("Auto-Submitted", "auto-\r\n generated"),), "auto-generated"),  # folded
        ((("Auto-Submitted", "no"), ("Auto-Submitted", "auto-replied")), "auto-replied"),
        # X-Autoreply & co. (FreeScout)
        ((("X-Autoreply", "yes"),), "auto-replied"),
        ((("X-Autoreply", "YES"),), "auto-replied"),
        ((("X-Autorespond", "Vacation"),), "auto-replied"),
        ((("X-Autoresponder", "1"),), "auto-replied"),
        ((("X-Autoreply", "no"),), "no"),
        ((("X-Autoreply", "false"),), "no"),
        ((("X-Autoreply", ""),), "no"),
        # Precedence (Zammad, Znuny, RT, FreeScout)
        ((("Precedence", "bulk"),), "bulk"),
        ((("Precedence", "Junk"),), "auto-replied"),  # vacation(1)
        ((("Precedence", "junk"), ("List-Id", "<users.lists.example>")), "bulk"),
        ((("Precedence", "LIST"),), "bulk"),
        ((("X-Precedence", "bulk"),), "bulk"),
        ((("Precedence", "auto_reply"),), "auto-replied"),
        ((("X-Precedence", "Auto_Reply"),), "auto-replied"),
        ((("Precedence", "first-class"),), "no"),
        ((("Precedence", "%%garbage%%"),), "no"),
        ((("Precedence", "bulky"),), "no"),
        # Lists (RFC 3834 §2)
        ((("List-Id", "Users <users.lists.example>"),), "bulk"),
        ((("List-Unsubscribe", "<mailto:leave@lists.example>"),), "bulk"),
        ((("List-Post", "<mailto:users@lists.example>"),), "bulk"),
        ((("Mailing-List", "contact users-help@lists.example; run by ezmlm"),), "bulk"),
        ((("List-Id", ""),), "no"),
        # X-Loop (Znuny: any value)
        ((("X-Loop", "yes"),), "auto-generated"),
        ((("X-Loop", "helpdesk@vendor.example"),), "auto-generated"),
        ((("X-Loop", ""),), "no"),
        # RT
        ((("X-FC-Machinegenerated", "true"),), "auto-generated"),
        ((("X-FC-Machinegenerated", "false"),), "no"),
        # Bounces
        ((("X-Failed-Recipients", "gone@customer.example"),), "bounce"),
        ((("From", "MAILER-DAEMON@mx.customer.example (Mail Delivery System)"),), "bounce"),
        ((("From", "Mail Delivery Subsystem <mailer-daemon@customer.example>"),), "bounce"),
        ((("From", "MAILER-DAEMON"),), "bounce"),
        ((("From", "postmaster@customer.example"),), "auto-generated"),
        ((("From", "Postmaster <POSTMASTER@customer.example>"),), "auto-generated"),
        ((("From", "postmaster.team@customer.example"),), "no"),
        ((("From", "dana.mailer-daemon@customer.example"),), "no"),
        (
            (("Content-Type", 'multipart/report; report-type=delivery-status;\r\n boundary="b1"'),),
            "bounce",
        ),
        ((("Content-Type", 'Multipart/Report; Report-Type="Delivery-Status"'),), "bounce"),
        (
            (("Content-Type", "multipart/report; report-type=disposition-notification"),),
            "auto-generated",
        ),
        ((("Content-Type", "multipart/report; report-type=feedback-report"),), "auto-generated"),
        ((("Content-Type", "multipart/report"),), "auto-generated"),
        ((("Content-Type", "multipart/mixed; report-type=delivery-status"),), "no"),
        ((("Content-Type", ";;;garbage=="),), "no"),
        ((("Content-Type", ""),), "no"),
    ],
)
def test_signals(fields: tuple[tuple[str, str], ...], kind: str) -> None:
    assert classify_auto(msg(*fields)) == kind


def test_header_names_are_case_insensitive() -> None:
    assert classify_auto(msg(("auto-submitted", "auto-replied"))) == "auto-replied"
    assert classify_auto(msg(("PRECEDENCE", "bulk"))) == "bulk"
    assert classify_auto(msg(("list-id", "<x.example>"))) == "bulk"


@pytest.mark.parametrize(("value", "kind"), [
    ("no (typed (by) hand)", "no"),  # RFC 5322 comments nest (found in review: auto-generated)
    ("auto-replied (vacation (2 weeks))", "auto-replied"),
    ("(((deep))) no", "no"),
])
def test_auto_submitted_with_nested_comments(value: str, kind: str) -> None:
    assert classify_auto(msg(("Auto-Submitted", value))) == kind


@pytest.mark.parametrize(("value", "kind"), [
    ("<>", "auto-generated"),
    (" < > ", "auto-generated"),
    ("<> (bounce (of a bounce))", "auto-generated"),
    ("<dana@customer.example>", "no"),
])
def test_return_path_tells_the_null_sender_where_no_envelope_is_known(
        value: str, kind: str) -> None:
    # `casethread filter` on saved mail, without --mail-from: final delivery wrote the field.
    assert classify_auto(msg(("Return-Path", value), mail_from="")) == kind


@pytest.mark.parametrize(("value", "null"), [
    ("MAILER-DAEMON <>", True),  # DragonFly Mail Agent's bounces
    ("<>", True),
    ('"Mail Delivery System" < > (no sender)', True),
    ("MAILER-DAEMON", False),  # a name alone: no sign either way
    ("MAILER-DAEMON <mailer-daemon@mx.example>", False),
    ("Pat <pat@customer.example>", False),
    ("a@b.example, <>", False),
])
def test_a_from_of_the_empty_address_tells_the_null_sender_where_no_envelope_is_known(
        value: str, null: bool) -> None:
    """`casethread filter` without --mail-from: the From stands in for the envelope, as
    Return-Path does. The milter has the envelope, whose `<>` decides there."""
    dma = msg(("From", value), ("Subject", "Mail delivery failed"), mail_from="")
    assert autoreply.read_signals(dma).null_sender is null
    if null:  # (from mailer-daemon@ it is a bounce by that name)
        assert classify_auto_detail(dma) == ("bounce", "null-sender+failure-subject")
    # The envelope wins: a person's mail under a sender of its own is no bounce.
    assert not autoreply.read_signals(msg(("From", value))).null_sender


@pytest.mark.parametrize("sender", ["Website visitor <>", "<>"])
def test_a_return_path_with_an_address_wins_over_a_from_of_the_empty_address(
        sender: str) -> None:
    """Saved mail whose final delivery wrote the envelope sender (`Return-Path:
    <www-data@...>`): a web form that left the visitor's address empty (`From: Name <>`) is
    a person's question, as the milter, which reads that envelope, takes it. The From stands
    in for the envelope only where no Return-Path tells it."""
    form = msg(("Return-Path", "<www-data@web.example.com>"), ("From", sender),
               ("Subject", "Question about my order"), mail_from="")
    assert not autoreply.read_signals(form).null_sender
    assert classify_auto(form) == "no"
    assert classify_auto(msg(("From", sender), ("Subject", "Question about my order"),
                             mail_from="<www-data@web.example.com>")) == "no"
    # A Return-Path of the null sender, or none, leaves the From to tell.
    for fields in ((("Return-Path", "<>"),), ()):
        assert autoreply.read_signals(msg(*fields, ("From", sender), mail_from="")).null_sender


@pytest.mark.parametrize("value", ["<>", "<> (bounce (of a bounce))"])
def test_the_envelope_wins_over_a_return_path_field(value: str) -> None:
    """In transit Return-Path is whatever the client wrote: Postfix drops it before the milter
    sees the mail, Sendmail hands it over. Behind either, a person's mail carrying
    `Return-Path: <>` is a person's mail, and a real bounce's envelope says `<>` itself."""
    assert classify_auto(msg(("Return-Path", value))) == "no"
    assert not autoreply.read_signals(msg(("Return-Path", value))).null_sender
    assert autoreply.read_signals(msg(("Return-Path", value), mail_from="<>")).null_sender
    assert autoreply.read_signals(msg(("Return-Path", value), mail_from="")).null_sender


def test_null_envelope_sender() -> None:
    assert classify_auto_detail(msg(mail_from="<>")) == ("auto-generated", "null-sender")
    assert classify_auto(msg(mail_from=" <> ")) == "auto-generated"
    # A postmaster notice with a null sender is a bounce.
    assert classify_auto(msg(("From", "postmaster@customer.example"), mail_from="<>")) == "bounce"


# Precedence among kinds (see the module doc).


def test_dsn_with_empty_sender_is_bounce() -> None:
    dsn = msg(
        ("From", "Mail Delivery System <MAILER-DAEMON@mx.customer.example>"),
        ("Subject", "Undelivered Mail Returned to Sender"),
        ("Auto-Submitted", "auto-replied"),
        ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="x"'),
        mail_from="<>",
    )
    assert classify_auto_detail(dsn) == ("bounce", "delivery-status")


def test_exchange_ndr_from_postmaster_is_bounce() -> None:
    ndr = msg(
        ("From", "postmaster@customer.example"),
        ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="x"'),
        mail_from="<>",
    )
    assert classify_auto(ndr) == "bounce"


def test_out_of_office_is_auto_replied() -> None:
    gmail = msg(("Auto-Submitted", "auto-replied"), ("Subject", "Vacation"), mail_from="<>")
    assert classify_auto(gmail) == "auto-replied"
    # Exchange sends out-of-office as auto-generated; the subject refines it.
    exchange = msg(
        ("Subject", "Automatic reply: Printer broken"),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
    )
    assert classify_auto_detail(exchange) == ("auto-replied", "auto-submitted+ooo-subject")


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Printer",
        "Out of Office: Printer",
        "Out of the office: Printer",
        "AutoReply: Printer",
        "Auto-Reply: Printer",
        "Automatische Antwort: Drucker",
        "Abwesenheitsnotiz: Drucker",
        "Autosvar: Skrivare",
        "Réponse automatique : Imprimante",
        "Respuesta automática: Impresora",
        "Risposta automatica: Stampante",
        "自动回复: 打印机",
        "=?utf-8?q?Automatische_Antwort=3A_Drucker?=",
        "[EXTERNAL] Automatic reply: Printer",  # a gateway's tag before the responder's
    ],
)
def test_ooo_subject_refines_auto_generated(subject: str) -> None:
    m = msg(("Subject", subject), ("Auto-Submitted", "auto-generated"))
    assert classify_auto(m) == "auto-replied"


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Printer",
        "Out of Office: back Monday",
        "Autosvar: Skrivare",
        "Re: Automatic reply: Printer",
    ],
)
def test_subject_alone_never_makes_mail_auto(subject: str) -> None:
    assert classify_auto(msg(("Subject", subject))) == "no"


def test_subject_does_not_turn_other_kinds_into_auto_replied() -> None:
    m = msg(("Subject", "Automatic reply: x"), ("Precedence", "bulk"), ("List-Id", "<u.l.example>"))
    assert classify_auto(m) == "bulk"
    m = msg(("Subject", "Automatic reply: x"), ("Precedence", "list"))
    assert classify_auto(m) == "bulk"
    m = msg(("Subject", "Automatic reply: x"), ("From", "MAILER-DAEMON@x.example"))
    assert classify_auto(m) == "bounce"


@pytest.mark.parametrize("subject", [
    "Out of Office: Re: Printer [ref:111ABC]", "Automatic reply: Printer", "Abwesenheitsnotiz: x",
    "=?utf-8?Q?R=C3=A9ponse_automatique_:_x?=",
])
def test_precedence_bulk_with_an_out_of_office_subject_is_auto_replied(subject: str) -> None:
    """vacation(1)'s reply: its man page's example message sets `Precedence: bulk` and
    nothing else, and a `$SUBJECT` there keeps ours (our token). No list's mail, so no
    person's mail relayed: auto-replied, which reopens nothing (bulk that answers our mail
    would count as a person's)."""
    m = msg(("Subject", subject), ("Precedence", "bulk"))
    assert classify_auto_detail(m) == ("auto-replied", "precedence-bulk+ooo-subject")
    assert classify_auto(msg(("Subject", subject), ("X-Precedence", "bulk"))) == "auto-replied"


def test_precedence_bulk_with_an_ordinary_subject_stays_bulk() -> None:
    """An RT agent's reply (RT marks all its mail bulk) is a person's."""
    m = msg(("Subject", "Re: [example.com #123] Printer [ref:111ABC]"), ("Precedence", "bulk"))
    assert classify_auto(m) == "bulk"
    assert classify_auto(msg(("Subject", "Re: Out of Office: x"), ("Precedence", "bulk"))) == "bulk"


def test_list_mail_is_bulk_even_with_x_loop() -> None:
    """Lists add X-Loop to the people's mail they relay."""
    m = msg(("List-Id", "<users.lists.example>"), ("X-Loop", "users@lists.example"))
    assert classify_auto(m) == "bulk"
    m = msg(("Precedence", "list"), ("X-Loop", "users@lists.example"))
    assert classify_auto(m) == "bulk"


@pytest.mark.parametrize("signal", [("Auto-Submitted", "auto-generated"), ("X-Loop", "yes")])
def test_bulk_mail_that_says_it_is_machine_made_is_auto_generated(
        signal: tuple[str, str]) -> None:
    """A ticket system's notification marked Precedence: bulk and Auto-Submitted (or X-Loop,
    Zammad's): the machine's, not a person's relayed by a list (bulk mail that answers our
    mail counts as a person's for the case rules, rules.is_automatic)."""
    assert classify_auto(msg(("Precedence", "bulk"), signal)) == "auto-generated"
    m = msg(("List-Unsubscribe", "<https://x.example/u>"), ("Auto-Submitted", "auto-generated"))
    assert classify_auto(m) == "auto-generated"


def test_auto_reply_through_a_list_is_auto_replied() -> None:
    m = msg(("List-Id", "<users.lists.example>"), ("Auto-Submitted", "auto-replied"))
    assert classify_auto(m) == "auto-replied"


def test_exchange_rule_headers() -> None:
    # An inbox rule that forwarded a human's mail: not auto.
    fwd = msg(("X-MS-Exchange-Inbox-Rules-Loop", "dana@customer.example"))
    assert classify_auto(fwd) == "no"
    src = msg(("X-MS-Exchange-Generated-Message-Source", "Mailbox Rules Agent"))
    assert classify_auto(src) == "no"
    # Zammad's out-of-office rule: the loop header plus X-Auto-Response-Suppress: All.
    ooo = msg(
        ("X-MS-Exchange-Inbox-Rules-Loop", "dana@customer.example"),
        ("X-Auto-Response-Suppress", "All"),
    )
    assert classify_auto_detail(ooo) == ("auto-replied", "exchange-rule-reply")
    oof = msg(
        ("X-MS-Exchange-Generated-Message-Source", "Mailbox Rules Agent"),
        ("X-Auto-Response-Suppress", "DR, RN, OOF, AutoReply"),
    )
    assert classify_auto(oof) == "auto-replied"
    weak = msg(
        ("X-MS-Exchange-Inbox-Rules-Loop", "dana@customer.example"),
        ("X-Auto-Response-Suppress", "DR, RN"),
    )
    assert classify_auto(weak) == "no"
    # An Exchange reply whose other fields a gateway dropped: the rule header and an
    # out-of-office subject together (each alone is no signal).
    for name in ("X-MS-Exchange-Inbox-Rules-Loop", "X-MS-Exchange-Generated-Message-Source"):
        stripped = msg((name, "dana@customer.example"),
                       ("Subject", "=?utf-8?q?Automatische_Antwort=3A_Drucker?="))
        assert classify_auto_detail(stripped) == ("auto-replied", f"{name.lower()}+ooo-subject")
    assert classify_auto(msg(("Subject", "Automatic reply: Printer"))) == "no"
    human = msg(("X-MS-Exchange-Inbox-Rules-Loop", "dana@customer.example"),
                ("Subject", "FW: Automatic replies are broken"))
    assert classify_auto(human) == "no"


def test_our_own_mailboxs_rule_says_nothing_of_the_mail_it_redirected() -> None:
    """support@ is an Exchange Online shared mailbox whose inbox rule redirects its mail to
    the milter's host: Exchange names that mailbox in X-MS-Exchange-Inbox-Rules-Loop on every
    copy. A customer whose tenant stamps `X-Auto-Response-Suppress: DR, OOF, AutoReply` on
    its people's ordinary mail (as Cisco's Exchange Online does on its engineers' replies in
    public list archives) wrote a question, not an out-of-office reply. A rule of the
    customer's own mailbox names the customer there, and still counts, also when our rule
    redirected its mail too."""
    def ours(address: str) -> bool:
        return address in ("support@example.com", "support@help.example")

    ordinary = ("X-Auto-Response-Suppress", "DR, OOF, AutoReply")
    ours_only = ("X-MS-Exchange-Inbox-Rules-Loop", "support@example.com")
    assert classify_auto(msg(ours_only, ordinary), ours) == "no"
    assert classify_auto(msg(ours_only, ("X-MS-Exchange-Inbox-Rules-Loop", "Support@Help.example"),
                             ordinary, replace=False), ours) == "no"
    # Without `ours` (no support addresses known) the field counts as before.
    assert classify_auto(msg(ours_only, ordinary)) == "auto-replied"
    theirs = ("X-MS-Exchange-Inbox-Rules-Loop", "dana@customer.example")
    assert classify_auto_detail(msg(theirs, ours_only, ordinary, replace=False), ours) == (
        "auto-replied", "exchange-rule-reply")
    stripped = msg(ours_only, ("Subject", "Automatic reply: Printer"))
    assert classify_auto(stripped, ours) == "no"
    assert classify_auto(msg(theirs, ("Subject", "Automatic reply: Printer")), ours) == (
        "auto-replied")
    # The customer's own mark still counts.
    marked = msg(ours_only, ("Auto-Submitted", "auto-replied"))
    assert classify_auto(marked, ours) == "auto-replied"
    # Only our rule: the body is not needed for the kind.
    assert autoreply.reads_body(msg(ours_only), ours) is False
    assert autoreply.reads_body(msg(theirs), ours) is True
    assert autoreply.reads_body(msg(ours_only)) is True


def test_x_auto_response_suppress_alone_is_no() -> None:
    # Outlook sets it on ordinary mail (it asks *others* not to auto-reply).
    assert classify_auto(msg(("X-Auto-Response-Suppress", "All"))) == "no"


def test_folded_values() -> None:
    assert classify_auto(msg(("Precedence", "\r\n bulk"))) == "bulk"
    assert classify_auto(msg(("X-Autoreply", "\n\tyes"))) == "auto-replied"
    assert classify_auto(msg(("From", "Mail Delivery\r\n <MAILER-DAEMON@x.example>"))) == "bounce"


def test_missing_headers() -> None:
    bare = Message(Envelope(), ())
    assert classify_auto(bare) == "no"


def test_is_auto() -> None:
    assert is_auto("no") is False
    for kind in ("auto-replied", "auto-generated", "bounce", "bulk"):
        assert is_auto(kind) is True
    assert set(KINDS) == {"no", "auto-replied", "auto-generated", "bounce", "bulk"}
    with pytest.raises(ValueError):
        is_auto("yes")


NAMES = st.sampled_from(
    [
        "Auto-Submitted",
        "X-Autoreply",
        "X-Autorespond",
        "X-Autoresponder",
        "Precedence",
        "X-Precedence",
        "List-Id",
        "List-Unsubscribe",
        "X-Loop",
        "X-MS-Exchange-Inbox-Rules-Loop",
        "X-Auto-Response-Suppress",
        "Return-Path",
        "From",
        "Content-Type",
        "Subject",
        "X-Failed-Recipients",
        "X-FC-Machinegenerated",
        "X-Apple-Action",
        "X-Autogenerated",
        "Delivered-To",
        "X-POST-MessageClass",
        "X-Mail-Autoreply",
        "X-Autoresponse",
        "X-Auto-Reply-From",
    ]
)


@given(
    st.lists(st.tuples(NAMES, st.text(max_size=60)), max_size=8),
    st.sampled_from(["", "<>", "<a@b.example>", "garbage <<>"]),
)
def test_garbage_never_raises(fields: list[tuple[str, str]], mail_from: str) -> None:
    m = Message(Envelope(mail_from=mail_from), tuple(Header(n, v) for n, v in fields))
    kind, reason = classify_auto_detail(m)
    assert kind in KINDS
    assert (reason == "") == (kind == "no")


def delivery_report(*actions: str, with_status_part: bool = True,
                    report_type: str = "delivery-status") -> Message:
    per_recipient = "".join(
        f"\nFinal-Recipient: rfc822; r{i}@customer.example\nAction: {a}\nStatus: 4.4.1\n"
        for i, a in enumerate(actions))
    part_type = "message/" + report_type  # message/global-delivery-status: RFC 6533
    status = (f"--B\nContent-Type: {part_type}\n\n"
              f"Reporting-MTA: dns; mx.example\n{per_recipient}" if with_status_part else "")
    body = f"--B\nContent-Type: text/plain\n\nA note.\n{status}--B--\n".encode()
    return Message(
        Envelope(mail_from="<>"),
        tuple(Header(n, v) for n, v in (
            ("From", "MAILER-DAEMON@mx.example (Mail Delivery System)"),
            ("Subject", "Delayed Mail (still being retried)"),
            ("Content-Type", f"multipart/report; report-type={report_type}; boundary=B"))),
        body)


@pytest.mark.parametrize(("actions", "expected"), [
    (("failed",), ("bounce", "delivery-status")),
    (("delayed",), ("auto-generated", "delivery-status-delayed")),
    (("Delivered", "relayed"), ("auto-generated", "delivery-status-delivered-relayed")),
    (("expanded",), ("auto-generated", "delivery-status-expanded")),
    (("delayed", "failed"), ("bounce", "delivery-status")),  # any failure is a bounce
    (("bogus",), ("bounce", "delivery-status")),
    ((), ("bounce", "delivery-status")),  # no Action readable
])
def test_a_delivery_report_is_a_bounce_only_when_something_failed(
    actions: tuple[str, ...], expected: tuple[str, str]
) -> None:
    assert classify_auto_detail(delivery_report(*actions)) == expected
    assert autoreply.reads_body(delivery_report(*actions))


@pytest.mark.parametrize(("actions", "expected"), [
    (("failed",), ("bounce", "delivery-status")),
    (("delayed",), ("auto-generated", "delivery-status-delayed")),
])
def test_an_smtputf8_delivery_report_reads_as_one(
    actions: tuple[str, ...], expected: tuple[str, str]
) -> None:
    """RFC 6533's report-type for SMTPUTF8 mail, with its message/global-delivery-status part:
    a delay warning is no bounce there either."""
    report = delivery_report(*actions, report_type="global-delivery-status")
    assert classify_auto_detail(report) == expected
    assert autoreply.reads_body(report)


def test_a_delivery_report_without_its_status_part_is_a_bounce() -> None:
    msg = delivery_report("delayed", with_status_part=False)
    assert classify_auto_detail(msg) == ("bounce", "delivery-status")
    headers_only = Message(msg.envelope, msg.headers)
    assert classify_auto_detail(headers_only) == ("bounce", "delivery-status")


# Notices of the mail system without a DSN: (From, Subject, other fields), as each MTA
# writes them, with the null envelope sender every one of them is sent with.
MDAEMON = '"MDaemon at mail.customer.example" <MDaemon@mail.customer.example>'
EXIM = "Mail Delivery System <Mailer-Daemon@mx.customer.example>"
NOTICES = {
    "mdaemon failure": ((MDAEMON, "Permanent Delivery Failure", (("X-MDDSN-Message", "Yes"),)),
                        ("bounce", "null-sender+failure-subject")),
    "mdaemon delay": ((MDAEMON, "Warning: Temporary Delivery Failure",
                       (("X-MDDSN-Message", "Yes"),)),
                      ("auto-generated", "null-sender+delay-subject")),
    "exim text delay": ((EXIM, "Warning: message 1kXyZ9-00AbCd-3Q delayed 24 hours",
                         (("Auto-Submitted", "auto-replied"),)),
                        ("auto-generated", "from-mailer-daemon+delay-subject")),
    "sendmail text delay": (("Mail Delivery Subsystem <MAILER-DAEMON@mx.customer.example>",
                             "Warning: could not send message for past 4 hours",
                             (("Auto-Submitted", "auto-generated (warning-timeout)"),)),
                            ("auto-generated", "from-mailer-daemon+delay-subject")),
    "exim text failure": ((EXIM, "Mail delivery failed: returning message to sender",
                           (("X-Failed-Recipients", "pat@customer.example"),)),
                          ("bounce", "x-failed-recipients")),
    "qmail failure": (("MAILER-DAEMON@mail.customer.example", "failure notice",
                       ()), ("bounce", "from-mailer-daemon")),
    # A failure's subject may repeat the returned mail's, which may say "delayed".
    "exchange text failure": (("postmaster@customer.example",
                               "Undeliverable: Your delayed order", ()),
                              ("bounce", "from-postmaster-null-sender")),
}


@pytest.mark.parametrize("name", NOTICES)
def test_a_notice_without_a_dsn_is_a_bounce_only_when_it_reports_a_failure(name: str) -> None:
    """RFC 3464: a report is a failure's, which an agent must act on, or a delay's, which
    needs nothing; a text notice tells them apart by its subject."""
    (sender, subject, extra), expected = NOTICES[name]
    notice = msg(("From", sender), ("Subject", subject), *extra, mail_from="<>")
    assert classify_auto_detail(notice) == expected


def test_a_null_sender_alone_is_no_bounce() -> None:
    """Auto-replies are sent with a null sender too (RFC 3834 §3.3)."""
    for subject in ("Out of office", "Your delayed order", "Re: Undelivered parcel"):
        assert classify_auto(msg(("Subject", subject), mail_from="<>")) == "auto-generated"


@pytest.mark.parametrize("marks", [
    (("Auto-Submitted", "auto-replied"),), (("X-Autoreply", "yes"),), ()])
def test_a_read_receipt_is_auto_generated_whatever_it_says(
    marks: tuple[tuple[str, str], ...]
) -> None:
    """RFC 3834 §5 lets an MDN say auto-replied: a receipt is still no out-of-office."""
    receipt = msg(("Subject", "Disposition notification"), *marks,
                  ("Content-Type", "multipart/report; "
                   "report-type=disposition-notification; boundary=MDN"), mail_from="<>")
    assert classify_auto_detail(receipt) == ("auto-generated", "report")


def test_suppress_header_with_an_out_of_office_subject_is_auto_replied() -> None:
    ooo = msg(("X-Auto-Response-Suppress", "All"), ("Subject", "Automatiskt svar: Skrivare"))
    assert classify_auto_detail(ooo) == ("auto-replied", "x-auto-response-suppress+ooo-subject")
    ordinary = msg(("X-Auto-Response-Suppress", "All"), ("Subject", "Printer question"))
    assert classify_auto(ordinary) == "no"
    receipts_only = msg(("X-Auto-Response-Suppress", "DR, RN"),
                        ("Subject", "Automatic reply: x"))
    assert classify_auto(receipts_only) == "no"


def test_exchange_journal_reports_are_auto_generated() -> None:
    journal = msg(("X-MS-Journal-Report", ""), ("Subject", "Re: Printer [ref:X]"))
    assert classify_auto_detail(journal) == ("auto-generated", "x-ms-journal-report")


def test_an_auto_forwarded_mail_is_automatic() -> None:
    """A rule's forward may bring our own mail back: it must not reopen a case."""
    assert classify_auto(msg(("Auto-Submitted", "auto-forwarded"))) == "auto-generated"


def test_a_folded_failed_action_is_a_bounce() -> None:
    report = delivery_report("delivered", "failed")
    folded = Message(report.envelope, report.headers,
                     report.body.replace(b"Action: failed", b"Action:\n failed"))
    assert classify_auto(folded) == "bounce"


@pytest.mark.parametrize(("second", "expected"), [
    (b"Action: (permanent) failed", "bounce"),  # an RFC 5322 comment before the value
    (b"Action: Failed (user unknown)", "bounce"),
    (b"X-Note: no Action field", "bounce"),  # a recipient whose Action is unread may have failed
    (b"Action: (will retry) delayed", "auto-generated"),
])
def test_each_recipients_action_is_read_in_its_own_group(second: bytes, expected: str) -> None:
    """RFC 3464 §2.3: one field group per recipient, after blank lines. A recipient whose
    Action field is not read as a word (a comment before it, or no such field) beside one
    that is only `delayed` made the report a delay warning: a failure went unseen."""
    report = delivery_report("delayed", "failed")
    body = report.body.replace(b"Action: failed", second)
    assert classify_auto(Message(report.envelope, report.headers, body)) == expected


def ours(address: str) -> bool:
    return address in ("support@example.com", "help@lists.example.com")


@pytest.mark.parametrize("fields", [
    # Google Groups fronting support@example.com
    (("List-Id", "<support.example.com>"), ("Precedence", "list"),
     ("List-Post", "<https://groups.google.com/a/example.com/group/support/post>, "
                   "<mailto:support@example.com>")),
    # a Mailman list that is a support address
    (("List-Id", "Help desk <help.lists.example.com>"), ("Precedence", "list"),
     ("List-Unsubscribe", "<mailto:help-leave@lists.example.com>")),
])
def test_our_own_list_relays_people_not_bulk(fields: tuple[tuple[str, str], ...]) -> None:
    relayed = msg(("From", "'Pat' via Support <support@example.com>"), *fields)
    assert classify_auto(relayed, ours) == "no"
    assert classify_auto(relayed) == "bulk"  # without knowing our addresses
    assert classify_auto(msg(*fields, ("Precedence", "bulk")), ours) == "bulk"
    assert classify_auto(msg(*fields, ("Auto-Submitted", "auto-replied")), ours) == "auto-replied"
    # The X-Loop such a list adds to the mail it relays is no machine's either.
    assert classify_auto(msg(*fields, ("X-Loop", "support@example.com")), ours) == "no"


def test_another_list_is_bulk() -> None:
    news = msg(("List-Id", "<news.shop.example>"), ("List-Post", "<mailto:news@shop.example>"))
    assert classify_auto_detail(news, ours) == ("bulk", "list-id")


@pytest.mark.parametrize(("subject", "expected"), [
    ("failure notice", ("bounce", "from-postmaster+failure-subject")),
    ("Undeliverable Mail: Printer jam", ("bounce", "from-postmaster+failure-subject")),
    ("Printer jam", ("auto-generated", "from-postmaster")),
])
def test_a_postmaster_failure_notice_under_a_sender_of_its_own_is_a_bounce(
        subject: str, expected: tuple[str, str]) -> None:
    """m-FILTER and MailMarshal send failure notices from postmaster@ under an envelope sender
    of their own; other postmaster mail stays auto-generated."""
    notice = msg(("From", "POSTMASTER <postmaster@customer.example>"), ("Subject", subject),
                 mail_from="<postmaster@customer.example>")
    assert classify_auto_detail(notice) == expected



NESTED = "(" * 50_000 + ")" * 50_000  # a 100 KB field of nested comments
# The modules that remove comments from the fields they read.
READERS = (autoreply, field_values, mail_lists, system_notices)


@pytest.mark.parametrize("fields", [
    [("Return-Path", NESTED)] * 20,
    [("Precedence", NESTED), ("X-Precedence", NESTED), ("Auto-Submitted", NESTED)] * 7,
    [("List-Id", NESTED), ("List-Post", NESTED), ("X-Autoreply", NESTED)] * 7,
])
def test_comments_are_removed_from_the_first_4096_characters_of_a_field(
    fields: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Comments are removed in up to 8 passes over the text, some fields several times a
    message: a hundred 100 KB fields of `(((...)))` took up to 2.5 s of CPU. Each field is
    read to `MAX_FIELD_TEXT` characters."""
    read: list[int] = []
    remove = autoreply.without_comments

    def counted(text: str, *args: Any, **kwargs: Any) -> str:
        read.append(len(text))
        return remove(text, *args, **kwargs)

    for module in READERS:
        monkeypatch.setattr(module, "without_comments", counted)
    m = msg(*fields, mail_from="")
    classify_auto(m, lambda address: False)
    mail_lists.is_list_mail(m, lambda address: False)
    mail_lists.list_addresses(m)
    autoreply.is_delivery_notice(m)
    assert read and max(read) <= field_values.MAX_FIELD_TEXT


def test_a_field_is_read_to_its_first_4096_characters() -> None:
    """What the bound cuts is the end of a field no sender writes so long."""
    long = " (" + "x" * 200_000 + ")"
    assert classify_auto(msg(("Precedence", "bulk; x=" + "y" * 200_000))) == autoreply.BULK
    assert classify_auto(msg(("Auto-Submitted", "auto-replied;" + long))) == (
        autoreply.AUTO_REPLIED)
    # A comment the cut leaves open is kept: no keyword, no `<>` after it.
    assert classify_auto(msg(("Return-Path", "<>" + long), mail_from="")) == autoreply.NO
    assert mail_lists.list_addresses(msg(("List-Id", "Team <team.example.org>" + long))) == (
        frozenset({"team@example.org"}))
    # An id after 4,096 characters of phrase is not read.
    assert mail_lists.list_addresses(msg(("List-Id", "Team" + long + " <team.example.org>"))) == (
        frozenset())
