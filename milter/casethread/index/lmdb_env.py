"""The LMDB environment of an index path, shared by every LmdbIndex of it in this process.

LMDB forbids opening one environment twice in a process, so every LmdbIndex on a path shares
one reference-counted `lmdb.Environment` (`acquire`, `release`), with its named databases, its
gate and its writer lock (`SharedEnv`). Read transactions (`ReadTxn`, `KeptTxn`) and every
LMDB error's translation into the index's own errors (`translate`) live here too.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import lmdb

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
MAX_GROWTHS = 64
MAX_RESIZED_RETRIES = 3
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_MAYBE_DISK_FULL = frozenset({errno.EIO, errno.EFBIG})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# Below this much free space, a failed write is taken for a full disk.
LOW_DISK_SPACE = 16 << 20
# How often a writer looks for reader slots of dead processes (seconds). A check costs one
# fcntl per process in the reader table; a stale slot pins freed pages until it is cleared,
# and a minute of writes without reuse is a few MB at most.
READER_CHECK_INTERVAL = 60.0


# sync=async: how often commits are flushed to disk.
FLUSH_INTERVAL = 1.0


def default_max_map_size(map_size: int) -> int:
    return max(map_size * CEILING_FACTOR, MIN_CEILING)


class Gate:
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


class Pending:
    """One queued write body and, once its batch has committed, its outcome."""

    __slots__ = ("body", "done", "error", "result")

    def __init__(self, body: Callable[[lmdb.Transaction[bytes], SharedEnv], Any]) -> None:
        self.body = body
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, shared: SharedEnv, txn: lmdb.Transaction[bytes]) -> bool:
        """Run the body in `txn`; False when it raised: its error is kept, and the caller
        rolls the transaction back. LMDB errors propagate: they fail the batch."""
        self.error = None
        try:
            self.result = self.body(txn, shared)
        except lmdb.Error:
            raise
        except Exception as exc:
            self.result, self.error = None, exc
            return False
        return True


class Snapshot(threading.local):
    """Per thread: whether it is inside `LmdbIndex.snapshot()`, and the read transaction its
    reads share (begun by the first of them)."""

    def __init__(self) -> None:
        self.wanted = False
        self.kept: KeptTxn | None = None

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
    gate: Gate = field(default_factory=Gate)
    # Writers of this process queue here, outside the gate, instead of on LMDB's writer mutex
    # inside it: a writer that has to grow the map can then drain the gate.
    writer: threading.Lock = field(default_factory=threading.Lock)
    # Group commit: write bodies waiting for the next transaction (LmdbIndex._write).
    pending: list[Pending] = field(default_factory=list)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    # sync=async: commits are not fsync'd; this thread flushes them once a second.
    flusher: threading.Thread | None = None
    closing: threading.Event = field(default_factory=threading.Event)
    # Reader slots of dead processes this process cleared, in all; and when it last looked.
    stale_readers_cleared: int = 0
    readers_checked: float = 0.0
    snapshots: Snapshot = field(default_factory=Snapshot)

    def start_flusher(self) -> None:
        def flush_periodically() -> None:
            while not self.closing.wait(FLUSH_INTERVAL):
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
                raise schema_mismatch(path, raw)
    except BaseException:
        env.close()
        raise
    return shared


def schema_mismatch(path: str, raw: bytes) -> SchemaMismatch:
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


def peek(path: str) -> _Peek:
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


def acquire(
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
            code = getattr(exc, "code", None)
            problem = _unusable_file(real) if code in _NOT_WRITABLE else None
            if code == errno.EAGAIN:
                problem = _pid_taken(exc)
            raise IndexUnavailable(f"cannot open case index {path}: {problem or exc}") from exc
        shared.refs += 1
        return real, shared


def _pid_taken(exc: lmdb.Error) -> str:
    """LMDB marks a process's reader slots by a lock on the byte of lock.mdb at its PID. That
    lock is taken already when a process of another PID namespace (a container) with the
    same PID has the index open: two containers' milters, both PID 1, or `docker run` of the
    CLI beside the milter's container. Its own words say only EAGAIN."""
    return (f"{exc}: a process of another PID namespace (a container) with this process's "
            f"PID ({os.getpid()}) has the index open, and LMDB tells processes apart by PID. "
            "Open an index from one PID namespace only: run the CLI with `docker exec` in "
            "the milter's container, or start the containers with --pid=container:NAME")


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


def release(real: str) -> None:
    with _envs_lock:
        shared = _envs[real]
        shared.refs -= 1
        if shared.refs == 0:
            del _envs[real]
            shared.close()


def translate(path: str, shared: SharedEnv, exc: lmdb.Error) -> CaseIndexError:
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


class ReadTxn:
    """A read transaction inside the gate (`with ReadTxn(...) as (txn, db)`).

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
        for attempt in range(MAX_RESIZED_RETRIES):
            gate.enter()
            try:
                self._txn = shared.env.begin()
                return self._txn, shared
            except lmdb.MapResizedError as exc:
                gate.leave()
                if attempt == MAX_RESIZED_RETRIES - 1:
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
            raise translate(self._path, self._shared, exc) from exc

    def _raise(self, exc: lmdb.Error) -> NoReturn:
        raise translate(self._path, self._shared, exc) from exc


class KeptTxn:
    """A snapshot's read transaction, used by a read as `ReadTxn` is (`with ... as (txn, db)`)
    but left open for the next read; an LMDB error ends it."""

    __slots__ = ("_pair", "txn", "uses")

    def __init__(self, txn: ReadTxn) -> None:
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
