"""One contract for both case indexes, then what only the LMDB one promises."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest

from casethread.core.model import CaseRecord, CaseState
from casethread.core.settings import CaseSettings, IndexSettings, Settings
from casethread.core.store import CaseIndex
from casethread.index import (
    CaseIndexError,
    IndexFull,
    IndexUnavailable,
    LmdbIndex,
    MemoryIndex,
    SchemaMismatch,
    keys,
    open_index,
)
from casethread.index.lmdb_index import META_SCHEMA

MAP_SIZE = 64 << 20
MILTER_DIR = Path(__file__).resolve().parents[2] / "milter"
MakeIndex = Callable[..., CaseIndex]


@pytest.fixture(params=["memory", "lmdb"])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeIndex]:
    opened: list[CaseIndex] = []

    def make(id_prefix: str = "C-", id_digits: int = 6) -> CaseIndex:
        index: CaseIndex
        if request.param == "memory":
            index = MemoryIndex(id_prefix, id_digits)
        else:
            index = LmdbIndex(tmp_path / f"index{len(opened)}", MAP_SIZE, id_prefix, id_digits)
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


@pytest.fixture
def index(make_index: MakeIndex) -> CaseIndex:
    return make_index()


# --- the contract ---------------------------------------------------------------------------


def test_unknown_lookups_return_none(index: CaseIndex) -> None:
    assert index.case_for_message("<nobody@example.org>") is None
    assert index.get_case("C-000001") is None
    assert index.get_case("not a case id!") is None


def test_create_case_numbers_from_one(index: CaseIndex) -> None:
    records = [index.create_case(now=100 + n, queue="support") for n in range(3)]
    assert [r.number for r in records] == [1, 2, 3]
    assert [r.case_id for r in records] == ["C-000001", "C-000002", "C-000003"]
    assert records[0] == CaseRecord("C-000001", 1, CaseState.OPEN, "support", 100, 100)
    assert index.get_case("C-000002") == records[1]


def test_custom_prefix_and_digits(make_index: MakeIndex) -> None:
    index = make_index(id_prefix="CASE-", id_digits=4)
    assert index.create_case(now=1).case_id == "CASE-0001"
    assert index.create_case(now=1).case_id == "CASE-0002"
    with pytest.raises(ValueError):
        make_index(id_prefix="bad prefix ", id_digits=4)


def test_adoption_numbers_and_skips_colliding_ids(index: CaseIndex) -> None:
    adopted = index.create_case(now=5, case_id="C-000002", queue="billing")
    assert adopted == CaseRecord("C-000002", 1, CaseState.OPEN, "billing", 5, 5)
    generated = index.create_case(now=6)
    # Number 2 would be named C-000002, which the adopted case holds.
    assert (generated.case_id, generated.number) == ("C-000003", 3)
    helpdesk = index.create_case(now=7, case_id="HD-77")
    assert (helpdesk.case_id, helpdesk.number) == ("HD-77", 4)
    assert index.create_case(now=8).case_id == "C-000005"
    assert index.get_case("C-000002") == adopted


def test_adopting_twice_returns_the_existing_record(index: CaseIndex) -> None:
    first = index.create_case(now=10, case_id="HD-1", queue="a")
    again = index.create_case(now=99, case_id="HD-1", queue="b")
    assert again == first
    generated = index.create_case(now=11)
    assert index.create_case(now=99, case_id=generated.case_id) == generated
    assert index.create_case(now=12).number == 3


def test_adopting_an_invalid_id_is_refused(index: CaseIndex) -> None:
    with pytest.raises(ValueError):
        index.create_case(now=1, case_id="no spaces allowed")
    assert index.create_case(now=1).number == 1


def test_record_message_round_trip_and_overwrite(index: CaseIndex) -> None:
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    index.record_message("<m1@example.org>", a.case_id, now=2)
    assert index.case_for_message("<m1@example.org>") == a.case_id
    index.record_message("<m1@example.org>", a.case_id, now=3)
    assert index.case_for_message("<m1@example.org>") == a.case_id
    index.record_message("<m1@example.org>", b.case_id, now=4)
    assert index.case_for_message("<m1@example.org>") == b.case_id
    assert index.case_for_message("<m2@example.org>") is None


def test_long_message_ids(index: CaseIndex) -> None:
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    # Same first 1,999 characters: hashing must cover the whole id.
    long_a = "<" + "x" * 1990 + "a@example.org>"
    long_b = "<" + "x" * 1990 + "b@example.org>"
    assert len(long_a) > 2000
    index.record_message(long_a, a.case_id, now=2)
    index.record_message(long_b, b.case_id, now=2)
    assert index.case_for_message(long_a) == a.case_id
    assert index.case_for_message(long_b) == b.case_id
    assert index.case_for_message(long_a[:400]) is None


def test_eight_bit_message_ids(index: CaseIndex) -> None:
    raw = b"<caf\xe9@example.org>".decode("utf-8", "surrogateescape")
    utf8 = "<café@example.org>"
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    index.record_message(raw, a.case_id, now=2)
    index.record_message(utf8, b.case_id, now=2)
    assert index.case_for_message(raw) == a.case_id
    assert index.case_for_message(utf8) == b.case_id


def test_update_case_persists_and_unknown_raises(index: CaseIndex) -> None:
    record = index.create_case(now=1, queue="support")
    changed = replace(record, state=CaseState.RESOLVED, queue="billing", updated=50)
    index.update_case(changed)
    assert index.get_case(record.case_id) == changed
    with pytest.raises(KeyError):
        index.update_case(replace(record, case_id="C-999999"))
    assert index.get_case("C-999999") is None


def test_closed_index_refuses_calls(index: CaseIndex) -> None:
    index.create_case(now=1)
    index.close()
    with pytest.raises(CaseIndexError):
        index.get_case("C-000001")
    with pytest.raises(CaseIndexError):
        index.create_case(now=1)


def test_concurrent_threads_never_share_a_number(index: CaseIndex) -> None:
    results: list[list[CaseRecord]] = [[] for _ in range(50)]

    def work(slot: list[CaseRecord]) -> None:
        slot.extend(index.create_case(now=1) for _ in range(20))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    records = [r for slot in results for r in slot]
    assert sorted(r.number for r in records) == list(range(1, 1001))
    assert len({r.case_id for r in records}) == 1000


# --- shared encodings ------------------------------------------------------------------------


def test_message_keys_stay_under_the_lmdb_limit() -> None:
    assert keys.message_key("<a@b>") == b"<a@b>"
    assert keys.message_key("<" + "x" * 398 + ">") == b"<" + b"x" * 398 + b">"
    hashed = keys.message_key("<" + "x" * 399 + ">")
    assert len(hashed) == 33 and hashed.startswith(keys.HASHED_MARKER)
    # A plain id starting with the marker byte can never pose as a hashed key.
    assert len(keys.message_key("\x00" * 33)) == 33
    assert keys.message_key("\x00" * 33) != b"\x00" * 33
    with pytest.raises(ValueError):
        keys.message_key("")


def test_message_records_carry_the_time() -> None:
    assert keys.decode_message(keys.encode_message("C-000001", 1_700_000_000)) == (
        1_700_000_000,
        "C-000001",
    )
    assert keys.encode_message("C-1", 5)[:4] == b"\x00\x00\x00\x05"


# --- LMDB only ------------------------------------------------------------------------------


def test_lmdb_persists_across_reopen(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    first = index.create_case(now=1, queue="q")
    index.create_case(now=2, case_id="HD-5")
    index.record_message("<m@example.org>", first.case_id, now=3)
    index.close()

    index = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    try:
        assert index.get_case(first.case_id) == first
        assert index.case_for_message("<m@example.org>") == first.case_id
        assert index.create_case(now=4).number == 3
    finally:
        index.close()


def test_lmdb_two_objects_on_one_path_share_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    a = LmdbIndex(path, MAP_SIZE)
    b = LmdbIndex(str(path) + "/", MAP_SIZE)  # another spelling of the same directory
    made = a.create_case(now=1)
    assert b.get_case(made.case_id) == made
    assert b.create_case(now=1).number == 2
    a.close()
    assert b.create_case(now=1).number == 3  # a's close left b's env open
    b.close()
    # The last close really closed it: py-lmdb refuses a second open in one process.
    env = lmdb.open(str(path), max_dbs=4)
    env.close()


def test_lmdb_second_process_never_duplicates_a_number(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    per_side = 300
    child_code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(MILTER_DIR)!r})\n"
        "from casethread.index import LmdbIndex\n"
        f"index = LmdbIndex({str(path)!r}, {MAP_SIZE})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        f"numbers = [index.create_case(now=1).number for _ in range({per_side})]\n"
        "index.close()\n"
        "print(json.dumps(numbers), flush=True)\n"
    )
    index = LmdbIndex(path, MAP_SIZE)
    child = subprocess.Popen(
        [sys.executable, "-c", child_code],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        mine = [index.create_case(now=1).number for _ in range(per_side)]
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        index.close()
    assert child.returncode == 0
    theirs = json.loads(out)
    assert sorted(mine + theirs) == list(range(1, 2 * per_side + 1))


def test_lmdb_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    index = LmdbIndex(path, MAP_SIZE)
    index.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / "data.mdb").stat().st_mode) == 0o600
    assert stat.S_IMODE((path / "lock.mdb").stat().st_mode) == 0o600


def test_lmdb_full_map_raises_index_full(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "tiny", 64 << 10)
    try:
        first = index.create_case(now=1)
        with pytest.raises(IndexFull, match=r"index\.map_size"):
            for n in range(100_000):
                index.record_message(f"<{n}.{'x' * 200}@example.org>", first.case_id, now=1)
        # The failed write rolled back; the index stays readable.
        assert index.get_case(first.case_id) == first
    finally:
        index.close()


@pytest.mark.parametrize("where", ["missing/idx", "file/idx"])
def test_lmdb_unopenable_path_raises_unavailable(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(IndexUnavailable, match=str(tmp_path)):
        LmdbIndex(tmp_path / where, MAP_SIZE)


def test_lmdb_corrupt_file_raises_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"garbage " * 4096)
    with pytest.raises(IndexUnavailable, match="idx"):
        LmdbIndex(path, MAP_SIZE)


def test_lmdb_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    LmdbIndex(path, MAP_SIZE).close()
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(META_SCHEMA, b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaMismatch, match="99"):
        LmdbIndex(path, MAP_SIZE)
    # The refused env was closed, not left registered.
    lmdb.open(str(path), max_dbs=4).close()


def test_open_index_uses_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        index=IndexSettings(path=str(tmp_path / "idx"), map_size=1 << 20),
        cases=CaseSettings(id_prefix="T-", id_digits=3),
    )
    index = open_index(settings)
    try:
        assert isinstance(index, LmdbIndex)
        assert index.create_case(now=1).case_id == "T-001"
    finally:
        index.close()
    assert os.path.exists(tmp_path / "idx" / "data.mdb")
