"""The index contract as the core and the engine see it.

Implementations live in `casethread.index` (LMDB and in-memory); one contract test suite runs
against both. Message-ID keys are already normalised by `core.msgid`; hashing over-long keys
is the index's business.
"""

from __future__ import annotations

from typing import Protocol

from .model import CaseRecord


class CaseReader(Protocol):
    def case_for_message(self, message_id: str) -> str | None:
        """The case id recorded for a normalised Message-ID, or None."""

    def get_case(self, case_id: str) -> CaseRecord | None:
        """The case record, or None when no such case exists."""


class CaseIndex(CaseReader, Protocol):
    def create_case(self, now: int, case_id: str | None = None, queue: str = "") -> CaseRecord:
        """Atomically create a case and return it.

        With no `case_id`, allocate the next number and name it with the configured prefix
        (skipping ids already taken by adopted cases). With a `case_id`, adopt it: return the
        existing record if the case exists, else create it with the next number.
        """

    def record_message(self, message_id: str, case_id: str, now: int) -> None:
        """Map a normalised Message-ID to a case (overwrites; idempotent)."""

    def last_number(self) -> int:
        """The highest case number handed out so far (0 for an empty index)."""

    def update_case(self, record: CaseRecord) -> None:
        """Store a changed record of an existing case."""

    def close(self) -> None:
        """Release the index; further calls are errors."""
