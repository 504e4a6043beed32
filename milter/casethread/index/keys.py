"""Encodings and rules both index implementations share, so they agree byte for byte.

Alias keys (schema 2) are one kind byte (the `AliasKind` value) + the first 16 bytes of the
SHA-256 of the key's UTF-8 bytes (surrogateescape, since Message-IDs may carry raw 8-bit bytes):
17 bytes whatever the key. Short fixed keys keep the tree small and shallow, and a copied index
file no longer lists Message-IDs, subjects or addresses in clear. This pseudonymises, it does not
anonymise: a known key can be hashed and looked up. 128 bits make an accidental collision
negligible (about 10^-23 among 10^8 keys); a deliberate one with another's key would need a
second preimage. The kind byte comes first, so each kind is its own namespace (prune scans by it).

Schema 1 stored keys in clear, and as a marker byte + the full SHA-256 when hashed
(participants, over-long keys): `alias_key_from_digest` turns such a digest into today's key, so
a schema 1 export imports without the original keys.

Counters (flood limits) are keyed by the full SHA-256 of their key (a sender address) and hold a
fixed window: its start and its count.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.frozen import frozen
from ..core.model import (
    Alias,
    AliasHit,
    AliasKind,
    CaseRecord,
    CaseState,
    CounterBump,
    is_valid_case_id,
)
from ..core.store import CounterWindow

ALIAS_DIGEST_SIZE = 16
_U32_MAX = 0xFFFFFFFF
_TIME = struct.Struct(">I")
_WINDOW = struct.Struct(">II")  # window start, count
NUMBER = struct.Struct(">Q")
MAX_NUMBER = (1 << 64) - 1
# A StrEnum member hashes as its value: "m" and AliasKind.MESSAGE both find the prefix, and the
# lookup (on every find) skips the enum constructor.
_KIND_PREFIX: dict[str, bytes] = {kind: kind.value.encode("ascii") for kind in AliasKind}


def _digest(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


# A message looks up its own Message-ID (duplicates) and its sender's participant key, then
# records both: the cache saves the second SHA-256 of each in any traffic (and in a busy case
# the participants' keys repeat from one message to the next). Bounded, and the keys are
# no more sensitive than the index they name.
@functools.lru_cache(maxsize=1024)
def alias_key(kind: AliasKind, key: str) -> bytes:
    """The index key of an alias (keys arrive normalised by the core)."""
    prefix = _KIND_PREFIX.get(kind)
    if prefix is None:
        raise ValueError(f"unknown alias kind {kind!r}")
    if not key:
        raise ValueError(f"empty {AliasKind(kind).name} alias key")
    return prefix + _digest(key.encode("utf-8", "surrogateescape"))[:ALIAS_DIGEST_SIZE]


def alias_key_from_digest(kind: AliasKind, digest: bytes) -> bytes:
    """The key of an alias known only by its digest: the 16 bytes `alias_key` keeps, or the
    full SHA-256 a schema 1 index stored for a hashed key (which starts with those 16)."""
    if len(digest) not in (ALIAS_DIGEST_SIZE, 32):
        raise ValueError(f"an alias digest is {ALIAS_DIGEST_SIZE} or 32 bytes, not {len(digest)}")
    return AliasKind(kind).value.encode("ascii") + digest[:ALIAS_DIGEST_SIZE]


def encode_alias(case_id: str, now: int) -> bytes:
    """Recorded time (for a later prune) + case id."""
    return _TIME.pack(_clamp(now)) + case_id.encode("ascii")


def decode_alias(data: bytes) -> AliasHit:
    (recorded,) = _TIME.unpack_from(data)
    return AliasHit(data[_TIME.size :].decode("ascii"), recorded)


def alias_items(aliases: Iterable[Alias], now: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a batch, validated before anything is written: all or nothing."""
    items = []
    values: dict[str, bytes] = {}  # a batch names one case, or a few: each encoded once
    for alias in aliases:
        value = values.get(alias.case_id)
        if value is None:
            check_case_id(alias.case_id)
            value = values[alias.case_id] = encode_alias(alias.case_id, now)
        items.append((alias_key(alias.kind, alias.key), value))
    return items


def _clamp(now: int) -> int:
    return min(max(now, 0), _U32_MAX)


# --- counters --------------------------------------------------------------------------------


# A message reads its sender's counter, validates the bump and counts it: three digests of one
# key per message without this cache.
@functools.lru_cache(maxsize=256)
def counter_key(key: str) -> bytes:
    """Counter keys hold sender addresses: always hashed. They have a database of their own."""
    if not key:
        raise ValueError("empty counter key")
    return _digest(key.encode("utf-8", "surrogateescape"))


@frozen
class Window:
    start: int
    count: int

    def encode(self) -> bytes:
        return _WINDOW.pack(self.start, self.count)

    @staticmethod
    def decode(data: bytes) -> Window:
        return Window(*_WINDOW.unpack(data))


def counter_items(bumps: Iterable[CounterBump]) -> list[tuple[bytes, int]]:
    """The (key, window) of each bump, validated before anything is written."""
    items = []
    for b in bumps:
        if b.window < 1:  # the call only to raise: every message counts its sender
            _check_window(b.window)
        items.append((counter_key(b.key), b.window))
    return items


def _check_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"counter window must be at least 1 second, not {window}")


def bump(previous: CounterWindow | None, now: int, window: int) -> Window:
    """The counter after one more event at `now` in fixed windows of `window` seconds.

    A window restarts at 1 once `window` seconds have passed since its start. A `now` slightly
    before the start (a racing thread read the clock earlier) still counts in that window; a
    clock stepped back by a whole window or more restarts it.
    """
    if window < 1:  # the calls only where they change something: every message counts
        _check_window(window)
    if not 0 <= now <= _U32_MAX:
        now = _clamp(now)
    if previous is None or abs(now - previous.start) >= window:
        return Window(now, 1)
    return Window(previous.start, min(previous.count + 1, _U32_MAX))


# --- case records ----------------------------------------------------------------------------


def check_case_id(case_id: str) -> None:
    if not is_valid_case_id(case_id):
        raise ValueError(f"invalid case id {case_id!r}")


def check_new_case_args(case_id: str | None, aliases: object, bumps: Sequence[object],
                        changes: object = None) -> None:
    if case_id is not None:
        check_case_id(case_id)
        # An adopted id may exist already: its aliases would go unrecorded, silently.
        if aliases is not None or bumps or changes is not None:
            raise ValueError("aliases, counters and changes come with generated cases only")


def check_same_number(stored: CaseRecord, record: CaseRecord) -> None:
    # `numbers` maps each number to its case; a renumbered record would break tokens.
    if record.number != stored.number:
        raise ValueError(f"case {record.case_id} has number {stored.number}, not {record.number}")


def new_case(case_id: str, number: int, now: int, queue: str,
             thread_root: str | None = None, follows: str | None = None) -> CaseRecord:
    return CaseRecord(case_id, number, CaseState.OPEN, queue, now, now, state_changed=now,
                      thread_root=thread_root, follows=follows)


def encode_case(record: CaseRecord) -> bytes:
    """Compact JSON; the case id is the key, so it is not repeated here.

    Fields at their usual values are left out: no links, and `state_changed` equal to `created`
    (a case whose state never changed). Links must be valid case ids (ValueError otherwise).
    Written out by hand: `json.dumps` of the same dict gives the same bytes, at three times the
    cost, and every inbound mail rewrites its case.
    """
    parts = [
        f'{{"n":{int(record.number)},"s":{_json_str(record.state)},'
        f'"q":{_json_str(record.queue)},"c":{int(record.created)},"u":{int(record.updated)}'
    ]
    if record.state_changed != record.created:
        parts.append(f',"sc":{int(record.state_changed)}')
    for name, link in (("p", record.parent), ("m", record.merged_into), ("f", record.followup),
                       ("fo", record.follows)):
        if link is not None:
            check_case_id(link)
            parts.append(f',"{name}":{_json_str(link)}')
    if record.children:
        for child in record.children:
            check_case_id(child)
        parts.append(f',"ch":[{",".join(_json_str(child) for child in record.children)}]')
    if record.thread_root is not None:
        check_thread_root(record.thread_root)
        parts.append(f',"r":"{record.thread_root}"')
    parts.append("}")
    return "".join(parts).encode()


# A str as a JSON string, as json.dumps(..., ensure_ascii=False) writes it: what
# `JSONEncoder(ensure_ascii=False).encode` calls for a str, without that method's own steps.
_json_str: Callable[[str], str] = json.encoder.encode_basestring
_DECODER = json.JSONDecoder()
_STATES = {state.value: state for state in CaseState}


# A message reads its case several times (resolution, rules, the state change): the records are
# immutable, so equal bytes decode once.
@functools.lru_cache(maxsize=1024)
def decode_case(case_id: str, data: bytes) -> CaseRecord:
    fields = _json_object(data)
    created = int(fields["c"])
    parent, merged_into, followup = fields.get("p"), fields.get("m"), fields.get("f")
    follows = fields.get("fo")
    # In the fields' order (keyword arguments to a class cost a dictionary to unpack), each
    # read where it was read before: a damaged record fails as it did.
    return CaseRecord(
        case_id,
        int(fields["n"]),
        _case_state(fields["s"]),
        str(fields["q"]),
        created,
        int(fields["u"]),
        int(fields.get("sc", created)),
        None if parent is None else str(parent),
        None if merged_into is None else str(merged_into),
        tuple(map(str, fields.get("ch", ()))),  # no comprehension: a call on Python 3.11
        None if followup is None else str(followup),
        _valid_root(fields.get("r")),
        None if follows is None else str(follows),
    )


def _case_state(value: Any) -> CaseState:
    """`CaseState(value)`, by a dictionary for the states as written (the enum's call is a
    Python-level lookup)."""
    return (_STATES.get(value) if isinstance(value, str) else None) or CaseState(value)


def _json_object(data: bytes) -> Any:
    """`json.loads(data)`. What `encode_case` writes (an object in UTF-8, its first two bytes
    no NUL, which would make `json.loads` read UTF-16 or UTF-32) is decoded as `json.loads`
    decodes it, without its steps for other encodings and blanks around the value."""
    if data[:1] == b"{" and data[1:2] != b"\0":
        text = data.decode("utf-8", "surrogatepass")
        value, end = _DECODER.raw_decode(text)
        if end == len(text):
            return value
    return json.loads(data)  # blanks after the value, or an error as json.loads raises it


_THREAD_ROOT = re.compile(r"[0-9a-f]{44}")


def _valid_root(value: object) -> str | None:
    # A damaged value reads as none: the case's derived root is used instead.
    return value if isinstance(value, str) and _THREAD_ROOT.fullmatch(value) else None


def check_thread_root(value: str) -> None:
    """A stored Outlook root: 22 bytes as 44 lower-case hex digits (ValueError otherwise)."""
    if not _THREAD_ROOT.fullmatch(value):
        raise ValueError(f"a thread root is 44 lower-case hex digits, not {value!r}")


# --- case ids --------------------------------------------------------------------------------


def number_key(number: int) -> bytes | None:
    """The `numbers` key of a case number; None for a number no case can hold."""
    return NUMBER.pack(number) if 0 < number <= MAX_NUMBER else None


@dataclass(frozen=True)
class IdFormat:
    """How generated case ids look: `f"{prefix}{number:0{digits}d}"`."""

    prefix: str = "C-"
    digits: int = 6

    def __post_init__(self) -> None:
        # A format whose ids the index would refuse to adopt back is a configuration error.
        if self.digits < 1 or not is_valid_case_id(self.format(1)):
            raise ValueError(
                f"invalid case id format: prefix {self.prefix!r}, {self.digits} digits"
            )

    def format(self, number: int) -> str:
        return f"{self.prefix}{number:0{self.digits}d}"

    def allocate(
        self, counter: int, case_id: str | None, taken: Callable[[str], bool],
        number_above: int = 0,
    ) -> tuple[int, str]:
        """The number and id of a new case, given the last number handed out (and a number
        it must be above).

        Adopting (`case_id` given, known to be free) takes the next number. A generated id
        already held by an adopted case is skipped, and its number with it: numbers are never
        reused.
        """
        number = max(counter, number_above) + 1
        if case_id is not None:
            return number, case_id
        while taken(candidate := self.format(number)):
            number += 1
        return number, candidate


def apply_change(
    case_id: str, stored: bytes, change: Callable[[CaseRecord], CaseRecord | None]
) -> tuple[CaseRecord, bytes | None]:
    """`modify_case` for both indexes: the record after `change`, and its encoding to store
    (None when nothing changed)."""
    current = decode_case(case_id, stored)
    new = change(current)
    if new is None or new == current:
        return current, None
    check_same_number(current, new)
    return new, encode_case(new)
