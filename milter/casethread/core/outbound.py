"""Outbound mail (DESIGN §3): Message-ID, the token in Subject and References, Thread-Index.

Values we write never carry CR, LF or NUL taken from the input: fields we extend (Subject,
References) are unfolded and cleaned first. A field we cannot write back exactly (8-bit bytes
that are not UTF-8) is left alone and noted.
"""

from __future__ import annotations

import hashlib
import re
from itertools import chain

from . import msgid, thread_index, token
from .addresses import ascii_domain, domain_of, header_addresses
from .case_headers import CaseHeaderNames, strip_ours
from .edits import AddHeader, ChangeHeader, Edit
from .frozen import frozen
from .message import Message, unfold
from .model import CaseRecord, CaseState, is_valid_case_id
from .subject import ENCODED_WORD, encode_words

# A References field longer than this many IDs keeps the first and the newest (RFC 5322 §3.6.4).
REFERENCES_KEEP = 20
_UNSAFE = re.compile(r"[\r\n\x00]")
_BLANK_RUN = re.compile(r"([ \t]+)")
_SURROGATE = re.compile(r"[\udc80-\udcff]")
APP_STATES = {s.value: s for s in CaseState}
# An app's case id names a ticket: one without a letter or digit (`-`, `..`, `:`) names none,
# and `case=-` is the log line's "no case".
_LETTER_OR_DIGIT = re.compile(r"[A-Za-z0-9]")


def clean(value: str) -> str:
    return _UNSAFE.sub("", unfold(value)).strip()


def fold(name: str, value: str) -> str:
    """`value` (one line) folded at its blanks so that lines keep to 78 characters where they
    can (RFC 5322 §2.1.1: 78 recommended, 998 a hard limit; RFC 2047 words are at most 75
    long): unfolding gives `value` back, and no line is blank. A word longer than a line stays
    whole. A line holding an encoded word keeps to 76 (RFC 2047 §2)."""
    width = 76 if "=?" in value else 78
    if len(name) + 2 + len(value) <= width:
        return value
    parts = _BLANK_RUN.split(value)  # word, blanks, word, blanks, ..., word
    out = [parts[0]]
    used = len(name) + 2 + len(parts[0])
    for blanks, word in zip(parts[1::2], parts[2::2], strict=True):
        if word and used + len(blanks) + len(word) > width:
            out.append("\n" + blanks + word)  # the blanks start the next line: unfolding keeps them
            used = len(blanks) + len(word)
        else:
            out.append(blanks + word)
            used += len(blanks) + len(word)
    return "".join(out)


def writable(value: str) -> bool:
    """pymilter passes header values as UTF-8: undecodable 8-bit bytes cannot be written back."""
    return _SURROGATE.search(value) is None


def app_case_id(msg: Message, names: CaseHeaderNames) -> tuple[str | None, bool]:
    """The app's own X-Case-ID (adopted as the case), and whether one was present but invalid."""
    raw = msg.get(names.case_id)
    if raw is None:
        return None, False
    value = clean(raw)
    if is_valid_case_id(value) and _LETTER_OR_DIGIT.search(value):
        return value, False
    return None, True


def app_state(msg: Message, names: CaseHeaderNames) -> tuple[CaseState | None, bool]:
    """`X-Case-State: resolved` etc. set by the app on outbound mail (consumed, not sent on),
    and whether one was present but not a state (a typo in the app must show in the log)."""
    raw = msg.get(names.state)
    if raw is None:
        return None, False
    state = APP_STATES.get(clean(raw).lower())
    return state, state is None


def is_resent(msg: Message) -> bool:
    """A redirect (Thunderbird's "Redirect", mutt's bounce): RFC 5322 §3.6.6 resends a message
    unchanged, with Resent-* fields on top, so it is no mail of ours to stamp."""
    return msg.get("Resent-From") is not None or msg.get("Resent-Sender") is not None


def repeated_app_fields(msg: Message, names: CaseHeaderNames) -> list[str]:
    """Notes for an app's X-Case-ID or X-Case-State given more than once with values that
    disagree: the first wins (`app_case_id`, `app_state`), and the log line says the others
    were ignored (an app that adds its field to a template that already has one)."""
    if not msg.has_prefix(names.lower_prefix):
        return []
    notes = []
    if len({clean(v) for v in msg.get_all(names.case_id)}) > 1:
        notes.append("app-case-id-repeated")
    if len({clean(v).lower() for v in msg.get_all(names.state)}) > 1:  # as `app_state` reads
        notes.append("app-case-state-repeated")
    return notes


def message_id_domain(msg: Message, configured: str | None, fallback: str) -> str:
    """Config first, then the From domain when it is a DNS name with a dot (an
    internationalised one as its A-label, RFC 5322 §3.6.4 allows no other), then `fallback`."""
    if configured:
        return configured
    found = (_qualified(domain_of(a)) for a in header_addresses(msg.get_all("From")))
    return next((d for d in found if d), fallback)


def fallback_domain(hostname: str, support_addresses: tuple[str, ...]) -> str:
    """The Message-ID domain when neither config nor From gives one: the host's name when it
    is fully qualified, else the first support address's domain (a container's bare host
    name, `localhost` at worst, is no domain of ours and shows the internal name)."""
    found = (_qualified(d) for d in (hostname, *(domain_of(p).lower() for p in support_addresses)))
    return next((d for d in found if d), hostname)


def _qualified(domain: str) -> str | None:
    """`domain` as a fully qualified DNS name (an internationalised one as its A-label), or
    None: a single label, an IP literal or a glob is no Message-ID domain of ours."""
    domain = ascii_domain(domain)
    return domain if "." in domain and msgid.is_plain_domain(domain) else None


@frozen
class MessageId:
    normalised: str
    edit: Edit | None  # None when the message already had a usable one


def ensure_message_id(msg: Message, domain: str, now: float) -> MessageId:
    present = msg.get("Message-ID")
    existing = msgid.first_id(msg.get_filled("Message-ID"))
    if existing:
        return MessageId(existing, None)
    new = msgid.new_message_id(domain, now)
    normalised = msgid.normalise(new)
    assert normalised is not None
    # An unusable Message-ID field is replaced in place rather than duplicated.
    edit: Edit = (
        ChangeHeader("Message-ID", 1, new) if present is not None else AddHeader("Message-ID", new)
    )
    return MessageId(normalised, edit)


def case_header_edits(msg: Message, names: CaseHeaderNames, case: CaseRecord | None) -> list[Edit]:
    """Exactly one X-Case-ID for the case; the app's other fields under our prefix are consumed."""
    ours = [h for h in msg.headers if names.is_ours(h.name)]
    already_right = (
        case is not None
        and len(ours) == 1
        and ours[0].name.lower() == names.case_id.lower()
        # Exactly the id: a value that only cleans up to it (trailing blanks, control
        # characters) is rewritten, or a Sieve `:is` rule downstream would not match it.
        and ours[0].value.lstrip(" \t") == case.case_id
    )
    if already_right:
        return []
    result: list[Edit] = list(strip_ours(msg, names))
    if case is not None:
        result.append(AddHeader(names.case_id, case.case_id))
    return result


def subject_edit(msg: Message, keyring: token.Keyring, tok: str, template: str) -> Edit | None:
    """Append the token to the Subject, never twice, never re-encoding what is there.

    Another case's tag (the app moved the conversation to a new ticket) is replaced: replies
    thread by the first valid token, so leaving it would send them to the old case; so is
    this case's tag signed by an older key. A tag
    inside an encoded word counts as present too (a client re-encoded the whole subject); when
    it is another case's, ours is appended in clear, where replies look first.
    """
    present = msg.get("Subject")
    tag = token.subject_tag(tok, template)
    if present is None:
        return AddHeader("Subject", tag.strip())
    # In the order replies are searched (the Subject as written, then decoded).
    found = keyring.resolve(chain(token.find_tokens(unfold(present), template),
                                  token.decoded_subject_tokens(present, template)))
    # This case's tag signed by a key since retired from signing is re-signed: once the old
    # key is retired too, replies that kept only the Subject would not verify.
    if found.token == tok:
        return None
    if not writable(present):
        return None
    text = clean(present)
    if found.case_number is not None:
        text = _without_verified_tags(text, keyring, template)
    if text.endswith("?=") and not tag[:1].isspace() and _ENCODED_WORD_LAST.search(text):
        # RFC 2047 §5 (1): an encoded word ends at a blank, not at text (`=?...?=[ref:...]`,
        # from a template without a leading blank, is no encoded word to a strict reader).
        text += " "
    return ChangeHeader("Subject", 1, fold("Subject", (text + tag).strip()))


def _without_verified_tags(text: str, keyring: token.Keyring, template: str) -> str:
    """`text` without our tags that verify: a customer's own `[Ref: 4711]` or another
    system's tag in the same form stays."""
    def drop(m: re.Match[str]) -> str:
        found = keyring.resolve(token.find_tokens(m.group(0), template))
        if found.case_number is None:
            return m.group(0)
        # Between two encoded words the blank that stays would be dropped by every decoder
        # (RFC 2047 §6.2), joining the words: an encoded blank keeps them apart.
        if text.endswith("?=", 0, m.start()) and _ENCODED_WORD_NEXT.match(text, m.end()):
            return " " + encode_words(" ")
        return ""
    return token.tag_pattern(template).sub(drop, text).rstrip()


_ENCODED_WORD_NEXT = re.compile(rf"\s+{ENCODED_WORD}")
# An encoded word at the Subject's end, after a blank or at its start (`x=?...?=` is none).
_ENCODED_WORD_LAST = re.compile(rf"(?:^|\s){ENCODED_WORD}$")


def references_edit(msg: Message, anchor: str) -> Edit | None:
    """Put the case anchor first in References (trimming keeps it; inbound reads the first
    anchor as the conversation's case), unless it is first already.

    A reply with In-Reply-To but no References gets the answered ID after the anchor: RFC
    5256 and JWZ threading take the parent from the last References ID and read In-Reply-To
    only when References has none (RFC 5322 §3.6.4 builds References the same way)."""
    present = msg.get("References")
    if present is not None and not writable(present):
        return None
    # The IDs as written: rewriting one (a domain's letter case, a quoted local part) would
    # make it another message for every client that threads by References.
    ids = msgid.written_ids(present) if present is not None else []
    if present is None:
        answered = msg.get("In-Reply-To")
        parent = msgid.first_written_id(answered) if answered and writable(answered) else None
        ids = [parent] if parent else []
    anchor_id = msgid.normalise(anchor)
    if ids and msgid.normalise(ids[0]) == anchor_id:
        return None
    # Back to the front when the conversation returns to this case after a move.
    ids = [anchor, *(i for i in ids if msgid.normalise(i) != anchor_id)]
    if len(ids) > REFERENCES_KEEP:
        # The anchor, the thread's first ID (its root for every threading client; not another
        # case's anchor), the newest.
        first = next((i for i in ids[1:] if token.token_from_anchor(i) is None), ids[1])
        newest = [i for i in ids[-(REFERENCES_KEEP - 2) :] if i != first]
        ids = [anchor, first, *newest]
    value = fold("References", " ".join(ids))
    return ChangeHeader("References", 1, value) if present is not None else AddHeader(
        "References", value
    )


def new_case_root(own: bytes | None, now: float) -> str:
    """The Outlook thread root (hex) a new case keeps: the root of the mail that opens it (our
    answers then continue the customer's own Outlook conversation), else a new one with a
    random GUID. Recorded, it threads every reply that carries it (`thread-index`), so it
    must not be worked out from what a stranger can know (the case id, the time)."""
    return (own if own is not None else thread_index.new_root(now)).hex()


def case_thread_root(case: CaseRecord) -> bytes:
    """A case's Outlook thread root, so every outbound mail of the case carries the same one:
    the root it was given when it was opened (`new_case_root`). A case opened before cases kept
    one (or by `case split` in such a version) has its root derived from its creation time and
    a GUID from its id: anyone who knows the case id and the second it was opened can work it
    out, as its mail showed it to its recipients."""
    if case.thread_root is not None:
        return bytes.fromhex(case.thread_root)
    # Exchange's conversation id is this GUID ([MS-OXOMSG] 2.2.1.2): the id alone would give
    # every installation's C-000001 (and a rebuilt index's) the same conversation.
    seed = f"{case.case_id}\x00{case.number}\x00{case.created}".encode()
    guid = hashlib.sha256(b"casethread-thread-root\x00" + seed).digest()[:16]
    return thread_index.new_root(case.created, guid)


def thread_index_edits(msg: Message, case: CaseRecord, new_case: bool, now: float,
                       template: str = token.DEFAULT_TEMPLATE) -> list[Edit]:
    """Thread-Index (root for a new case, root + child block for a follow-up) and Thread-Topic."""
    result: list[Edit] = []
    if msg.get("Thread-Index") is None:
        root = case_thread_root(case)
        value = root if new_case else thread_index.child(root, now)
        result.append(AddHeader("Thread-Index", thread_index.encode(value)))
    if msg.get("Thread-Topic") is None:
        subject = msg.get("Subject")
        if subject is not None and writable(subject):
            # Without our tag: every mail of the case, first or follow-up, has the same topic.
            topic = clean(thread_index.thread_topic(unfold(subject),
                                                    token.tag_pattern(template)))
            if topic:
                result.append(AddHeader("Thread-Topic", fold("Thread-Topic", topic)))
    return result


def thread_root_of(own: bytes | None, case: CaseRecord) -> bytes:
    """The root this mail's replies will carry: the app's own Thread-Index's (`own`), else
    the case's."""
    return own if own is not None else case_thread_root(case)
