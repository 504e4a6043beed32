"""Operations on an LMDB index: stats, backup, prune, export, import, and raising the case
counter after a restore (`raise_counter`).

Behind `casethread stats|backup|prune|export|import` and `casethread case counter`. They are
LMDB-only (not part of the engine's index contract) and run next to a live milter: reads are
one snapshot (a read transaction), writes go in batches of short write transactions so the
milter's writers wait for one batch at most.

Retention (`prune`): MESSAGE and SUBJECT aliases expire. Message-IDs name one mail each and are
the bulk of the index; a reply after the retention period still threads by its token (which
verifies without the index) or its signed References anchor, but no longer by In-Reply-To or
References alone. Subjects matter only within
`inbound.subject_match.window`. Cases, case numbers (tokens resolve through them), thread roots,
external references and participants survive: there are few of them per case and they are how
a late reply still finds its case. Flood counters whose window has passed go too.

Export format, one JSON object per line (UTF-8)::

    {"type":"meta","schema":2,"counter":42}
    {"type":"case","id":"C-000001","number":1,"state":"open","queue":"support",...}
    {"type":"alias","kind":"m","key":{"hash":"9f86d081884c7d659a2feaa0c55ad015"},"case":...}
    {"type":"counter","key":{"hash":"..."},"start":1700000000,"count":3}

The index stores alias keys only as digests (`keys.alias_key`), so the export cannot name the
Message-IDs, subjects or addresses: every alias key exports as `{"hash": hex}` and imports back
byte for byte. To import, a key may also be written in clear (a string, or `{"bytes": hex}` for
one that is not UTF-8): it is hashed as the index would. An export of a schema 1 index (keys in
clear, hashed ones as a 64-digit SHA-256) imports too, re-keyed to schema 2.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import lmdb

from ..core.model import AliasKind, CaseRecord, CaseState, case_fields, is_valid_case_id
from . import keys
from .errors import CaseIndexError, os_problem
from .lmdb_env import META_COUNTER, META_SCHEMA, SCHEMA_VERSION, SharedEnv
from .lmdb_index import LmdbIndex

DAY = 86400
# Deletes (or imported records) per write transaction, and entries one prune transaction may
# scan: a batch holds LMDB's writer lock for some milliseconds, not seconds.
BATCH = 10_000
SCAN_LIMIT = 50_000

KIND_NAMES: dict[AliasKind, str] = {
    AliasKind.MESSAGE: "message",
    AliasKind.THREAD_ROOT: "thread-root",
    AliasKind.EXTERNAL: "external",
    AliasKind.SUBJECT: "subject",
    AliasKind.PARTICIPANT: "participant",
}
EXPIRING_KINDS = (AliasKind.MESSAGE, AliasKind.SUBJECT)
EXPORT_KINDS = ("case", *KIND_NAMES.values(), "counter")

# Exports this version imports: its own, and schema 1 (alias keys re-keyed on import).
IMPORTABLE_SCHEMAS = (1, SCHEMA_VERSION)
_U32_MAX = 0xFFFFFFFF

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]


class MaintenanceError(CaseIndexError):
    """A refused operation: nothing was changed. The message says why."""


# --- stats -----------------------------------------------------------------------------------


def _alias_counts(txn: Txn, db: SharedEnv) -> dict[str, int]:
    counts = dict.fromkeys(KIND_NAMES.values(), 0)
    unknown = 0
    by_byte = {kind.value.encode("ascii")[0]: name for kind, name in KIND_NAMES.items()}
    with txn.cursor(db=db.aliases) as cur:
        for key in cur.iternext(keys=True, values=False):
            name = by_byte.get(key[0]) if key else None
            if name is None:
                unknown += 1
            else:
                counts[name] += 1
    if unknown:
        counts["unknown"] = unknown
    return counts


def record_counts(index: LmdbIndex) -> dict[str, Any]:
    """What the index holds, from one snapshot: equal for an index and its copy or import."""
    with index.reading() as (txn, db):
        return _record_counts(txn, db)


def _record_counts(txn: Txn, db: SharedEnv) -> dict[str, Any]:
    raw_schema = txn.get(META_SCHEMA, db=db.meta)
    raw_counter = txn.get(META_COUNTER, db=db.meta)
    aliases = _alias_counts(txn, db)
    return {
        "schema": int(raw_schema) if raw_schema and raw_schema.isdigit() else None,
        "last_number": 0 if raw_counter is None else int(keys.NUMBER.unpack(raw_counter)[0]),
        "cases": int(txn.stat(db.cases)["entries"]),
        "numbers": int(txn.stat(db.numbers)["entries"]),
        "aliases": aliases,
        "aliases_total": sum(aliases.values()),
        "counters": int(txn.stat(db.counters)["entries"]),
    }


def _reader_slots(env: lmdb.Environment) -> tuple[int, int]:
    """(slots in a read transaction, slots of processes that no longer exist) from LMDB's
    reader table: a header line, then `pid thread txnid` per slot in use ("-": no
    transaction)."""
    active = dead = 0
    for row in env.readers().splitlines()[1:]:
        fields = row.split()
        if len(fields) != 3 or not fields[0].isdigit():
            continue
        active += fields[2] != "-"
        dead += not _alive(int(fields[0]))
    return active, dead


def _alive(pid: int) -> bool:
    # LMDB itself asks the lock on lock.mdb, which also sees through a reused pid; signal 0
    # is what Python has. A process of another user is alive (EPERM).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def stats(index: LmdbIndex) -> dict[str, Any]:
    """Records per kind, schema, last case number, file and map usage, reader slots."""
    with index.reading() as (txn, db):
        result = _record_counts(txn, db)
        # Inside the gate: py-lmdb fails env calls made while another thread resizes the map.
        readers, dead = _reader_slots(db.env)
        readers -= 1  # not counting this snapshot
    info = index.map_info()
    psize = info["psize"]
    data = Path(index.path, "data.mdb").stat()
    used = (info["last_pgno"] + 1) * psize
    live = info["live_pages"] * psize
    result.update(
        index=index.path,
        file_bytes=data.st_size,
        disk_bytes=data.st_blocks * 512,
        map_size=info["map_size"],
        map_max_size=info["max_map_size"],
        # The high-water mark of the file: what must fit in the map. A prune does not lower
        # it (freed pages are reused first); a compacted copy (`backup`) does.
        map_used_bytes=used,
        map_used_percent=round(100.0 * used / info["map_size"], 1),
        # What the data takes now: the pages of the B-trees.
        live_bytes=live,
        live_percent=round(100.0 * live / info["map_size"], 1),
        page_size=psize,
        readers_active=readers,
        reader_slots=info["num_readers"],
        max_readers=info["max_readers"],
        # Slots a dead process left (they keep freed pages from reuse); opening the index
        # clears them (LmdbIndex), so what is left here is what appeared since, and `cleared`
        # says what this process found and cleared.
        reader_slots_dead=dead,
        reader_slots_cleared=db.stale_readers_cleared,
    )
    return result


# --- backup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    dest: str
    data_bytes: int
    copied: tuple[str, ...]  # extra files copied (token keys), as paths in dest
    counts: dict[str, Any]


def _prepare_dest(dest: Path) -> bool:
    """Create `dest` (0700) or accept an existing empty directory; True when created here."""
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        if not dest.is_dir():
            raise MaintenanceError(
                f"backup destination {dest} exists and is not a directory"
            ) from None
        if any(dest.iterdir()):
            raise MaintenanceError(
                f"backup destination {dest} is not empty; give a new directory"
            ) from None
        created = False
    else:
        created = True
    os.chmod(dest, 0o700)  # whatever the umask: the copy and the key are private
    return created


def _create_private(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def _write_private(path: Path, data: bytes) -> None:
    fd = _create_private(path)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def backup(
    index: LmdbIndex, dest: str | os.PathLike[str], extra_files: Sequence[Path] = ()
) -> BackupResult:
    """A consistent, compacted copy of the index in a new directory `dest` (mode 0700).

    Safe while the milter runs: the copy is one read transaction's snapshot, so it never
    blocks writers. `extra_files` (the token key) are copied next to it with mode 0600. The
    copy is then opened as an index and counted, so a backup that reports success opens.
    """
    dest = Path(dest)
    created = _prepare_dest(dest)
    written: list[Path] = []
    try:
        data = dest / "data.mdb"
        fd = _create_private(data)
        written.append(data)
        try:
            index.copy_compacted(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        copied = []
        for src in extra_files:
            target = dest / src.name
            with open(src, "rb") as f:  # a missing key fails here, before anything is made
                secret = f.read()
            written.append(target)
            _write_private(target, secret)
            copied.append(str(target))
        _fsync_dir(dest)
        copy = LmdbIndex(dest, max(data.stat().st_size * 2, 1 << 20))
        try:
            counts = record_counts(copy)
        finally:
            copy.close()
        (dest / "lock.mdb").unlink(missing_ok=True)  # made by that check; LMDB remakes it
    except BaseException as exc:
        # A half-written backup must not look like a good one.
        for path in [*written, dest / "lock.mdb"]:
            path.unlink(missing_ok=True)
        if created:
            os.rmdir(dest)
        if isinstance(exc, OSError):  # the destination's (a full disk), or a key file's
            raise CaseIndexError(
                f"backup to {dest} failed, nothing kept: {os_problem(exc)}") from exc
        raise
    return BackupResult(str(dest), data.stat().st_size, tuple(copied), counts)


# --- prune -----------------------------------------------------------------------------------


@dataclass
class PruneResult:
    cutoff: int
    dry_run: bool
    deleted: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    transactions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "dry_run": self.dry_run,
            "deleted": dict(self.deleted),
            "kept": dict(self.kept),
            "deleted_total": sum(self.deleted.values()),
            "transactions": self.transactions,
        }


Expired = Callable[[bytes], bool]


def _scan(
    txn: Txn, dbi: lmdb._Database, prefix: bytes, resume: bytes, expired: Expired,
    delete: bool, batch: int,
) -> tuple[int, int, bytes | None]:
    """One batch from `resume`: (expired found, entries looked at, where the next batch starts
    or None at the end of `prefix`). Each value is read in the transaction that deletes it,
    so an entry recorded again meanwhile is seen with its new time and kept."""
    found = scanned = 0
    with txn.cursor(db=dbi) as cur:
        if not cur.set_range(resume):
            return found, scanned, None
        while True:
            key = cur.key()
            # b"": past the last entry (after a delete there; LMDB has no empty keys).
            if not key or not key.startswith(prefix):
                return found, scanned, None
            if found >= batch or scanned >= SCAN_LIMIT:
                return found, scanned, bytes(key)
            scanned += 1
            if expired(cur.value()):
                found += 1
                if delete:
                    cur.delete()  # moves to the next entry
                    continue
            if not cur.next():
                return found, scanned, None


def _prune_db(
    index: LmdbIndex, table: Callable[[SharedEnv], lmdb._Database], prefix: bytes,
    expired: Expired, dry_run: bool, batch: int, pause: float,
) -> tuple[int, int, int]:
    found_total = scanned_total = transactions = 0
    resume: bytes | None = prefix
    while resume is not None:
        start = resume

        def step(txn: Txn, db: SharedEnv, start: bytes = start) -> tuple[int, int, bytes | None]:
            return _scan(txn, table(db), prefix, start, expired, not dry_run, batch)

        if dry_run:
            with index.reading() as (txn, db):
                found, scanned, resume = step(txn, db)
        else:
            found, scanned, resume = index.writing(step)
        found_total += found
        scanned_total += scanned
        transactions += 1
        if resume is not None and pause > 0:
            time.sleep(pause)  # let the milter's writers in between batches
    return found_total, scanned_total - found_total, transactions


def prune(
    index: LmdbIndex,
    older_than: int,
    counter_window: int,
    now: int | None = None,
    dry_run: bool = False,
    batch: int = BATCH,
    pause: float = 0.0,
) -> PruneResult:
    """Delete MESSAGE and SUBJECT aliases written more than `older_than` seconds ago (when
    their mail was recorded: mail that later refers to it does not renew them),
    and flood counters whose `counter_window` has passed. Everything else survives."""
    if older_than < 0:
        raise ValueError("older_than must not be negative")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    now = int(time.time()) if now is None else now
    cutoff = now - older_than
    result = PruneResult(cutoff, dry_run)

    def alias_expired(value: bytes) -> bool:
        return keys.decode_alias(value).recorded < cutoff

    for kind in EXPIRING_KINDS:
        found, kept, txns = _prune_db(
            index, lambda db: db.aliases, kind.value.encode("ascii"), alias_expired,
            dry_run, batch, pause,
        )
        result.deleted[KIND_NAMES[kind]] = found
        result.kept[KIND_NAMES[kind]] = kept
        result.transactions += txns

    def counter_expired(value: bytes) -> bool:
        # As keys.bump sees it: a window that far from now restarts at 1 anyway.
        return abs(now - keys.Window.decode(value).start) >= counter_window

    found, kept, txns = _prune_db(
        index, lambda db: db.counters, b"", counter_expired, dry_run, batch, pause
    )
    result.deleted["counter"] = found
    result.kept["counter"] = kept
    result.transactions += txns
    return result


# --- export ----------------------------------------------------------------------------------


def case_json(record: CaseRecord) -> dict[str, Any]:
    return {"type": "case", **case_fields(record, "id")}


def _export_lines(txn: Txn, db: SharedEnv, wanted: Collection[str]) -> Iterator[dict[str, Any]]:
    raw_counter = txn.get(META_COUNTER, db=db.meta)
    counter = 0 if raw_counter is None else int(keys.NUMBER.unpack(raw_counter)[0])
    yield {"type": "meta", "schema": SCHEMA_VERSION, "counter": counter}
    if "case" in wanted:
        with txn.cursor(db=db.cases) as cur:
            for key, value in cur.iternext():
                yield case_json(keys.decode_case(key.decode("ascii"), value))
    kinds = {kind.value.encode("ascii")[0]: kind for kind, n in KIND_NAMES.items() if n in wanted}
    if kinds:
        with txn.cursor(db=db.aliases) as cur:
            for key, value in cur.iternext():
                kind = kinds.get(key[0]) if key else None
                if kind is None:
                    continue
                hit = keys.decode_alias(value)
                yield {
                    "type": "alias", "kind": kind.value, "key": {"hash": key[1:].hex()},
                    "case": hit.case_id, "recorded": hit.recorded,
                }
    if "counter" in wanted:
        with txn.cursor(db=db.counters) as cur:
            for key, value in cur.iternext():
                window = keys.Window.decode(value)
                yield {
                    "type": "counter", "key": {"hash": key.hex()},
                    "start": window.start, "count": window.count,
                }


def export(
    index: LmdbIndex, out: IO[bytes], kinds: Collection[str] | None = None
) -> dict[str, int]:
    """Write the index as JSON lines to `out`, from one snapshot; returns lines per type.

    `kinds` picks among EXPORT_KINDS (default all); the meta line always comes first.
    """
    wanted = set(EXPORT_KINDS if kinds is None else kinds)
    unknown = wanted - set(EXPORT_KINDS)
    if unknown:
        raise ValueError(f"unknown export kinds: {', '.join(sorted(unknown))}")
    counts: dict[str, int] = {}
    with index.reading() as (txn, db):
        for line in _export_lines(txn, db, wanted):
            name = line["type"] if line["type"] != "alias" else KIND_NAMES[AliasKind(line["kind"])]
            counts[name] = counts.get(name, 0) + 1
            out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode())
            out.write(b"\n")
    return counts


# --- import ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Put:
    table: str  # "cases", "aliases", "counters"
    key: bytes
    value: bytes
    age: int  # compared on --merge: the newer record wins
    number: int = 0  # cases: their number, for the numbers table
    # Cases: when opened (to the second) and their Outlook root, if any: with the id, what
    # tells one case from another.
    created: int = 0
    thread_root: str | None = None


class BadImport(MaintenanceError):
    """The import file is malformed; nothing was imported."""


def _int(obj: dict[str, Any], name: str, low: int = 0, high: int = keys.MAX_NUMBER) -> int:
    value = obj.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name!r} must be an integer in {low}..{high}")
    return value


def _case_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_valid_case_id(value):
        raise ValueError(f"{what} must be a case id, not {value!r}")
    return value


def _optional_id(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return None if value is None else _case_id(value, repr(name))


def _parse_case(obj: dict[str, Any]) -> _Put:
    case_id = _case_id(obj.get("id"), "'id'")
    number = _int(obj, "number", 1)
    state = obj.get("state")
    if state not in {s.value for s in CaseState}:
        raise ValueError(f"unknown state {state!r}")
    queue = obj.get("queue")
    if not isinstance(queue, str):
        raise ValueError("'queue' must be a string")
    children = obj.get("children", [])
    if not isinstance(children, list):
        raise ValueError("'children' must be a list")
    created = _int(obj, "created")
    record = CaseRecord(
        case_id, number, CaseState(state), queue, created, _int(obj, "updated"),
        state_changed=_int(obj, "state_changed") if "state_changed" in obj else created,
        parent=_optional_id(obj, "parent"),
        merged_into=_optional_id(obj, "merged_into"),
        children=tuple(_case_id(child, "a child") for child in children),
        followup=_optional_id(obj, "followup"),
        thread_root=_thread_root(obj.get("thread_root")),
        follows=_optional_id(obj, "follows"),
    )
    return _Put("cases", case_id.encode(), keys.encode_case(record), record.updated, number,
                created, record.thread_root)


def _alias_key(kind: AliasKind, key: Any) -> bytes:
    if isinstance(key, str):
        return keys.alias_key(kind, key)
    if isinstance(key, dict) and set(key) == {"hash"}:
        # 32 hex digits as exported, or a schema 1 export's 64 (the full SHA-256).
        return keys.alias_key_from_digest(kind, bytes.fromhex(str(key["hash"])))
    if isinstance(key, dict) and set(key) == {"bytes"}:
        raw = bytes.fromhex(str(key["bytes"]))
        return keys.alias_key(kind, raw.decode("utf-8", "surrogateescape"))
    raise ValueError('an alias key is a string, {"hash": HEX} or {"bytes": HEX}')


def _thread_root(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("'thread_root' must be a string of 44 hex digits")
    keys.check_thread_root(value)
    return value


def _parse_alias(obj: dict[str, Any]) -> _Put:
    try:
        kind = AliasKind(str(obj.get("kind")))
    except ValueError:
        raise ValueError(f"unknown alias kind {obj.get('kind')!r}") from None
    key = _alias_key(kind, obj.get("key"))
    case_id = _case_id(obj.get("case"), "'case'")
    recorded = _int(obj, "recorded", 0, _U32_MAX)
    return _Put("aliases", key, keys.encode_alias(case_id, recorded), recorded)


def _parse_counter(obj: dict[str, Any]) -> _Put:
    key = obj.get("key")
    if isinstance(key, str):
        raw = keys.counter_key(key)
    elif isinstance(key, dict) and set(key) == {"hash"}:
        raw = bytes.fromhex(str(key["hash"]))
        if len(raw) != 32:
            raise ValueError("a hashed counter key is 64 hex digits (SHA-256)")
    else:
        raise ValueError('a counter key is a string or {"hash": HEX}')
    window = keys.Window(_int(obj, "start", 0, _U32_MAX), _int(obj, "count", 0, _U32_MAX))
    return _Put("counters", raw, window.encode(), window.start)


_PARSERS = {"case": _parse_case, "alias": _parse_alias, "counter": _parse_counter}


@dataclass
class CheckedImport:
    """What `check_import` read of an export: its cases, numbers, counter and line counts."""

    counter: int | None = None
    numbers: dict[int, str] = field(default_factory=dict)  # number -> case id
    cases: dict[str, _Put] = field(default_factory=dict)  # case id -> its record
    lines: dict[str, int] = field(default_factory=dict)


def _records(source: Iterable[bytes]) -> Iterator[tuple[int, str, dict[str, Any] | _Put]]:
    """(line number, type, the meta object or a put) for each non-blank line."""
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            kind = obj.get("type")
            if kind == "meta":
                yield number, "meta", obj
                continue
            parse = _PARSERS.get(kind) if isinstance(kind, str) else None
            if parse is None or not isinstance(kind, str):
                raise ValueError(f"unknown record type {kind!r}")
            yield number, kind, parse(obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadImport(f"line {number}: {exc}") from None


def check_import(source: Iterable[bytes]) -> CheckedImport:
    """Read a whole export and check it, without an index: raises BadImport for a malformed
    one, so the caller need not create an index for a file that cannot go in."""
    parsed = CheckedImport()
    for number, kind, item in _records(source):
        parsed.lines[kind] = parsed.lines.get(kind, 0) + 1
        if isinstance(item, dict):
            if parsed.counter is not None:
                raise BadImport(f"line {number}: a second meta line")
            schema = item.get("schema")
            if type(schema) is not int or schema not in IMPORTABLE_SCHEMAS:
                raise BadImport(
                    f"line {number}: exported with index schema {schema!r}; this casethread "
                    f"imports schema {' or '.join(map(str, IMPORTABLE_SCHEMAS))}"
                )
            try:
                parsed.counter = _int(item, "counter")
            except ValueError as exc:
                raise BadImport(f"line {number}: {exc}") from None
        elif item.table == "cases":
            case_id = item.key.decode("ascii")
            if case_id in parsed.cases:
                raise BadImport(f"line {number}: case {case_id} appears twice")
            if item.number in parsed.numbers:
                raise BadImport(
                    f"line {number}: case number {item.number} is held by "
                    f"{parsed.numbers[item.number]} and {case_id}"
                )
            parsed.numbers[item.number] = case_id
            parsed.cases[case_id] = item
    if parsed.counter is None:
        raise BadImport(
            f'no meta line ({{"type":"meta","schema":{SCHEMA_VERSION},...}}): not a casethread '
            "export"
        )
    return parsed


def _is_empty(txn: Txn, db: SharedEnv) -> bool:
    raw = txn.get(META_COUNTER, db=db.meta)
    if raw is not None and keys.NUMBER.unpack(raw)[0] != 0:
        return False
    return all(
        txn.stat(d)["entries"] == 0 for d in (db.cases, db.numbers, db.aliases, db.counters)
    )


def _conflicts(txn: Txn, db: SharedEnv, parsed: CheckedImport) -> list[str]:
    """Merging must not give one number two cases (tokens carry numbers), renumber a case or
    fold two cases that share an id into one: two indexes (a second MX's, one restored next to
    a fresh one) number their cases alike. The opening time (to the second) tells them apart,
    and, when both have one, the customer's Outlook root: two cases opened in the same second
    without different roots are taken for one."""
    found = []
    for case_id, item in parsed.cases.items():
        number = item.number
        stored = txn.get(case_id.encode(), db=db.cases)
        if stored is not None:
            held = keys.decode_case(case_id, stored)
            if held.number != number:
                found.append(f"case {case_id} has number {held.number} here, {number} in the "
                             "file")
                continue
            if held.created != item.created:
                found.append(f"case {case_id} was opened at {held.created} here, at "
                             f"{item.created} in the file: two different cases")
                continue
            if None not in (held.thread_root, item.thread_root) and \
                    held.thread_root != item.thread_root:
                found.append(f"case {case_id} has Outlook root {held.thread_root} here, "
                             f"{item.thread_root} in the file: two different cases")
                continue
        owner = txn.get(keys.NUMBER.pack(number), db=db.numbers)
        if owner is not None and owner.decode("ascii") != case_id:
            found.append(f"case number {number} is {owner.decode('ascii')} here, {case_id} "
                         "in the file")
    return found


def _age(table: str, value: bytes) -> int:
    if table == "cases":
        return int(json.loads(value)["u"])
    if table == "aliases":
        return keys.decode_alias(value).recorded
    return keys.Window.decode(value).start


def _write_batch(txn: Txn, db: SharedEnv, puts: list[_Put]) -> tuple[int, int]:
    written = kept = 0
    tables = {"cases": db.cases, "aliases": db.aliases, "counters": db.counters}
    for put in puts:
        dbi = tables[put.table]
        stored = txn.get(put.key, db=dbi)
        if stored is not None and (stored == put.value or _age(put.table, stored) >= put.age):
            kept += 1
            continue
        txn.put(put.key, put.value, db=dbi)
        if put.table == "cases":
            txn.put(keys.NUMBER.pack(put.number), put.key, db=db.numbers)
        written += 1
    return written, kept


@dataclass(frozen=True)
class ImportResult:
    lines: dict[str, int]
    written: int
    kept: int  # --merge: records the index already held as new or newer
    last_number: int
    transactions: int


def import_lines(
    index: LmdbIndex,
    source: Callable[[], Iterable[bytes]],
    merge: bool = False,
    checked: CheckedImport | None = None,
) -> ImportResult:
    """Import an export. `source` is called twice: the whole file is checked before anything
    is written (unless `checked`, what `check_import` read of it), so a malformed file or a
    refused merge changes nothing.

    Into an empty index the result is byte-identical to the exported one (a schema 1 export
    gets schema 2 alias keys, so the same lookups find the same records). A non-empty index
    is refused unless `merge`: then the newer of two records wins (cases by `updated`, aliases
    by `recorded`, counters by window start), and a case whose id or number would clash with a
    different case refuses the whole import.
    """
    parsed = checked if checked is not None else check_import(source())
    with index.reading() as (txn, db):
        if not _is_empty(txn, db):
            if not merge:
                raise MaintenanceError(
                    f"case index {index.path} is not empty: import into a new index, or "
                    "give --merge"
                )
            clashes = _conflicts(txn, db, parsed)
            if clashes:
                more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
                raise MaintenanceError(
                    "refusing to merge: " + "; ".join(clashes[:5]) + more
                )
    written = kept = transactions = 0
    pending: list[_Put] = []

    def flush() -> None:
        nonlocal written, kept, transactions
        done = index.writing(lambda txn, db: _write_batch(txn, db, pending))
        written, kept, transactions = written + done[0], kept + done[1], transactions + 1
        pending.clear()

    for _number, _kind, item in _records(source()):
        if isinstance(item, _Put):
            pending.append(item)
            if len(pending) >= BATCH:
                flush()
    if pending:
        flush()
    _before, last = raise_counter(index, max([parsed.counter or 0, *parsed.numbers]))
    return ImportResult(dict(parsed.lines), written, kept, last, transactions + 1)


# --- the case counter ------------------------------------------------------------------------


def raise_counter(index: LmdbIndex, at_least: int) -> tuple[int, int]:
    """Make the last case number handed out at least `at_least`, never lower: (before, after).

    After a restore, numbers the lost period handed out must not be handed out again (tokens
    in mail sent then name them). One write transaction: safe while the milter runs.
    """
    def body(txn: Txn, db: SharedEnv) -> tuple[int, int]:
        raw = txn.get(META_COUNTER, db=db.meta)
        current = 0 if raw is None else int(keys.NUMBER.unpack(raw)[0])
        if at_least > current:
            txn.put(META_COUNTER, keys.NUMBER.pack(at_least), db=db.meta)
        return current, max(current, at_least)

    return index.writing(body)


# --- text output -----------------------------------------------------------------------------


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_stats(data: dict[str, Any]) -> str:
    aliases = ", ".join(f"{name} {count}" for name, count in data["aliases"].items())
    return "\n".join([
        f"index: {data['index']}",
        f"schema: {data['schema']}",
        f"last case number: {data['last_number']}",
        f"cases: {data['cases']}",
        f"case numbers: {data['numbers']}",
        f"aliases: {data['aliases_total']} ({aliases})",
        f"counters: {data['counters']}",
        f"data.mdb: {human_size(data['file_bytes'])} "
        f"({human_size(data['disk_bytes'])} on disk)",
        f"map: {human_size(data['map_size'])}, grows up to {human_size(data['map_max_size'])}; "
        f"used {human_size(data['map_used_bytes'])} ({data['map_used_percent']}%, high-water "
        f"mark), live data {human_size(data['live_bytes'])} ({data['live_percent']}%)",
        f"readers: {data['readers_active']} active, {data['reader_slots']} slots used of "
        f"{data['max_readers']}, {data['reader_slots_dead']} of dead processes"
        + (f" ({data['reader_slots_cleared']} cleared when this command opened the index)"
           if data["reader_slots_cleared"] else ""),
    ])
