"""Values shared by the core, the index and the engine."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from .frozen import frozen

# An app-supplied case id (DESIGN §3.1): adopted as is, so a helpdesk keeps its own ticket ids.
CASE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def is_valid_case_id(value: str) -> bool:
    return CASE_ID_RE.fullmatch(value) is not None


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    OTHER = "other"


class CaseState(StrEnum):
    OPEN = "open"
    WAITING = "waiting"
    RESOLVED = "resolved"
    CLOSED = "closed"


@frozen
class CaseRecord:
    """One case as the index stores it. Times are Unix seconds.

    Case rules (DESIGN §5) live in these links: a merged case names its survivor, a split case
    its children, a closed case may name a parent to walk up to. A case a reply could not
    continue (closed, or resolved too long ago) names the related case that reply opened,
    its `followup`, where the conversation's later mail goes; the follow-up names that case
    as the one it `follows` (what the `X-Case-Related` of the mail that opened it said).
    """

    case_id: str
    number: int
    state: CaseState
    queue: str
    created: int
    updated: int
    # When `state` last changed: `cases.reopen_within` counts from here.
    state_changed: int = 0
    parent: str | None = None
    merged_into: str | None = None
    children: tuple[str, ...] = ()
    followup: str | None = None
    # The Outlook conversation root (22 bytes, hex) the case was opened with: the customer's
    # mail's (our answers continue that conversation in the customer's Outlook), else a random
    # one (outbound.new_case_root). None (cases recorded by older versions): the root is
    # derived from the case (outbound.case_thread_root).
    thread_root: str | None = None
    # The case this one was opened as the follow-up of; None for other cases (and for
    # follow-ups opened by versions before it was recorded). Never read by the case rules.
    follows: str | None = None

    def __eq__(self, other: object) -> bool:
        # Field by field, as the dataclass compares: a record's __dict__ holds its fields and
        # nothing else (@frozen stores them there, and it has no lazy attribute), and one
        # dictionary comparison costs a quarter of building two tuples of thirteen fields.
        # Every inbound mail compares its case's record before and after.
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__


def case_fields(case: CaseRecord, id_key: str) -> dict[str, Any]:
    """A case as JSON-ready data, its id under `id_key` (`export` writes `id`, the case
    commands `case_id`); times in Unix seconds. The order is export's, a contract."""
    return {
        id_key: case.case_id,
        "number": case.number,
        "state": case.state.value,
        "queue": case.queue,
        "created": case.created,
        "updated": case.updated,
        "state_changed": case.state_changed,
        "parent": case.parent,
        "merged_into": case.merged_into,
        "children": list(case.children),
        "followup": case.followup,
        "thread_root": case.thread_root,
        "follows": case.follows,
    }


class AliasKind(StrEnum):
    """What else, besides its id and number, names a case in the index."""

    MESSAGE = "m"  # a normalised Message-ID we saw or sent
    THREAD_ROOT = "t"  # the 22-byte Outlook Thread-Index root (hex)
    EXTERNAL = "x"  # "system:reference" of another ticket system
    SUBJECT = "s"  # a normalised subject (for the optional subject-match)
    PARTICIPANT = "p"  # "case-id address": a From/To/Cc address of the case's mail


@frozen
class Alias:
    kind: AliasKind
    key: str
    case_id: str


@frozen
class CounterBump:
    """One more event for a counter (a flood limit) in fixed windows of `window` seconds."""

    key: str
    window: int


@frozen
class AliasHit:
    case_id: str
    recorded: int  # Unix seconds of the last record
