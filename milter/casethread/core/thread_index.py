"""Outlook's Thread-Index header: PidTagConversationIndex, [MS-OXOMSG] §2.2.1.3.

The header carries the property base64-encoded. Byte layout (all big-endian):

    header block, 22 bytes
      [0]      reserved, 0x01
      [1:6]    "Current FILETIME": bits 63..24 of the UTC FILETIME (100 ns ticks since
               1601-01-01); the 24 low bits are dropped, so the header time has a
               resolution of 2**24 ticks (~1.68 s)
      [6:22]   conversation GUID; Data1/Data2/Data3 big-endian, i.e. RFC 4122 byte order,
               which is what `uuid.UUID.bytes` gives
    child block ("response level"), 5 bytes each, appended per reply/forward
      bit 31   DC (delta code)
      bits 30..0  TimeDelta: TimeDiff = (now - header time) in FILETIME ticks.
               DC=0 when TimeDiff < 2**49 (~1.78 years; the spec's test is
               `high dword & 0x00FE0000 == 0`): TimeDelta = TimeDiff bits 48..18
               (drop the high 15 and low 18 bits; resolution 2**18 ticks, ~26 ms).
               DC=1 otherwise: TimeDelta = TimeDiff bits 53..23 (drop the high 10 and low 23
               bits; resolution 2**23 ticks, ~0.84 s; range ~57 years, clamped beyond).
      byte 4   "Random" (8 bits). The MAPI "Tracking Conversations" page splits it into 4 random
               bits and a 4-bit sequence count "taken from part of the random number"; we write
               8 random bits.

Every child's TimeDelta is relative to the header time, not to the previous child. That is
what we write; we never read a child block, only the header block (the root). Exchange
Online's values in public reports do not keep to it: their first child lies some 22 years
after the header time, the next ones minutes to days apart, not growing offsets.

Two header layouts occur in real mail. Exchange/OWA write the spec's layout above (values
start `AQH...`: 0x01 0x01 0xD?). Outlook's desktop MAPI (ScCreateConversationIndex) writes
FILETIME bits 63..16 into bytes 0..5 instead (values start `Ad...`: the FILETIME's top byte,
0x01 for the years 1829-2057, doubles as the "reserved" byte). Both start with 0x01, so both
are valid; `header_filetime` tells them apart by byte 1 (0x01 is the FILETIME's top byte in
the spec layout for the same years, while in the desktop layout it would mean ~1830). We write
the spec layout.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import uuid
from collections.abc import Sequence

from .message import unfold
from .subject import decode_subject, encode_words, strip_prefixes

HEADER_LEN = 22
CHILD_LEN = 5
RESERVED = 0x01

_EPOCH_AS_FILETIME = 116_444_736_000_000_000  # 1970-01-01 in FILETIME ticks
_TICKS_PER_SECOND = 10_000_000
_DC0_LIMIT = 1 << 49
_DC0_SHIFT = 18
_DC1_SHIFT = 23
_DELTA_MASK = 0x7FFF_FFFF
# An index grows 5 bytes a reply or forward, and a mail forwarded on every day for years
# carries hundreds of lines of it (the 4,096 characters read before, ~600 levels, were too
# few). Postfix cuts a header past its header_size_limit, 102,400 bytes by default, so a
# longer value is cut anyway; decoding one this long takes well under a millisecond.
MAX_ENCODED_CHARS = 102_400
MAX_FIELDS = 8  # Thread-Index fields read; a mail has one
# RFC 9562 §5.9, §5.10: the Nil and Max UUIDs are generated for nothing. A writer that puts
# one in its index (a template's constant value) would put all its mail, every customer's,
# into one conversation.
_NO_GUIDS = frozenset((bytes(16), b"\xff" * 16))
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_NO_FWS = str.maketrans("", "", " \t\r\n")  # RFC 5322 folding white space, removed


def unix_to_filetime(ts: float) -> int:
    if not math.isfinite(ts):
        raise ValueError(f"time out of FILETIME range: {ts!r}")
    ft = round(ts * _TICKS_PER_SECOND) + _EPOCH_AS_FILETIME
    if not 0 <= ft < 1 << 64:
        raise ValueError(f"time out of FILETIME range: {ts!r}")
    return ft


def is_valid(raw: bytes) -> bool:
    """22 + 5n bytes starting with the reserved 0x01."""
    return (
        len(raw) >= HEADER_LEN and (len(raw) - HEADER_LEN) % CHILD_LEN == 0 and raw[0] == RESERVED
    )


def _check(raw: bytes) -> None:
    if not is_valid(raw):
        raise ValueError(f"not a conversation index ({len(raw)} bytes)")


def new_root(now: float, guid: bytes | None = None) -> bytes:
    """A 22-byte header block for a new conversation at `now` (Unix time).

    `guid` is the 16 bytes as they appear in the block (RFC 4122 order); random by default.
    """
    if guid is None:
        guid = uuid.uuid4().bytes
    if len(guid) != 16:
        raise ValueError("a GUID is 16 bytes")
    ft = unix_to_filetime(now)
    return bytes([RESERVED]) + (ft >> 24).to_bytes(5, "big") + bytes(guid)


def header_filetime(raw: bytes) -> int:
    """The header time in FILETIME ticks, for either layout (see the module doc)."""
    _check(raw)
    if raw[1] == 0x01:
        return int.from_bytes(raw[1:6], "big") << 24
    return int.from_bytes(raw[0:6], "big") << 16


def child(parent: bytes, now: float, *, rand: int | None = None) -> bytes:
    """`parent` plus one child block for a reply/forward sent at `now` (Unix time).

    A `now` before the header time (clock skew) counts as no delay; a delay beyond the DC=1
    range (~57 years) is clamped to its maximum.
    """
    diff = max(0, unix_to_filetime(now) - header_filetime(parent))
    if diff < _DC0_LIMIT:
        word = (diff >> _DC0_SHIFT) & _DELTA_MASK
    else:
        word = (1 << 31) | min(diff >> _DC1_SHIFT, _DELTA_MASK)
    r = secrets.randbits(8) if rand is None else rand & 0xFF
    return bytes(parent) + word.to_bytes(4, "big") + bytes([r])


def root_of(raw: bytes) -> bytes:
    """The 22-byte header block: what every message of the conversation shares."""
    _check(raw)
    return bytes(raw[:HEADER_LEN])


def conversation_root(value: str) -> bytes | None:
    """The conversation root a Thread-Index value names: its header block, unless the value
    is no conversation index (`decode`) or its GUID is the Nil or Max UUID, which no
    conversation has."""
    raw = decode(value)
    if raw is None or raw[6:HEADER_LEN] in _NO_GUIDS:
        return None
    return root_of(raw)


def first_root(values: Sequence[str]) -> bytes | None:
    """The root of a mail's Thread-Index fields: the first that names one, among the first
    `MAX_FIELDS`. A second field is another writer's (a gateway's or an app's above the
    client's); a damaged one first must not hide the client's. Each is the sender's word
    alike, so reading on trusts none more."""
    for value in values[:MAX_FIELDS]:
        root = conversation_root(value)
        if root is not None:
            return root
    return None


def encode(raw: bytes) -> str:
    """The Thread-Index header value (standard base64, padded)."""
    _check(raw)
    return base64.b64encode(raw).decode("ascii")


def decode(header_value: str) -> bytes | None:
    """The bytes of a Thread-Index header value, or None when it is not one.

    Folding and blanks (SP, HTAB, CR, LF) are ignored and missing padding is tolerated;
    anything that is not base64 of 22 + 5n bytes starting with 0x01 gives None.
    """
    # Folding adds a few blanks a line; a field twice the limit is not read (8 fields of
    # 1 MB "A A ...", split into words, took 27 ms).
    if len(header_value) > 2 * MAX_ENCODED_CHARS:
        return None
    text = header_value.translate(_NO_FWS)
    if not text or len(text) > MAX_ENCODED_CHARS or not _B64.fullmatch(text):
        return None
    text = text.rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if is_valid(raw) else None


# Outlook keeps subjects to 255 characters; a longer topic (a hostile 2 MB subject) is cut
# there rather than copied into a second oversized field.
TOPIC_MAX = 255
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # C0, DEL and C1


def thread_topic(subject: str, remove: re.Pattern[str] | None = None) -> str:
    """The Thread-Topic value: the subject without reply/forward prefixes (and without what
    `remove` matches: our tags, also those inside encoded words), at most `TOPIC_MAX`
    characters (before any encoding).

    RFC 2047 words (and raw ISO-2022-JP) are decoded first so an encoded `AW:` is seen; a
    non-ASCII result is re-encoded as UTF-8 encoded words, so the value is safe to add as a
    header.
    A subject without encoded words is only stripped (raw 8-bit text stays as it was).
    """
    subject = unfold(subject)
    encoded = "=?" in subject or "\x1b" in subject  # RFC 2047 words, raw ISO-2022-JP
    topic = decode_subject(subject) if encoded else subject
    if remove is not None:
        topic = remove.sub("", topic)
    # Control characters (an encoded BEL, ESC or CR LF; C1 ones, as latin-1 reads the bytes
    # cp1252 leaves undefined) are never written out, in clear or not.
    topic = _CONTROLS.sub(" ", topic)
    topic = strip_prefixes(topic, list_tags=False)[:TOPIC_MAX].rstrip()
    if not encoded or topic.isascii():
        return topic
    # RFC 2047 §2: a line holding an encoded word keeps to 76 characters, the field's name
    # included.
    return encode_words(topic, first=76 - len("Thread-Topic: "))
