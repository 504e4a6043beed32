"""The in-memory case index: same contract as the LMDB one, for tests and dry runs."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..core.model import CaseRecord
from . import keys
from .errors import CaseIndexError


class MemoryIndex:
    def __init__(
        self,
        id_prefix: str = "C-",
        id_digits: int = 6,
        last_number: int = 0,
        taken_elsewhere: Callable[[str], bool] = lambda _case_id: False,
    ) -> None:
        """`last_number` and `taken_elsewhere` let an overlay continue another index's ids."""
        self._ids = keys.IdFormat(id_prefix, id_digits)
        self._lock = threading.Lock()
        self._cases: dict[str, CaseRecord] = {}
        self._messages: dict[bytes, tuple[int, str]] = {}
        self._counter = last_number
        self._taken_elsewhere = taken_elsewhere
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise CaseIndexError("case index is closed")

    def case_for_message(self, message_id: str) -> str | None:
        key = keys.message_key(message_id)
        with self._lock:
            self._check_open()
            entry = self._messages.get(key)
        return None if entry is None else entry[1]

    def get_case(self, case_id: str) -> CaseRecord | None:
        with self._lock:
            self._check_open()
            return self._cases.get(case_id)

    def create_case(self, now: int, case_id: str | None = None, queue: str = "") -> CaseRecord:
        if case_id is not None:
            keys.check_case_id(case_id)
        with self._lock:
            self._check_open()
            if case_id is not None and case_id in self._cases:
                return self._cases[case_id]
            number, new_id = self._ids.allocate(self._counter, case_id, self._is_taken)
            record = keys.new_case(new_id, number, now, queue)
            self._cases[new_id] = record
            self._counter = number
            return record

    def _is_taken(self, case_id: str) -> bool:
        return case_id in self._cases or self._taken_elsewhere(case_id)

    def last_number(self) -> int:
        with self._lock:
            return self._counter

    def record_message(self, message_id: str, case_id: str, now: int) -> None:
        key = keys.message_key(message_id)
        keys.check_case_id(case_id)
        with self._lock:
            self._check_open()
            self._messages[key] = (now, case_id)

    def update_case(self, record: CaseRecord) -> None:
        with self._lock:
            self._check_open()
            if record.case_id not in self._cases:
                raise KeyError(record.case_id)
            self._cases[record.case_id] = record

    def close(self) -> None:
        with self._lock:
            self._closed = True
