"""`casethread stats|backup|prune|export|import` as subprocesses: the installed console script
on a real LMDB index in tmp_path, filled by `casethread filter` runs (and, for old records,
through the index API)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from casethread.cli import main
from casethread.core.message import parse_raw
from casethread.core.model import Alias, AliasKind, CounterBump
from casethread.index import LmdbIndex, maintenance
from casethread.index import keys as index_keys
from casethread.index.lmdb_env import LOCK_FILE_SIZE, MAX_READERS

from ..helpers.index_writes import count_event

DAY = 86400


class Cli:
    def __init__(self, exe: Path, tmp_path: Path) -> None:
        self.exe = exe
        self.cwd = tmp_path
        self.index = tmp_path / "index"

    def run(self, *args: str, stdin: bytes = b"", index: Path | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        where = self.index if index is None else index
        return subprocess.run(
            [str(self.exe), *args, "--index", str(where)], input=stdin, capture_output=True,
            cwd=self.cwd, timeout=120, check=False,
        )

    def ok(self, *args: str, index: Path | None = None, stdin: bytes = b"") -> str:
        p = self.run(*args, index=index, stdin=stdin)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p.stdout.decode()

    def json(self, *args: str, index: Path | None = None) -> dict[str, Any]:
        data = json.loads(self.ok(*args, "--json", index=index))
        assert isinstance(data, dict)
        return data

    def filter(self, direction: str, mail: str) -> dict[str, str]:
        p = subprocess.run(
            [str(self.exe), "filter", "--index", str(self.index), "--direction", direction,
             "--rcpt", "support@example.com", "-"],
            input=mail.encode(), capture_output=True, cwd=self.cwd, timeout=60, check=False,
        )
        assert p.returncode == 0, p.stderr
        return {h.name.lower(): h.value for h in parse_raw(p.stdout)[0]}

    def send(self, n: int) -> dict[str, str]:
        return self.filter("outbound", (
            "From: Dana Agent <dana@support.example.com>\n"
            f"To: Customer {n} <c{n}@customer.example.org>\n"
            f"Subject: Question {n}\n"
            "\n"
            f"Hello customer {n}.\n"
        ))

    def reply(self, n: int, message_id: str) -> dict[str, str]:
        return self.filter("inbound", (
            f"From: Customer {n} <c{n}@customer.example.org>\n"
            "To: support@example.com\n"
            f"Subject: Re: Question {n}\n"
            f"In-Reply-To: {message_id}\n"
            f"Message-ID: <reply-{n}@customer.example.org>\n"
            "\n"
            "Thanks.\n"
        ))


@pytest.fixture
def cli(casethread_bin: Path, tmp_path: Path) -> Cli:
    return Cli(casethread_bin, tmp_path)


@pytest.fixture
def filled(cli: Cli) -> list[dict[str, str]]:
    """Three cases made by outbound mail, each with a customer reply."""
    sent = [cli.send(n) for n in (1, 2, 3)]
    for n, headers in enumerate(sent, start=1):
        assert cli.reply(n, headers["message-id"])["x-case-id"] == headers["x-case-id"]
    return sent


def counts(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("schema", "last_number", "cases", "numbers", "aliases", "aliases_total", "counters")
    return {key: data[key] for key in keep}


# --- stats -----------------------------------------------------------------------------------


def test_stats_json_and_text(cli: Cli, filled: list[dict[str, str]]) -> None:
    data = cli.json("stats")
    assert data["schema"] == 2
    assert data["last_number"] == data["cases"] == data["numbers"] == 3
    # Per case: the agent mail and the reply (message), the Outlook root, two participants
    # (the customer, then support@ from the reply's To: not among this configuration's support
    # addresses, which are never recorded; nor is the agent's From); one flood counter per
    # customer.
    assert data["aliases"]["message"] == 6
    assert data["aliases"]["thread-root"] == 3
    assert data["aliases"]["participant"] == 6
    assert data["aliases_total"] == sum(data["aliases"].values())
    assert data["counters"] == 3
    data_mdb = cli.index / "data.mdb"
    assert data["file_bytes"] == data_mdb.stat().st_size
    assert data["map_size"] == 1 << 30  # the embedded default
    assert data["map_used_percent"] == round(100 * data["map_used_bytes"] / (1 << 30), 1)
    assert 0 < data["map_used_bytes"] <= data["file_bytes"]
    text = cli.ok("stats")
    assert "last case number: 3" in text
    assert f"aliases: {data['aliases_total']} (message 6," in text
    assert "map: 1.0 GiB, grows up to 64.0 GiB" in text


def test_stats_without_an_index_fails_and_creates_none(cli: Cli) -> None:
    p = cli.run("stats")
    assert p.returncode == 1
    assert b"no case index" in p.stderr
    assert not cli.index.exists()


@pytest.fixture
def shut_out(casethread_bin: Path) -> Iterator[tuple[Path, Callable[..., str]]]:
    """An index of one case (0700, with its token.key) and a runner of `casethread ARGS` by a
    user who may not look into it: `nobody` when we are root (root reads everything), else
    ourselves with the directory at mode 0. Returns the runner's stderr (exit status 1)."""
    top = Path(tempfile.mkdtemp(prefix="casethread-shut-out-", dir="/tmp"))
    top.chmod(0o755)
    index = top / "index"
    opened = LmdbIndex(index, 1 << 20)
    opened.create_case(now=int(time.time()))
    opened.close()
    (index / "token.key").write_bytes(b"")
    config = top / "c.yaml"
    config.write_text(f"index:\n  path: {index}\n")
    config.chmod(0o644)
    root = os.geteuid() == 0

    def run(*args: str) -> str:
        p = subprocess.run(
            [str(casethread_bin), *args, "--config", str(config)], capture_output=True,
            text=True, cwd=top, timeout=60, check=False, user=65534 if root else None,
        )
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        return p.stderr

    if not root:
        index.chmod(0)
    try:
        yield index, run
    finally:
        index.chmod(0o700)
        shutil.rmtree(top)


@pytest.mark.parametrize("command", [
    ["stats"], ["export"], ["lookup", "--case", "1"], ["case", "show", "1"],
    ["case", "counter", "5"], ["prune", "--older-than", "30"], ["backup", "/tmp/nowhere"],
    ["check-config"],
])
def test_an_index_the_user_may_not_read_is_named_as_such(
    shut_out: tuple[Path, Callable[..., str]], command: list[str]
) -> None:
    """Not "no case index at PATH", which sends the operator looking for a lost index; nor
    check-config's `[Errno 13] Permission denied: '.../token.key'`."""
    index, run = shut_out
    assert run(*command) == f"casethread: cannot open case index {index}: Permission denied\n"
    assert not Path("/tmp/nowhere").exists()


def test_a_restored_backup_on_a_full_disk_is_refused_not_a_crash(
    cli: Cli, filled: list[dict[str, str]], tmp_path: Path, small_disks: Any
) -> None:
    """A backup holds no lock.mdb; LMDB made it sparse and wrote through its map, so on a full
    disk `stats` and `serve` died of SIGBUS with nothing printed. Now: one line, exit 1."""
    backup = tmp_path / "backup"
    cli.ok("backup", str(backup))
    with small_disks.tmpfs("1m") as disk:
        restored = disk / "index"
        shutil.copytree(backup, restored)
        small_disks.fill(disk)
        lock = restored / "lock.mdb"
        for argv in (["stats"], ["serve", "--socket", f"unix:{disk / 'x.sock'}"]):
            p = cli.run(*argv, index=restored)
            assert p.returncode == 1, (argv, p.returncode, p.stderr)  # not -7, SIGBUS
            assert p.stderr.decode().splitlines() == [
                f"casethread: cannot open case index {restored}: no space to create {lock} "
                f"({LOCK_FILE_SIZE} bytes): No space left on device; free space on its file "
                "system"], argv


def test_an_index_file_it_cannot_write_is_named(
    cli: Cli, filled: list[dict[str, str]], small_disks: Any
) -> None:
    """LMDB names only the directory; the operator needs the file (here data.mdb, whose
    directory is writable)."""
    data = cli.index / "data.mdb"
    with small_disks.read_only_file(data):
        p = cli.run("stats")
    assert p.returncode == 1, p.stderr
    assert p.stderr.decode().splitlines() == [
        f"casethread: cannot open case index {cli.index}: {data}: Read-only file system"]


def test_the_lock_file_is_as_big_as_lmdb_makes_it(tmp_path: Path) -> None:
    """LmdbIndex reserves lock.mdb's blocks at the size LMDB would give it: a bigger file would
    change LMDB's number of reader slots, a smaller one leave blocks unreserved."""
    env = lmdb.open(str(tmp_path / "plain"), max_readers=MAX_READERS)
    env.close()
    assert (tmp_path / "plain" / "lock.mdb").stat().st_size == LOCK_FILE_SIZE
    index = LmdbIndex(tmp_path / "ours", 1 << 20)
    try:
        assert index.map_info()["max_readers"] == MAX_READERS
    finally:
        index.close()
    lock = tmp_path / "ours" / "lock.mdb"
    assert lock.stat().st_size == LOCK_FILE_SIZE
    assert lock.stat().st_blocks * 512 >= LOCK_FILE_SIZE  # allocated, not a sparse file


# --- backup ----------------------------------------------------------------------------------


def test_backup_copies_index_and_key_and_the_copy_answers(
    cli: Cli, filled: list[dict[str, str]], tmp_path: Path
) -> None:
    dest = tmp_path / "backup"
    out = cli.ok("backup", str(dest))
    assert f"backup written to {dest}: 3 cases" in out
    assert f"token key copied to {dest / 'token.key'} (mode 0600)" in out
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for name in ("data.mdb", "token.key"):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600
    assert (dest / "token.key").read_bytes() == (cli.index / "token.key").read_bytes()
    assert counts(cli.json("stats", index=dest)) == counts(cli.json("stats"))
    # The copy and its key resolve a token: the customer's reply threads against the backup.
    token = filled[1]["subject"].rsplit("[ref:", 1)[1].rstrip("]")
    found = cli.json("lookup", "--token", token, index=dest)
    assert found["case_id"] == filled[1]["x-case-id"]


def _rotated_index(tmp_path: Path, index_key: bool) -> tuple[Path, Path, Path]:
    """An index with one case and a configuration in the middle of the README's key rotation:
    tokens.keys lists a new key (id 2), then INDEX/token.key, which exists if `index_key`."""
    index = tmp_path / "index"
    opened = LmdbIndex(index, 1 << 20)
    opened.create_case(now=int(time.time()))
    opened.close()
    new_key = tmp_path / "token2.key"
    if index_key:
        assert main(["keygen", str(index / "token.key")]) == 0
    assert main(["keygen", str(new_key), "--id", "2"]) == 0
    config = tmp_path / "casethread.yaml"
    config.write_text(f"index:\n  path: {index}\ntokens:\n  keys:\n    - {new_key}\n"
                      f"    - {index / 'token.key'}\n")
    return index, new_key, config


def test_backup_after_a_rotation_names_only_the_keys_it_did_not_copy(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """README Keys: a rotation lists the new key first and the index's own token.key after
    it. backup copies INDEX/token.key, so only the new key is left to back up by hand; the
    note named the copied one too, as a key "configured elsewhere"."""
    index, new_key, config = _rotated_index(tmp_path, index_key=True)
    capfd.readouterr()
    dest = tmp_path / "backup"
    assert main(["backup", str(dest), "--config", str(config)]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert lines[1:] == [
        f"token key copied to {dest / 'token.key'} (mode 0600)",
        f"token keys configured elsewhere, back them up too: {new_key}",
    ]
    # With only the index's own key listed, nothing is left to name.
    config.write_text(f"index:\n  path: {index}\ntokens:\n  keys:\n    - {index / 'token.key'}\n")
    assert main(["backup", str(tmp_path / "backup2"), "--config", str(config)]) == 0
    assert "elsewhere" not in capfd.readouterr().out


def test_backup_names_a_listed_index_key_that_is_missing_as_missing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """tokens.keys lists INDEX/token.key, which is not there: backup copied nothing, and the
    note called it a key "configured elsewhere, back them up too" instead of missing."""
    index, new_key, config = _rotated_index(tmp_path, index_key=False)
    capfd.readouterr()
    dest = tmp_path / "backup"
    assert main(["backup", str(dest), "--config", str(config)]) == 0
    assert capfd.readouterr().out.splitlines()[1:] == [
        f"token keys configured elsewhere, back them up too: {new_key}",
        f"no {index / 'token.key'}: without the token key, tokens in mail will not verify",
    ]


def test_backup_refuses_a_non_empty_destination(
    cli: Cli, filled: list[dict[str, str]], tmp_path: Path
) -> None:
    dest = tmp_path / "used"
    dest.mkdir()
    (dest / "other").write_text("keep me")
    p = cli.run("backup", str(dest))
    assert p.returncode == 2
    assert b"not empty" in p.stderr
    assert sorted(x.name for x in dest.iterdir()) == ["other"]


def test_backup_to_a_full_disk_names_the_destination(
    cli: Cli, filled: list[dict[str, str]], small_disks: Any
) -> None:
    with small_disks.tmpfs("1m") as disk:
        small_disks.fill(disk)
        dest = disk / "backup"
        p = cli.run("backup", str(dest))
        assert p.returncode == 1, p.stderr
        assert p.stderr.decode().splitlines() == [
            f"casethread: backup to {dest} failed, nothing kept: No space left on device"]
        assert not dest.exists()  # nothing half-written is left to be taken for a backup


def test_backup_json(cli: Cli, filled: list[dict[str, str]], tmp_path: Path) -> None:
    data = cli.json("backup", str(tmp_path / "b"))
    assert data["cases"] == 3 and data["dest"] == str(tmp_path / "b")
    assert data["copied"] == [str(tmp_path / "b" / "token.key")]
    assert data["data_bytes"] == (tmp_path / "b" / "data.mdb").stat().st_size


WRITER = """
import sys, time
from casethread.index import LmdbIndex
from casethread.core.model import Alias, AliasKind
index = LmdbIndex(sys.argv[1], 1 << 20)  # small: it grows while the backups run
deadline = time.monotonic() + float(sys.argv[2])
n = 0
print("started", flush=True)
while time.monotonic() < deadline:
    case = index.create_case(now=1_800_000_000)
    index.record([Alias(AliasKind.MESSAGE, f"<w{n}.{i}@x>", case.case_id) for i in range(20)],
                 now=1_800_000_000)
    n += 1
index.close()
print(n, flush=True)
"""


def test_backup_while_another_process_writes(
    cli: Cli, filled: list[dict[str, str]], tmp_path: Path
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cli.index), "8"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "started"
        time.sleep(0.5)
        taken = []
        for n in range(3):
            dest = tmp_path / f"hot{n}"
            cli.ok("backup", str(dest))
            taken.append(dest)
        assert writer.wait(timeout=60) == 0
        written = int(writer.stdout.readline())
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)
    sizes = []
    for dest in taken:
        copy = LmdbIndex(dest, 1 << 24)
        try:
            with copy.reading() as (txn, db):
                cases = dict(txn.cursor(db=db.cases).iternext())
                numbers = dict(txn.cursor(db=db.numbers).iternext())
                for value in txn.cursor(db=db.aliases).iternext(keys=False, values=True):
                    # Consistent: every alias names a case the copy holds.
                    assert index_keys.decode_alias(value).case_id.encode() in cases
            assert sorted(numbers.values()) == sorted(cases)
            assert copy.last_number() == len(cases)
            sizes.append(len(cases))
        finally:
            copy.close()
    assert sizes == sorted(sizes) and sizes[0] > 3  # taken while cases were being added
    assert cli.json("stats")["cases"] == 3 + written > sizes[-1]


# --- prune -----------------------------------------------------------------------------------


def test_prune_dry_run_then_real(cli: Cli, filled: list[dict[str, str]]) -> None:
    index = LmdbIndex(cli.index, 1 << 30)
    try:
        old = int(time.time()) - 400 * DAY
        first = filled[0]["x-case-id"]
        index.record([Alias(AliasKind.MESSAGE, f"<old-{n}@example.org>", first)
                      for n in range(25)], now=old)
        index.record([Alias(AliasKind.SUBJECT, "an old subject", first)], now=old)
        index.record((), old, [CounterBump("flood gone@example.org", 3600)])
    finally:
        index.close()
    before = cli.json("stats")
    dry = cli.json("prune", "--older-than", "365", "--dry-run")
    assert dry["deleted"] == {"message": 25, "subject": 1, "counter": 1}
    assert dry["dry_run"] is True
    assert counts(cli.json("stats")) == counts(before)
    text = cli.ok("prune", "--older-than", "365")
    assert "message: deleted 25, kept 6" in text
    assert "total: deleted 27 in" in text
    after = cli.json("stats")
    assert after["aliases"]["message"] == before["aliases"]["message"] - 25
    assert after["counters"] == before["counters"] - 1
    assert (after["cases"], after["numbers"], after["last_number"]) == (3, 3, 3)
    assert after["aliases"]["participant"] == before["aliases"]["participant"]
    # The recent mail still threads by Message-ID, and the old cases by token.
    assert cli.json("lookup", "--message-id", filled[2]["message-id"])["case_id"] == (
        filled[2]["x-case-id"])
    assert cli.json("prune", "--older-than", "365")["deleted_total"] == 0


def test_what_threads_once_the_message_ids_are_pruned(cli: Cli) -> None:
    """README (prune): a reply naming our mail only by In-Reply-To opens a new case once the
    Message-ID record is gone; a token in the Subject still threads."""
    sent = cli.send(1)
    index = LmdbIndex(cli.index, 1 << 30)
    try:
        later = int(time.time()) + 400 * DAY
        assert maintenance.prune(index, 365 * DAY, 3600, now=later).deleted["message"] == 1
    finally:
        index.close()
    assert cli.reply(1, sent["message-id"])["x-case-id"] != sent["x-case-id"]
    tagged = cli.filter("inbound", (
        "From: Customer 1 <c1@customer.example.org>\n"
        "To: support@example.com\n"
        f"Subject: Re: {sent['subject']}\n"
        "Message-ID: <reply-tagged@customer.example.org>\n"
        "\n"
        "Thanks.\n"
    ))
    assert tagged["x-case-id"] == sent["x-case-id"]


def test_prune_help_says_records_age_from_when_they_were_written(cli: Cli) -> None:
    """Not "last seen": later mail that refers to a Message-ID does not renew its record."""
    text = " ".join(subprocess.run(
        [str(cli.exe), "prune", "--help"], capture_output=True, text=True, check=True,
    ).stdout.split())
    assert "last seen" not in text
    assert "records written (first recorded) more than DAYS days ago go" in text
    assert "later mail that refers to it does not renew a record" in text


@pytest.mark.parametrize("days", ["0", "-3", "soon"])
def test_prune_needs_a_positive_number_of_days(
    cli: Cli, filled: list[dict[str, str]], days: str
) -> None:
    p = cli.run("prune", "--older-than", days)
    assert p.returncode == 2
    assert b"DAYS" in p.stderr or b"days" in p.stderr


# --- export / import -------------------------------------------------------------------------


def test_export_import_round_trip(cli: Cli, filled: list[dict[str, str]], tmp_path: Path) -> None:
    p = cli.run("export")
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines[0] == {"type": "meta", "schema": 2, "counter": 3}
    aliases = [x for x in lines if x["type"] == "alias"]
    assert {x["kind"] for x in aliases} >= {"m", "p"}
    assert all(set(x["key"]) == {"hash"} for x in aliases)  # the index holds only digests
    assert b"c1@customer.example.org" not in p.stdout
    assert b"dana@support.example.com" not in p.stdout
    for sent in filled:
        assert sent["message-id"].strip("<>").encode() not in p.stdout
    assert b"casethread: exported meta 1, case 3," in p.stderr
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(p.stdout)
    target = tmp_path / "imported"
    out = cli.ok("import", str(dump), index=target)
    assert "last case number 3" in out
    assert "note: no" in out and "token.key" in out  # the new index has no key yet
    assert counts(cli.json("stats", index=target)) == counts(cli.json("stats"))
    # Lookups agree: by Message-ID, by case number, and by token once the key is there.
    for sent in filled:
        for where in (cli.index, target):
            found = cli.json("lookup", "--message-id", sent["message-id"], index=where)
            assert found["case_id"] == sent["x-case-id"]
    (target / "token.key").write_bytes((cli.index / "token.key").read_bytes())
    (target / "token.key").chmod(0o600)
    token = filled[0]["subject"].rsplit("[ref:", 1)[1].rstrip("]")
    assert cli.json("lookup", "--token", token, index=target)["case_id"] == (
        filled[0]["x-case-id"])
    # Exported again, the import gives the very same lines.
    assert cli.run("export", index=target).stdout == p.stdout


def test_export_kind_filter(cli: Cli, filled: list[dict[str, str]]) -> None:
    out = cli.ok("export", "--kind", "case", "--kind", "thread-root")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["type"] for x in lines].count("case") == 3
    assert {x.get("kind") for x in lines if x["type"] == "alias"} == {"t"}
    assert cli.run("export", "--kind", "everything").returncode == 2


def test_import_refuses_a_non_empty_index_unless_merge(
    cli: Cli, filled: list[dict[str, str]], tmp_path: Path
) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_bytes(cli.run("export").stdout)
    before = cli.json("stats")
    p = cli.run("import", str(dump))
    assert p.returncode == 2
    assert b"not empty" in p.stderr and b"--merge" in p.stderr
    data = cli.json("import", str(dump), "--merge")
    assert data["written"] == 0 and data["kept"] == before["cases"] + before["aliases_total"] + (
        before["counters"])
    assert counts(cli.json("stats")) == counts(before)


def test_import_from_stdin(cli: Cli, filled: list[dict[str, str]], tmp_path: Path) -> None:
    dump = cli.run("export").stdout
    target = tmp_path / "from-stdin"
    assert cli.run("import", "-", index=target, stdin=dump).returncode == 0
    assert counts(cli.json("stats", index=target)) == counts(cli.json("stats"))


def test_import_summary_adds_up(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Through `main()`: the summary counts the file's records (cases, aliases, counters),
    each written or kept; the meta line is none (it used to count among the parts, which
    then summed to one more than the records imported)."""
    source = LmdbIndex(tmp_path / "source", 1 << 20)
    try:
        for n in (1, 2):
            source.create_case(1_772_442_900, queue="support", aliases=lambda new, n=n: [
                Alias(AliasKind.MESSAGE, f"m{n}@customer.example.org", new.case_id)])
        count_event(source, "flood pat@customer.example.org", 1_772_442_900, 3600)
        dump = tmp_path / "dump.jsonl"
        with dump.open("wb") as out:
            maintenance.export(source, out)
    finally:
        source.close()
    target = str(tmp_path / "target")
    tail = " the index already had as new or newer; last case number 2"
    for args, summary in [
        ([], "imported 5 of 5 records (case 2, alias 2, counter 1); kept 0" + tail),
        (["--merge"], "imported 0 of 5 records (case 2, alias 2, counter 1); kept 5" + tail),
    ]:
        code = main(["import", str(dump), "--index", target, *args])
        assert (code, capfd.readouterr().out.splitlines()[0]) == (0, summary)


def test_import_of_a_counter_alone_says_the_milter_starts(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """README Restore: a lost index's counter raised by importing the meta line alone. The
    index then holds no case, so the milter starts and makes a new key: the note must say
    that (it said the milter would not start "beside these cases"), and nothing at all once
    the key is in place. Its summary counts no records, and shows no empty list of them."""
    target = tmp_path / "fresh"
    meta = tmp_path / "meta.jsonl"
    meta.write_text('{"type":"meta","schema":2,"counter":15000}\n')
    assert main(["import", str(meta), "--index", str(target)]) == 0
    out = capfd.readouterr().out
    # No empty "()" where the file's records would be counted: it has none (walk27).
    assert out.splitlines()[0] == ("imported 0 of 0 records; kept 0 the index already had as "
                                   "new or newer; last case number 15000")
    assert "will not start" not in out
    assert f"note: no {target / 'token.key'}: copy the old index's token.key there before " \
        "the milter starts; without it the milter makes a new key (id 1), and the tokens in " \
        "earlier mail fail to verify (token-invalid:bad-mac, or :unknown-key for another key " \
        "id)\n" in out  # an old key of another id (rotated) gives unknown-key, not bad-mac
    config = tmp_path / "casethread.yaml"
    config.write_text(f"index:\n  path: {target}\ninbound:\n  addresses: [s@example.com]\n")
    assert main(["check-config", "--config", str(config)]) == 0  # it would start indeed
    assert main(["keygen", str(target / "token.key")]) == 0
    capfd.readouterr()
    assert main(["import", str(meta), "--index", str(target), "--merge"]) == 0
    assert "note:" not in capfd.readouterr().out


def test_import_of_a_bad_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"meta","schema":1,"counter":0}\n{"type":"alias","kind":"m"}\n')
    p = cli.run("import", str(bad), index=tmp_path / "never")
    assert p.returncode == 2
    # The file and its line, as an editor's error list reads them.
    assert f"casethread: {bad}: line 2: ".encode() in p.stderr
    # Checked before an index is made (test_maintenance: nothing is written into one).
    assert not (tmp_path / "never").exists()
    missing = cli.run("import", str(tmp_path / "nope.jsonl"), index=tmp_path / "never")
    assert missing.returncode == 1
    assert not (tmp_path / "never").exists()


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "backup", "prune", "export", "import"])
def test_help_has_examples_and_exit_codes(casethread_bin: Path, command: str) -> None:
    p = subprocess.run([str(casethread_bin), command, "--help"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0
    assert "examples:" in p.stdout
    assert f"casethread {command}" in p.stdout
    assert "exit status: 0 success; 1" in p.stdout


def test_commands_listed_in_top_level_help(casethread_bin: Path) -> None:
    out = subprocess.run([str(casethread_bin), "--help"], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    for command in ("stats", "backup", "prune", "export", "import"):
        assert f"    {command}" in out
