"""The LMDB case index: the `CaseIndex` contract over the shared environment of its path
(`lmdb_env`: opening, the gate, map growth, read transactions).

Each call is one short transaction; writers serialise on LMDB's own lock, which holds across
threads and across processes (the CLI next to the running milter). Concurrent writes of this
process are group-committed: one transaction and one fsync for all that queued meanwhile
(`LmdbIndex._write`). Do not fork after opening: the child must open its own index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar, cast

import lmdb

from ..core.model import Alias, AliasHit, AliasKind, CaseRecord, CounterBump, is_valid_case_id
from ..core.store import (
    CaseChange,
    Expect,
    NewCaseAliases,
    NewCaseChanges,
    StaleDecision,
    unchanged,
)
from . import keys
from .errors import CaseIndexError, IndexFull, IndexUnavailable
from .lmdb_env import (
    MAX_GROWTHS,
    MAX_RESIZED_RETRIES,
    META_COUNTER,
    SCHEMA_VERSION,
    KeptTxn,
    Pending,
    ReadTxn,
    SharedEnv,
    acquire,
    peek,
    release,
    schema_mismatch,
    translate,
)

T = TypeVar("T")

# Group commit: bodies per write transaction, so one transaction stays short.
MAX_BATCH = 256


class _IdTaken(Exception):
    """A generated case id some case holds already (one adopted under an id of our format):
    the new case is made again, its id allocated past every such one."""


def _untested(case_id: str) -> bool:
    """A generated id taken as free: the new case's write (`overwrite=False`) tells, in the
    same py-lmdb call, where a read first would be one more (each releases the GIL)."""
    return False


def _change_case(txn: lmdb.Transaction[bytes], db: SharedEnv, case_id: str,
                 change: CaseChange, checked: _Checked | None = None) -> CaseRecord | None:
    """Apply `change` to a case inside a write transaction; None for an unknown case."""
    if not is_valid_case_id(case_id):
        return None
    key = case_id.encode()
    stored = txn.get(key, db=db.cases)
    if checked is not None:
        checked.case_read(case_id, stored)
    if stored is None:
        return None
    record, encoded = keys.apply_change(case_id, stored, change)
    if encoded is not None:
        txn.put(key, encoded, db=db.cases)
    return record


class _Checked:
    """An `Expect` checked inside a write body for the price of the body's own reads: a case
    the body changes as its change reads it, an alias the body writes as it writes it
    (`put_alias`), only the rest (rarely any) by reads of their own (`check_rest`). Every
    py-lmdb call releases the GIL, a hand-over to another session under load. Raising
    `StaleDecision` anywhere in the body aborts its transaction: nothing is written."""

    def __init__(self, expect: Expect, changed: set[str], written: set[bytes]) -> None:
        self._cases = {case.case_id: case for case in expect.cases}
        self._absent = {keys.alias_key(kind, key) for kind, key in expect.absent}
        self._rest = Expect(
            tuple(a for a in expect.absent if keys.alias_key(*a) not in written),
            tuple(case for case in expect.cases if case.case_id not in changed))

    def check_rest(self, txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
        if not self._rest.absent and not self._rest.cases:
            return
        self._rest.check(lambda kind, key: _case_named(txn, db, keys.alias_key(kind, key)),
                         lambda case_id: _case(txn, db, case_id))

    def case_read(self, case_id: str, stored: bytes | None) -> None:
        read = self._cases.pop(case_id, None)  # the first change of it reads it as decided
        if read is None:
            return
        current = None if stored is None else keys.decode_case(case_id, stored)
        if not unchanged(read, current):
            raise StaleDecision(f"case {case_id} changed since it was read")

    def put_alias(self, txn: lmdb.Transaction[bytes], db: SharedEnv, key: bytes,
                  value: bytes) -> None:
        if key not in self._absent:
            txn.put(key, value, db=db.aliases)
        elif not txn.put(key, value, db=db.aliases, overwrite=False):
            named = _case_named(txn, db, key)
            if named is not None and _case(txn, db, named) is not None:
                raise StaleDecision("an alias this decision found free names a case now")
            txn.put(key, value, db=db.aliases)  # left by a case that is gone


def _checked(expect: Expect | None, changes: Sequence[tuple[str, CaseChange]],
             items: Sequence[tuple[bytes, bytes]]) -> _Checked | None:
    if expect is None:
        return None
    return _Checked(expect, {case_id for case_id, _ in changes}, {key for key, _ in items})


def _put_aliases(txn: lmdb.Transaction[bytes], db: SharedEnv,
                 items: Sequence[tuple[bytes, bytes]], checked: _Checked | None) -> None:
    for key, value in items:
        if checked is None:
            txn.put(key, value, db=db.aliases)
        else:
            checked.put_alias(txn, db, key, value)


def _case_named(txn: lmdb.Transaction[bytes], db: SharedEnv, raw_key: bytes) -> str | None:
    raw = txn.get(raw_key, db=db.aliases)
    return None if raw is None else keys.decode_alias(raw).case_id


def _case(txn: lmdb.Transaction[bytes], db: SharedEnv, case_id: str) -> CaseRecord | None:
    raw = txn.get(case_id.encode(), db=db.cases) if is_valid_case_id(case_id) else None
    return None if raw is None else keys.decode_case(case_id, raw)


def _bump(txn: lmdb.Transaction[bytes], db: SharedEnv, raw_key: bytes, now: int,
          window: int) -> None:
    """Count one event. Read and write in one write transaction: LMDB's writer lock makes the
    bump atomic across threads and processes."""
    raw = txn.get(raw_key, db=db.counters)
    current = keys.bump(None if raw is None else keys.Window.decode(raw), now, window)
    txn.put(raw_key, current.encode(), db=db.counters)


def _tree_pages(txn: lmdb.Transaction[bytes], db: SharedEnv) -> int:
    """Pages holding live data: every B-tree's, from LMDB's per-database stats. The rest up
    to `last_pgno` is free pages (freed by deletes such as `prune`), reused before the file
    grows; only a compacted copy (`casethread backup`) gives them back."""
    stats = [txn.stat(d) for d in (db.aliases, db.cases, db.numbers, db.counters, db.meta)]
    stats.append(db.env.stat())  # the main tree, which names the others
    return sum(
        int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])
        for st in stats
    )


def _first_failed(shared: SharedEnv, txn: lmdb.Transaction[bytes],
                  items: list[Pending]) -> Pending | None:
    """Run `items` in `txn` in order, up to the first whose body raises (returned)."""
    for item in items:
        if not item.run(shared, txn):
            return item
    return None


class LmdbIndex:
    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int,
        id_prefix: str = "C-",
        id_digits: int = 6,
        max_map_size: int | None = None,
        sync: bool = True,
    ) -> None:
        """`max_map_size` caps automatic growth (default `default_max_map_size(map_size)`).
        `sync=False` flushes commits once a second instead of at each commit (the first
        LmdbIndex of a path in a process decides, like the ceiling)."""
        self._ids = keys.IdFormat(id_prefix, id_digits)
        self.path = os.fspath(path)
        # A second LmdbIndex on the same path shares the env, its map and its ceiling.
        self._real, shared = acquire(self.path, map_size, max_map_size, sync)
        self._shared: SharedEnv | None = shared

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether `path` holds an index. A directory this user may not look into raises: it
        is no missing index, and "no case index" would send the operator the wrong way."""
        try:
            os.stat(os.path.join(path, "data.mdb"))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise IndexUnavailable(
                f"cannot open case index {os.fspath(path)}: {exc.strerror or exc}"
            ) from exc
        return True

    @staticmethod
    def held_cases(path: str | os.PathLike[str]) -> int:
        """How many cases the index at `path` holds, read without a lock file (`peek`)."""
        return peek(os.fspath(path)).cases

    @staticmethod
    def check_schema(path: str | os.PathLike[str]) -> None:
        """Raise the SchemaMismatch opening the index would, read without a lock file."""
        where = os.path.realpath(path)  # as `serve` names it
        schema = peek(where).schema
        if schema is not None and schema != str(SCHEMA_VERSION).encode():
            raise schema_mismatch(where, schema)

    def _live(self) -> SharedEnv:
        shared = self._shared
        if shared is None:
            raise CaseIndexError(f"case index {self.path} is closed")
        return shared

    def _txn(self) -> ReadTxn | KeptTxn:
        """A read transaction: `with self._txn() as (txn, db)`; errors become CaseIndexError.
        Inside `snapshot()` (and outside a write) the thread's reads share one."""
        shared = self._live()
        local = shared.snapshots
        if not local.wanted:
            return ReadTxn(self.path, shared)
        if local.kept is None:
            local.kept = KeptTxn(ReadTxn(self.path, shared))
        return local.kept

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """This thread's reads inside share one read transaction (one view of the index, and
        one begin instead of one per read: each py-lmdb call hands the GIL over, which under
        twenty sessions costs a thread switch). A write ends the view first; a read after it
        begins another, which sees the write."""
        local = self._live().snapshots
        if local.wanted:  # nested: the outer one ends it
            yield
            return
        local.wanted = True
        try:
            yield
        finally:
            local.wanted = False
            local.end()

    def _write(self, body: Callable[[lmdb.Transaction[bytes], SharedEnv], T]) -> T:
        """Run `body` in a write transaction and return once it is committed (durable with
        sync=full). When the map is full, grow it and run `body` again: it must only read and
        write through the transaction.

        Group commit: a write queues its body, then takes the writer lock. Whoever holds it
        runs every queued body in one transaction with one commit, so concurrent SMTP sessions
        share an fsync; a writer that finds its body already committed by that leader returns.
        """
        shared = self._live()
        # A snapshot's view ends here: it holds the gate, and reads in the write's bodies (and
        # after it) must see the write.
        local = shared.snapshots
        wanted = local.wanted
        if wanted:
            if local.kept is not None and local.kept.uses:  # as `_write_queued` refuses
                raise CaseIndexError("write inside a transaction of the same thread")
            local.end()
            local.wanted = False
        try:
            return self._write_queued(shared, body)
        finally:
            local.wanted = wanted

    def _write_queued(self, shared: SharedEnv,
                      body: Callable[[lmdb.Transaction[bytes], SharedEnv], T]) -> T:
        if shared.gate.held():
            # We would hold the gate while waiting for the writer lock, and its holder may
            # need the gate drained to grow the map.
            raise CaseIndexError("write inside a transaction of the same thread")
        item = Pending(body)
        with shared.queue_lock:
            shared.pending.append(item)
        while not item.done:
            with shared.writer:
                if item.done:
                    break
                with shared.queue_lock:
                    batch = shared.pending[:MAX_BATCH]
                    del shared.pending[:MAX_BATCH]
                self._commit_batch(shared, batch)
        if item.error is not None:
            if isinstance(item.error, lmdb.Error):
                raise translate(self.path, shared, item.error) from item.error
            raise item.error
        return cast(T, item.result)

    def _commit_batch(self, shared: SharedEnv, batch: list[Pending]) -> None:
        """Run `batch` in one transaction (the caller holds the writer lock). A body that
        raises gets its error; the transaction is rolled back and the others run again
        without it, each seeing what the ones before it wrote, as a nested transaction per
        body would give them at two py-lmdb calls a body (its begin, and its commit, which
        releases the GIL). An LMDB error fails every body still running, a full map grows it
        and runs them again."""
        gate = shared.gate
        running, growths = batch, 0
        try:
            while running:
                gate.enter()
                try:
                    shared.check_readers_now_and_then()
                    txn = self._begin_write(shared)
                    try:
                        failed = _first_failed(shared, txn, running)
                        if failed is None:
                            txn.commit()
                            break
                    except BaseException as exc:
                        # py-lmdb 3.0 makes a write abort wait until no operation of another
                        # thread is in flight, which busy readers can put off for minutes:
                        # abort (and grow) with the gate drained instead.
                        with gate.upgrade():
                            txn.abort()
                            # The map size the write found full, read once it failed rather
                            # than before each write (`info()` releases the GIL: under load a
                            # thread switch a message). The same figure: only the writer,
                            # holding the writer lock, or a thread alone in the gate (`adopt`,
                            # never while the writer is inside) resizes this process's map.
                            if not isinstance(exc, lmdb.MapFullError) or not shared.grow(
                                    shared.map_size()):
                                raise
                        growths += 1
                        if growths == MAX_GROWTHS:
                            raise IndexFull(f"case index {self.path}: a write did not fit "
                                            "after repeated growth") from None
                        continue
                    with gate.upgrade():
                        txn.abort()
                    running = [item for item in running if item is not failed]
                finally:
                    gate.leave()
        except BaseException as exc:
            # The bodies still running; one that failed already keeps its own error (a stale
            # decision is decided again, where an index error would tempfail its mail).
            for item in running:
                item.result, item.error = None, exc
        for item in batch:
            item.done = True

    def _begin_write(self, shared: SharedEnv) -> lmdb.Transaction[bytes]:
        """A write transaction; the caller is inside the gate and holds the writer lock."""
        for attempt in range(MAX_RESIZED_RETRIES):
            try:
                return shared.env.begin(write=True)
            except lmdb.MapResizedError:
                if attempt == MAX_RESIZED_RETRIES - 1:
                    raise
                with shared.gate.upgrade():  # another process grew the map
                    before = shared.map_size()
                    shared.env.set_mapsize(0)
                    if shared.map_size() < before:
                        shared.env.set_mapsize(before)
        raise AssertionError("unreachable")

    # --- for index maintenance (casethread.index.maintenance) ------------------------------

    @contextmanager
    def reading(self) -> Iterator[tuple[lmdb.Transaction[bytes], SharedEnv]]:
        """A read transaction and the databases, for maintenance that scans the index."""
        with self._txn() as found:
            yield found

    def writing(self, body: Callable[[lmdb.Transaction[bytes], SharedEnv], T]) -> T:
        """`body` in one write transaction that grows the map when needed (may run again)."""
        return self._write(body)

    def map_info(self) -> dict[str, Any]:
        """Map size, its high-water mark (`last_pgno`) and live pages, page size and reader
        slots (refreshed by a transaction first, so a map grown by another process shows its
        new size)."""
        with self._txn() as (txn, shared):
            info = shared.env.info()
            stat = shared.env.stat()
            live = _tree_pages(txn, shared)
        return {
            "map_size": int(info["map_size"]),
            "max_map_size": shared.max_map_size,
            "last_pgno": int(info["last_pgno"]),
            "live_pages": live,
            "psize": int(stat["psize"]),
            "num_readers": int(info["num_readers"]),
            "max_readers": int(info["max_readers"]),
        }

    def copy_compacted(self, fd: int) -> None:
        """Write a compacted, consistent copy of the environment to `fd` (its data.mdb)."""
        shared = self._live()
        try:
            for attempt in range(MAX_RESIZED_RETRIES):
                shared.gate.enter()
                try:
                    shared.env.copyfd(fd, compact=True)
                    return
                except lmdb.MapResizedError:
                    if attempt == MAX_RESIZED_RETRIES - 1:
                        raise
                finally:
                    shared.gate.leave()
                # The copy's transaction could not begin: start over at the adopted size.
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                shared.adopt()
        except lmdb.Error as exc:
            code = getattr(exc, "code", None) or 0
            if code > 0:  # a system error: the copy only reads the index, so writing fd failed
                raise OSError(code, os.strerror(code)) from exc
            raise translate(self.path, shared, exc) from exc

    # --- the CaseIndex contract ------------------------------------------------------------

    def find(self, kind: AliasKind, key: str) -> AliasHit | None:
        raw_key = keys.alias_key(kind, key)
        with self._txn() as (txn, db):
            raw = txn.get(raw_key, db=db.aliases)
        return None if raw is None else keys.decode_alias(raw)

    def case_for_message(self, message_id: str) -> str | None:
        hit = self.find(AliasKind.MESSAGE, message_id)
        return None if hit is None else hit.case_id

    def case_for_number(self, number: int) -> str | None:
        key = keys.number_key(number)
        if key is None:
            return None
        with self._txn() as (txn, db):
            raw = txn.get(key, db=db.numbers)
        return None if raw is None else raw.decode("ascii")

    def get_case(self, case_id: str) -> CaseRecord | None:
        if not is_valid_case_id(case_id):
            return None
        with self._txn() as (txn, db):
            raw = txn.get(case_id.encode(), db=db.cases)
        return None if raw is None else keys.decode_case(case_id, raw)

    def create_case(
        self, now: int, case_id: str | None = None, queue: str = "",
        aliases: NewCaseAliases | None = None, bumps: Sequence[CounterBump] = (),
        thread_root: str | None = None, changes: NewCaseChanges | None = None,
        expect: Expect | None = None, number_above: int = 0, follows: str | None = None,
    ) -> CaseRecord:
        keys.check_new_case_args(case_id, aliases, bumps, changes)
        counters = keys.counter_items(bumps)
        if case_id is not None:
            # Adopting a known case is the common outbound path: no need for the writer lock.
            existing = self.get_case(case_id)
            if existing is not None:
                return existing

        def create(txn: lmdb.Transaction[bytes], db: SharedEnv, careful: bool) -> CaseRecord:
            if case_id is not None:
                raw = txn.get(case_id.encode(), db=db.cases)
                if raw is not None:  # adopted by another thread or process meanwhile
                    return keys.decode_case(case_id, raw)
            raw = txn.get(META_COUNTER, db=db.meta)
            counter = 0 if raw is None else keys.NUMBER.unpack(raw)[0]
            number, new_id = self._ids.allocate(
                counter, case_id,
                (lambda cid: txn.get(cid.encode(), db=db.cases) is not None) if careful
                else _untested, number_above,
            )
            record = keys.new_case(new_id, number, now, queue, thread_root, follows)
            items = keys.alias_items(aliases(record), now) if aliases is not None else []
            others = list(changes(record)) if changes is not None else []
            checked = _checked(expect, others, items)
            if checked is not None:
                checked.check_rest(txn, db)
            packed = keys.NUMBER.pack(number)
            _put_aliases(txn, db, items, checked)
            for raw_key, window in counters:
                _bump(txn, db, raw_key, now, window)
            if not txn.put(new_id.encode(), keys.encode_case(record), db=db.cases,
                           overwrite=False):
                raise _IdTaken(new_id)  # nothing of this body is written
            txn.put(packed, new_id.encode(), db=db.numbers)
            txn.put(META_COUNTER, packed, db=db.meta)
            for other, change in others:
                _change_case(txn, db, other, change, checked)
            return record

        try:
            return self._write(partial(create, careful=False))
        except _IdTaken:
            return self._write(partial(create, careful=True))

    def last_number(self) -> int:
        with self._txn() as (txn, db):
            raw = txn.get(META_COUNTER, db=db.meta)
        return 0 if raw is None else int(keys.NUMBER.unpack(raw)[0])

    def case_count(self) -> int:
        """How many cases the index holds (LMDB keeps the count: no scan)."""
        with self._txn() as (txn, db):
            return int(txn.stat(db.cases)["entries"])

    def record(
        self, aliases: Sequence[Alias], now: int, bumps: Sequence[CounterBump] = (),
        changes: Sequence[tuple[str, CaseChange]] = (), expect: Expect | None = None,
    ) -> dict[str, CaseRecord]:
        items = keys.alias_items(aliases, now)
        counters = keys.counter_items(bumps)
        if not items and not counters and not changes:
            return {}

        # One write transaction: one fsync for all of a message's writes.
        def put_all(txn: lmdb.Transaction[bytes], db: SharedEnv) -> dict[str, CaseRecord]:
            checked = _checked(expect, changes, items)
            if checked is not None:
                checked.check_rest(txn, db)
            changed = {}
            for case_id, change in changes:
                record = _change_case(txn, db, case_id, change, checked)
                if record is not None:
                    changed[case_id] = record
            _put_aliases(txn, db, items, checked)
            for raw_key, window in counters:
                _bump(txn, db, raw_key, now, window)
            return changed

        return self._write(put_all)

    def next_count(self, key: str, now: int, window: int) -> int:
        return keys.bump(self.peek_counter(key), now, window).count

    def peek_counter(self, key: str) -> keys.Window | None:
        """The stored window of a counter, without counting (for an overlay's seed)."""
        raw_key = keys.counter_key(key)
        with self._txn() as (txn, db):
            raw = txn.get(raw_key, db=db.counters)
        return None if raw is None else keys.Window.decode(raw)

    def modify_case(
        self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
    ) -> CaseRecord | None:
        if not is_valid_case_id(case_id):
            return None
        key = case_id.encode()
        # A change that changes nothing (a state the case already has) is found by a read,
        # without a write transaction and a place in the writers' queue.
        with self._txn() as (txn, db):
            stored = txn.get(key, db=db.cases)
        if stored is None:
            return None
        current, encoded = keys.apply_change(case_id, stored, change)
        if encoded is None:
            return current

        # `change` runs again on the fresh read, and once more if the map had to grow.
        return self._write(lambda txn, db: _change_case(txn, db, case_id, change))

    def close(self) -> None:
        if self._shared is not None:
            self._shared = None
            release(self._real)
