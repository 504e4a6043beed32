"""What tells the mail system's notices about our mail: the null sender (RFC 5321 §4.5.5),
the system's own senders (`mailer-daemon@`, `postmaster@`), the Subjects of delay warnings
and failures in formats of their own, a delivery report's Action fields (RFC 3464),
Exchange's read reports and recalls told by their Content-Class, Microsoft 365's quarantine
notification and other filters' notices from senders the sysadmin named. `autoreply` weighs
them: a notice of a failure is a bounce, other notices are `auto-generated`, and none adds
people to a case."""

from __future__ import annotations

import re
from collections.abc import Callable

from . import bodytext, mime
from .addresses import first_address
from .field_values import BODY_READ_MAX, Fields, field_text, first_token, values_of
from .message import Message, without_comments

_DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
# A DSN's multipart/report: RFC 3464's, or RFC 6533's for SMTPUTF8 mail where the MTA names it
# so (Postfix 3.7 keeps `delivery-status` and only the parts are `message/global-*`).
DSN_REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
# Reports a mail system or provider sends about our mail: a DSN, an ARF report (RFC 5965).
REPORTS_OF_OUR_MAIL = DSN_REPORT_TYPES | {"feedback-report"}
_ACTION = re.compile(r"^action[ \t]*:(.*)", re.I | re.M)
# A per-recipient group names its recipient (RFC 3464 §2.3: `Final-Recipient` is required).
_RECIPIENT = re.compile(r"^final-recipient[ \t]*:", re.I | re.M)
# The groups of a delivery report are separated by blank lines (a line of blanks, written by
# some, too: it is no fold, as no field is continued by nothing).
_GROUPS = re.compile(r"\r?\n[ \t]*\r?\n")
_WORD = re.compile(r"[a-z]+")
# The per-recipient Actions of a delivery report (RFC 3464 §2.3.3) that report no failure.
NOT_FAILED = frozenset({"delayed", "delivered", "relayed", "expanded"})
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# The subjects of the mail system's notices in formats of their own (no DSN to read), from the
# start: a delay warning's, then a failure's (MDaemon's delay says "Temporary Delivery
# Failure"). A failure's subject may go on with the returned mail's, which may say anything.
DELAY_SUBJECT = re.compile(
    r"\s*(?:warning:\s*)?(?:message\s+\S+\s+delayed|could\s+not\s+send\s+message\s+for\s+past"
    r"|(?:mail\s+)?delivery\s+(?:is\s+)?delay|delayed\s+(?:mail|delivery)"
    r"|delivery\s+status\s+notification\s*\(delay\)|temporary\s+delivery\s+failure)",
    re.IGNORECASE,
)
FAILURE_SUBJECT = re.compile(
    r"\s*(?:undeliver|returned\s+mail|mail\s+delivery\s+failed|failure\s+notice"
    r"|delivery\s+status\s+notification\s*\(failure\)|(?:permanent\s+)?delivery\s+failure"
    r"|(?:message\s+)?delivery\s+(?:has\s+)?failed|non-?\s*deliver|mail\s+system\s+error)",
    re.IGNORECASE,
)
# The local parts of the mail system's own senders (RFC 5321 §4.5.1: postmaster).
SYSTEM_SENDERS = ("mailer-daemon", "postmaster")
# Exchange writes the MAPI message class of what it sends as a `Content-Class` field
# (MS-OXCMAIL), mapped as Microsoft's table "Mapping PR_MESSAGE_CLASS to DAV:contentclass"
# says: a read or not-read report (`Report.IPM.Note.IPNRN`, `.IPNNRN`) is
# `urn:content-classes:mdn`, Outlook's recall (`IPM.Outlook.Recall`)
# `urn:content-classes:recallmessage`. A read report is an MDN (`multipart/report`) when
# Exchange converts it to MIME; one sent otherwise (TNEF, a gateway that rewrote it to text)
# keeps only this field and a Subject of "Read:", "Gelesen:", "Lu :", ... in the reader's
# language.
_MDN_CLASS = "urn:content-classes:mdn"
_RECALL_CLASS = "urn:content-classes:recallmessage"
# Exchange Online lets a recall through to recipients outside the organisation as text
# ("Recall: <Subject>", "... would like to recall the message"), legacy Outlook's recall and
# the cloud-based one alike, with this field `true` (and `...RecallReportCfmGenerated`): in
# public list archives it is on every recall, in any language ("撤回:"), and on no other mail.
_RECALL_FIELD = "x-ms-exchange-recallreportgenerated"


def exchange_notice(content_class: str, fields: Fields) -> str:
    """The signal of an Exchange read report or Outlook recall that is no `multipart/report`
    (`_MDN_CLASS`, `_RECALL_CLASS`, `_RECALL_FIELD`), or `""`. Both are mailed by the reader's
    or the sender's mail system on a click, as a calendar reply is: they thread, and move no
    case (a recall, sent seconds after a new question, opened a second case for it).
    `content_class`: the mail's Content-Class, lower-cased ("" without one)."""
    # Outlook's mail says `urn:content-classes:message`: a substring tells it apart.
    if "mdn" in content_class or "recall" in content_class:
        value = first_token(content_class)
        if value == _MDN_CLASS:
            return "content-class-mdn"
        if value == _RECALL_CLASS:
            return "outlook-recall"
    recall = fields.get(_RECALL_FIELD)  # most mail: none, and no generator is made for it
    if recall and any(first_token(v) == "true" for v in recall):
        return "outlook-recall"
    return ""


# Microsoft 365 (Exchange Online Protection) sends its quarantine notifications ("You have
# messages in quarantine") from this address unless the tenant's global quarantine settings
# name another sender. Each lists the held mail's sender and Subject, our tag included when
# the held mail is a customer's reply.
QUARANTINE_SENDER = "quarantine@messaging.microsoft.com"


def quarantine_sender(value: str) -> bool:
    """Whether the mail is Microsoft 365's quarantine notification, by its From (`value`,
    lower-cased). Cheap for other mail: the From is only parsed when it holds the address."""
    return QUARANTINE_SENDER in value and first_address(value) == QUARANTINE_SENDER


def notice_sender(msg: Message, notices: Callable[[str], bool] | None) -> bool:
    """Whether the From is one of the senders of mail filters' notices (`notices`, from
    `inbound.notice_senders`): a gateway's quarantine digest or "held"/"blocked" notice
    lists the mail it holds by its Subject, our tag included, from a sender each site
    chooses, with no mark of automatic mail known from a source."""
    return notices is not None and notices(first_address(msg.get("From") or ""))


def has_null_sender(msg: Message, fields: Fields) -> bool:
    """Whether the mail came under the null sender, the mail system's (RFC 5321 §4.5.5) or an
    auto-responder's (RFC 3834 §3.3), never a person's own: the envelope sender is `<>`.
    `fields`: the message's signal fields (`Return-Path`). A `Return-Path: <>` field counts
    only where the envelope is not known (`casethread filter` without `--mail-from`, on
    saved mail, whose final delivery wrote it): in transit that field is the client's, which
    Postfix drops before the milter sees it and Sendmail hands over, so the milter behind
    either reads the envelope. Where no Return-Path tells the envelope, the From stands in
    for it: `From: <>` or `MAILER-DAEMON <>` (an empty angle address, DragonFly Mail Agent's
    bounces) is the null sender's mail, as its envelope said; a From with an address, or a
    name alone, is no sign either way. A Return-Path with an address wins over such a From:
    a web form that left its visitor's address empty (`From: Pat <>`) sent under an envelope
    sender of its own, which the milter reads."""
    mail_from = "".join(msg.envelope.mail_from.split())
    if mail_from:
        return mail_from == "<>"
    paths = ["".join(without_comments(v).split()) for v in values_of(fields, "return-path")]
    if "<>" in paths:
        return True
    return not any("@" in path for path in paths) and _null_from(msg)


def _null_from(msg: Message) -> bool:
    """Whether the From names no address but the empty one: `<>`, or a display name and `<>`
    (`MAILER-DAEMON <>`), blanks and comments anywhere."""
    value = msg.get("From")
    if value is None or "<" not in value:
        return False
    name, _, rest = without_comments(field_text(value)).rpartition("<")
    return "".join(rest.split()) == ">" and not any(c in name for c in "<>@,;")


def delivery_actions(msg: Message, tree: mime.Part | None) -> set[str]:
    """The per-recipient `Action` values of a delivery report (RFC 3464 §2.3.3), lower case;
    `""` for a recipient's group without a readable one; empty when the report part is
    missing or unreadable (the report then counts as a bounce, as it does with `""`: a
    recipient whose Action is unread may be the one that failed, beside a `delayed` one).
    `tree`: the body's MIME structure if already parsed."""
    top = mime.top_fields(msg.headers)
    actions: set[str] = set()
    for part in bodytext.iter_parts_of_type(top.content_type, top.cte, msg.body,
                                            _DELIVERY_STATUS_TYPES, BODY_READ_MAX,
                                            top_disposition=top.disposition, tree=tree):
        for group in _GROUPS.split(part.data.decode("ascii", "replace")):
            actions.update(_group_actions(_FOLD.sub(" ", group)))  # `Action:\n failed`
    return actions


def _group_actions(group: str) -> list[str]:
    """The Actions of one field group: each value's first word, comments dropped
    (`Action: (permanent) failed`); `[""]` for a recipient's group that has none readable."""
    words = [_WORD.match(first_token(value)) for value in _ACTION.findall(group)]
    found = [word.group() for word in words if word is not None]
    return found or ([""] if _RECIPIENT.search(group) else [])
