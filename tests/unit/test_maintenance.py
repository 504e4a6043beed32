"""Index operations (stats, backup, prune, export/import) and automatic map growth, on real
LMDB indexes in tmp_path through the maintenance API."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import lmdb
import pytest

from casethread.core.model import Alias, AliasHit, AliasKind, CaseState, CounterBump
from casethread.core.store import Expect, StaleDecision
from casethread.index import (
    CaseIndexError,
    IndexFull,
    LmdbIndex,
    maintenance,
)
from casethread.index import keys as index_keys
from casethread.index.lmdb_env import SCHEMA_VERSION, Gate
from casethread.index.maintenance import BadImport, MaintenanceError

from ..helpers.index_writes import record_message

MAP_SIZE = 1 << 24
MiB = 1 << 20
DAY = 86400
NOW = 1_800_000_000
OLD = NOW - 400 * DAY  # past a one-year retention
RECENT = NOW - 10 * DAY
WINDOW = 3600
LONG_KEY = "<" + "l" * 600 + "@example.org>"  # over LMDB's key limit in clear
RAW_KEY = "<caf\udce9@example.org>"  # a raw 8-bit byte (surrogateescape), not UTF-8


def dump(path: Path) -> dict[str, dict[bytes, bytes]]:
    """Every key and value of every database (an index already open here is shared)."""
    index = LmdbIndex(path, MAP_SIZE)
    try:
        with index.reading() as (txn, db):
            return {
                name: dict(txn.cursor(db=getattr(db, name)).iternext())
                for name in ("aliases", "cases", "numbers", "counters", "meta")
            }
    finally:
        index.close()


def fill(index: LmdbIndex) -> dict[str, Any]:
    """Six cases with aliases of every kind, old and recent, and flood counters."""
    cases = [index.create_case(now=OLD, queue="support") for _ in range(5)]
    adopted = index.create_case(now=RECENT, case_id="HD-77", queue="billing")
    index.modify_case(cases[1].case_id, lambda c: replace(
        c, state=CaseState.RESOLVED, updated=RECENT, state_changed=RECENT,
        parent=cases[0].case_id, followup=cases[3].case_id, thread_root="ab" * 22))
    index.modify_case(cases[2].case_id, lambda c: replace(
        c, state=CaseState.CLOSED, updated=RECENT, state_changed=RECENT,
        merged_into=cases[3].case_id, children=(cases[4].case_id,)))
    for n, case in enumerate([*cases, adopted]):
        cid = case.case_id
        index.record([
            Alias(AliasKind.MESSAGE, f"<old-{n}@example.org>", cid),
            Alias(AliasKind.SUBJECT, f"old subject {n}", cid),
            Alias(AliasKind.THREAD_ROOT, f"{n:02x}" * 22, cid),
            Alias(AliasKind.EXTERNAL, f"servicenow:INC{n:07d}", cid),
            Alias(AliasKind.PARTICIPANT, f"{cid} customer{n}@example.org", cid),
        ], now=OLD)
        index.record([
            Alias(AliasKind.MESSAGE, f"<new-{n}@example.org>", cid),
            Alias(AliasKind.SUBJECT, f"new subject {n}", cid),
        ], now=RECENT)
    index.record([Alias(AliasKind.MESSAGE, LONG_KEY, cases[0].case_id),
                  Alias(AliasKind.MESSAGE, RAW_KEY, cases[1].case_id)], now=RECENT)
    busy = CounterBump("flood busy@example.org", WINDOW)
    index.record((), OLD, [CounterBump("flood old@example.org", WINDOW)])
    index.record((), NOW - 60, [busy])
    index.record((), NOW - 30, [busy])
    return {"cases": [*cases, adopted]}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LmdbIndex]:
    opened = LmdbIndex(tmp_path / "index", MAP_SIZE)
    fill(opened)
    yield opened
    opened.close()


LOOKUPS = [
    (AliasKind.MESSAGE, "<old-0@example.org>"),
    (AliasKind.MESSAGE, "<new-5@example.org>"),
    (AliasKind.MESSAGE, LONG_KEY),
    (AliasKind.MESSAGE, RAW_KEY),
    (AliasKind.SUBJECT, "new subject 2"),
    (AliasKind.THREAD_ROOT, "03" * 22),
    (AliasKind.EXTERNAL, "servicenow:INC0000004"),
    (AliasKind.PARTICIPANT, "HD-77 customer5@example.org"),
]


def lookups(index: LmdbIndex) -> list[Any]:
    found: list[Any] = [index.find(kind, key) for kind, key in LOOKUPS]
    found += [index.get_case(cid) for cid in ("C-000001", "C-000003", "HD-77")]
    found += [index.case_for_number(n) for n in (1, 6, 7)]
    found += [index.peek_counter(k) for k in ("flood busy@example.org", "flood old@example.org")]
    found.append(index.last_number())
    return found


# --- stats -----------------------------------------------------------------------------------


def test_stats_counts_every_kind_and_the_map(index: LmdbIndex) -> None:
    data = maintenance.stats(index)
    assert data["schema"] == SCHEMA_VERSION == 2
    assert data["last_number"] == 6
    assert data["cases"] == data["numbers"] == 6
    assert data["aliases"] == {
        "message": 14, "thread-root": 6, "external": 6, "subject": 12, "participant": 6,
    }
    assert data["aliases_total"] == 44
    assert data["counters"] == 2
    assert data["file_bytes"] == (Path(index.path) / "data.mdb").stat().st_size > 0
    assert data["map_size"] == MAP_SIZE
    assert data["map_max_size"] == 64 << 30
    assert 0 < data["map_used_bytes"] <= data["file_bytes"]
    assert data["map_used_percent"] == round(100 * data["map_used_bytes"] / MAP_SIZE, 1)
    assert 0 < data["live_bytes"] <= data["map_used_bytes"]
    assert data["max_readers"] == 512
    assert data["readers_active"] == 0  # our own snapshot has ended
    text = maintenance.format_stats(data)
    assert "aliases: 44 (message 14, thread-root 6" in text
    assert "last case number: 6" in text


def test_stats_sees_an_open_reader(index: LmdbIndex) -> None:
    with index.reading():
        # A read transaction of this process holds a slot while stats looks.
        assert maintenance.stats(index)["readers_active"] >= 1


# --- backup ----------------------------------------------------------------------------------


def test_backup_is_a_private_copy_with_the_same_records(index: LmdbIndex, tmp_path: Path) -> None:
    key = Path(index.path) / "token.key"
    key.write_text("id: 1\nkey: " + "ab" * 32 + "\n")
    key.chmod(0o644)  # whatever the source mode, the copy is private
    result = maintenance.backup(index, tmp_path / "backup", [key])
    dest = tmp_path / "backup"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "data.mdb").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "token.key").stat().st_mode) == 0o600
    assert (dest / "token.key").read_bytes() == key.read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["data.mdb", "token.key"]
    assert result.copied == (str(dest / "token.key"),)
    assert result.counts == maintenance.record_counts(index)
    copy = LmdbIndex(dest, MAP_SIZE)
    try:
        assert lookups(copy) == lookups(index)
    finally:
        copy.close()
    assert dump(dest) == dump(Path(index.path))


def test_backup_is_compacted(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "index", MAP_SIZE)
    try:
        case = index.create_case(now=NOW)
        index.record([Alias(AliasKind.MESSAGE, f"<{n}@x>", case.case_id)
                      for n in range(5000)], now=OLD)
        maintenance.prune(index, 365 * DAY, WINDOW, now=NOW)  # frees most pages
        result = maintenance.backup(index, tmp_path / "b")
        assert result.data_bytes < (Path(index.path) / "data.mdb").stat().st_size / 4
    finally:
        index.close()


def test_backup_into_an_existing_empty_directory(index: LmdbIndex, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir(mode=0o755)
    maintenance.backup(index, dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert (dest / "data.mdb").exists()


@pytest.mark.parametrize("what", ["non-empty", "file"])
def test_backup_refuses_a_used_destination(
    index: LmdbIndex, tmp_path: Path, what: str
) -> None:
    dest = tmp_path / "dest"
    if what == "file":
        dest.write_text("x")
    else:
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    with pytest.raises(MaintenanceError, match="dest"):
        maintenance.backup(index, dest)
    if what == "non-empty":
        assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    else:
        assert dest.read_text() == "x"


def test_a_failed_backup_leaves_nothing(index: LmdbIndex, tmp_path: Path) -> None:
    with pytest.raises(CaseIndexError, match=r"backup to .*/b failed, nothing kept: "
                       r".*/no-such\.key: No such file or directory$"):
        maintenance.backup(index, tmp_path / "b", [tmp_path / "no-such.key"])
    assert not (tmp_path / "b").exists()


def test_backup_while_another_thread_writes(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "index", 1 * MiB)  # small: the writer also grows the map
    stop = threading.Event()
    made = [0]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            n = 0
            while not stop.is_set() and n < 200_000:
                case = index.create_case(now=NOW)
                index.record([Alias(AliasKind.MESSAGE, f"<{n}.{i}@x>", case.case_id)
                               for i in range(20)], now=NOW)
                n += 1
                made[0] = n
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while made[0] < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        copies = []
        for n in range(3):
            before = made[0]
            maintenance.backup(index, tmp_path / f"b{n}")
            copies.append((before, made[0]))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert not errors, errors
    assert made[0] > copies[-1][0]  # the writer kept going during the backups
    for n, (before, _after) in enumerate(copies):
        copy = LmdbIndex(tmp_path / f"b{n}", MAP_SIZE)
        try:
            snapshot = dump(tmp_path / f"b{n}")
            cases = snapshot["cases"]
            assert len(cases) >= before
            # Consistent: every alias names a case the copy holds, every case its number.
            for value in snapshot["aliases"].values():
                assert index_keys.decode_alias(value).case_id.encode() in cases
            assert len(snapshot["numbers"]) == len(cases)
            assert copy.last_number() == len(cases)
        finally:
            copy.close()
    index.close()


# --- prune -----------------------------------------------------------------------------------


def test_prune_drops_old_messages_and_subjects_and_expired_counters(index: LmdbIndex) -> None:
    before = lookups(index)
    result = maintenance.prune(index, 365 * DAY, WINDOW, now=NOW, batch=3)
    assert result.deleted == {"message": 6, "subject": 6, "counter": 1}
    assert result.kept == {"message": 8, "subject": 6, "counter": 1}
    assert result.transactions > 3  # batches of 3 deletes: several per kind
    counts = maintenance.record_counts(index)
    assert counts["aliases"] == {
        "message": 8, "thread-root": 6, "external": 6, "subject": 6, "participant": 6,
    }
    assert counts["cases"] == counts["numbers"] == 6
    assert counts["last_number"] == 6
    assert counts["counters"] == 1
    assert index.find(AliasKind.MESSAGE, "<old-0@example.org>") is None
    assert index.find(AliasKind.SUBJECT, "old subject 1") is None
    assert index.peek_counter("flood old@example.org") is None
    # Cases and their anchors survive, and so does everything recent.
    expected = list(before)
    expected[0] = None  # <old-0@example.org>
    expected[15] = None  # the expired counter
    assert lookups(index) == expected
    assert before[0] is not None and before[15] is not None
    assert index.case_for_number(7) is None and index.case_for_number(6) == "HD-77"


def test_prune_dry_run_counts_the_same_and_changes_nothing(index: LmdbIndex) -> None:
    before = dump(Path(index.path))
    dry = maintenance.prune(index, 365 * DAY, WINDOW, now=NOW, dry_run=True)
    assert dump(Path(index.path)) == before
    real = maintenance.prune(index, 365 * DAY, WINDOW, now=NOW)
    assert (dry.deleted, dry.kept) == (real.deleted, real.kept)
    assert dry.as_dict()["dry_run"] and not real.as_dict()["dry_run"]
    assert real.as_dict()["deleted_total"] == 13


def test_prune_keeps_a_record_refreshed_since(index: LmdbIndex) -> None:
    record_message(index, "<old-3@example.org>", "C-000004", now=RECENT)
    maintenance.prune(index, 365 * DAY, WINDOW, now=NOW)
    hit = index.find(AliasKind.MESSAGE, "<old-3@example.org>")
    assert hit is not None and hit.recorded == RECENT


def test_stats_after_a_prune_show_the_high_water_mark_and_the_live_data(tmp_path: Path) -> None:
    """A prune frees pages but the file keeps its size: `used` stays, `live` falls, and
    only a compacted copy (backup) brings `used` down."""
    index = LmdbIndex(tmp_path / "index", MAP_SIZE)
    try:
        case = index.create_case(now=OLD)
        index.record([Alias(AliasKind.MESSAGE, f"<old-{n}@example.org>", case.case_id)
                      for n in range(20_000)], now=OLD)
        before = maintenance.stats(index)
        maintenance.prune(index, 365 * DAY, WINDOW, now=NOW)
        after = maintenance.stats(index)
        assert after["map_used_bytes"] >= before["map_used_bytes"]  # copy-on-write
        assert after["live_bytes"] < before["live_bytes"] / 10
        assert after["live_percent"] == round(100 * after["live_bytes"] / MAP_SIZE, 1)
        assert (f"({after['map_used_percent']}%, high-water mark), live data "
                f"{maintenance.human_size(after['live_bytes'])} ({after['live_percent']}%)"
                ) in maintenance.format_stats(after)
        done = maintenance.backup(index, tmp_path / "backup")
        assert done.data_bytes < after["map_used_bytes"] / 10
    finally:
        index.close()


@pytest.mark.parametrize("batch", [1, 2, 10])
def test_prune_deletes_up_to_the_last_entry_of_a_table(tmp_path: Path, batch: int) -> None:
    index = LmdbIndex(tmp_path / "index", MAP_SIZE)
    try:
        # Every counter expired: the last key of the table goes too.
        index.record((), OLD, [CounterBump(f"flood {n}@x", WINDOW) for n in range(3)])
        case = index.create_case(now=OLD)
        record_message(index, "<zzz-last@x>", case.case_id, now=OLD)  # the last alias key
        result = maintenance.prune(index, 365 * DAY, WINDOW, now=NOW, batch=batch)
        assert result.deleted == {"message": 1, "subject": 0, "counter": 3}
        assert maintenance.record_counts(index)["counters"] == 0
        assert maintenance.record_counts(index)["aliases_total"] == 0
    finally:
        index.close()


def test_prune_in_many_batches_deletes_everything_expired(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "index", MAP_SIZE)
    try:
        case = index.create_case(now=OLD)
        for part in range(5):
            index.record([Alias(AliasKind.MESSAGE, f"<{part}.{n}@x>", case.case_id)
                          for n in range(1000)], now=OLD if part % 2 else RECENT)
        result = maintenance.prune(index, 365 * DAY, WINDOW, now=NOW, batch=250)
        assert result.deleted["message"] == 2000
        assert result.kept["message"] == 3000
        assert result.transactions >= 8 + 2
        assert maintenance.record_counts(index)["aliases"]["message"] == 3000
        assert index.find(AliasKind.MESSAGE, "<1.999@x>") is None
        assert index.find(AliasKind.MESSAGE, "<4.999@x>") is not None
    finally:
        index.close()


# --- export / import -------------------------------------------------------------------------


def export_bytes(index: LmdbIndex, kinds: list[str] | None = None) -> bytes:
    out = io.BytesIO()
    maintenance.export(index, out, kinds)
    return out.getvalue()


def source(data: bytes) -> Any:
    return lambda: io.BytesIO(data)


def test_export_import_reproduces_the_index_byte_for_byte(
    index: LmdbIndex, tmp_path: Path
) -> None:
    data = export_bytes(index)
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[0] == {"type": "meta", "schema": 2, "counter": 6}
    by_type: dict[str, int] = {}
    for line in lines:
        by_type[line["type"]] = by_type.get(line["type"], 0) + 1
    assert by_type == {"meta": 1, "case": 6, "alias": 44, "counter": 2}
    # Every key exports as the digest the index holds: 32 hex digits for aliases, 64 (SHA-256)
    # for counters; no key in clear.
    assert {(line["type"], len(line["key"]["hash"])) for line in lines if "key" in line} == {
        ("alias", 32), ("counter", 64)}
    for clear in ("old-0@example.org", "old subject", "servicenow", "customer5", "lll"):
        assert clear.encode() not in data
    target = LmdbIndex(tmp_path / "imported", MAP_SIZE)
    try:
        result = maintenance.import_lines(target, source(data))
        assert result.written == 6 + 44 + 2 and result.kept == 0
        assert result.last_number == 6
        assert maintenance.record_counts(target) == maintenance.record_counts(index)
        assert lookups(target) == lookups(index)
    finally:
        target.close()
    assert dump(tmp_path / "imported") == dump(Path(index.path))


def schema_1_line(kind: AliasKind, key: str, case: str, recorded: int) -> dict[str, Any]:
    """An alias line as schema 1 exported it: the key in clear, `{"bytes": hex}` when not
    UTF-8, and the full SHA-256 for a participant or a key over 400 bytes."""
    raw = key.encode("utf-8", "surrogateescape")
    exported: Any
    if kind is AliasKind.PARTICIPANT or len(raw) > 400:
        exported = {"hash": hashlib.sha256(raw).hexdigest()}
    else:
        try:
            exported = raw.decode("utf-8")
        except UnicodeDecodeError:
            exported = {"bytes": raw.hex()}
    return {"type": "alias", "kind": kind.value, "key": exported, "case": case,
            "recorded": recorded}


def test_a_schema_1_export_imports_re_keyed(index: LmdbIndex, tmp_path: Path) -> None:
    """The upgrade path: an export made by the version before, imported into a new index."""
    lines = [json.loads(line) for line in export_bytes(index, ["case", "counter"]).splitlines()]
    lines[0]["schema"] = 1
    old = [schema_1_line(kind, key, hit.case_id, hit.recorded)
           for kind, key in LOOKUPS if (hit := index.find(kind, key)) is not None]
    assert len(old) == len(LOOKUPS)
    assert {type(line["key"]) for line in old} == {str, dict}
    assert any("bytes" in line["key"] for line in old if isinstance(line["key"], dict))
    data = b"".join(json.dumps(line).encode() + b"\n" for line in [*lines, *old])
    target = LmdbIndex(tmp_path / "upgraded", MAP_SIZE)
    try:
        maintenance.import_lines(target, source(data))
        assert lookups(target) == lookups(index)
        assert maintenance.record_counts(target)["aliases_total"] == len(LOOKUPS)
        # Exported again, it is a schema 2 export like any other.
        again = [json.loads(line) for line in export_bytes(target).splitlines()]
        assert again[0]["schema"] == 2
        assert all(len(line["key"]["hash"]) == 32 for line in again if line["type"] == "alias")
    finally:
        target.close()


def test_export_kinds_filter(index: LmdbIndex) -> None:
    lines = [json.loads(line) for line in export_bytes(index, ["case", "thread-root"])
             .splitlines()]
    assert lines[0]["type"] == "meta"
    assert {line["type"] for line in lines[1:]} == {"case", "alias"}
    assert {line["kind"] for line in lines if line["type"] == "alias"} == {"t"}
    assert len(lines) == 1 + 6 + 6
    with pytest.raises(ValueError, match="bogus"):
        export_bytes(index, ["bogus"])


def test_import_refuses_a_non_empty_index_unless_merge(
    index: LmdbIndex, tmp_path: Path
) -> None:
    data = export_bytes(index)
    target = LmdbIndex(tmp_path / "other", MAP_SIZE)
    try:
        # C-000001 as in the file (opened at OLD), but changed since: newer here.
        target.create_case(now=OLD)
        target.modify_case("C-000001", lambda c: replace(c, updated=NOW))
        before = dump(tmp_path / "other")
        with pytest.raises(MaintenanceError, match="not empty"):
            maintenance.import_lines(target, source(data))
        assert dump(tmp_path / "other") == before
        result = maintenance.import_lines(target, source(data), merge=True)
        # The existing C-000001 is newer (updated NOW): it stays; everything else comes in.
        assert result.kept == 1 and result.written == 6 + 44 + 2 - 1
        stored = target.get_case("C-000001")
        assert stored is not None and stored.updated == NOW
        assert maintenance.record_counts(target)["aliases_total"] == 44
        assert target.last_number() == 6
    finally:
        target.close()


def test_merge_keeps_the_newer_alias(index: LmdbIndex, tmp_path: Path) -> None:
    data = export_bytes(index)
    target = LmdbIndex(tmp_path / "other", MAP_SIZE)
    try:
        maintenance.import_lines(target, source(data))
        record_message(target, "<old-1@example.org>", "C-000005", now=NOW)  # newer here
        record_message(target, "<new-1@example.org>", "C-000005", now=OLD - 5)  # older here
        result = maintenance.import_lines(target, source(data), merge=True)
        assert result.written == 1
        assert target.find(AliasKind.MESSAGE, "<old-1@example.org>") == (
            AliasHit("C-000005", NOW))
        assert target.find(AliasKind.MESSAGE, "<new-1@example.org>") == (
            AliasHit("C-000002", RECENT))
    finally:
        target.close()


@pytest.mark.parametrize(
    ("case_id", "message"),
    [
        # Holds number 1, which the file's C-000001 has.
        ("OTHER-1", "number 1 is OTHER-1 here"),
        # Another index's C-000001 (a second MX's, a fresh index beside a restored one) is
        # another case: merging must not pour one customer's mail into another's case.
        (None, r"C-000001 was opened at .* two different cases"),
    ],
)
def test_merge_refuses_a_clash(index: LmdbIndex, tmp_path: Path, case_id: str | None,
                               message: str) -> None:
    data = export_bytes(index)
    target = LmdbIndex(tmp_path / "other", MAP_SIZE)
    try:
        target.create_case(now=NOW, case_id=case_id)  # opened at NOW, the file's at OLD
        before = dump(tmp_path / "other")
        with pytest.raises(MaintenanceError, match=message):
            maintenance.import_lines(target, source(data), merge=True)
        assert dump(tmp_path / "other") == before
    finally:
        target.close()


@pytest.mark.parametrize(
    ("roots", "refused"),
    [
        # Opened in the same second on two indexes: only their Outlook roots tell them apart.
        (("ab" * 22, "cd" * 22), True),
        # One side without a root (a root is set when a case opens): nothing to compare.
        (("ab" * 22, None), False),
        (("ab" * 22, "ab" * 22), False),
    ],
)
def test_merge_tells_cases_of_one_second_apart_by_their_outlook_root(
    tmp_path: Path, roots: tuple[str | None, str | None], refused: bool
) -> None:
    here, there = (LmdbIndex(tmp_path / name, MAP_SIZE) for name in ("here", "there"))
    try:
        for index, root in zip((here, there), roots, strict=True):
            index.create_case(now=NOW, thread_root=root)
        data = export_bytes(there)
        before = dump(tmp_path / "here")
        if refused:
            with pytest.raises(MaintenanceError, match=r"C-000001 has Outlook root .* two "
                               r"different cases"):
                maintenance.import_lines(here, source(data), merge=True)
            assert dump(tmp_path / "here") == before
        else:
            maintenance.import_lines(here, source(data), merge=True)
            assert maintenance.record_counts(here)["cases"] == 1
    finally:
        here.close()
        there.close()


META = b'{"type":"meta","schema":1,"counter":0}\n'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (b"not json\n", "line 2"),
        (b'{"type":"case","id":"C 1","number":1}\n', "line 2: 'id' must be a case id"),
        (b'{"type":"ticket"}\n', "line 2: unknown record type 'ticket'"),
        (b'{"type":"alias","kind":"z","key":"k","case":"C-1","recorded":1}\n',
         "unknown alias kind"),
        (b'{"type":"alias","kind":"p","key":{"hash":"abcd"},"case":"C-1","recorded":1}\n',
         "16 or 32 bytes"),
        (b'{"type":"counter","key":{"hash":"' + b"00" * 16 + b'"},"start":1,"count":1}\n',
         "64 hex digits"),
        (b'{"type":"alias","kind":"m","key":"k","case":"C-1","recorded":-1}\n', "'recorded'"),
        (b'{"type":"counter","key":{"hash":"' + b"00" * 32 + b'"},"start":1}\n', "'count'"),
        (META, "line 2: a second meta line"),
        (b'{"type":"case","id":"A","number":1,"state":"open","queue":"","created":1,'
         b'"updated":1}\n{"type":"case","id":"B","number":1,"state":"open","queue":"",'
         b'"created":1,"updated":1}\n', "line 3: case number 1 is held by A and B"),
    ],
)
def test_import_refuses_a_malformed_file_and_writes_nothing(
    tmp_path: Path, lines: bytes, message: str
) -> None:
    target = LmdbIndex(tmp_path / "t", MAP_SIZE)
    try:
        good = b'{"type":"alias","kind":"m","key":"<a@b>","case":"C-1","recorded":1}\n'
        with pytest.raises(BadImport, match=message):
            maintenance.import_lines(target, source(META + lines + good))
        assert maintenance.record_counts(target)["aliases_total"] == 0
    finally:
        target.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"type":"case","id":"A","number":1,"state":"open","queue":"","created":1,'
         b'"updated":1}\n', "no meta line"),
        (b'{"type":"meta","schema":3,"counter":0}\n', "schema 3; this casethread imports "
         "schema 1 or 2"),
        (b'{"type":"meta","schema":true,"counter":0}\n', "schema True"),
    ],
)
def test_import_needs_a_meta_line_of_this_schema(tmp_path: Path, data: bytes, message: str) -> None:
    target = LmdbIndex(tmp_path / "t", MAP_SIZE)
    try:
        with pytest.raises(BadImport, match=message):
            maintenance.import_lines(target, source(data))
        assert maintenance.record_counts(target)["cases"] == 0
    finally:
        target.close()


def test_import_hashes_a_hand_written_participant(tmp_path: Path) -> None:
    target = LmdbIndex(tmp_path / "t", MAP_SIZE)
    try:
        data = META + (
            b'{"type":"case","id":"T-9","number":9,"state":"waiting","queue":"q",'
            b'"created":5,"updated":6}\n'
            b'{"type":"alias","kind":"p","key":"T-9 ann@example.org","case":"T-9",'
            b'"recorded":7}\n'
            b'{"type":"counter","key":"flood ann@example.org","start":8,"count":2}\n'
        )
        result = maintenance.import_lines(target, source(data))
        assert result.last_number == 9  # the counter follows the highest number imported
        assert target.find(AliasKind.PARTICIPANT, "T-9 ann@example.org") == (
            AliasHit("T-9", 7))
        assert target.peek_counter("flood ann@example.org") == index_keys.Window(8, 2)
        assert target.case_for_number(9) == "T-9"
        case = target.get_case("T-9")
        assert case is not None and (case.state, case.state_changed) == (CaseState.WAITING, 5)
        # Stored hashed: the address itself is nowhere in the file.
        assert b"ann@example.org" not in (tmp_path / "t" / "data.mdb").read_bytes()
        assert target.create_case(now=9).number == 10
    finally:
        target.close()


# --- map growth ------------------------------------------------------------------------------


def test_map_grows_from_a_tiny_map_and_keeps_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tiny"
    index = LmdbIndex(path, 1 * MiB)
    caplog.set_level(logging.INFO, logger="casethread")
    try:
        case = index.create_case(now=NOW)
        written = 0
        while index.map_info()["map_size"] < 4 * MiB and written < 200_000:
            index.record([Alias(AliasKind.MESSAGE, f"<{written + i}.{'x' * 40}@x>",
                                case.case_id) for i in range(200)], now=NOW)
            written += 200
        grown = index.map_info()["map_size"]
        assert grown >= 4 * MiB  # doubled at least twice, and no IndexFull
    finally:
        index.close()
    lines = [r.getMessage() for r in caplog.records if "map grown" in r.getMessage()]
    assert len(lines) >= 2
    assert "from 1048576 to 2097152 bytes" in lines[0]
    # Reopened with the small configured size: the grown size is kept, the data is all there.
    index = LmdbIndex(path, 1 * MiB)
    try:
        assert index.map_info()["map_size"] == grown
        assert maintenance.record_counts(index)["aliases"]["message"] == written
        assert index.find(AliasKind.MESSAGE, f"<{written - 1}.{'x' * 40}@x>") is not None
        record_message(index, "<after-reopen@x>", case.case_id, now=NOW)
    finally:
        index.close()


def test_a_single_large_write_grows_the_map_as_often_as_it_needs(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "tiny", 1 * MiB)
    try:
        case = index.create_case(now=NOW)
        index.record([Alias(AliasKind.MESSAGE, f"<{i}@x>", case.case_id)
                      for i in range(150_000)], now=NOW)  # ~6 MiB in one transaction
        assert index.map_info()["map_size"] >= 8 * MiB
        assert maintenance.record_counts(index)["aliases"]["message"] == 150_000
    finally:
        index.close()


def test_growth_stops_at_the_ceiling_with_index_full(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "capped", 1 * MiB, max_map_size=2 * MiB)
    try:
        first = index.create_case(now=1)
        full = r"is full \(map_size 2097152 bytes, its growth ceiling\).*index\.max_map_size"
        with pytest.raises(IndexFull, match=full):
            for n in range(100):
                index.record([Alias(AliasKind.MESSAGE, f"<{n}.{i}.{'x' * 100}@x>",
                                    first.case_id) for i in range(500)], now=1)
        assert index.map_info()["map_size"] == 2 * MiB
        # The failed write rolled back; the index stays readable and writable for small writes
        # only as far as space allows.
        assert index.get_case(first.case_id) == first
    finally:
        index.close()


class FakeStatvfs:
    def __init__(self, free: int) -> None:
        self.f_bavail, self.f_frsize = free // 4096, 4096


@pytest.mark.parametrize(
    ("code", "free", "full"),
    [
        (errno.EIO, 0, True),  # what LMDB reports for the short write on a full file system
        (errno.EIO, 1 << 30, False),  # an I/O error with space left is not "full"
        (errno.ENOSPC, 1 << 30, True),
        (errno.EACCES, 0, False),
    ],
)
def test_a_failed_write_on_a_full_disk_is_index_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, free: int, full: bool
) -> None:
    index = LmdbIndex(tmp_path / "i", 1 * MiB)
    try:
        exc = lmdb.Error("mdb_txn_commit: failed")
        setattr(exc, "code", code)  # noqa: B010 (as py-lmdb sets it on its errors)
        monkeypatch.setattr(os, "statvfs", lambda _path: FakeStatvfs(free))

        def fail(_txn: Any, _db: Any) -> None:
            raise exc

        with pytest.raises(CaseIndexError, match="mdb_txn_commit: failed") as raised:
            index.writing(fail)
        assert isinstance(raised.value, IndexFull) is full
        if full:
            assert "the disk is full" in str(raised.value)
        assert index.create_case(now=1).number == 1  # the failed write left no damage
    finally:
        index.close()


def test_growth_while_other_threads_read(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "busy", 1 * MiB)
    case = index.create_case(now=NOW)
    record_message(index, "<anchor@x>", case.case_id, now=NOW)
    stop = threading.Event()
    reads = [0] * 4
    errors: list[BaseException] = []

    def reader(slot: int) -> None:
        try:
            while not stop.is_set():
                assert index.case_for_message("<anchor@x>") == case.case_id
                assert index.get_case(case.case_id) == case
                with index.reading() as (txn, db):  # a longer transaction, too
                    assert txn.stat(db.cases)["entries"] == 1
                with index.snapshot():  # as the engine decides: reads, a write, a read
                    assert index.get_case(case.case_id) == case
                    own = f"<reader{slot}.{reads[slot]}@x>"
                    record_message(index, own, case.case_id, now=NOW)
                    assert index.case_for_message(own) == case.case_id
                reads[slot] += 1
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        started = time.monotonic()
        n = 0
        while index.map_info()["map_size"] < 8 * MiB and time.monotonic() - started < 60:
            index.record([Alias(AliasKind.MESSAGE, f"<{n}.{i}.{'z' * 40}@x>", case.case_id)
                          for i in range(100)], now=NOW)
            n += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a reader deadlocked"
    assert not errors, errors
    assert index.map_info()["map_size"] >= 8 * MiB  # grew three times under the readers
    assert all(count > 0 for count in reads)
    assert index.find(AliasKind.MESSAGE, f"<{n - 1}.99.{'z' * 40}@x>") is not None
    index.close()


CHILD = """
import sys
from casethread.index import LmdbIndex
from casethread.core.model import Alias, AliasKind
index = LmdbIndex(sys.argv[1], 1 << 20)
print(index.map_info()["map_size"], flush=True)
sys.stdin.readline()  # the parent grows the map meanwhile
hit = index.find(AliasKind.MESSAGE, sys.argv[2])
print(hit.case_id if hit else "missing", index.map_info()["map_size"], flush=True)
index.record([Alias(AliasKind.MESSAGE, "<from-child@x>", "C-000001")], now=1)
print("wrote", flush=True)
index.close()
"""


def test_another_process_adopts_a_grown_map(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    index = LmdbIndex(path, 1 * MiB)
    case = index.create_case(now=NOW)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "<last@x>"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert int(child.stdout.readline()) == 1 * MiB
        n = 0
        while index.map_info()["map_size"] < 4 * MiB and n < 2000:
            index.record([Alias(AliasKind.MESSAGE, f"<{n}.{i}.{'q' * 40}@x>", case.case_id)
                          for i in range(100)], now=NOW)
            n += 1
        record_message(index, "<last@x>", case.case_id, now=NOW)
        child.stdin.write("\n")
        child.stdin.flush()
        found, size = child.stdout.readline().split()
        # The child's map was 1 MiB, the data is larger: it took the grown size (MAP_RESIZED).
        assert found == case.case_id
        assert int(size) == index.map_info()["map_size"] >= 4 * MiB
        assert child.stdout.readline().strip() == "wrote"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert index.case_for_message("<from-child@x>") == case.case_id
    index.close()


def test_gate_resize_waits_for_transactions_and_holds_back_new_ones() -> None:
    gate = Gate()
    order: list[str] = []
    gate.enter()  # this thread is inside a transaction
    entered = threading.Event()

    def resizer() -> None:
        entered.set()
        with gate.exclusive():
            order.append("resize")

    def late_reader() -> None:
        gate.enter()
        order.append("late reader")
        gate.leave()

    resize = threading.Thread(target=resizer)
    resize.start()
    entered.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not gate._resizing and time.monotonic() < deadline:
        time.sleep(0.001)
    late = threading.Thread(target=late_reader)
    late.start()
    # A nested transaction of a thread already inside never waits for the pending resize.
    gate.enter()
    gate.leave()
    time.sleep(0.05)
    assert order == []  # the resize waits for us; the late reader waits for the resize
    gate.leave()
    resize.join(timeout=10)
    late.join(timeout=10)
    assert not resize.is_alive() and not late.is_alive()
    assert order == ["resize", "late reader"]


def test_resizing_or_writing_inside_a_read_transaction_is_refused(tmp_path: Path) -> None:
    """Both would wait for the thread's own transaction to end: an error, not a hang."""
    index = LmdbIndex(tmp_path / "i", 1 * MiB)
    try:
        with index.reading() as (_txn, db):
            with pytest.raises(CaseIndexError, match="inside a transaction"):
                db.adopt()
            with pytest.raises(CaseIndexError, match="inside a transaction"):
                index.create_case(now=1)
        assert index.create_case(now=1).number == 1  # fine outside
    finally:
        index.close()


def test_a_failed_write_rolls_back_while_readers_spin(tmp_path: Path) -> None:
    """An aborted write (here: a decision gone stale) drains the gate rather than waiting on
    busy readers inside py-lmdb; it returns promptly and changes nothing."""
    index = LmdbIndex(tmp_path / "i", 1 * MiB)
    case = index.create_case(now=1)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            index.get_case(case.case_id)

    threads = [threading.Thread(target=spin) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        started = time.monotonic()
        stale = Expect(cases=(replace(case, state=CaseState.CLOSED),))
        for _ in range(20):
            with pytest.raises(StaleDecision):
                index.record([Alias(AliasKind.MESSAGE, "<m@x>", case.case_id)], 2,
                             [CounterBump("flood a@x", WINDOW)], expect=stale)
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert index.case_for_message("<m@x>") is None
    assert index.peek_counter("flood a@x") is None
    index.close()


# --- reader slots of dead processes ------------------------------------------------------------

# A reader as `casethread export` is one: casethread's own index, inside its read transaction
# when it is killed. With "open" instead of "read" it only keeps the index open, as a running
# milter does (LMDB resets the reader table when the first process opens it).
CHILD_READER = """
import sys
from casethread.index import LmdbIndex
index = LmdbIndex(sys.argv[1], int(sys.argv[2]))
if sys.argv[3] == "read":
    with index.reading() as (txn, db):
        txn.get(b"blob", db=db.meta)
        print("ready", flush=True)
        sys.stdin.readline()
else:
    print("ready", flush=True)
    sys.stdin.readline()
"""
BLOB = 200 * 1024


@contextmanager
def child_reader(path: Path, map_size: int, mode: str) -> Iterator[int]:
    """A child process with the index open ("open") or inside a read transaction ("read");
    SIGKILLed at the end of the block. Yields its pid."""
    child = subprocess.Popen([sys.executable, "-c", CHILD_READER, str(path), str(map_size),
                              mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        yield child.pid
    finally:
        child.kill()
        child.wait(timeout=30)


def kill_inside_read(path: Path, map_size: int) -> int:
    """SIGKILL a reader inside its read transaction: its slot stays in lock.mdb."""
    with child_reader(path, map_size, "read") as pid:
        return pid


def reader_pids(index: LmdbIndex) -> list[int]:
    with index.reading() as (_txn, db):
        return [int(row.split()[0]) for row in db.env.readers().splitlines()[1:]]


def overwrite(index: LmdbIndex, times: int) -> None:
    """Rewrite one 200 KiB value: each commit frees the previous copy's pages."""
    for n in range(times):
        value = bytes([n % 256]) * BLOB
        index.writing(lambda txn, db, value=value: txn.put(b"blob", value, db=db.meta))


def data_bytes(index: LmdbIndex) -> int:
    return (Path(index.path) / "data.mdb").stat().st_size


def test_opening_the_index_clears_a_dead_readers_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "i"
    LmdbIndex(path, MAP_SIZE).close()
    with child_reader(path, MAP_SIZE, "open"):  # the milter, say: the table is not reset
        dead = kill_inside_read(path, MAP_SIZE)
        caplog.set_level(logging.WARNING, logger="casethread")
        index = LmdbIndex(path, MAP_SIZE)
    try:
        assert dead not in reader_pids(index)
        assert any("cleared 1 stale reader slot" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        data = maintenance.stats(index)
        assert (data["reader_slots_dead"], data["reader_slots_cleared"]) == (0, 1)
        assert "0 of dead processes (1 cleared when this command opened the index)" in (
            maintenance.format_stats(data))
        assert_space_is_reused(index)
    finally:
        index.close()


def assert_space_is_reused(index: LmdbIndex) -> None:
    """The space each overwrite frees is reused: the file stops growing. (With a dead reader's
    snapshot left in place, each of these 40 commits added ~200 KiB.)"""
    overwrite(index, 10)
    size = data_bytes(index)
    overwrite(index, 40)
    assert data_bytes(index) == size


def test_a_running_writer_clears_a_slot_left_after_it_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The milter's case: its index was open long before the reader died."""
    index = LmdbIndex(tmp_path / "i", MAP_SIZE)
    try:
        dead = kill_inside_read(tmp_path / "i", MAP_SIZE)
        data = maintenance.stats(index)  # stats reads the table, nothing clears it yet
        assert data["reader_slots_dead"] == 1 and data["reader_slots_cleared"] == 0
        assert "1 of dead processes" in maintenance.format_stats(data)
        caplog.set_level(logging.WARNING, logger="casethread")
        monkeypatch.setattr("casethread.index.lmdb_env.READER_CHECK_INTERVAL", 0.0)
        overwrite(index, 1)  # the next commit looks (at most once a minute in production)
        assert dead not in reader_pids(index)
        assert maintenance.stats(index)["reader_slots_dead"] == 0
        assert [r.getMessage() for r in caplog.records if "stale reader" in r.getMessage()]
        assert_space_is_reused(index)
    finally:
        index.close()


def test_a_full_map_clears_dead_readers_before_it_grows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A map filled only because a dead reader pins the freed pages is not grown: clearing
    the slot makes the room (the once-a-minute check has not come round yet)."""
    index = LmdbIndex(tmp_path / "i", 1 * MiB)
    try:
        kill_inside_read(tmp_path / "i", 1 * MiB)
        caplog.set_level(logging.INFO, logger="casethread")
        overwrite(index, 40)  # 8 MiB of rewrites through a 1 MiB map
        assert index.map_info()["map_size"] == 1 * MiB
        messages = [r.getMessage() for r in caplog.records]
        assert any("cleared 1 stale reader slot" in m for m in messages)
        assert not any("map grown" in m for m in messages)
    finally:
        index.close()
