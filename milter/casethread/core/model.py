"""Values shared by the core, the index and the engine."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

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


@dataclass(frozen=True)
class CaseRecord:
    """One case as the index stores it. Times are Unix seconds."""

    case_id: str
    number: int
    state: CaseState
    queue: str
    created: int
    updated: int
