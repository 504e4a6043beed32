"""Encodings both index implementations share, so they agree byte for byte.

Message-ID keys: normalised ids map to their UTF-8 bytes (surrogateescape, since ids may carry
raw 8-bit bytes). Over-long ids and ids that happen to start with the marker byte become the
marker plus their SHA-256 digest, so a hashed key can never equal a plain one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..core.model import CaseRecord, CaseState, is_valid_case_id

# LMDB refuses keys over 511 bytes; stay well below it.
MAX_PLAIN_KEY = 400
HASHED_MARKER = b"\x00"
_U32_MAX = 0xFFFFFFFF
_TIME = struct.Struct(">I")
NUMBER = struct.Struct(">Q")


def message_key(message_id: str) -> bytes:
    """The index key of a normalised Message-ID."""
    if not message_id:
        raise ValueError("empty Message-ID")
    raw = message_id.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_PLAIN_KEY or raw.startswith(HASHED_MARKER):
        return HASHED_MARKER + hashlib.sha256(raw).digest()
    return raw


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
        self, counter: int, case_id: str | None, taken: Callable[[str], bool]
    ) -> tuple[int, str]:
        """The number and id of a new case, given the last number handed out.

        Adopting (`case_id` given, known to be free) takes the next number. A generated id
        already held by an adopted case is skipped, and its number with it: numbers are never
        reused.
        """
        number = counter + 1
        if case_id is not None:
            return number, case_id
        while taken(candidate := self.format(number)):
            number += 1
        return number, candidate


def check_case_id(case_id: str) -> None:
    if not is_valid_case_id(case_id):
        raise ValueError(f"invalid case id {case_id!r}")


def new_case(case_id: str, number: int, now: int, queue: str) -> CaseRecord:
    return CaseRecord(case_id, number, CaseState.OPEN, queue, now, now)


def encode_case(record: CaseRecord) -> bytes:
    """Compact JSON; the case id is the key, so it is not repeated here."""
    fields = {
        "n": record.number,
        "s": record.state.value,
        "q": record.queue,
        "c": record.created,
        "u": record.updated,
    }
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def decode_case(case_id: str, data: bytes) -> CaseRecord:
    fields = json.loads(data)
    return CaseRecord(
        case_id=case_id,
        number=int(fields["n"]),
        state=CaseState(fields["s"]),
        queue=str(fields["q"]),
        created=int(fields["c"]),
        updated=int(fields["u"]),
    )


def encode_message(case_id: str, now: int) -> bytes:
    """Recorded time (for a later prune) + case id. Times are clamped to the u32 range."""
    return _TIME.pack(min(max(now, 0), _U32_MAX)) + case_id.encode("ascii")


def decode_message(data: bytes) -> tuple[int, str]:
    """(recorded time, case id) of a message record."""
    (recorded,) = _TIME.unpack_from(data)
    return recorded, data[_TIME.size :].decode("ascii")
