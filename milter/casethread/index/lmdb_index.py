"""The LMDB case index.

LMDB forbids opening one environment twice in a process, so every LmdbIndex on a path shares
one reference-counted `lmdb.Environment`. Each call is one short transaction; writers serialise
on LMDB's own lock, which holds across threads and across processes (the CLI next to the
running milter). Do not fork after opening: the child must open its own index.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import lmdb

from ..core.model import Alias, AliasHit, AliasKind, CaseRecord, is_valid_case_id
from . import keys
from .errors import CaseIndexError, IndexFull, IndexUnavailable, SchemaMismatch

SCHEMA_VERSION = 1
META_SCHEMA = b"schema"  # ASCII decimal
META_COUNTER = b"counter"  # 8-byte big-endian: the last case number handed out
# One slot per concurrent read transaction in all processes: SMTP sessions plus CLI runs.
MAX_READERS = 512
MAX_DBS = 5  # the named databases of _Env


@dataclass
class _Env:
    env: lmdb.Environment
    aliases: lmdb._Database  # keys.alias_key -> keys.encode_alias
    cases: lmdb._Database  # case id -> keys.encode_case
    numbers: lmdb._Database  # keys.NUMBER -> case id
    counters: lmdb._Database  # keys.counter_key -> keys.Window
    meta: lmdb._Database
    refs: int = 0


_envs: dict[str, _Env] = {}
_envs_lock = threading.Lock()


def _open_env(path: str, map_size: int) -> _Env:
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    # mode applies to data.mdb and lock.mdb; the 0700 directory already shields them.
    env = lmdb.open(
        path,
        map_size=map_size,
        subdir=True,
        mode=0o600,
        max_dbs=MAX_DBS,
        max_readers=MAX_READERS,
        lock=True,
    )
    try:
        shared = _Env(
            env,
            env.open_db(b"aliases"),
            env.open_db(b"cases"),
            env.open_db(b"numbers"),
            env.open_db(b"counters"),
            env.open_db(b"meta"),
        )
        with env.begin(write=True) as txn:
            raw = txn.get(META_SCHEMA, db=shared.meta)
            if raw is None:
                txn.put(META_SCHEMA, str(SCHEMA_VERSION).encode(), db=shared.meta)
            elif raw != str(SCHEMA_VERSION).encode():
                raise SchemaMismatch(
                    f"case index {path} has schema version {raw.decode(errors='replace')}; "
                    f"this casethread reads version {SCHEMA_VERSION}: use a newer casethread"
                )
    except BaseException:
        env.close()
        raise
    return shared


def _acquire(path: str, map_size: int) -> tuple[str, _Env]:
    with _envs_lock:
        try:
            real = os.path.realpath(path)
            shared = _envs.get(real)
            if shared is None:
                shared = _envs[real] = _open_env(real, map_size)
        except (lmdb.Error, OSError) as exc:
            raise IndexUnavailable(f"cannot open case index {path}: {exc}") from exc
        shared.refs += 1
        return real, shared


def _release(real: str) -> None:
    with _envs_lock:
        shared = _envs[real]
        shared.refs -= 1
        if shared.refs == 0:
            del _envs[real]
            shared.env.close()


class LmdbIndex:
    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int,
        id_prefix: str = "C-",
        id_digits: int = 6,
    ) -> None:
        self._ids = keys.IdFormat(id_prefix, id_digits)
        self.path = os.fspath(path)
        # A second LmdbIndex on the same path shares the env, and the first one's map_size.
        self._real, shared = _acquire(self.path, map_size)
        self._shared: _Env | None = shared

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        return os.path.exists(os.path.join(path, "data.mdb"))

    @contextmanager
    def _txn(self, write: bool = False) -> Iterator[tuple[lmdb.Transaction[bytes], _Env]]:
        shared = self._shared
        if shared is None:
            raise CaseIndexError(f"case index {self.path} is closed")
        try:
            with shared.env.begin(write=write) as txn:
                yield txn, shared
        except lmdb.MapFullError as exc:
            size = shared.env.info()["map_size"]
            raise IndexFull(
                f"case index {self.path} is full (map_size {size} bytes): "
                "raise index.map_size in the configuration"
            ) from exc
        except lmdb.Error as exc:
            raise CaseIndexError(f"case index {self.path}: {exc}") from exc

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

    def create_case(self, now: int, case_id: str | None = None, queue: str = "") -> CaseRecord:
        if case_id is not None:
            keys.check_case_id(case_id)
            # Adopting a known case is the common outbound path: no need for the writer lock.
            existing = self.get_case(case_id)
            if existing is not None:
                return existing
        with self._txn(write=True) as (txn, db):
            if case_id is not None:
                raw = txn.get(case_id.encode(), db=db.cases)
                if raw is not None:  # adopted by another thread or process meanwhile
                    return keys.decode_case(case_id, raw)
            raw = txn.get(META_COUNTER, db=db.meta)
            counter = 0 if raw is None else keys.NUMBER.unpack(raw)[0]
            number, new_id = self._ids.allocate(
                counter, case_id, lambda cid: txn.get(cid.encode(), db=db.cases) is not None
            )
            record = keys.new_case(new_id, number, now, queue)
            packed = keys.NUMBER.pack(number)
            txn.put(new_id.encode(), keys.encode_case(record), db=db.cases)
            txn.put(packed, new_id.encode(), db=db.numbers)
            txn.put(META_COUNTER, packed, db=db.meta)
        return record

    def last_number(self) -> int:
        with self._txn() as (txn, db):
            raw = txn.get(META_COUNTER, db=db.meta)
        return 0 if raw is None else int(keys.NUMBER.unpack(raw)[0])

    def record(self, aliases: Sequence[Alias], now: int) -> None:
        items = keys.alias_items(aliases, now)
        if not items:
            return
        # One write transaction: one fsync for all of a message's aliases.
        with self._txn(write=True) as (txn, db):
            for key, value in items:
                txn.put(key, value, db=db.aliases)

    def record_message(self, message_id: str, case_id: str, now: int) -> None:
        self.record([Alias(AliasKind.MESSAGE, message_id, case_id)], now)

    def bump_counter(self, key: str, now: int, window: int) -> int:
        raw_key = keys.counter_key(key)
        # Read and write in one write transaction: LMDB's writer lock makes the bump atomic
        # across threads and processes.
        with self._txn(write=True) as (txn, db):
            raw = txn.get(raw_key, db=db.counters)
            current = keys.bump(None if raw is None else keys.Window.decode(raw), now, window)
            txn.put(raw_key, current.encode(), db=db.counters)
        return current.count

    def peek_counter(self, key: str) -> keys.Window | None:
        """The stored window of a counter, without counting (for an overlay's seed)."""
        raw_key = keys.counter_key(key)
        with self._txn() as (txn, db):
            raw = txn.get(raw_key, db=db.counters)
        return None if raw is None else keys.Window.decode(raw)

    def update_case(self, record: CaseRecord) -> None:
        if not is_valid_case_id(record.case_id):
            raise KeyError(record.case_id)
        key = record.case_id.encode()
        data = keys.encode_case(record)
        with self._txn(write=True) as (txn, db):
            stored = txn.get(key, db=db.cases)
            if stored is None:
                raise KeyError(record.case_id)
            keys.check_same_number(keys.decode_case(record.case_id, stored), record)
            txn.put(key, data, db=db.cases)

    def modify_case(
        self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
    ) -> CaseRecord | None:
        if not is_valid_case_id(case_id):
            return None
        key = case_id.encode()
        with self._txn(write=True) as (txn, db):
            stored = txn.get(key, db=db.cases)
            if stored is None:
                return None
            current = keys.decode_case(case_id, stored)
            new = change(current)
            if new is None or new == current:
                return current
            keys.check_same_number(current, new)
            txn.put(key, keys.encode_case(new), db=db.cases)
            return new

    def close(self) -> None:
        if self._shared is not None:
            self._shared = None
            _release(self._real)
