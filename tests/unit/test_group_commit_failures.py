"""Group commit when bodies fail: the batch runs in one transaction without a nested one per
body, so a body that raises rolls the whole transaction back and the others run again without
it. Each body keeps its own outcome, nothing of a failed body is seen or kept, and the reruns
are bounded. `_commit_batch` is driven directly with hand-made `Pending` items: their order is
the batch's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from casethread.core.store import StaleDecision
from casethread.index import LmdbIndex
from casethread.index.lmdb_env import Pending, SharedEnv
from casethread.index.lmdb_index import MAX_BATCH

Body = Callable[["lmdb.Transaction[bytes]", SharedEnv], Any]
KEYS = tuple(f"k{n}".encode() for n in range(8))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LmdbIndex]:
    idx = LmdbIndex(tmp_path / "index", 64 << 20)
    yield idx
    idx.close()


def _writer(name: str, seen: dict[str, list[bytes]], fail: BaseException | None = None) -> Body:
    """Records which keys it sees, writes its own, then raises `fail` if given."""
    def body(txn: lmdb.Transaction[bytes], db: SharedEnv) -> str:
        seen[name] = [key for key in KEYS if txn.get(key, db=db.meta)]
        txn.put(name.encode(), b"1", db=db.meta)
        if fail is not None:
            raise fail
        return name

    return body


def _run(index: LmdbIndex, bodies: list[Body]) -> list[Pending]:
    items = [Pending(body) for body in bodies]
    shared = index._live()
    with shared.writer:
        index._commit_batch(shared, items)
    assert all(item.done for item in items)
    return items


def _stored(index: LmdbIndex) -> list[bytes]:
    with index.reading() as (txn, db):
        return [key for key in KEYS if txn.get(key, db=db.meta)]


@pytest.fixture
def write_begins(index: LmdbIndex, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the write transactions `index` begins."""
    begun: list[int] = []
    real = index._begin_write

    def counting(shared: SharedEnv) -> lmdb.Transaction[bytes]:
        begun.append(1)
        return real(shared)

    monkeypatch.setattr(index, "_begin_write", counting)
    return begun


def test_several_failing_bodies_each_keep_their_own_error(
        index: LmdbIndex, write_begins: list[int]) -> None:
    seen: dict[str, list[bytes]] = {}
    errors = {n: StaleDecision(f"k{n}") for n in (1, 3, 4)}
    items = _run(index, [_writer(f"k{n}", seen, errors.get(n)) for n in range(6)])
    assert [item.result for item in items] == ["k0", None, "k2", None, None, "k5"]
    assert [item.error for item in items] == [None, errors[1], None, errors[3], errors[4], None]
    # The survivors saw each other in order, never a failed body's write.
    assert seen["k2"] == [b"k0"] and seen["k5"] == [b"k0", b"k2"]
    assert _stored(index) == [b"k0", b"k2", b"k5"]
    assert len(write_begins) == len(errors) + 1  # one rollback a failed body, one commit


def test_a_batch_of_failing_bodies_ends_after_one_run_each(
        index: LmdbIndex, write_begins: list[int]) -> None:
    before = index._live().env.info()["last_txnid"]
    errors = [StaleDecision(str(n)) for n in range(MAX_BATCH)]
    items = _run(index, [_writer(f"f{n}", {}, error) for n, error in enumerate(errors)])
    assert [item.error for item in items] == errors
    assert len(write_begins) == MAX_BATCH
    assert index._live().env.info()["last_txnid"] == before  # nothing committed


def test_a_failed_body_keeps_its_own_error_when_a_later_lmdb_error_fails_the_batch(
        index: LmdbIndex) -> None:
    # An LMDB error fails the bodies still running; a body that had failed already keeps its
    # own error (a stale decision is decided again and written, where an index error would
    # answer the mail with a temporary failure).
    stale = StaleDecision("k0")

    def bad_key(txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
        txn.put(b"x" * 1024, b"1", db=db.meta)  # past LMDB's key size: BadValsizeError

    items = _run(index, [_writer("k0", {}, stale), _writer("k1", {}), bad_key])
    assert items[0].error is stale
    assert isinstance(items[1].error, lmdb.BadValsizeError)
    assert items[2].error is items[1].error
    assert _stored(index) == []


def test_a_body_that_fails_in_a_batch_that_fills_the_map(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "small", 256 << 10)
    blob = b"x" * 8000

    def blobs(n: int) -> Body:
        def body(txn: lmdb.Transaction[bytes], db: SharedEnv) -> int:
            for i in range(10):
                txn.put(f"blob {n} {i}".encode(), blob, db=db.meta)
            return n

        return body

    stale = StaleDecision("half")

    def half_then_fail(txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
        blobs(-1)(txn, db)
        raise stale

    try:
        start = index.map_info()["map_size"]
        bodies = [blobs(n) for n in range(20)]
        bodies.insert(10, half_then_fail)
        items = _run(index, bodies)
        assert [item.result for item in items] == [*range(10), None, *range(10, 20)]
        assert [item.error for item in items] == [None] * 10 + [stale] + [None] * 10
        assert index.map_info()["map_size"] > start
        with index.reading() as (txn, db):
            assert all(txn.get(f"blob {n} 9".encode(), db=db.meta) == blob for n in range(20))
            assert txn.get(b"blob -1 0", db=db.meta) is None
    finally:
        index.close()
