"""Calendar replies (iMIP, RFC 6047): whether a mail may be an attendee's reply, told by its
header fields for every message, and whether its body says it is one without a note of
theirs: a click on Accept, Decline or Tentative, which the client mails itself and
`autoreply` calls `auto-generated`."""

from __future__ import annotations

import re
from collections.abc import Callable

from . import bodytext, mime
from .field_values import BODY_READ_MAX
from .message import Message
from .subject import untagged

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


def imip_candidate(msg: Message, content_class: str) -> bool:
    """Whether the header fields say the mail may be a calendar reply (iMIP, RFC 6047), whose
    body then tells: a `text/calendar` message, Outlook's and Exchange's `Content-Class:
    urn:content-classes:calendarmessage` (any language), or a multipart message whose Subject
    starts as the calendars' replies do ("Accepted:", "Declined:", "Tentative:", ...). Only
    these have their body read for it, so that the milter's decision at the end of the header
    section (`Engine.body_wanted`) is the whole message's. Asked of every message
    (`autoreply.read_signals`): substrings tell most mail apart (a type's name is a token,
    never split), as `mime.is_report` does; the Content-Type is parsed only for a candidate.
    `content_class`: the Content-Class, lower-cased ("" without one)."""
    content_type = msg.get("Content-Type")
    if content_type is None:
        return False
    lowered = content_type.lower()
    if "calendar" in lowered and mime.media_type(content_type) == "text/calendar":
        return True
    if "multipart" not in lowered:
        return False
    # After a gateway's tag: `[EXTERNAL] Accepted: ...` is Google Calendar's click too.
    if not (_imip_subject(untagged(msg.get("Subject") or ""))
            or _CALENDAR_CLASS in content_class):
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


def imip_reply(msg: Message, tree: Callable[[], mime.Part] | None) -> bool:
    """Whether the mail is an attendee's reply to an invitation (iMIP, RFC 6047: its first
    `text/calendar` part says `METHOD:REPLY`) that carries no note of theirs (no `COMMENT`
    property with text, Outlook's "Edit the response before sending"; no
    `X-RESPONSE-COMMENT` parameter with text, Google Calendar's "add a note"; Exchange
    writes an empty `COMMENT` on a mere click). Such a reply is a click on Accept, Decline
    or Tentative, which the client mails itself: automatic. A counter-proposal
    (`METHOD:COUNTER`, "New Time Proposed:") asks the organizer something and stays a
    person's mail. Asked of a candidate only (`imip_candidate`)."""
    top = mime.top_fields(msg.headers)
    for part in bodytext.iter_parts_of_type(top.content_type, top.cte, msg.body,
                                            ("text/calendar",), BODY_READ_MAX,
                                            top_disposition=top.disposition,
                                            tree=tree() if tree is not None else None):
        text = _ICS_FOLD.sub("", part.data.decode("utf-8", "replace"))
        method = _ICS_METHOD.search(text)
        return (method is not None and method.group(1).upper() == "REPLY"
                and all(_ICS_EMPTY.fullmatch(note.group(1) or note.group(2) or "")
                        for note in _ICS_NOTE.finditer(text)))
    return False
