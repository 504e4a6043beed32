"""`casethread lookup`, `casethread case ...` and `casethread keygen` as subprocesses: the
installed console script on a real LMDB index in tmp_path, with cases made by `filter`."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from casethread import case_admin
from casethread.cli import main
from casethread.core.message import parse_raw
from casethread.core.model import CaseState
from casethread.index import LmdbIndex, maintenance

# Export's fields in export's order (`id` there): one serialiser for both.
EXPECTED_KEYS = [
    "case_id", "number", "state", "queue", "created", "updated", "state_changed", "parent",
    "merged_into", "children", "followup", "thread_root", "follows",
]


@dataclass
class Sent:
    """What `casethread filter --direction outbound` stamped on one agent mail."""

    case_id: str
    message_id: str
    token: str
    thread_index: str


def headers_of(output: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for h in parse_raw(output)[0]:
        found.setdefault(h.name.lower(), []).append(h.value)
    return found


class Cli:
    def __init__(self, exe: Path, tmp_path: Path) -> None:
        self.exe = exe
        self.cwd = tmp_path
        self.index = tmp_path / "index"

    def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.exe), *args], input=stdin.decode(), capture_output=True, text=True,
            cwd=self.cwd, timeout=60, check=False,
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A command on the test index (`--index` given last, after the action)."""
        return self.run(*args, "--index", str(self.index))

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        p = self(*args)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def json(self, *args: str) -> dict[str, Any]:
        p = self.ok(*args, "--json")
        data = json.loads(p.stdout)
        assert isinstance(data, dict)
        return data

    def filter(self, direction: str, mail: bytes) -> bytes:
        p = subprocess.run(
            [str(self.exe), "filter", "--index", str(self.index), "--direction", direction,
             "--rcpt", "support@example.com", "-"],
            input=mail, capture_output=True, cwd=self.cwd, timeout=60, check=False,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    def send(self, n: int) -> Sent:
        mail = (
            "From: Dana Agent <dana@support.example.com>\n"
            f"To: Customer {n} <c{n}@customer.example.org>\n"
            f"Subject: Question {n}\n"
            "Date: Mon, 02 Mar 2026 09:15:00 +0000\n"
            "\n"
            f"Hello customer {n}.\n"
        ).encode()
        found = headers_of(self.filter("outbound", mail))
        (subject,) = found["subject"]
        token = subject.rsplit("[ref:", 1)[1].rstrip("]")
        return Sent(found["x-case-id"][0], found["message-id"][0], token,
                    found["thread-index"][0])

    def reply(self, n: int, sent: Sent) -> dict[str, list[str]]:
        """A customer's reply that threads by In-Reply-To only (no token in the subject)."""
        mail = (
            f"From: Customer {n} <c{n}@customer.example.org>\n"
            "To: support@example.com\n"
            f"Subject: Re: Question {n}\n"
            f"In-Reply-To: {sent.message_id}\n"
            f"Message-ID: <reply-{n}-{os.urandom(4).hex()}@customer.example.org>\n"
            "\n"
            "Thanks.\n"
        ).encode()
        return headers_of(self.filter("inbound", mail))


@pytest.fixture
def cli(casethread_bin: Path, tmp_path: Path) -> Cli:
    return Cli(casethread_bin, tmp_path)


@pytest.fixture
def sent(cli: Cli) -> list[Sent]:
    """Three cases, C-000001..C-000003, each with one agent mail."""
    mails = [cli.send(n) for n in (1, 2, 3)]
    assert [m.case_id for m in mails] == ["C-000001", "C-000002", "C-000003"]
    return mails


def text_fields(stdout: str) -> dict[str, str]:
    fields = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        assert sep, line
        fields[key] = value.strip()
    return fields


# --- show, set-state ---------------------------------------------------------------------------


def test_case_show_text_and_json(cli: Cli, sent: list[Sent]) -> None:
    text = text_fields(cli.ok("case", "show", "C-000002").stdout)
    assert text["case_id"] == "C-000002"
    assert (text["number"], text["state"], text["parent"], text["children"]) == (
        "2", "open", "", "")
    data = cli.json("case", "show", "C-000002")
    assert list(data) == EXPECTED_KEYS
    assert (data["case_id"], data["number"], data["state"]) == ("C-000002", 2, "open")
    assert (data["parent"], data["merged_into"], data["children"]) == (None, None, [])
    assert data["created"] == data["updated"] > 1_700_000_000
    # --index before the action works as well, and a number names its case.
    p = cli.run("case", "--index", str(cli.index), "show", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == data


def test_case_show_missing(cli: Cli, sent: list[Sent]) -> None:
    p = cli("case", "show", "C-000009")
    assert (p.returncode, p.stdout) == (1, "")
    assert "no case C-000009" in p.stderr


def test_commands_never_create_an_index(cli: Cli) -> None:
    for args in (["case", "show", "C-000001"], ["lookup", "--case", "C-000001"],
                 ["case", "set-state", "C-000001", "closed"]):
        p = cli(*args)
        assert p.returncode == 1, (args, p.stderr)
        assert f"no case index at {cli.index}" in p.stderr
    assert not cli.index.exists()


def test_no_index_at_the_relative_default_points_to_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """README Install: run without --config, a command looks for the embedded default
    ./casethread-data; "no case index at ./casethread-data" alone sent the operator looking
    for a lost index. The line says where that is and what to give."""
    monkeypatch.chdir(tmp_path)
    for args in (["stats"], ["lookup", "--case", "C-000001"], ["export"]):
        assert main(args) == 1, args
        err = capfd.readouterr().err
        assert err == (f"casethread: no case index at ./casethread-data (relative to the "
                       f"current directory {tmp_path}: give the milter's --config FILE, or "
                       "--index DIR)\n"), args
    assert main(["stats", "--index", str(tmp_path / "abs")]) == 1
    assert capfd.readouterr().err == f"casethread: no case index at {tmp_path / 'abs'}\n"
    assert not (tmp_path / "casethread-data").exists()


def test_no_index_at_a_relative_path_given_names_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A relative --index DIR (or a relative index.path in the --config given) was given:
    the line names the directory it is relative to, not "give --config" (given already).
    With that directory removed under the shell, os.getcwd() failed and the line lost the
    path: "casethread: No such file or directory"."""
    monkeypatch.chdir(tmp_path)
    assert main(["stats", "--index", "rel"]) == 1
    assert capfd.readouterr().err == (
        f"casethread: no case index at rel (relative to the current directory {tmp_path})\n")
    config = tmp_path / "casethread.yaml"
    config.write_text("index:\n  path: data\n")
    assert main(["stats", "--config", str(config)]) == 1
    assert capfd.readouterr().err == (
        f"casethread: no case index at data (relative to the current directory {tmp_path})\n")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert main(["stats", "--index", "rel"]) == 1
    assert capfd.readouterr().err == ("casethread: no case index at rel (relative to the "
                                      "current directory, which no longer exists)\n")


def test_set_state(cli: Cli, sent: list[Sent]) -> None:
    before = cli.json("case", "show", "C-000001")
    p = cli.ok("case", "set-state", "C-000001", "resolved")
    assert p.stdout == "C-000001: state resolved\n"
    after = cli.json("case", "show", "C-000001")
    assert after["state"] == "resolved"
    assert after["state_changed"] == after["updated"] >= before["updated"]
    data = cli.json("case", "set-state", "C-000001", "waiting")
    assert data["state"] == "waiting"
    for args, code in [(["C-000001", "done"], 2), (["C-000009", "open"], 2), (["C-000001"], 2)]:
        p = cli("case", "set-state", *args)
        assert p.returncode == code, (args, p.stderr)
        assert p.stderr
    assert cli.json("case", "show", "C-000001")["state"] == "waiting"


def test_works_while_another_process_holds_the_index(cli: Cli, sent: list[Sent]) -> None:
    # The milter keeps the LMDB environment open for its whole life.
    held = LmdbIndex(cli.index, 1 << 30)
    try:
        case = held.get_case("C-000003")
        assert case is not None and case.state is CaseState.OPEN
        cli.ok("case", "set-state", "C-000003", "closed")
        cli.ok("case", "merge", "C-000002", "C-000003")
        case = held.get_case("C-000003")
        assert case is not None and case.state is CaseState.CLOSED
        merged = held.get_case("C-000002")
        assert merged is not None and merged.merged_into == "C-000003"
    finally:
        held.close()


# --- in this process: `main()` on a real index ----------------------------------------------------


def run_main(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`casethread ARGV` through `main()` (capfd: main points faulthandler at stderr's fd)."""
    code = main(list(argv))
    out = capfd.readouterr()
    return code, out.out, out.err


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """An LMDB index where C-000001 is merged into C-000002, merged into C-000003."""
    path = tmp_path / "index"
    index = LmdbIndex(path, 1 << 20)
    try:
        for _ in range(3):
            index.create_case(1_772_442_900, queue="support")
        case_admin.merge(index, "C-000001", "C-000002", 1_772_442_900)
        case_admin.merge(index, "C-000002", "C-000003", 1_772_442_900)
    finally:
        index.close()
    return path


def test_set_state_of_a_merged_case_is_refused_as_split_is(
        chain: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """No mail reaches a merged case: a state set there would change nothing mail sees."""
    on = ("--index", str(chain), "--json")
    before = run_main(capfd, "case", "show", "C-000001", *on)
    code, out, err = run_main(capfd, "case", "set-state", "C-000001", "closed", *on)
    assert (code, out) == (2, "")
    assert err == ("casethread: case C-000001 is merged into C-000002: its mail goes there, so "
                   "its state changes nothing; set the state of C-000003 instead\n")
    assert run_main(capfd, "case", "split", "C-000001", "--create", "1", *on)[0] == code
    assert run_main(capfd, "case", "show", "C-000001", *on) == before
    code, out, _ = run_main(capfd, "case", "set-state", "C-000003", "closed", *on)
    assert (code, json.loads(out)["state"]) == (0, "closed")


def test_split_json_names_the_new_children_apart_from_the_cases_created_time(
        chain: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """`created` is the case's opening time in every case command's JSON; `split` used to
    put the new children's ids there."""
    code, out, _ = run_main(capfd, "case", "split", "C-000003", "--create", "1",
                            "--index", str(chain), "--json")
    data = json.loads(out)
    assert code == 0
    assert (data["created"], data["children_created"], data["children"]) == (
        1_772_442_900, ["C-000004"], ["C-000004"])
    assert list(data) == [*EXPECTED_KEYS, "children_created"]


def test_case_show_and_export_write_a_case_alike(
        chain: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """One serialiser: export's line (a contract, byte for byte) and `case show --json`
    differ only in the id's key."""
    code, out, _ = run_main(capfd, "case", "show", "C-000001", "--index", str(chain), "--json")
    shown = json.loads(out)
    index = LmdbIndex(chain, 1 << 20)
    try:
        dump = io.BytesIO()
        maintenance.export(index, dump, ["case"])
    finally:
        index.close()
    line = dump.getvalue().splitlines()[1]
    assert line == (b'{"type":"case","id":"C-000001","number":1,"state":"open","queue":"support",'
                    b'"created":1772442900,"updated":1772442900,"state_changed":1772442900,'
                    b'"parent":null,"merged_into":"C-000002","children":[],"followup":null,'
                    b'"thread_root":null,"follows":null}')
    exported = json.loads(line)
    assert (code, exported.pop("type"), exported.pop("id")) == (0, "case", shown.pop("case_id"))
    assert list(exported.items()) == list(shown.items())


# --- counter ------------------------------------------------------------------------------------


def test_counter_after_a_restore_skips_the_numbers_of_the_lost_period(
    cli: Cli, sent: list[Sent], tmp_path: Path
) -> None:
    """A backup restored after C-000004 and C-000005 were handed out: without raising the
    counter, the next new cases would be numbered 4 and 5 again, and the tokens in mail sent
    for the lost cases would name them. Raised while another process holds the index."""
    cli.ok("backup", str(tmp_path / "backup"))
    assert [cli.send(n).case_id for n in (4, 5)] == ["C-000004", "C-000005"]
    for name in ("data.mdb", "lock.mdb"):
        (cli.index / name).unlink()
    (tmp_path / "backup" / "data.mdb").rename(cli.index / "data.mdb")
    held = LmdbIndex(cli.index, 1 << 30)  # the milter, running
    try:
        assert held.last_number() == 3
        assert cli.ok("case", "counter", "105").stdout == (
            "case counter: 3 -> 105: the next case is number 106\n")
        assert held.last_number() == 105
    finally:
        held.close()
    # Never lowered; --json as the other case commands.
    assert cli.json("case", "counter", "50") == {"before": 105, "after": 105, "next": 106}
    assert "unchanged" in cli.ok("case", "counter", "105").stdout
    assert cli.send(6).case_id == "C-000106"
    assert cli.json("stats")["last_number"] == 106


@pytest.mark.parametrize("number", ["0", "-1", "many", str(2**64)])
def test_counter_refuses_what_is_no_case_number(cli: Cli, sent: list[Sent], number: str) -> None:
    p = cli("case", "counter", number)
    assert p.returncode == 2
    assert "a case number is 1..18446744073709551615" in p.stderr or "not a number" in p.stderr
    assert cli.json("stats")["last_number"] == 3


# --- merge --------------------------------------------------------------------------------------


def test_merge_and_reply_threads_to_the_survivor(cli: Cli, sent: list[Sent]) -> None:
    p = cli.ok("case", "merge", "C-000002", "C-000001")
    assert p.stdout == "C-000002: merged into C-000001\n"
    assert cli.json("case", "show", "C-000002")["merged_into"] == "C-000001"
    assert cli.json("case", "show", "C-000001")["merged_into"] is None
    # A reply to case 2's mail now lands on case 1.
    found = cli.reply(2, sent[1])
    assert found["x-case-id"] == ["C-000001"]
    # Merging 1 onward into 3: 2's mail follows the whole chain.
    data = cli.json("case", "merge", "C-000001", "C-000003")
    assert (data["case_id"], data["merged_into"], data["survivor"]) == (
        "C-000001", "C-000003", "C-000003")
    p = cli.ok("case", "merge", "C-000002", "C-000001")
    assert p.stdout == "C-000002: merged into C-000001 (its mail goes on to C-000003)\n"
    # Merging again corrects a wrong merge, and says what it replaced.
    p = cli.ok("case", "merge", "C-000002", "C-000003")
    assert p.stdout == "C-000002: merged into C-000003; was merged into C-000001\n"


def test_merge_refusals(cli: Cli, sent: list[Sent]) -> None:
    cli.ok("case", "merge", "C-000002", "C-000001")
    before = [cli.json("case", "show", c.case_id) for c in sent]
    refusals = [
        (["C-000001", "C-000001"], "cannot merge case C-000001 into itself"),
        (["C-000001", "C-000002"], "would make a cycle"),
        (["C-000003", "C-000009"], "no case C-000009"),
        (["C-000009", "C-000003"], "no case C-000009"),
    ]
    for args, message in refusals:
        p = cli("case", "merge", *args)
        assert (p.returncode, p.stdout) == (2, ""), (args, p.stderr)
        assert p.stderr.startswith("casethread: ") and message in p.stderr, p.stderr
    assert [cli.json("case", "show", c.case_id) for c in sent] == before


# --- split --------------------------------------------------------------------------------------


def test_split_with_created_children(cli: Cli, sent: list[Sent]) -> None:
    p = cli.ok("case", "split", "C-000001", "C-000002", "--create", "1")
    assert p.stdout == "C-000001: split into C-000002 C-000004 (created C-000004)\n"
    data = cli.json("case", "show", "C-000001")
    assert data["children"] == ["C-000002", "C-000004"]
    new = cli.json("case", "show", "C-000004")
    assert (new["parent"], new["state"]) == ("C-000001", "open")
    assert cli.json("case", "show", "C-000002")["parent"] is None
    # A reply to case 1 now goes to each child.
    found = cli.reply(1, sent[0])
    assert sorted(found["x-case-id"]) == ["C-000002", "C-000004"]
    data = cli.json("case", "split", "C-000001", "C-000003")
    assert (data["children"], data["children_created"]) == (
        ["C-000002", "C-000004", "C-000003"], [])


def test_split_refusals(cli: Cli, sent: list[Sent]) -> None:
    cli.ok("case", "split", "C-000001", "C-000002")
    refusals = [
        (["C-000002", "C-000001"], "would make a cycle"),
        (["C-000003", "C-000003"], "into itself"),
        (["C-000003", "C-000009", "--create", "2"], "no case C-000009"),
        (["C-000003"], "--create N"),
        (["C-000003", "--create", "17"], "at most 16 children"),
    ]
    for args, message in refusals:
        p = cli("case", "split", *args)
        assert (p.returncode, p.stdout) == (2, ""), (args, p.stderr)
        assert message in p.stderr, p.stderr
    # No refusal created a case.
    assert cli("case", "show", "C-000004").returncode == 1
    assert cli.json("case", "show", "C-000003")["children"] == []


# --- parent -------------------------------------------------------------------------------------


def test_parent_set_refuse_and_clear(cli: Cli, sent: list[Sent]) -> None:
    p = cli.ok("case", "parent", "C-000002", "C-000001")
    assert p.stdout == "C-000002: parent C-000001\n"
    p = cli("case", "parent", "C-000001", "C-000002")
    assert p.returncode == 2
    assert "C-000001 -> C-000002 -> C-000001 would be a cycle" in p.stderr
    for args in (["C-000001", "C-000001"], ["C-000001", "C-000009"], ["C-000001"],
                 ["C-000001", "C-000003", "--clear"]):
        p = cli("case", "parent", *args)
        assert p.returncode == 2, (args, p.stderr)
    assert cli.json("case", "show", "C-000001")["parent"] is None
    # A closed case's reply walks up to its open parent.
    cli.ok("case", "set-state", "C-000002", "closed")
    assert cli.reply(2, sent[1])["x-case-id"] == ["C-000001"]
    data = cli.json("case", "parent", "C-000002", "--clear")
    assert data["parent"] is None
    assert cli.ok("case", "parent", "C-000003", "--clear").stdout == "C-000003: no parent\n"


# --- lookup -------------------------------------------------------------------------------------


def test_lookup_every_key(cli: Cli, sent: list[Sent]) -> None:
    two = sent[1]
    for option, value, via in [
        ("--message-id", two.message_id, "message-id"),
        ("--token", two.token, "token"),
        ("--token", f"[ref:{two.token.lower()}]", "token"),
        ("--case", "C-000002", "case"),
        ("--case", "2", "case"),
        ("--thread-index", two.thread_index, "thread-index"),
    ]:
        data = cli.json("lookup", option, value)
        assert list(data) == [*EXPECTED_KEYS, "via", "named", "reply"], data
        assert (data["case_id"], data["via"], data["named"]) == ("C-000002", via, "C-000002")
        assert data["reply"] == [{"case_id": "C-000002", "action": "thread"}]
    text = text_fields(cli.ok("lookup", "--message-id", two.message_id).stdout)
    assert (text["case_id"], text["state"], text["via"]) == ("C-000002", "open", "message-id")


def test_lookup_follows_merges(cli: Cli, sent: list[Sent]) -> None:
    cli.ok("case", "merge", "C-000002", "C-000003")
    data = cli.json("lookup", "--token", sent[1].token)
    assert (data["case_id"], data["named"]) == ("C-000003", "C-000002")


def test_lookup_says_where_a_reply_goes_past_merges(cli: Cli, sent: list[Sent]) -> None:
    """A closed case's reply opened a follow-up: `case` stays the closed case (merges only),
    `reply` names the follow-up a later reply goes to, as the milter would take it."""
    cli.ok("case", "set-state", "C-000002", "closed")
    assert cli.reply(2, sent[1])["x-case-id"] == ["C-000004"]
    data = cli.json("lookup", "--message-id", sent[1].message_id)
    assert (data["case_id"], data["followup"]) == ("C-000002", "C-000004")
    assert data["reply"] == [{"case_id": "C-000004", "action": "thread"}]
    assert cli.reply(2, sent[1])["x-case-id"] == ["C-000004"]
    cli.ok("case", "set-state", "C-000004", "resolved")
    text = text_fields(cli.ok("lookup", "--token", sent[1].token).stdout)
    assert (text["case_id"], text["reply"]) == ("C-000002", "C-000004 reopen")


def test_lookup_nothing_found_and_invalid(cli: Cli, sent: list[Sent]) -> None:
    token = sent[0].token
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    cases = [
        (["--message-id", "<unknown@example.org>"], "no case found for <unknown@example.org>"),
        (["--case", "C-000042"], "no case found for C-000042"),
        (["--token", forged], "invalid token"),
        (["--thread-index", "AAAA"], "not a Thread-Index value"),
    ]
    for args, message in cases:
        p = cli("lookup", *args, "--json")
        assert (p.returncode, p.stdout) == (1, ""), (args, p.stderr)
        assert message in p.stderr, p.stderr
    # One key at a time.
    p = cli("lookup", "--case", "C-000001", "--token", token)
    assert p.returncode == 2


def test_lookup_token_needs_the_key_and_never_makes_one(cli: Cli, sent: list[Sent]) -> None:
    key = cli.index / "token.key"
    key.unlink()
    p = cli("lookup", "--token", sent[0].token)
    assert p.returncode == 1
    assert "token.key" in p.stderr
    assert not key.exists()


# --- keygen -------------------------------------------------------------------------------------


def test_keygen(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "token-2.key"
    p = cli.run("keygen", str(path), "--id", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{path}: new token key id 2 (mode 0600)\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_text()
    assert "id: 2\n" in content
    secret = content.split("key: ", 1)[1].strip()
    assert len(secret) == 64
    assert secret not in p.stdout + p.stderr
    # Never overwritten.
    p = cli.run("keygen", str(path))
    assert p.returncode == 1
    assert "already exists" in p.stderr
    assert path.read_text() == content
    p = cli.run("keygen", str(tmp_path / "bad.key"), "--id", "32")
    assert p.returncode == 2
    assert not (tmp_path / "bad.key").exists()


@pytest.mark.parametrize("path", ["", ".", "/"])
def test_keygen_of_a_directory_says_so_in_one_line(cli: Cli, path: str) -> None:
    """No traceback: pathlib's with_name raised ValueError for a path without a name."""
    p = cli.run("keygen", path)
    assert p.returncode == 1
    shown = str(Path(path))
    assert p.stderr == (f"casethread: cannot create token key file {shown!r}: that is a "
                        "directory; name the file\n")


def test_keygen_key_is_used_for_tokens(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "rotated.key"
    cli.run("keygen", str(key), "--id", "7")
    config = tmp_path / "casethread.yaml"
    config.write_text(f"tokens:\n  keys: [{key}]\n")
    mail = b"From: dana@support.example.com\nTo: c@customer.example.org\nSubject: Hi\n\nx\n"
    p = subprocess.run(
        [str(cli.exe), "filter", "--config", str(config), "--index", str(cli.index),
         "--direction", "outbound", "-"],
        input=mail, capture_output=True, cwd=tmp_path, timeout=60, check=False,
    )
    assert p.returncode == 0, p.stderr
    (subject,) = headers_of(p.stdout)["subject"]
    token = subject.rsplit("[ref:", 1)[1].rstrip("]")
    assert token.startswith("7")  # the key id is the token's first symbol
    found = cli.run("lookup", "--config", str(config), "--index", str(cli.index),
                    "--token", token, "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["case_id"] == "C-000001"
    # Without the configured key file, a key with the same id but another secret rejects it.
    cli.run("keygen", str(cli.index / "token.key"), "--id", "7")
    rejected = cli("lookup", "--token", token)
    assert rejected.returncode == 1
    assert "invalid token" in rejected.stderr


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["lookup"], ["case"], ["case", "show"], ["case", "set-state"], ["case", "merge"],
    ["case", "split"], ["case", "parent"], ["case", "counter"], ["keygen"],
])
def test_help_has_examples(cli: Cli, command: list[str]) -> None:
    p = cli.run(*command, "--help")
    assert p.returncode == 0, p.stderr
    assert "example" in p.stdout
    assert f"casethread {' '.join(command)} " in p.stdout.split("example", 1)[1]


def test_case_help_says_what_counter_prints_and_which_changes_are_refused(cli: Cli) -> None:
    """`case counter --json` prints the counter, not a case (README, Command line: `before`,
    `after` and `next`), and the refused changes that exit 2 include a merged case's state or
    split and a split case as a parent; the help said "print the case as one JSON object"
    and named neither (walk27)."""
    def helped(*command: str) -> str:
        return " ".join(cli.run(*command, "--help").stdout.split())

    counter = helped("case", "counter")
    assert "print the case" not in counter
    assert "JSON object (before, after, next)" in counter
    assert "--json print the case as one JSON object" in helped("case", "set-state")
    assert "a merged case's state or split, a split case as a parent" in counter
