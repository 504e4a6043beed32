"""The LMDB case index.

LMDB forbids opening one environment twice in a process, so every LmdbIndex on a path shares
one reference-counted `lmdb.Environment`. Each call is one short transaction; writers serialise
on LMDB's own lock, which holds across threads and across processes (the CLI next to the
running milter). Concurrent writes of this process are group-committed: one transaction and one
fsync for all that queued meanwhile (`LmdbIndex._write`). Do not fork after opening: the child
must open its own index.

The map grows by itself: a write that finds it full doubles it (up to a ceiling) and runs
again. The size reached is stored in the file, so other processes (on their next transaction,
`MDB_MAP_RESIZED`) and restarts adopt it. Replacing the map needs every transaction of the
process ended (py-lmdb invalidates them), so transactions pass a process-wide gate: shared for
every transaction, exclusive for a resize.

Stale reader slots: a process killed inside a read transaction (a `casethread export | slow`
cut by `timeout`, a SIGKILL) leaves its slot in lock.mdb, and the snapshot it names keeps every
page freed since from being reused: the file then grows with each write until the map ceiling
or the disk. LMDB clears such slots only when asked (`mdb_reader_check`, which tells a dead
process by the lock it held on lock.mdb), so every process asks when it opens the index, before
it grows the map, and a long-running milter at most once a minute on its write path
(`SharedEnv.check_readers`), as slapd does at start and `mdb_stat -rr` does by hand.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar, cast

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
from .errors import (
    CaseIndexError,
    IndexFull,
    IndexNotWritable,
    IndexUnavailable,
    SchemaMismatch,
    os_problem,
)

log = logging.getLogger("casethread")

# 2: alias keys are kind byte + 16-byte digest (keys.alias_key); 1 stored them in clear.
SCHEMA_VERSION = 2
META_SCHEMA = b"schema"  # ASCII decimal
META_COUNTER = b"counter"  # 8-byte big-endian: the last case number handed out
# One slot per concurrent read transaction in all processes: SMTP sessions plus CLI runs.
MAX_READERS = 512
MAX_DBS = 5  # the named databases of SharedEnv
# The size LMDB gives lock.mdb: its header and a 64-byte slot per reader (mdb.c,
# mdb_env_setup_locks: sizeof(MDB_txninfo) + (maxreaders - 1) * sizeof(MDB_reader) on 64-bit
# Linux; a test checks it against LMDB). A larger file would raise LMDB's reader count.
LOCK_FILE_SIZE = 192 + (MAX_READERS - 1) * 64
# Automatic growth stops at max(16 x the configured map_size, 64 GiB): far beyond any normal
# index, yet a runaway writer meets IndexFull before it has filled the disk of a small server.
CEILING_FACTOR = 16
MIN_CEILING = 64 << 30
# Doublings one write may need (more only for a single write of many GiB).
_MAX_GROWTHS = 64
_MAX_RESIZED_RETRIES = 3
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_MAYBE_DISK_FULL = frozenset({errno.EIO, errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# Below this much free space, a failed write is taken for a full disk.
LOW_DISK_SPACE = 16 << 20
# How often a writer looks for reader slots of dead processes (seconds). A check costs one
# fcntl per process in the reader table; a stale slot pins freed pages until it is cleared,
# and a minute of writes without reuse is a few MB at most.
READER_CHECK_INTERVAL = 60.0

T = TypeVar("T")


# sync=async: how often commits are flushed to disk.
FLUSH_INTERVAL = 1.0
# Group commit: bodies per write transaction, so one transaction stays short.
MAX_BATCH = 256


def default_max_map_size(map_size: int) -> int:
    return max(map_size * CEILING_FACTOR, MIN_CEILING)


class _Gate:
    """Readers/writer gate of one environment in this process.

    Transactions pass it shared; nesting within a thread is free. `exclusive` (a thread outside
    any transaction) and `upgrade` (the writer, inside its own transaction) wait until every
    other thread has left, and hold back new transactions meanwhile so a steady stream of
    reads cannot starve them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0  # threads inside
        self._resizing = False
        self._local = threading.local()

    # enter/leave run on every lookup: the plain lock, not the Condition's wrapper.
    def enter(self) -> None:
        local = self._local
        depth = getattr(local, "depth", 0)
        if not depth:
            with self._lock:
                while self._resizing:
                    self._cond.wait()
                self._active += 1
        local.depth = depth + 1

    def leave(self) -> None:
        local = self._local
        depth = local.depth - 1
        local.depth = depth
        if not depth:
            with self._lock:
                self._active -= 1
                if self._resizing and self._active <= 1:
                    self._cond.notify_all()

    def held(self) -> bool:
        return bool(getattr(self._local, "depth", 0))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if self.held():
            # Waiting for our own transaction to end would never return.
            raise CaseIndexError("cannot resize the LMDB map inside a transaction")
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()

    @contextmanager
    def upgrade(self) -> Iterator[None]:
        """Be the only thread inside, staying inside. Only the writer (one at a time: see
        SharedEnv.writer) upgrades; a pending `exclusive` keeps its claim and waits for us."""
        with self._cond:
            owner = not self._resizing
            self._resizing = True
            while self._active > 1:
                self._cond.wait()
        try:
            yield
        finally:
            if owner:
                with self._cond:
                    self._resizing = False
                    self._cond.notify_all()


class _Pending:
    """One queued write body and, once its batch has committed, its outcome."""

    __slots__ = ("body", "done", "error", "result")

    def __init__(self, body: Callable[[lmdb.Transaction[bytes], SharedEnv], Any]) -> None:
        self.body = body
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, shared: SharedEnv, txn: lmdb.Transaction[bytes], nested: bool) -> None:
        """Run the body in `txn`; in a batch, inside a nested transaction so that its own
        exception rolls back only its writes. LMDB errors propagate: they fail the batch."""
        self.error = None
        if not nested:
            self.result = self.body(txn, shared)
            return
        child = shared.env.begin(write=True, parent=txn)
        try:
            self.result = self.body(child, shared)
        except lmdb.Error:
            raise  # the parent aborts, and child with it
        except Exception as exc:
            with shared.gate.upgrade():  # see LmdbIndex._commit_batch on aborts
                child.abort()
            self.result, self.error = None, exc
            return
        child.commit()


class _Snapshot(threading.local):
    """Per thread: whether it is inside `LmdbIndex.snapshot()`, and the read transaction its
    reads share (begun by the first of them)."""

    def __init__(self) -> None:
        self.wanted = False
        self.kept: _Kept | None = None

    def end(self, exc_type: type[BaseException] | None = None,
            exc: BaseException | None = None) -> None:
        """End the shared transaction, if one was begun (an LMDB error `exc` is raised
        translated, as a plain read's is)."""
        kept, self.kept = self.kept, None
        if kept is not None:
            kept.txn.__exit__(exc_type, exc, None)


@dataclass
class SharedEnv:
    """One open environment, its named databases, its gate and its writer lock."""

    env: lmdb.Environment
    aliases: lmdb._Database  # keys.alias_key -> keys.encode_alias
    cases: lmdb._Database  # case id -> keys.encode_case
    numbers: lmdb._Database  # keys.NUMBER -> case id
    counters: lmdb._Database  # keys.counter_key -> keys.Window
    meta: lmdb._Database
    path: str = ""
    max_map_size: int = MIN_CEILING
    ceiling_configured: bool = False  # index.max_map_size set, not the default ceiling
    refs: int = 0
    gate: _Gate = field(default_factory=_Gate)
    # Writers of this process queue here, outside the gate, instead of on LMDB's writer mutex
    # inside it: a writer that has to grow the map can then drain the gate.
    writer: threading.Lock = field(default_factory=threading.Lock)
    # Group commit: write bodies waiting for the next transaction (LmdbIndex._write).
    pending: list[_Pending] = field(default_factory=list)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    # sync=async: commits are not fsync'd; this thread flushes them once a second.
    flusher: threading.Thread | None = None
    closing: threading.Event = field(default_factory=threading.Event)
    # Reader slots of dead processes this process cleared, in all; and when it last looked.
    stale_readers_cleared: int = 0
    readers_checked: float = 0.0
    snapshots: _Snapshot = field(default_factory=_Snapshot)

    def start_flusher(self, interval: float = FLUSH_INTERVAL) -> None:
        def flush_periodically() -> None:
            while not self.closing.wait(interval):
                self.flush()

        self.flusher = threading.Thread(
            target=flush_periodically, name="casethread-index-flush", daemon=True
        )
        self.flusher.start()

    def flush(self) -> None:
        self.gate.enter()
        try:
            self.env.sync(True)
        except lmdb.Error as exc:  # e.g. EINVAL while another thread resizes: next tick
            log.debug("case index %s: flush deferred: %s", self.path, exc)
        finally:
            self.gate.leave()

    def close(self) -> None:
        if self.flusher is not None:
            self.closing.set()
            self.flusher.join()
            self.flush()
        self.env.close()

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def check_readers(self) -> int:
        """Clear the reader slots of dead processes (mdb_reader_check); how many it cleared.
        The caller is inside the gate, or alone with the environment (opening it)."""
        self.readers_checked = time.monotonic()
        cleared = int(self.env.reader_check())
        if cleared:
            self.stale_readers_cleared += cleared
            log.warning(
                "case index %s: cleared %d stale reader slot(s) of dead processes (a reader "
                "killed inside its read transaction): the space freed since can be reused",
                self.path, cleared,
            )
        return cleared

    def check_readers_now_and_then(self) -> None:
        """`check_readers` if the last check is READER_CHECK_INTERVAL old (the writer calls
        this on every commit: a clock read when there is nothing to do)."""
        if time.monotonic() - self.readers_checked >= READER_CHECK_INTERVAL:
            self.check_readers()

    def grow(self, seen: int) -> bool:
        """Double the map after a write found `seen` bytes full; False at the ceiling. The
        caller has drained the gate and holds no transaction."""
        # Another process may have grown it already: take its size first.
        self.env.set_mapsize(0)
        if self.map_size() > seen:
            log.info("case index %s: map size %d bytes adopted", self.path, self.map_size())
            return True
        # A dead reader's snapshot may be what filled it: its pages are free once it is gone.
        if self.check_readers():
            return True
        if seen >= self.max_map_size:
            self.env.set_mapsize(seen)
            return False
        self.env.set_mapsize(min(seen * 2, self.max_map_size))
        grown = self.map_size()
        log.log(
            logging.WARNING if grown >= self.max_map_size else logging.INFO,
            "case index %s: map grown from %d to %d bytes (ceiling %d)",
            self.path, seen, grown, self.max_map_size,
        )
        return True

    def adopt(self) -> None:
        """Take the size another process grew the map to (after MDB_MAP_RESIZED)."""
        with self.gate.exclusive():
            before = self.map_size()
            self.env.set_mapsize(0)
            if self.map_size() < before:
                self.env.set_mapsize(before)  # never shrink below what this process had
            log.debug("case index %s: map size %d bytes adopted", self.path, self.map_size())


_envs: dict[str, SharedEnv] = {}
_envs_lock = threading.Lock()


def _open_env(path: str, map_size: int, max_map_size: int | None, sync: bool) -> SharedEnv:
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    _reserve_lock_file(path)
    # mode applies to data.mdb and lock.mdb; the 0700 directory already shields them.
    env = lmdb.open(
        path,
        map_size=map_size,
        subdir=True,
        mode=0o600,
        max_dbs=MAX_DBS,
        max_readers=MAX_READERS,
        lock=True,
        # async: no fsync per commit (the flusher thread syncs); LMDB stays consistent either
        # way, a crash only loses the commits since the last flush.
        sync=sync,
        metasync=sync,
    )
    try:
        _check_complete(env, path)
        # A map grown earlier (by any process) is stored in the file: keep it rather than
        # shrink back to the configured size and grow again.
        env.set_mapsize(0)
        if env.info()["map_size"] < map_size:
            env.set_mapsize(map_size)
        ceiling = default_max_map_size(map_size) if max_map_size is None else max_map_size
        shared = SharedEnv(
            env,
            env.open_db(b"aliases"),
            env.open_db(b"cases"),
            env.open_db(b"numbers"),
            env.open_db(b"counters"),
            env.open_db(b"meta"),
            path=path,
            max_map_size=max(ceiling, map_size),
            ceiling_configured=max_map_size is not None,
        )
        shared.check_readers()  # before the first write, which may have to grow the map
        if not sync:
            shared.start_flusher()
        with env.begin(write=True) as txn:
            raw = txn.get(META_SCHEMA, db=shared.meta)
            if raw is None:
                txn.put(META_SCHEMA, str(SCHEMA_VERSION).encode(), db=shared.meta)
            elif raw != str(SCHEMA_VERSION).encode():
                raise _schema_mismatch(path, raw)
    except BaseException:
        env.close()
        raise
    return shared


def _schema_mismatch(path: str, raw: bytes) -> SchemaMismatch:
    found = raw.decode(errors="replace")
    older = found.isdigit() and int(found) < SCHEMA_VERSION
    return SchemaMismatch(
        f"case index {path} has schema version {found}; this casethread reads "
        f"version {SCHEMA_VERSION}: "
        + ("export it with the casethread that wrote it and import it here (README, "
           "Upgrading)" if older else "use a newer casethread")
    )


def _reserve_lock_file(path: str) -> None:
    """Give lock.mdb its disk blocks before LMDB maps it. LMDB sizes a new lock file with
    ftruncate, which reserves nothing, and writes to it through the map: on a full disk that
    write kills the process with SIGBUS, before any line is logged (a first start, or an index
    restored from `casethread backup`, which holds no lock.mdb). posix_fallocate takes the
    blocks or says ENOSPC; an existing lock file keeps its size (holes filled)."""
    lock = os.path.join(path, "lock.mdb")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size or LOCK_FILE_SIZE
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise IndexUnavailable(
                f"cannot open case index {path}: no space to create {lock} "
                f"({LOCK_FILE_SIZE} bytes): {exc.strerror}; free space on its file system"
            ) from None
        # A file system without fallocate (glibc emulates most): LMDB as before.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def _check_complete(env: lmdb.Environment, path: str) -> None:
    """Refuse a data.mdb shorter than the pages its header names (a partial copy or restore,
    a disk that filled during a copy): reading a missing page would kill the process with
    SIGBUS. Only the meta pages are read here."""
    need = (int(env.info()["last_pgno"]) + 1) * int(env.stat()["psize"])
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size < need:
        raise IndexUnavailable(
            f"cannot open case index {path}: data.mdb is truncated ({size} bytes, its pages "
            f"need {need}); restore it from a backup"
        )


@dataclass(frozen=True)
class _Peek:
    """What `check-config` reads of an index: its schema (None: not yet written) and cases."""

    schema: bytes | None = None
    cases: int = 0


def _peek(path: str) -> _Peek:
    """Read the schema and case count without a lock file: `check-config` run as root must
    leave nothing in the directory that the milter's user cannot open (a root-owned lock.mdb
    stopped `serve`). Without the lock a writer may reuse a page under us: a read that fails
    so is tried once more."""
    if os.path.getsize(os.path.join(path, "data.mdb")) == 0:
        return _Peek()  # LMDB sets up an empty file on first open, as serve would
    error: lmdb.Error | None = None
    for _ in range(2):
        try:
            return _read_unlocked(path)
        except lmdb.Error as exc:
            error = exc
    raise CaseIndexError(f"case index {path}: {error}")


def _read_unlocked(path: str) -> _Peek:
    env = lmdb.open(path, readonly=True, lock=False, subdir=True, max_dbs=MAX_DBS)
    try:
        _check_complete(env, path)  # a partial restore: no SIGBUS on a missing page
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
                cases = env.open_db(b"cases", txn=txn, create=False)
            except lmdb.NotFoundError:
                return _Peek()
            return _Peek(txn.get(META_SCHEMA, db=meta), int(txn.stat(cases)["entries"]))
    finally:
        env.close()


def _acquire(
    path: str, map_size: int, max_map_size: int | None, sync: bool
) -> tuple[str, SharedEnv]:
    with _envs_lock:
        real = os.path.realpath(path)
        try:
            shared = _envs.get(real)
            if shared is None:
                shared = _envs[real] = _open_env(real, map_size, max_map_size, sync)
        except OSError as exc:
            raise IndexUnavailable(f"cannot open case index {path}: {os_problem(exc)}") from exc
        except lmdb.Error as exc:
            problem = _unusable_file(real) if getattr(exc, "code", None) in _NOT_WRITABLE else None
            raise IndexUnavailable(f"cannot open case index {path}: {problem or exc}") from exc
        shared.refs += 1
        return real, shared


def _unusable_file(path: str) -> str | None:
    """Which of the index's files cannot be opened for reading and writing, and why: LMDB
    names only the directory."""
    for name in ("data.mdb", "lock.mdb"):
        try:
            os.close(os.open(os.path.join(path, name), os.O_RDWR | os.O_CLOEXEC))
        except FileNotFoundError:
            continue
        except OSError as exc:
            return os_problem(exc)
    return None


def _release(real: str) -> None:
    with _envs_lock:
        shared = _envs[real]
        shared.refs -= 1
        if shared.refs == 0:
            del _envs[real]
            shared.close()


def _translate(path: str, shared: SharedEnv, exc: lmdb.Error) -> CaseIndexError:
    if isinstance(exc, lmdb.MapFullError):  # raised by writes, inside the gate
        return IndexFull(
            f"case index {path} is full (map_size {shared.map_size()} bytes, its growth "
            f"ceiling): {_ceiling_advice(shared)}"
        )
    code = getattr(exc, "code", None)
    if isinstance(exc, lmdb.DiskError) or code in _DISK_FULL:
        return IndexFull(f"case index {path}: the disk is full ({exc})")
    if code in _NOT_WRITABLE:
        return IndexNotWritable(f"case index {path}: cannot write ({exc})")
    if code in _MAYBE_DISK_FULL:
        # LMDB reports a short write as EIO: on a full file system that is the usual error.
        free = _free_bytes(path)
        if free is not None and free < LOW_DISK_SPACE:
            return IndexFull(
                f"case index {path}: the disk is full, {free} bytes free ({exc})"
            )
    return CaseIndexError(f"case index {path}: {exc}")


def _ceiling_advice(shared: SharedEnv) -> str:
    """Name the setting that put the ceiling where it is."""
    if shared.ceiling_configured:
        return "raise index.max_map_size in the configuration"
    return (f"raise index.map_size in the configuration (the map grows by itself up to "
            f"{CEILING_FACTOR} times it, at least {MIN_CEILING >> 30} GiB), or set "
            "index.max_map_size")


def _free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class _Txn:
    """A read transaction inside the gate (`with _Txn(...) as (txn, db)`).

    A class, not a generator context manager: `find` runs this on every lookup, and the
    generator machinery would cost more than the gate itself.
    """

    __slots__ = ("_path", "_shared", "_txn")

    def __init__(self, path: str, shared: SharedEnv) -> None:
        self._path = path
        self._shared = shared

    def __enter__(self) -> tuple[lmdb.Transaction[bytes], SharedEnv]:
        shared = self._shared
        gate = shared.gate
        for attempt in range(_MAX_RESIZED_RETRIES):
            gate.enter()
            try:
                self._txn = shared.env.begin()
                return self._txn, shared
            except lmdb.MapResizedError as exc:
                gate.leave()
                if attempt == _MAX_RESIZED_RETRIES - 1:
                    self._raise(exc)
            except BaseException as exc:
                gate.leave()
                if isinstance(exc, lmdb.Error):
                    self._raise(exc)
                raise
            try:
                shared.adopt()  # another process grew the map: take its size, begin again
            except lmdb.Error as exc:
                self._raise(exc)
        raise AssertionError("unreachable")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            self._txn.abort()  # a read: nothing to commit
        except lmdb.Error as end_exc:
            self._raise(end_exc)
        finally:
            self._shared.gate.leave()
        if isinstance(exc, lmdb.Error):
            raise _translate(self._path, self._shared, exc) from exc

    def _raise(self, exc: lmdb.Error) -> NoReturn:
        raise _translate(self._path, self._shared, exc) from exc


class _Kept:
    """A snapshot's read transaction, used by a read as `_Txn` is (`with ... as (txn, db)`)
    but left open for the next read; an LMDB error ends it."""

    __slots__ = ("_pair", "txn", "uses")

    def __init__(self, txn: _Txn) -> None:
        self.txn = txn
        self._pair = txn.__enter__()
        self.uses = 0  # reads under way: a write then is one inside a transaction

    def __enter__(self) -> tuple[lmdb.Transaction[bytes], SharedEnv]:
        self.uses += 1
        return self._pair

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.uses -= 1
        if isinstance(exc, lmdb.Error):
            self._pair[1].snapshots.end(exc_type, exc)


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
        self._real, shared = _acquire(self.path, map_size, max_map_size, sync)
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
        """How many cases the index at `path` holds, read without a lock file (`_peek`)."""
        return _peek(os.fspath(path)).cases

    @staticmethod
    def check_schema(path: str | os.PathLike[str]) -> None:
        """Raise the SchemaMismatch opening the index would, read without a lock file."""
        where = os.path.realpath(path)  # as `serve` names it
        schema = _peek(where).schema
        if schema is not None and schema != str(SCHEMA_VERSION).encode():
            raise _schema_mismatch(where, schema)

    def _live(self) -> SharedEnv:
        shared = self._shared
        if shared is None:
            raise CaseIndexError(f"case index {self.path} is closed")
        return shared

    def _txn(self) -> _Txn | _Kept:
        """A read transaction: `with self._txn() as (txn, db)`; errors become CaseIndexError.
        Inside `snapshot()` (and outside a write) the thread's reads share one."""
        shared = self._live()
        local = shared.snapshots
        if not local.wanted:
            return _Txn(self.path, shared)
        if local.kept is None:
            local.kept = _Kept(_Txn(self.path, shared))
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
        item = _Pending(body)
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
                raise _translate(self.path, shared, item.error) from item.error
            raise item.error
        return cast(T, item.result)

    def _commit_batch(self, shared: SharedEnv, batch: list[_Pending]) -> None:
        """Run `batch` in one transaction (the caller holds the writer lock). A body that
        raises is rolled back alone (a nested transaction) and gets its error; an LMDB error
        fails the whole batch, a full map grows it and runs every body again."""
        gate = shared.gate
        try:
            for _ in range(_MAX_GROWTHS):
                gate.enter()
                try:
                    shared.check_readers_now_and_then()
                    txn = self._begin_write(shared)
                    seen = shared.map_size()
                    try:
                        for item in batch:
                            item.run(shared, txn, nested=len(batch) > 1)
                        txn.commit()
                        break
                    except BaseException as exc:
                        # py-lmdb 3.0 makes a write abort wait until no operation of another
                        # thread is in flight, which busy readers can put off for minutes:
                        # abort (and grow) with the gate drained instead.
                        with gate.upgrade():
                            txn.abort()
                            if not isinstance(exc, lmdb.MapFullError) or not shared.grow(seen):
                                raise
                finally:
                    gate.leave()
            else:
                raise IndexFull(
                    f"case index {self.path}: a write did not fit after repeated growth"
                )
        except BaseException as exc:
            for item in batch:
                item.result, item.error = None, exc
        for item in batch:
            item.done = True

    def _begin_write(self, shared: SharedEnv) -> lmdb.Transaction[bytes]:
        """A write transaction; the caller is inside the gate and holds the writer lock."""
        for attempt in range(_MAX_RESIZED_RETRIES):
            try:
                return shared.env.begin(write=True)
            except lmdb.MapResizedError:
                if attempt == _MAX_RESIZED_RETRIES - 1:
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
            for attempt in range(_MAX_RESIZED_RETRIES):
                shared.gate.enter()
                try:
                    shared.env.copyfd(fd, compact=True)
                    return
                except lmdb.MapResizedError:
                    if attempt == _MAX_RESIZED_RETRIES - 1:
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
            raise _translate(self.path, shared, exc) from exc

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
        expect: Expect | None = None, number_above: int = 0,
    ) -> CaseRecord:
        keys.check_new_case_args(case_id, aliases, bumps, changes)
        counters = keys.counter_items(bumps)
        if case_id is not None:
            # Adopting a known case is the common outbound path: no need for the writer lock.
            existing = self.get_case(case_id)
            if existing is not None:
                return existing

        def create(txn: lmdb.Transaction[bytes], db: SharedEnv) -> CaseRecord:
            if case_id is not None:
                raw = txn.get(case_id.encode(), db=db.cases)
                if raw is not None:  # adopted by another thread or process meanwhile
                    return keys.decode_case(case_id, raw)
            raw = txn.get(META_COUNTER, db=db.meta)
            counter = 0 if raw is None else keys.NUMBER.unpack(raw)[0]
            number, new_id = self._ids.allocate(
                counter, case_id, lambda cid: txn.get(cid.encode(), db=db.cases) is not None,
                number_above,
            )
            record = keys.new_case(new_id, number, now, queue, thread_root)
            items = keys.alias_items(aliases(record), now) if aliases is not None else []
            others = list(changes(record)) if changes is not None else []
            checked = _checked(expect, others, items)
            if checked is not None:
                checked.check_rest(txn, db)
            packed = keys.NUMBER.pack(number)
            _put_aliases(txn, db, items, checked)
            for raw_key, window in counters:
                _bump(txn, db, raw_key, now, window)
            txn.put(new_id.encode(), keys.encode_case(record), db=db.cases)
            txn.put(packed, new_id.encode(), db=db.numbers)
            txn.put(META_COUNTER, packed, db=db.meta)
            for other, change in others:
                _change_case(txn, db, other, change, checked)
            return record

        return self._write(create)

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
            _release(self._real)
