"""The in-memory case index: same contract as the LMDB one, for tests and dry runs.

It stores the very bytes the LMDB index would (`keys`), so both validate, hash, clamp and
round-trip alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from ..core.model import Alias, AliasHit, AliasKind, CaseRecord, CounterBump
from ..core.store import CaseChange, CounterWindow, Expect, NewCaseAliases, NewCaseChanges
from . import keys
from .errors import CaseIndexError

CounterSeed = Callable[[str], CounterWindow | None]


class MemoryIndex:
    def __init__(
        self,
        id_prefix: str = "C-",
        id_digits: int = 6,
        last_number: int = 0,
        taken_elsewhere: Callable[[str], bool] = lambda _case_id: False,
        counter_seed: CounterSeed = lambda _key: None,
    ) -> None:
        """`last_number`, `taken_elsewhere` and `counter_seed` let an overlay continue another
        index: its case numbering and the counter windows it already holds."""
        self._ids = keys.IdFormat(id_prefix, id_digits)
        self._lock = threading.Lock()
        self._cases: dict[str, bytes] = {}
        self._numbers: dict[int, str] = {}
        self._aliases: dict[bytes, bytes] = {}
        self._counters: dict[bytes, keys.Window] = {}
        self._counter = last_number
        self._taken_elsewhere = taken_elsewhere
        self._counter_seed = counter_seed
        self._closed = False

    def snapshot(self) -> AbstractContextManager[None]:
        return nullcontext()  # each read is already one dictionary lookup under the lock

    def _check_open(self) -> None:
        if self._closed:
            raise CaseIndexError("case index is closed")

    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        raw_key = keys.alias_key(kind, key)
        with self._lock:
            self._check_open()
            raw = self._aliases.get(raw_key)
        return None if raw is None else keys.decode_alias(raw)

    def case_for_message(self, message_id: str) -> str | None:
        hit = self.find(AliasKind.MESSAGE, message_id)
        return None if hit is None else hit.case_id

    def case_for_number(self, number: int) -> str | None:
        with self._lock:
            self._check_open()
            return self._numbers.get(number)

    def get_case(self, case_id: str) -> CaseRecord | None:
        with self._lock:
            self._check_open()
            raw = self._cases.get(case_id)
        return None if raw is None else keys.decode_case(case_id, raw)

    def create_case(
        self, now: int, case_id: str | None = None, queue: str = "",
        aliases: NewCaseAliases | None = None, bumps: Sequence[CounterBump] = (),
        thread_root: str | None = None, changes: NewCaseChanges | None = None,
        expect: Expect | None = None, number_above: int = 0, follows: str | None = None,
    ) -> CaseRecord:
        keys.check_new_case_args(case_id, aliases, bumps, changes)
        keys.counter_items(bumps)  # validated before anything changes
        with self._lock:
            self._check_open()
            self._check(expect)
            if case_id is not None and case_id in self._cases:
                return keys.decode_case(case_id, self._cases[case_id])
            number, new_id = self._ids.allocate(self._counter, case_id, self._is_taken,
                                                number_above)
            record = keys.new_case(new_id, number, now, queue, thread_root, follows)
            # Validated and worked out before anything changes: all or nothing.
            items = keys.alias_items(aliases(record), now) if aliases is not None else []
            encoded = self._changed(changes(record) if changes is not None else ())[1]
            self._aliases.update(items)
            for b in bumps:
                self._bump(b.key, now, b.window)
            self._cases[new_id] = keys.encode_case(record)
            self._cases.update(encoded)
            self._numbers[number] = new_id
            self._counter = number
            return record

    def _check(self, expect: Expect | None) -> None:
        """Raise `StaleDecision` when `expect` no longer holds (the caller holds the lock)."""
        if expect is None:
            return

        def current(case_id: str) -> CaseRecord | None:
            raw = self._cases.get(case_id)
            return None if raw is None else keys.decode_case(case_id, raw)

        def named(kind: AliasKind, key: str) -> str | None:
            raw = self._aliases.get(keys.alias_key(kind, key))
            return None if raw is None else keys.decode_alias(raw).case_id

        expect.check(named, current)

    def _changed(self, changes: Sequence[tuple[str, CaseChange]]
                 ) -> tuple[dict[str, CaseRecord], dict[str, bytes]]:
        """Every change worked out before anything is stored (all or nothing): the records
        after them, and the encodings to store (the caller holds the lock)."""
        changed: dict[str, CaseRecord] = {}
        encoded: dict[str, bytes] = {}
        for case_id, change in changes:
            stored = encoded.get(case_id) or self._cases.get(case_id)
            if stored is None:
                continue
            changed[case_id], data = keys.apply_change(case_id, stored, change)
            if data is not None:
                encoded[case_id] = data
        return changed, encoded

    def _is_taken(self, case_id: str) -> bool:
        return case_id in self._cases or self._taken_elsewhere(case_id)

    def last_number(self) -> int:
        with self._lock:
            self._check_open()
            return self._counter

    def record(
        self, aliases: Sequence[Alias], now: int, bumps: Sequence[CounterBump] = (),
        changes: Sequence[tuple[str, CaseChange]] = (), expect: Expect | None = None,
    ) -> dict[str, CaseRecord]:
        items = keys.alias_items(aliases, now)
        keys.counter_items(bumps)  # validated before anything changes
        with self._lock:
            self._check_open()
            self._check(expect)
            changed, encoded = self._changed(changes)
            self._cases.update(encoded)
            self._aliases.update(items)
            for b in bumps:
                self._bump(b.key, now, b.window)
            return changed

    def _bump(self, key: str, now: int, window: int) -> None:
        """Count one event (the caller holds the lock)."""
        raw_key = keys.counter_key(key)
        previous: CounterWindow | None = self._counters.get(raw_key)
        if previous is None:
            previous = self._counter_seed(key)
        self._counters[raw_key] = keys.bump(previous, now, window)

    def next_count(self, key: str, now: int, window: int) -> int:
        return keys.bump(self.peek_counter(key), now, window).count

    def peek_counter(self, key: str) -> CounterWindow | None:
        """The stored window of a counter, without counting (for an overlay's seed)."""
        raw_key = keys.counter_key(key)
        with self._lock:
            self._check_open()
            current = self._counters.get(raw_key)
        return current if current is not None else self._counter_seed(key)

    def modify_case(
        self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
    ) -> CaseRecord | None:
        with self._lock:
            self._check_open()
            stored = self._cases.get(case_id)
            if stored is None:
                return None
            record, encoded = keys.apply_change(case_id, stored, change)
            if encoded is not None:
                self._cases[case_id] = encoded
            return record

    def close(self) -> None:
        with self._lock:
            self._closed = True
