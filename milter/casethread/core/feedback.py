"""Provider feedback that is neither a DSN nor an ARF report (`multipart/report`), and names
our outbound mail: Microsoft's JMRP complaints and Amazon SES notices sent by SNS email.

- JMRP (Outlook.com/Hotmail's Junk Mail Reporting Program, "RFC822 attachment" format): From
  `staff@hotmail.com`, Subject "complaint about message from <IP>", a `multipart/mixed` whose
  `message/rfc822` part is the reported copy of our mail (its Message-ID, Subject tag). Told
  by From and Subject together, as Sisimai tells it; Amazon SES's email feedback forwarding
  sends its complaints in that format from `complaints@email-abuse.amazonses.com`.
- Amazon SES bounce, complaint and delivery notifications (and the `eventType` records of SES
  event publishing) that an SNS topic mails to an `email` subscription: From
  `no-reply@sns.amazonaws.com`, Subject "AWS Notification Message", a text/plain body that is
  the notification's JSON (`notificationType` or `eventType`, and `mail`: `messageId` is SES's
  own ID, `commonHeaders.messageId` and the `headers` list our mail's fields), followed by
  SNS's unsubscribe trailer; an `email-json` subscription wraps it in SNS's envelope
  (`"Type": "Notification"`, the notification as the string `Message`). Told by the From
  alone: no person writes from that address, and a body that merely looks like JSON (a
  customer pasting one) says nothing.

Both are automatic (`autoreply`): a JMRP complaint is `auto-generated`, as an ARF report is;
an SES notification is a `bounce` when it reports a failure (`Bounce`, `Reject`: the customer
did not get our mail, the report an agent must act on, as for a DSN), else `auto-generated`
(a complaint, a delivery, an open...; a `Transient`/`General` bounce whose recipients' DSN
`action` is not `failed`, which SES sends for an out-of-office reply). The bounce strategy
threads them by the mail they name (`resolve.Resolver.by_bounce`), and they make nobody a
participant.

The JSON reader is bounded: at most `SNS_READ` decoded bytes of the body, `MAX_DEPTH` levels
of nesting (checked before `json` recurses), `MAX_HEADERS` entries of the `headers` list,
`MAX_VALUE` characters of a value; anything else (no JSON, a JSON of another shape, garbage)
is no notification, and the mail is read as any mail is (`autoreply`: a subscription
confirmation, a CloudWatch alarm).
"""

from __future__ import annotations

import json
import re

from . import bodytext, mime
from .addresses import first_address
from .frozen import frozen
from .message import Message
from .subject import untagged

JMRP = "jmrp"
SNS = "sns"

# An SNS message is at most 256 KB; its trailer follows.
SNS_READ = 256 << 10
# An SES notification nests four levels deep (mail > headers > entry > value); an envelope
# holding it as a string adds none.
MAX_DEPTH = 16
MAX_HEADERS = 200
MAX_VALUE = 16 << 10

# Microsoft's JMRP sender, and Amazon SES's email feedback forwarding of a complaint, which
# writes it in the same format (as Sisimai reads both).
_JMRP_SENDERS = ("staff@hotmail.com", "complaints@email-abuse.amazonses.com")
_JMRP_SUBJECT = re.compile(r"\s*complaint\s+about\s+message\s+from\b", re.I)
_SNS_SENDER = re.compile(r"@sns\.amazonaws\.com(?:\.cn)?\Z", re.I)
# The SES notification types (`notificationType`) and event types (`eventType`) that report a
# failure to deliver our mail.
FAILED = frozenset({"bounce", "reject"})
# A `Transient`/`General` bounce no recipient's `action` calls failed: most often an
# out-of-office reply (`_soft_general`), `auto-generated` as a DSN's `delayed` is.
SOFT_BOUNCE = "transient bounce"
# Names for the log of the types SES documents; others are `notification`.
_KNOWN_TYPES = frozenset({"bounce", "complaint", "delivery", "send", "reject", "open", "click",
                          "rendering failure", "deliverydelay", "subscription"})
# What the mail's `headers` list may name our mail by (`resolve._RETURNED_FIELD` reads them).
_RETURNED_NAMES = frozenset({"message-id", "in-reply-to", "references", "subject"})
# A JSON string, closed or not (possessive: no backtracking), and the brackets between them.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"?', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")
_LINE_BREAKS = re.compile(r"[\r\n]+")
_DECODER = json.JSONDecoder()
# A notification is one JSON line of a few KB, which a relay with a line limit breaks:
# Sendmail (a mailer's L= limit) ends the part with '!' and starts the rest with a blank,
# Postfix (smtp_line_length_limit, 998) inserts a line break and a blank. JSON holds no raw
# line break in a string, so a text that does not read as it is is read again with the
# breaks taken out (Sendmail's first: its '!' is none of the text; Sisimai joins them so;
# then Postfix's as well).
_RELAY_BREAKS = (re.compile(r"!\r?\n "), re.compile(r"\r?\n "))


@frozen
class SesNotice:
    """An SES notification: its type (lower case, `bounce`...; `notification` when unknown)
    and the fields of our mail it names, as header lines (`resolve._bounce_part` reads them
    as a bounce's returned header)."""
    kind: str
    returned: bytes


def provider(msg: Message, value: str) -> str:
    """`JMRP`, `SNS`, or `""` for other mail; `value`: its From, lower-cased ("" without one).
    Asked of every message (`autoreply.read_signals`): one search of the From tells other
    mail apart, which is only parsed when it holds one of the senders."""
    if not ("staff@hotmail.com" in value or "complaints@email-abuse" in value
            or "sns.amazonaws.com" in value):  # `_JMRP_SENDERS`, `_SNS_SENDER`
        return ""
    address = first_address(value)
    if address in _JMRP_SENDERS:
        return JMRP if _JMRP_SUBJECT.match(untagged(msg.get("Subject") or "")) else ""
    return SNS if _SNS_SENDER.search(address) else ""


def ses_notice(msg: Message, tree: mime.Part | None = None) -> SesNotice | None:
    """The SES notification an SNS mail's first text/plain part holds, or None. `tree`: the
    body's MIME structure, if already parsed."""
    top = mime.top_fields(msg.headers)
    part = next(bodytext.iter_parts_of_type(top.content_type, top.cte, msg.body,
                                            ("text/plain",), SNS_READ,
                                            top_disposition=top.disposition, tree=tree), None)
    if part is None:
        return None
    return parse_notice(part.data.decode("utf-8", "replace"))


def parse_notice(text: str) -> SesNotice | None:
    """The SES notification in this text (JSON from its start; what follows the value, SNS's
    trailer, is ignored), also inside SNS's `email-json` envelope, and also when a relay broke
    its long line (`_RELAY_BREAKS`); None for anything else."""
    found = _notification(text)
    text = text[:SNS_READ]
    for relay_break in _RELAY_BREAKS:
        if found is not None:
            break
        # Cumulative: a line broken by a Postfix and then a Sendmail (or the reverse) holds
        # both kinds; Postfix's join alone left Sendmail's '!' in the value.
        joined = relay_break.sub("", text)
        if joined != text:
            text = joined
            found = _notification(text)
    if found is None:
        return None
    kind = _lowered(found.get("notificationType", found.get("eventType")))
    mail = found.get("mail")
    if kind is None or not isinstance(mail, dict):
        return None
    kind = kind if kind in _KNOWN_TYPES else "notification"
    if kind == "bounce" and _soft_general(found.get("bounce")):
        kind = SOFT_BOUNCE
    return SesNotice(kind, _returned(mail))


def _notification(text: str) -> dict[str, object] | None:
    """The JSON object the text starts with, or the notification inside SNS's envelope."""
    found = _json_object(text)
    inner = found.get("Message") if found is not None else None
    if isinstance(inner, str) and found is not None and found.get("Type") == "Notification":
        found = _json_object(inner)  # the envelope's notification, as a string
    return found


def _soft_general(bounce: object) -> bool:
    """Whether an SES bounce is `Transient`/`General` and no recipient's DSN `action` says
    `failed`: SES reports so the recipient's out-of-office reply (typically, says AWS), and
    mail that was delivered is no failure. A transient bounce of another subtype
    (`MailboxFull`, `MessageTooLarge`, `ContentRejected`...) is sent when SES gave up."""
    if not isinstance(bounce, dict) or (
            _lowered(bounce.get("bounceType")), _lowered(bounce.get("bounceSubType"))
    ) != ("transient", "general"):
        return False
    recipients = bounce.get("bouncedRecipients")
    return not any(isinstance(r, dict) and _lowered(r.get("action")) == "failed"
                   for r in (recipients[:MAX_HEADERS] if isinstance(recipients, list) else ()))


def _lowered(value: object) -> str | None:
    """A JSON value that should be a name, stripped and lower-cased; None when no string."""
    return value.strip().lower() if isinstance(value, str) else None


def _json_object(text: str) -> dict[str, object] | None:
    """The JSON object the text starts with (after blanks), within the bounds, or None."""
    text = text[:SNS_READ].lstrip()
    if not text.startswith("{") or not _shallow(text):
        return None
    try:
        value, _ = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _shallow(text: str) -> bool:
    """Whether the text's brackets outside JSON strings nest `MAX_DEPTH` levels at most."""
    depth = 0
    for found in _BRACKETS.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if found.group() in "[{" else -1
        if depth > MAX_DEPTH:
            return False
    return True


def _returned(mail: dict[str, object]) -> bytes:
    """Our mail's fields that the notification's `mail` names, as header lines: its `headers`
    list (the fields as we sent them) first, then `commonHeaders` (whose `messageId` SES may
    have set itself)."""
    lines: list[str] = []
    headers = mail.get("headers")
    for entry in headers[:MAX_HEADERS] if isinstance(headers, list) else ():
        if isinstance(entry, dict):
            name = entry.get("name")
            if _lowered(name) in _RETURNED_NAMES:
                _add(lines, str(name).strip(), entry.get("value"))
    common = mail.get("commonHeaders")
    if isinstance(common, dict):
        _add(lines, "Message-ID", common.get("messageId"))
        _add(lines, "Subject", common.get("subject"))
    return "".join(lines).encode("utf-8", "replace")  # a lone surrogate JSON may hold


def _add(lines: list[str], name: str, value: object) -> None:
    if isinstance(value, str) and value.strip():
        lines.append(f"{name}: {_LINE_BREAKS.sub(' ', value[:MAX_VALUE]).strip()}\n")
