"""A write-absorbing view of an index, for `casethread filter --dry-run`.

Reads see the real index plus what this run wrote; writes stay in memory and are dropped.
New cases continue the real index's numbering, so a dry run shows the ids a real run would
allocate. Counters do the same: a counter's first bump in the overlay starts from the window the
base holds (one read), so a dry run shows whether a real run would call the sender a loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

from ..core.model import Alias, AliasHit, AliasKind, CaseRecord, CounterBump
from ..core.settings import CaseSettings
from ..core.store import (
    CaseChange,
    CaseIndex,
    CounterWindow,
    Expect,
    NewCaseAliases,
    NewCaseChanges,
)
from . import keys
from .memory_index import MemoryIndex


class OverlayIndex:
    def __init__(self, base: CaseIndex, ids: CaseSettings) -> None:
        self._base = base
        self._overlay = MemoryIndex(
            ids.id_prefix,
            ids.id_digits,
            last_number=base.last_number(),
            taken_elsewhere=lambda case_id: base.get_case(case_id) is not None,
            counter_seed=base.peek_counter,
        )
        # Base cases changed in this run; the overlay's own MemoryIndex holds only new cases,
        # so shadowing a base case allocates no number.
        self._shadows: dict[str, CaseRecord] = {}
        self._shadows_lock = threading.Lock()
        self._modify_lock = threading.Lock()

    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        return self._overlay.find(kind, key) or self._base.find(kind, key)

    def case_for_message(self, message_id: str) -> str | None:
        hit = self.find(AliasKind.MESSAGE, message_id)
        return None if hit is None else hit.case_id

    def case_for_number(self, number: int) -> str | None:
        return self._overlay.case_for_number(number) or self._base.case_for_number(number)

    def get_case(self, case_id: str) -> CaseRecord | None:
        record = self._overlay.get_case(case_id)
        if record is not None:
            return record
        with self._shadows_lock:
            record = self._shadows.get(case_id)
        return record or self._base.get_case(case_id)

    def create_case(
        self, now: int, case_id: str | None = None, queue: str = "",
        aliases: NewCaseAliases | None = None, bumps: Sequence[CounterBump] = (),
        thread_root: str | None = None, changes: NewCaseChanges | None = None,
        expect: Expect | None = None, number_above: int = 0, follows: str | None = None,
    ) -> CaseRecord:
        keys.check_new_case_args(case_id, aliases, bumps, changes)
        self._check(expect)
        if case_id is not None:
            existing = self.get_case(case_id)
            if existing is not None:
                return existing
        record = self._overlay.create_case(now, case_id, queue, aliases, bumps, thread_root,
                                           number_above=number_above, follows=follows)
        if changes is not None:  # mostly to cases of the base: a dry run needs no atomicity
            self.record((), now, changes=changes(record))
        return record

    def _named(self, kind: AliasKind, key: str) -> str | None:
        hit = self.find(kind, key)
        return None if hit is None else hit.case_id

    def _check(self, expect: Expect | None) -> None:
        if expect is not None:
            expect.check(self._named, self.get_case)

    def last_number(self) -> int:
        return self._overlay.last_number()

    def record(
        self, aliases: Sequence[Alias], now: int, bumps: Sequence[CounterBump] = (),
        changes: Sequence[tuple[str, CaseChange]] = (), expect: Expect | None = None,
    ) -> dict[str, CaseRecord]:
        keys.alias_items(aliases, now)  # validated before anything changes: all or nothing
        keys.counter_items(bumps)
        with self._modify_lock:
            self._check(expect)
            after: dict[str, CaseRecord] = {}
            changed: dict[str, CaseRecord] = {}
            for case_id, change in changes:
                current = after.get(case_id) or self.get_case(case_id)
                if current is None:
                    continue
                after[case_id], data = keys.apply_change(case_id, keys.encode_case(current),
                                                         change)
                if data is not None:
                    changed[case_id] = after[case_id]
            for record in changed.values():
                self._update_case(record)
            self._overlay.record(aliases, now, bumps)
        return after

    def peek_counter(self, key: str) -> CounterWindow | None:
        return self._overlay.peek_counter(key)

    def next_count(self, key: str, now: int, window: int) -> int:
        return self._overlay.next_count(key, now, window)

    def _update_case(self, record: CaseRecord) -> None:
        """Store a changed record: in the overlay for a case of this run, else as a shadow of
        the base's case."""
        if self._overlay.modify_case(record.case_id, lambda _current: record) is not None:
            return
        data = keys.encode_case(record)  # the same validation as a real update
        with self._shadows_lock:
            stored = self._shadows.get(record.case_id) or self._base.get_case(record.case_id)
            if stored is None:
                raise KeyError(record.case_id)
            keys.check_same_number(stored, record)
            self._shadows[record.case_id] = keys.decode_case(record.case_id, data)

    def modify_case(
        self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
    ) -> CaseRecord | None:
        with self._modify_lock:
            current = self.get_case(case_id)
            if current is None:
                return None
            new = change(current)
            if new is None or new == current:
                return current
            self._update_case(new)
            return new

    def snapshot(self) -> AbstractContextManager[None]:
        return self._base.snapshot()

    def close(self) -> None:
        self._overlay.close()
