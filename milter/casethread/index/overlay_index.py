"""A write-absorbing view of an index, for `casethread filter --dry-run`.

Reads see the real index plus what this run wrote; writes stay in memory and are dropped.
New cases continue the real index's numbering, so a dry run shows the ids a real run would
allocate.
"""

from __future__ import annotations

from ..core.model import CaseRecord
from ..core.settings import CaseSettings
from ..core.store import CaseIndex
from .memory_index import MemoryIndex


class OverlayIndex:
    def __init__(self, base: CaseIndex, ids: CaseSettings) -> None:
        self._base = base
        self._overlay = MemoryIndex(
            ids.id_prefix,
            ids.id_digits,
            last_number=base.last_number(),
            taken_elsewhere=lambda case_id: base.get_case(case_id) is not None,
        )

    def case_for_message(self, message_id: str) -> str | None:
        return self._overlay.case_for_message(message_id) or self._base.case_for_message(
            message_id
        )

    def get_case(self, case_id: str) -> CaseRecord | None:
        return self._overlay.get_case(case_id) or self._base.get_case(case_id)

    def create_case(self, now: int, case_id: str | None = None, queue: str = "") -> CaseRecord:
        existing = self._base.get_case(case_id) if case_id is not None else None
        return existing or self._overlay.create_case(now, case_id, queue)

    def last_number(self) -> int:
        return self._overlay.last_number()

    def record_message(self, message_id: str, case_id: str, now: int) -> None:
        self._overlay.record_message(message_id, case_id, now)

    def update_case(self, record: CaseRecord) -> None:
        # Updating a base case in a dry run: shadow it in the overlay.
        if self._overlay.get_case(record.case_id) is None:
            self._overlay.create_case(record.created, record.case_id, record.queue)
        self._overlay.update_case(record)

    def close(self) -> None:
        self._overlay.close()
