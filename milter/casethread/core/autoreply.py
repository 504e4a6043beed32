"""Is this mail from a machine? The `X-Case-Auto` value (DESIGN §6).

The signals are the union of what RFC 3834, RT, Zammad, Znuny, FreeScout and Bugzilla look at
(PEERS.md §1a, §2.6), sorted into five kinds. When signals of several kinds are present the
first of this order wins:

1. `bounce`: a delivery status report (`multipart/report; report-type=delivery-status`) of a
   failure, an Exim `X-Failed-Recipients` header, a From of `mailer-daemon@...`, a From of
   `postmaster@...` with a null sender or a failure subject, or a null sender with a failure
   subject
   ("Undelivered Mail Returned to Sender", "failure notice", MDaemon's "Permanent Delivery
   Failure", ...). So a DSN with an empty sender is a bounce, even when it also says
   `Auto-Submitted: auto-replied` (RFC 3834 allows that on DSNs). A report whose
   every per-recipient `Action` is `delayed`, `delivered`, `relayed` or `expanded` (a delay
   warning, a success notice) is `auto-generated` whatever its sender; one with a `failed`
   Action, or with none readable, is a bounce. A notice of the mail system without a DSN
   (those senders) whose subject says the mail is delayed (Exim's "Warning: message ...
   delayed 24 hours", Sendmail's "Warning: could not send message for past 4 hours") is
   `auto-generated` too: a report is a bounce only when it reports a failure (RFC 3464), the
   one an agent must act on. Any other `multipart/report` (a read receipt, RFC 8098; abuse
   feedback) is `auto-generated` whatever else it says: RFC 3834 §5 lets a receipt carry
   `Auto-Submitted: auto-replied`, which makes it no out-of-office. A provider's feedback
   without a report (`feedback.provider`) next: an Amazon SES notification mailed by SNS is
   a bounce when it reports a failure (`Bounce`, `Reject` in its JSON; not a `Transient`/
   `General` bounce without a `failed` action, SES's report of an out-of-office), else
   `auto-generated`; a Microsoft JMRP complaint is `auto-generated`, as an ARF abuse report
   is (a complaint reports no failure to deliver, and it was delivered).
2. `auto-replied`: `Auto-Submitted: auto-replied`, `X-Autoreply`, `X-Autorespond`,
   `X-Autoresponder`, `Precedence`/`X-Precedence: auto_reply`, or Exchange's out-of-office
   pattern (below). An out-of-office reply is `auto-replied`.
3. `auto-generated`: `Auto-Submitted` with any other value except `no` (RFC 3834 §5:
   `auto-generated`, `auto-notified`, and unknown values such as `auto-forwarded`, as RT does:
   a rule's forward may bring our own mail back), `X-Loop` with a value (Znuny honours any
   value) on mail that is no list mail, Exchange's
   `X-MS-Journal-Report` (a journal copy of some mail, even with an empty value), an
   attendee's calendar reply without a note (iMIP, RFC 6047: `METHOD:REPLY`, no `COMMENT`
   or `X-RESPONSE-COMMENT` with text: a click on Accept, Decline or Tentative;
   `_imip_reply`), a null
   sender (envelope `<>`, or `Return-Path: <>` where no envelope is known), a From of
   `postmaster@...`, RT's
   `X-FC-Machinegenerated: true`, and RT mail whose `X-RT-Originator` (RT 3:
   `RT-Originator`) is one of our support addresses (RT mails out a transaction we created:
   the AutoReply to the ticket our mail opened, when RT leaves out the `Auto-Submitted:
   auto-replied` its AutoReply action sets, or our own correspondence sent back; an RT
   agent's reply names the agent there). Before
   `bulk`, which may be a person's mail (`rules.is_automatic`): a notification marked both
   `Precedence: bulk` and `Auto-Submitted: auto-generated` is the machine's.
4. `bulk`: `Precedence`/`X-Precedence` of `bulk`, `junk` or `list`, or a `List-Id`,
   `List-Unsubscribe`, `List-Post` or `Mailing-List` header (RFC 3834 §2: a responder MAY
   ignore mail with a List-* field). A list mail is `bulk`, also when the list adds `X-Loop`.
   Except our own list: one whose `List-Post` mailto address, or whose `List-Id` read as an
   address (`<support.example.com>`: support@example.com, RFC 2919; also bare or after a quoted
   phrase holding brackets), is a support address (a
   Google Group or Mailman list that *is* support@) relays people's mail, so its List-*
   fields and `Precedence: list` say nothing (`bulk` and `junk` still count).
   `Precedence: junk` on mail that is no list mail is `auto-replied`, not `bulk`: it is how
   vacation(1) and its clones mark their replies (RFC 3834 §2 names it among the fields
   responders set), never how a list or a ticket system marks a person's mail, so it must
   not count as a person's reply (`rules.is_automatic`). So is `Precedence: bulk` on mail
   that is no list mail and whose subject starts with an out-of-office phrase (below): the
   vacation(1) man page's example message sets that field alone, and a `$SUBJECT` in the
   message's Subject keeps our token, which made such a reply reopen its case.
5. `no`: none of these.

Decisions, each conservative because an auto kind stops a reopen or a new case:
- Exchange headers. `X-MS-Exchange-Inbox-Rules-Loop` and `X-MS-Exchange-Generated-Message-Source`
  are also stamped on mail that an inbox rule merely forwarded, i.e. a human's text. Alone they
  are no signal (a forward rule is also how a customer's shared mailbox brings new
  questions, which must open cases), but for a forward of our own mail: an inbox rule's
  forward (`X-MS-Exchange-Inbox-Rules-Loop`) whose text starts with the header block of the
  mail it forwards, nothing typed above it, and whose From line names one of our support
  addresses as a From does (`Name <a@b>`, `Name [mailto:a@b]`, the address alone) is
  `auto-generated` (`_forwards_our_mail`: the customer's mailbox sending our answer back must
  not reopen the case the agent just resolved); with
  `X-Auto-Response-Suppress` naming `All`, `OOF` or `AutoReply` they mean an Exchange
  out-of-office or rule reply (Zammad's rule), so `auto-replied`; with an
  out-of-office subject (below) too, for the Exchange reply whose other fields a gateway
  dropped.
  `X-Auto-Response-Suppress` alone is no signal either: it asks *others* not to auto-reply and
  is set on ordinary mail too (Discourse PR #21367, Sisimai #491); naming `All`, `OOF` or
  `AutoReply` together with an out-of-office subject it is `auto-replied`.
- Subjects. No peer relies on a subject alone (Zammad only uses "vacation" together with
  `Auto-Submitted: auto-replied`), so a subject never makes mail auto. It only refines: mail
  that is already `auto-generated` (or carries one of the weak Exchange fields above, or is
  `Precedence: bulk` without being list mail) and whose subject
  starts with a known out-of-office phrase
  ("Automatic reply:", "Out of Office:", "Automatische Antwort:", "Autosvar:", ...) becomes
  `auto-replied` (Exchange sends out-of-office as `Auto-Submitted: auto-generated`).
- An empty or whitespace-only `Auto-Submitted`, or `X-Autoreply` & co. with `no`, `false`,
  `0` or nothing, is no signal. `Precedence` values other than the four above are ignored.
- An envelope sender of `""` means "unknown" (e.g. `casethread filter` without
  `--mail-from`); only `<>` is the null sender.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from . import bodytext, feedback, mime
from .addresses import first_address
from .message import Message, unfold, without_comments
from .subject import decode_subject

NO = "no"
AUTO_REPLIED = "auto-replied"
AUTO_GENERATED = "auto-generated"
BOUNCE = "bounce"
BULK = "bulk"
KINDS = (NO, AUTO_REPLIED, AUTO_GENERATED, BOUNCE, BULK)

_NEGATIVE = frozenset({"", "no", "false", "0"})
_LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "mailing-list")
# Marks of list managers that add no List-* field (Mailman 2's X-BeenThere, SmartList's
# X-Mailing-List): list mail for the exceptions below, no bulk by themselves.
_LIST_MARKS = ("x-beenthere", "x-mailman-version", "x-mailing-list")
_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder")
# Who created the transaction RT mails out (RT 3's name, then RT 4's and 5's).
_RT_ORIGINATOR = ("rt-originator", "x-rt-originator")
_EXCHANGE_RULE_HEADERS = (
    "x-ms-exchange-inbox-rules-loop",
    "x-ms-exchange-generated-message-source",
)
# Every field looked at besides From, Subject and Content-Type (lower case): most mail has
# none of them, so they are gathered in one pass instead of one lookup each.
_SIGNAL_FIELDS = frozenset({
    "x-failed-recipients", "auto-submitted", "precedence", "x-precedence",
    "x-auto-response-suppress", "x-loop", "x-fc-machinegenerated", "return-path",
    "x-ms-journal-report", *_RT_ORIGINATOR,
    *_LIST_HEADERS, *_LIST_MARKS, *_AUTOREPLY_HEADERS, *_EXCHANGE_RULE_HEADERS,
})
Fields = Mapping[str, Sequence[str]]
_SUPPRESS_AUTO = frozenset({"all", "oof", "autoreply"})
# RFC 2369 §2: the URLs are in angle brackets, "with internal whitespace being ignored" (a
# long one is folded inside them).
_MAILTO = re.compile(r"<\s*mailto\s*:([^>?]+)", re.I)
# A quoted string, closed (group 1 is the `"`) or not: one never closed is matched too and
# kept as it is (`_unquoted`), so the search goes on after it instead of starting again at
# each `"` it holds (`"\"\"\"...` unclosed: quadratic, 3.7 s for a 20 KB List-Id). A quote
# after the start of an unclosed one fails the same way: it follows an escaping backslash,
# and its scan reads what the first one read.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*+("?)')
_LIST_ID = re.compile(r"<([^<>]+)>")
_DELIVERY_STATUS_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
# A DSN's multipart/report: RFC 3464's, or RFC 6533's for SMTPUTF8 mail where the MTA names it
# so (Postfix 3.7 keeps `delivery-status` and only the parts are `message/global-*`).
_DSN_REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status"})
# Reports a mail system or provider sends about our mail: a DSN, an ARF report (RFC 5965).
_REPORTS_OF_OUR_MAIL = _DSN_REPORT_TYPES | {"feedback-report"}
_ACTION = re.compile(r"^action[ \t]*:[ \t]*([a-z]+)", re.I | re.M)
_NOT_FAILED = frozenset({"delayed", "delivered", "relayed", "expanded"})
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_REPORT_BUDGET = 64 << 10
# The subjects of the mail system's notices in formats of their own (no DSN to read), from the
# start: a delay warning's, then a failure's (MDaemon's delay says "Temporary Delivery
# Failure"). A failure's subject may go on with the returned mail's, which may say anything.
_DELAY_SUBJECT = re.compile(
    r"\s*(?:warning:\s*)?(?:message\s+\S+\s+delayed|could\s+not\s+send\s+message\s+for\s+past"
    r"|(?:mail\s+)?delivery\s+(?:is\s+)?delay|delayed\s+(?:mail|delivery)"
    r"|delivery\s+status\s+notification\s*\(delay\)|temporary\s+delivery\s+failure)",
    re.IGNORECASE,
)
_FAILURE_SUBJECT = re.compile(
    r"\s*(?:undeliver|returned\s+mail|mail\s+delivery\s+failed|failure\s+notice"
    r"|delivery\s+status\s+notification\s*\(failure\)|(?:permanent\s+)?delivery\s+failure"
    r"|(?:message\s+)?delivery\s+(?:has\s+)?failed|non-?\s*deliver|mail\s+system\s+error)",
    re.IGNORECASE,
)
# The fields a notice of the mail system is told by, besides From and Subject.
_NOTICE_FIELDS = frozenset({"x-failed-recipients", "return-path"})
_SYSTEM_SENDERS = ("mailer-daemon", "postmaster")
_OOO_SUBJECT = re.compile(
    r"\s*(?:auto(?:matic)?[\s-]*reply|out\s+of\s+(?:the\s+)?office"
    r"|automatische\s+antwort|abwesenheitsnotiz|autosvar|automatiskt\s+svar"
    r"|automatisch\s+antwoord"
    r"|réponse\s+automatique|respuesta\s+automática|risposta\s+automatica"
    r"|resposta\s+automática|automaattinen\s+vastaus|automatyczna\s+odpowiedź"
    r"|automatická\s+odpověď|automatikus\s+válasz|自动回复|自動回覆|自動応答|自動返信)"
    r"\s*[:：]",
    re.IGNORECASE,
)

_CALENDAR_CLASS = "urn:content-classes:calendarmessage"
# What the Subjects of calendar replies start with, before their colon (lower case, blanks as
# one): Outlook's (English, German, French, Spanish; its Italian and Dutch "Declined:"),
# Google Calendar's (also French), Thunderbird's `itip-reply-subject-*` strings in English,
# German, French, Spanish, Italian, Dutch, Portuguese (Brazil, Portugal), Swedish, Danish,
# Norwegian, Polish, Japanese and Chinese, and "Event Invitation Reply (Accepted):" of CalDAV
# servers (`_INVITATION_REPLY`). Only a candidate: the body's METHOD:REPLY decides. A set, not
# a regex of alternatives: every multipart message's Subject is looked up, and each
# alternative was tried at its start.
_IMIP_PREFIXES = frozenset({
    "accepted", "declined", "tentative", "tentatively accepted", "maybe", "invitation reply",
    "invitation status", "invitation declined",
    "zugesagt", "abgelehnt", "mit vorbehalt angenommen", "angenommen", "vorläufig",
    "akzeptiert", "einladung abgelehnt",
    "accepté", "acceptée", "refusé", "refusée", "provisoire", "proposée", "peut-être",
    "invitation refusée",
    "aceptado", "aceptada", "rechazado", "provisional", "tentativa", "tentativo",
    "invitación declinada",
    "accettato", "rifiutato", "rifiutata", "invito rifiutato", "da confermare",
    "geaccepteerd", "geweigerd", "uitnodiging geweigerd", "voorlopig",
    "aceito", "aceite", "convite recusado",
    "accepterad", "inbjudan avvisades", "preliminär",
    "accepteret", "invitation afvist", "foreløbig",
    "akseptert", "invitasjon avvist", "med forbehold",
    "przyjęto", "odrzucono zaproszenie", "wstępnie",
    "承諾", "仮承諾", "参加辞退", "已接受", "拒绝邀请", "已拒絕邀請", "暂定", "暫定",
})
_INVITATION_REPLY = re.compile(r"(?:event )?invitation reply ?\([^)]*\)")
# The longest prefix looked at: "event invitation reply (tentatively accepted)" and room.
_IMIP_PREFIX_MAX = 64
_ICS_FOLD = re.compile(r"\r?\n[ \t]")
_ICS_METHOD = re.compile(r"^METHOD\s*:\s*([A-Za-z-]+)", re.I | re.M)
# The attendee's note: a COMMENT property's value (Outlook, Exchange, Evolution, Nextcloud), or
# Google Calendar's X-RESPONSE-COMMENT parameter on the ATTENDEE line (its only place for it).
# Exchange writes `COMMENT;LANGUAGE=en-US:\n` on a click too: a value of escaped line breaks
# and blanks is no note.
_ICS_NOTE = re.compile(r'^COMMENT[^:\r\n]*:([^\r\n]*)|;X-RESPONSE-COMMENT=("[^"\r\n]*"|[^;:\r\n]*)',
                       re.I | re.M)
_ICS_EMPTY = re.compile(r'(?:\\[nN]|\s|")*')


def is_auto(kind: str) -> bool:
    """True for every kind except `no`; ValueError for a string that is not a kind."""
    if kind not in KINDS:
        raise ValueError(f"not an X-Case-Auto kind: {kind!r}")
    return kind != NO


def classify_auto(msg: Message, ours: Callable[[str], bool] | None = None) -> str:
    """One of `KINDS` (see the module doc for the signals and their order)."""
    return classify_auto_detail(msg, ours)[0]


def classify_auto_detail(msg: Message, ours: Callable[[str], bool] | None = None,
                         tree: Callable[[], mime.Part] | None = None) -> tuple[str, str]:
    """The kind and the signal that decided it (a short name for logs; `""` for `no`).
    `ours` tells our support addresses: a list that is one of them is our own front door.
    `tree` gives the body's MIME structure when the caller keeps one (the engine's, which the
    bounce strategy reads too): a delivery report's body is then parsed once."""
    fields = msg.present(_SIGNAL_FIELDS)
    null_sender = _null_sender(msg, fields)
    from_local = _from_local_part(msg)
    report_type = _report_type(msg)

    # 1. bounce
    if report_type in _DSN_REPORT_TYPES:
        actions = _delivery_actions(msg, tree() if tree is not None else None)
        if actions and actions <= _NOT_FAILED:
            # A delay warning or a success notice: machine mail, but nothing bounced.
            return AUTO_GENERATED, "delivery-status-" + "-".join(sorted(actions))
        return BOUNCE, "delivery-status"
    notice = _notice(msg, fields, null_sender, from_local)
    if notice is not None:
        return notice
    if report_type is not None:  # a read receipt, also one marked auto-replied (RFC 3834 §5)
        return AUTO_GENERATED, "report"
    provider = feedback.provider(msg)
    if provider:  # a JMRP complaint, an SES notification by SNS (`core/feedback.py`)
        found = _provider_feedback(msg, provider, tree)
        if found is not None:
            return found

    calendar = _imip_reply(msg, tree)  # an attendee's click: "Accepted: ..."
    if not (fields or null_sender or from_local == "postmaster"):
        # most mail: none of the signals below can be present
        return (AUTO_GENERATED, "imip-reply") if calendar else (NO, "")

    submitted = _submitted(fields)
    precedence = _precedence(fields)
    if fields:  # step 2 reads these fields only
        replied = _replied(fields, submitted, precedence)
        if replied is not None:
            return replied

    # 3. auto-generated (refined to auto-replied by an out-of-office subject). Before bulk:
    # bulk mail may be a person's, relayed by a list (rules.is_automatic), and a sender that
    # says its mail is machine-made (RFC 3834 §5) is believed even when it is bulk too.
    reason = _auto_generated(fields, submitted, null_sender, from_local, ours)
    if reason == "x-loop" and _list_mail(fields, precedence):
        reason = ""  # lists add X-Loop to the people's mail they relay
    # Exchange's rule headers and X-Auto-Response-Suppress are too weak alone, but with an
    # out-of-office subject they are an Exchange auto-reply.
    weak = "" if reason else (_exchange_rule_header(fields) or _suppress_header(fields))
    if (reason or weak) and _ooo_subject(msg):
        return AUTO_REPLIED, f"{reason or weak}+ooo-subject"
    if reason:
        return AUTO_GENERATED, reason
    if calendar:
        return AUTO_GENERATED, "imip-reply"
    if (ours is not None and _values(fields, _RULE_FORWARD)
            and _forwards_our_mail(msg, tree, ours)):
        return AUTO_GENERATED, "rule-forward-of-our-mail"

    # 4. bulk (our own list relays people's mail: its list fields say nothing), except
    # vacation(1)'s `Precedence: junk`, which no list puts on a person's mail, and its
    # `Precedence: bulk` under an out-of-office subject (the man page's example message).
    if not _list_mail(fields, precedence):
        if "junk" in precedence:
            return AUTO_REPLIED, "precedence-junk"
        if "bulk" in precedence and _ooo_subject(msg):
            return AUTO_REPLIED, "precedence-bulk+ooo-subject"
    own_list = ours is not None and _own_list(fields, ours)
    if precedence & ({"bulk", "junk"} if own_list else {"bulk", "junk", "list"}):
        return BULK, "precedence"
    for name in () if own_list else _LIST_HEADERS:
        if _values(fields, name):
            return BULK, name
    return NO, ""


def _provider_feedback(msg: Message, provider: str,
                       tree: Callable[[], mime.Part] | None) -> tuple[str, str] | None:
    """A JMRP complaint is `auto-generated`, as an ARF report is. An SES notification by SNS
    is a bounce when it reports a failure (`Bounce`, `Reject`), as a DSN is, else
    `auto-generated`. None for SNS mail whose body holds no SES notification: it is read as
    any mail is (a subscription confirmation someone must confirm, a CloudWatch alarm a site
    may want a case for: they opened cases before SES notices were read, and still do)."""
    if provider == feedback.JMRP:
        return AUTO_GENERATED, "jmrp-complaint"
    notice = feedback.ses_notice(msg, tree() if tree is not None else None)
    if notice is None:
        return None
    kind = BOUNCE if notice.kind in feedback.FAILED else AUTO_GENERATED
    return kind, "ses-" + notice.kind.replace(" ", "-")


def is_delivery_notice(msg: Message) -> bool:
    """Whether the mail system sent this mail about a delivery without a DSN at its top (a
    bounce or a delay warning in a format of its own, or a DSN wrapped in other mail): the
    mail the bounce strategy reads for the returned message. Cheap for other mail: its From
    is only parsed when it names a system sender."""
    fields = msg.present(_NOTICE_FIELDS)
    null_sender = _null_sender(msg, fields)
    sender = (msg.get("From") or "").lower()
    if not (null_sender or "x-failed-recipients" in fields
            or any(name in sender for name in _SYSTEM_SENDERS)):
        return False
    fields = msg.present(_SIGNAL_FIELDS)  # what `_notice` reads: the responder's marks too
    return _notice(msg, fields, null_sender, _from_local_part(msg)) is not None


def has_null_sender(msg: Message) -> bool:
    """Whether the mail came under the null sender (`_null_sender`): the
    mail system's (RFC 5321 §4.5.5) or an auto-responder's (RFC 3834 §3.3), never a person's
    own."""
    if msg.envelope.mail_from.strip():  # the envelope tells: no field need be looked up
        return _null_sender(msg, {})
    return _null_sender(msg, msg.present(_NOTICE_FIELDS))


def from_postmaster(msg: Message) -> bool:
    """Whether From is postmaster@ (RFC 5321 §4.5.1: the mail system's own address). Cheap
    for other mail: its From is only parsed when it holds the word."""
    value = msg.get("From")
    return value is not None and "postmaster" in value.lower() and (
        _from_local_part(msg) == "postmaster")


def from_mail_system(msg: Message, kind: str) -> bool:
    """Whether the mail system sent this mail about a delivery: a bounce (`kind`), a DSN of
    any Action (a delay warning, a success notice) or a notice in a format of its own; or a
    mail provider's report about our mail: an ARF report (`report-type=feedback-report`), a
    JMRP complaint, an SES notification by SNS (`feedback.provider`). Its From is the MTA's or
    the provider's and its To our own sender: no people of a case (`resolve.adds_people`),
    also when our token, which the copy it returns holds, found its case."""
    return (kind == BOUNCE or _report_type(msg) in _REPORTS_OF_OUR_MAIL
            or (kind == AUTO_GENERATED and (is_delivery_notice(msg)
                                            or bool(feedback.provider(msg)))))


def _notice(msg: Message, fields: Fields, null_sender: bool,
            from_local: str) -> tuple[str, str] | None:
    """The kind of a notice of the mail system about a delivery, told without a DSN (step 1):
    a bounce, or `auto-generated` when its subject says the mail is only delayed; None for
    other mail (a null sender alone is any auto-reply's, RFC 3834 §3.3)."""
    if _values(fields, "x-failed-recipients"):  # Exim sets it on failures only
        return BOUNCE, "x-failed-recipients"
    system = ("from-mailer-daemon" if from_local == "mailer-daemon"
              else "from-postmaster-null-sender" if from_local == "postmaster" and null_sender
              else "")
    if not (system or null_sender):
        # postmaster@ under a sender of its own (m-FILTER, MailMarshal, Exchange's IMS behind
        # a relay that rewrote the null sender): its failure subject tells its bounce. Such
        # mail is automatic anyway (`from-postmaster`); this reads its returned copy too.
        if from_local == "postmaster" and _FAILURE_SUBJECT.match(
                decode_subject(msg.get("Subject") or "")):
            return BOUNCE, "from-postmaster+failure-subject"
        return None
    if not system and _responder_marks(fields, _submitted(fields)):
        return None  # RFC 3834 §3.3: a responder's null sender, and the Subject it answers
    subject = decode_subject(msg.get("Subject") or "")
    if _DELAY_SUBJECT.match(subject):
        return AUTO_GENERATED, f"{system or 'null-sender'}+delay-subject"
    if system:
        return BOUNCE, system
    if _FAILURE_SUBJECT.match(subject):
        return BOUNCE, "null-sender+failure-subject"
    return None


def _ooo_subject(msg: Message) -> bool:
    """Whether the Subject starts with a known out-of-office phrase ("Automatic reply:", ...)."""
    subject = msg.get("Subject")
    return subject is not None and _OOO_SUBJECT.match(decode_subject(subject)) is not None


def _submitted(fields: Fields) -> list[str]:
    """The `Auto-Submitted` values, each its first token."""
    return [v for v in (_first_token(x) for x in _values(fields, "auto-submitted")) if v]


def _responder_marks(fields: Fields, submitted: list[str]) -> str:
    """The auto-responder's own mark (RFC 3834's `Auto-Submitted: auto-replied`, X-Autoreply
    and its kin) the mail carries, or `""`."""
    if "auto-replied" in submitted:
        return "auto-submitted"
    for name in _AUTOREPLY_HEADERS:
        if any(_first_token(v) not in _NEGATIVE for v in fields.get(name, ())):
            return name
    return ""


def _replied(fields: Fields, submitted: list[str],
             precedence: set[str]) -> tuple[str, str] | None:
    """Step 2, auto-replied, from the header signals alone."""
    mark = _responder_marks(fields, submitted)
    if mark:
        return AUTO_REPLIED, mark
    if "auto_reply" in precedence:
        return AUTO_REPLIED, "precedence"
    if _exchange_auto_reply(fields):
        return AUTO_REPLIED, "exchange-rule-reply"
    return None


def _precedence(fields: Fields) -> set[str]:
    """The `Precedence` (and `X-Precedence`) values, each its first token."""
    return {_first_token(v) for n in ("precedence", "x-precedence") for v in fields.get(n, ())}


def _list_mail(fields: Fields, precedence: set[str]) -> bool:
    return "list" in precedence or any(
        _values(fields, name) for names in (_LIST_HEADERS, _LIST_MARKS) for name in names)


def _own_list(fields: Fields, ours: Callable[[str], bool]) -> bool:
    """Whether the mail's list is one of our support addresses (a Google Group or a Mailman
    list that is support@): its `List-Post` mailto address, or its `List-Id` read as one
    (`<support.example.com>` for support@example.com, RFC 2919)."""
    return any(ours(address) for address in _list_addresses(fields))


def _list_addresses(fields: Fields) -> list[str]:
    """The list's own addresses its fields name: `List-Post`'s mailto addresses, `List-Id`
    read as one."""
    return [*(a for value in _values(fields, "list-post") for a in _post_addresses(value)),
            *(a for value in _values(fields, "list-id") for a in _list_id_address(value))]


def _post_addresses(value: str) -> list[str]:
    """The mailto addresses of a `List-Post` value (none for `NO (posting not allowed)`),
    whitespace inside the angle brackets ignored (RFC 2369 §2)."""
    return ["".join(a.split()) for a in _MAILTO.findall(value) if a.strip()]


def _unquoted(quoted: re.Match[str]) -> str:
    """A closed quoted string as a blank; an unclosed one as it is."""
    return " " if quoted.group(1) else quoted.group()


def _list_id_address(value: str) -> list[str]:
    """A `List-Id` value read as the list's address (`<team.lists.example.org>`:
    team@lists.example.org, RFC 2919), or none: the id in angle brackets after the phrase,
    which may be a quoted string holding brackets of its own (`"Team <x>"
    <team.example.org>`); without brackets, a value that is nothing but an id, as some list
    managers write it (`team.example.org`); an address written where the id belongs
    (`<team@example.org>`) as that address."""
    text = _QUOTED.sub(_unquoted, without_comments(unfold(value), repl=" "))
    found = _LIST_ID.findall(text)
    ident = "".join(found[-1].split()) if found else text.strip()
    if not ident or any(c.isspace() or c in '<>"' for c in ident) or ident.count("@") > 1:
        return []
    if "@" in ident:  # `<team@example.org>`: an address where the id should be
        return [ident] if ident[0] != "@" and ident[-1] != "@" else []
    label, _, namespace = ident.partition(".")
    return [f"{label}@{namespace}"] if label and namespace else []


# Fields only a list writes; `List-Unsubscribe` is also on apps' transactional mail.
_STRONG_LIST_FIELDS = tuple(n for n in (*_LIST_HEADERS, *_LIST_MARKS) if n != "list-unsubscribe")
_LIST_FIELDS = frozenset({"precedence", "x-precedence", *_LIST_HEADERS, *_LIST_MARKS})
_LIST_ADDRESS_FIELDS = frozenset({"list-post", "list-id"})


def is_list_mail(msg: Message, ours: Callable[[str], bool]) -> bool:
    """Whether the mail is a mailing list's or a newsletter's: a list field (`List-Id`,
    `List-Post`, `Mailing-List`, Mailman's marks), `Precedence: list`, or `List-Unsubscribe`
    on mail to more than one recipient who is not ours; but not `Precedence: bulk` alone (RT
    marks all its mail so), nor a list that is one of our support addresses (`ours`)."""
    fields = msg.present(_LIST_FIELDS)
    if not fields:
        return False
    precedence = _precedence(fields)
    if not _list_mail(fields, precedence) or _own_list(fields, ours):
        return False
    if "list" in precedence or any(_values(fields, name) for name in _STRONG_LIST_FIELDS):
        return True
    # List-Unsubscribe alone: apps put it on their transactional mail too (an answer to one
    # customer must open its case); one message to several outside recipients is a mailing.
    return sum(1 for rcpt in msg.envelope.rcpts if not ours(rcpt)) > 1


def list_addresses(msg: Message) -> frozenset[str]:
    """The mailing list's own addresses, as its mail names them: the `List-Post` mailto
    addresses and the `List-Id` read as one (`<team.googlegroups.com>` for
    team@googlegroups.com, RFC 2919), lower-cased. A list is nobody's participant: Google
    Groups and Mailman's DMARC mitigation write its address as From ("'Pat' via Team
    <team@googlegroups.com>"), so a list address taken for a person would make every
    member's mail a participant's."""
    return frozenset(a.lower() for a in _list_addresses(msg.present(_LIST_ADDRESS_FIELDS)))


def _auto_generated(
    fields: Fields, submitted: list[str], null_sender: bool, from_local: str,
    ours: Callable[[str], bool] | None,
) -> str:
    if any(v != "no" for v in submitted):
        return "auto-submitted"
    if "x-ms-journal-report" in fields:  # Exchange's journal copy of some mail (often empty)
        return "x-ms-journal-report"
    if _values(fields, "x-loop"):
        return "x-loop"
    if null_sender:
        return "null-sender"
    if from_local == "postmaster":
        return "from-postmaster"
    if any(_first_token(v) == "true" for v in fields.get("x-fc-machinegenerated", ())):
        return "x-fc-machinegenerated"
    if ours is not None and _rt_echo(fields, ours):
        return "rt-originator-ours"
    return ""


def _rt_echo(fields: Fields, ours: Callable[[str], bool]) -> bool:
    """Whether RT mails out a transaction one of our addresses created (our own mail, which
    opened or updated its ticket), not an RT agent's."""
    return any(ours(first_address(v)) for name in _RT_ORIGINATOR for v in _values(fields, name))


# Of each field read here, the first this many characters (unfolded, blanks around it
# dropped): a keyword, an address or a list id and their comments are far shorter. Comments
# are removed in up to 8 passes over the text (`without_comments`), some fields several
# times a message: a hundred 100 KB fields of nested comments `(((...)))` (Return-Path,
# Precedence, List-Id) took 0.6 to 2.5 s of CPU.
MAX_FIELD_TEXT = 4096


def _values(fields: Fields, name: str) -> list[str]:
    """The non-empty unfolded values of every field of that (lower-cased) name, each its
    first `MAX_FIELD_TEXT` characters."""
    values = fields.get(name)
    return [v for v in (_field_text(x) for x in values) if v] if values else []


def _field_text(value: str) -> str:
    return unfold(value).strip()[:MAX_FIELD_TEXT]


def _first_token(value: str) -> str:
    """`auto-replied; owner-email=x (vacation)` -> `auto-replied`: lower-cased, no comments
    (of the first `MAX_FIELD_TEXT` characters)."""
    text = without_comments(_field_text(value), repl=" ")
    return text.split(";", 1)[0].strip().lower()


def _null_sender(msg: Message, fields: Fields) -> bool:
    """The envelope sender is `<>`. A `Return-Path: <>` field counts only where the envelope
    is not known (`casethread filter` without `--mail-from`, on saved mail, whose final
    delivery wrote it): in transit that field is the client's, which Postfix drops before the
    milter sees it and Sendmail hands over, so the milter behind either reads the envelope."""
    mail_from = "".join(msg.envelope.mail_from.split())
    if mail_from:
        return mail_from == "<>"
    return any("".join(without_comments(v).split()) == "<>"
               for v in _values(fields, "return-path"))


def _from_local_part(msg: Message) -> str:
    """The lower-cased local part of From (`MAILER-DAEMON` without a domain counts too)."""
    value = msg.get("From")
    if value is None:
        return ""
    addr = first_address(value)
    return addr.rpartition("@")[0].lower() if "@" in addr else addr.lower()


def _report_type(msg: Message) -> str | None:
    """A `multipart/report`'s `report-type` parameter (lower-cased); None for other mail."""
    value = msg.get("Content-Type")
    if not mime.is_report(value):
        return None
    # The core's own parser: the stdlib's raises on 8-bit bytes next to non-ASCII text.
    return (mime.content_type(value).param("report-type") or "").strip().lower()


def reads_body(msg: Message) -> bool:
    """Whether the kind depends on the body: a delivery report's Action fields, an SES
    notification's type (`feedback.SNS`), a calendar reply's METHOD (`_imip_candidate`), an
    Exchange rule's forward's first lines (`_forwards_our_mail`)."""
    return (_report_type(msg) in _DSN_REPORT_TYPES or feedback.provider(msg) == feedback.SNS
            or _imip_candidate(msg) or msg.get(_RULE_FORWARD) is not None)


def _imip_candidate(msg: Message) -> bool:
    """Whether the header fields say the mail may be a calendar reply (iMIP, RFC 6047), whose
    body then tells: a `text/calendar` message, Outlook's and Exchange's `Content-Class:
    urn:content-classes:calendarmessage` (any language), or a multipart message whose Subject
    starts as the calendars' replies do ("Accepted:", "Declined:", "Tentative:", ...). Only
    these have their body read for it, so that the milter's decision at the end of the header
    section (`Engine.body_wanted`) is the whole message's. Asked of every message, twice:
    substrings tell most mail apart (a type's name is a token, never split), as
    `mime.is_report` does; the Content-Type is parsed only for a candidate."""
    content_type = msg.get("Content-Type")
    if content_type is None:
        return False
    lowered = content_type.lower()
    if "calendar" in lowered and mime.media_type(content_type) == "text/calendar":
        return True
    if "multipart" not in lowered:
        return False
    subject = msg.get("Subject") or ""
    plain = subject.isascii() and "=?" not in subject  # as decoded already
    if not (_imip_subject(subject if plain else decode_subject(subject))
            or _CALENDAR_CLASS in (msg.get("Content-Class") or "").lower()):
        return False
    return mime.media_type(content_type).startswith("multipart/")


def _imip_subject(subject: str) -> bool:
    """Whether the Subject starts as a calendar reply's: its text before the first colon
    (`:`, or the full-width `：` of CJK input) is one of `_IMIP_PREFIXES`, in any case, blanks
    around and between its words as one (French writes `Accepté :`)."""
    head = subject[:_IMIP_PREFIX_MAX + 1]
    colon = head.find(":")
    wide = head.find("：", 0, colon if colon >= 0 else len(head))
    end = wide if wide >= 0 else colon
    if end < 0:
        return False
    prefix = " ".join(head[:end].lower().split())
    return prefix in _IMIP_PREFIXES or (
        prefix.endswith(")") and _INVITATION_REPLY.fullmatch(prefix) is not None)


def _imip_reply(msg: Message, tree: Callable[[], mime.Part] | None) -> bool:
    """Whether the mail is an attendee's reply to an invitation (iMIP, RFC 6047: its first
    `text/calendar` part says `METHOD:REPLY`) that carries no note of theirs (no `COMMENT`
    property with text, Outlook's "Edit the response before sending"; no
    `X-RESPONSE-COMMENT` parameter with text, Google Calendar's "add a note"; Exchange
    writes an empty `COMMENT` on a mere click). Such a reply is a click on Accept, Decline
    or Tentative, which the client mails itself: automatic. A counter-proposal
    (`METHOD:COUNTER`, "New Time Proposed:") asks the organizer something and stays a
    person's mail."""
    if not _imip_candidate(msg):
        return False
    top = mime.top_fields(msg.headers)
    for part in bodytext.iter_parts_of_type(top.content_type, top.cte, msg.body,
                                            ("text/calendar",), _REPORT_BUDGET,
                                            top_disposition=top.disposition,
                                            tree=tree() if tree is not None else None):
        text = _ICS_FOLD.sub("", part.data.decode("utf-8", "replace"))
        method = _ICS_METHOD.search(text)
        return (method is not None and method.group(1).upper() == "REPLY"
                and all(_ICS_EMPTY.fullmatch(note.group(1) or note.group(2) or "")
                        for note in _ICS_NOTE.finditer(text)))
    return False


def _delivery_actions(msg: Message, tree: mime.Part | None) -> set[str]:
    """The per-recipient `Action` values of a delivery report (RFC 3464 §2.3.3), lower case;
    empty when the report part is missing or unreadable (the report then counts as a bounce).
    `tree`: the body's MIME structure if already parsed."""
    top = mime.top_fields(msg.headers)
    actions: set[str] = set()
    for part in bodytext.iter_parts_of_type(top.content_type, top.cte, msg.body,
                                            _DELIVERY_STATUS_TYPES, _REPORT_BUDGET,
                                            top_disposition=top.disposition, tree=tree):
        text = _FOLD.sub(" ", part.data.decode("ascii", "replace"))  # `Action:\n failed`
        actions.update(a.lower() for a in _ACTION.findall(text))
    return actions


def _exchange_rule_header(fields: Fields) -> str:
    """The first Exchange rule header present, or `""`."""
    return next((name for name in _EXCHANGE_RULE_HEADERS if _values(fields, name)), "")


# Set by Exchange on mail an inbox rule sent: a forward, a redirect, a rule's reply.
_RULE_FORWARD = "x-ms-exchange-inbox-rules-loop"
# A header block's line, in any language ("From:", "Von:", "De :", "寄件者:"), and its value;
# the first may have its value on the next line (`_wrapped_from`).
_HEADER_LINE = re.compile(r"\s*[^\s:][^:\n]{0,39}:\s*(.*)")
_ADDRESS = r"(?:mailto:)?([^\s<>\[\]:;,\"()]+@[^\s<>\[\]:;,\"()]+)"
_ADDRESS_IN = re.compile(_ADDRESS, re.I)
# The address a From line names as a From does: in angle brackets, in Outlook's `[mailto:]`
# (a search that starts only at a bracket), or alone on the line (`fullmatch`).
_FRAMED_ADDRESS = re.compile(r"[<\[]\s*" + _ADDRESS, re.I)
# Outlook wraps plain text at 76 characters (30-132 as set), Exchange 2003 at 72: a From line
# and the next line's first word longer than this were one line that was wrapped.
_WRAP = 72
# A header line holds 998 characters (RFC 5322 §2.1.1): that much of a From is read.
_LINE_MAX = 998


def _forwards_our_mail(msg: Message, tree: Callable[[], mime.Part] | None,
                       ours: Callable[[str], bool]) -> bool:
    """Whether an Exchange inbox rule's forward forwards mail of ours: its first text starts,
    after blank lines and a separator line, with the forwarded mail's header block (two
    header lines at least), whose first line (its From) names one of our support addresses.
    A person who forwards types above it, and no rule adds a line; a shared mailbox's rule
    forwarding a new question forwards its sender's mail, a colleague's reply to our mail
    the colleague's: both stay a person's mail. A forward as an attachment is not read so
    (it stays a person's mail)."""
    top = mime.top_fields(msg.headers)
    texts = bodytext.iter_texts(top.content_type, top.cte, msg.body, _REPORT_BUDGET,
                                top_disposition=top.disposition,
                                tree=tree() if tree is not None else None, open_files=False)
    lines = (line for line in next(texts, "").splitlines() if line.strip())
    first = next(lines, "")
    if _forward_separator(first.strip()):
        first = next(lines, "")
    header = _header_line(first)
    if header is None:
        return False
    value = header.group(1)[:_LINE_MAX].strip()
    after = next(lines, "")
    if _named_address(value) is None:
        # Outlook and Exchange wrap a long From line before its address, and an HTML
        # block's markup may put the value on a line of its own: the next line ends the From
        # then. A From of a display name alone (an internal contact) is not guessed at.
        if not _wrapped_from(first, value, after):
            return False
        value = f"{value} {after.strip()[:_LINE_MAX]}"
        after = next(lines, "")
    # A header block goes on (Sent, Date, To, Subject): one line alone is a person's text
    # ("FYI: support@... closed my ticket" redirected by a shared mailbox's rule).
    if _header_line(after) is None:
        return False
    address = _named_address(value)
    return address is not None and ours(address)


def _header_line(line: str) -> re.Match[str] | None:
    """The line as "label: value" (a label of up to 40 characters, no colon), unless it is
    an address in brackets (`[mailto:a@b]`, a wrapped From's end)."""
    if line.lstrip().startswith(("[", "<")):
        return None
    return _HEADER_LINE.fullmatch(line)


def _named_address(value: str) -> str | None:
    """The address a From's value names as a From does (`Name <a@b>`, `Name [mailto:a@b]`,
    `a@b`), lower-cased: a redirected person's lines "FYI: support@... closed my ticket" /
    "Error: ..." are no header block, and in `"support@example.com" <kim@...>` the address
    is Kim's. Neither search starts at every letter (an unanchored `_ADDRESS_IN.search` was
    quadratic in a run without `@`: 1.5 s for 20,000 letters, ~5 ms for 998)."""
    found = _FRAMED_ADDRESS.search(value) or _ADDRESS_IN.fullmatch(value)
    return found.group(1).lower() if found is not None else None


def _wrapped_from(first: str, value: str, after: str) -> bool:
    """Whether `after` is the end of the From line `first` (whose `value` names no address):
    it ends with the address in its brackets, is no header line, and either `first` had no
    value ("From:" alone, its value on the markup's next line), or it is the bracketed
    address alone (Outlook for iOS), or `first` and its first word are longer than a line
    Outlook or Exchange wraps."""
    rest = after.strip()
    if not rest.endswith((">", "]")) or _header_line(after) is not None:
        return False
    # Nothing but the address in its brackets: a match at the start, then the bracket (a
    # fullmatch of a regex ending in the bracket backtracked at each `@`: quadratic).
    framed = _FRAMED_ADDRESS.match(rest)
    return (not value or (framed is not None and rest[framed.end():].strip() in (">", "]"))
            or len(first.strip()) + 1 + len(rest.split(None, 1)[0]) > _WRAP)


def _forward_separator(line: str) -> bool:
    """The line an inline forward may put above the forwarded mail's header block: Outlook's
    rule of underscores, "-----Original Message-----" or "---------- Forwarded message
    ---------", Apple Mail's "Begin forwarded message:". Told by its ends, not by a regex: a
    line of dashes that ends otherwise made `-{3,}.*-{3,}` backtrack in cubic time (32 s for
    2,000 dashes and an `x`)."""
    if line.startswith("_"):
        return len(line) >= 8 and not line.strip("_")
    return ((len(line) >= 6 and line.startswith("---") and line.endswith("---"))
            or line.lower() == "begin forwarded message:")


def _suppress_header(fields: Fields) -> str:
    """`x-auto-response-suppress` when it names All, OOF or AutoReply, else `""`."""
    for value in _values(fields, "x-auto-response-suppress"):
        if {w.strip().lower() for w in value.split(",")} & _SUPPRESS_AUTO:
            return "x-auto-response-suppress"
    return ""


def _exchange_auto_reply(fields: Fields) -> bool:
    return bool(_exchange_rule_header(fields) and _suppress_header(fields))
