"""`casethread filter` (DESIGN §7) as a subprocess: the installed console script, real LMDB."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from casethread.cli import build_parser, main
from casethread.config import load_config, render_defaults
from casethread.core import thread_index
from casethread.core.case_headers import MAX_OWN_FIELDS
from casethread.core.message import parse_raw
from casethread.engine import Engine
from casethread.index import LmdbIndex, SchemaMismatch

DATA = Path(__file__).resolve().parents[1] / "data"
SUBJECT = b"Subject: Your printer question"
TAGGED = re.compile(rb"Subject: Your printer question \[ref:([0-9A-Z]{19,31})\]")


def headers_of(output: bytes) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for h in parse_raw(output)[0]:
        found.setdefault(h.name.lower(), []).append(h.value)
    return found


def case_id(output: bytes) -> str:
    values = headers_of(output).get("x-case-id", [])
    assert len(values) == 1, values
    return values[0]


def stderr_lines(stderr: bytes) -> list[str]:
    return stderr.decode("utf-8", "replace").splitlines()


def log_lines(stderr: bytes) -> list[str]:
    """The decision lines: without the one-time note that a token key was generated."""
    return [line for line in stderr_lines(stderr) if "generated token key" not in line]


def test_outbound_then_inbound_reply_share_the_case(run_filter: Any) -> None:
    out = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert out.returncode == 0, out.stderr
    assert case_id(out.stdout) == "C-000001"
    found = headers_of(out.stdout)
    (message_id,) = found["message-id"]
    assert message_id.endswith("@support.example.com>")
    # Untouched fields and the body come out byte for byte; the Subject gains the token in
    # place; the new fields follow.
    original = (DATA / "agent-first.eml").read_bytes()
    head, _, body = original.partition(b"\n\n")
    out_head, _, out_body = out.stdout.partition(b"\n\n")
    tagged = TAGGED.search(out_head)
    assert tagged, out_head
    tok = tagged.group(1).decode()
    assert out_head.startswith(head.replace(SUBJECT, tagged.group(0)) + b"\n")
    # The text/plain body gains the token line at its end; nothing else changes.
    assert out_body == body + b"\n[ref:" + tok.encode() + b"]\n"
    assert found["references"] == [f"<{tok}.case@support.example.com>"]
    raw_index = thread_index.decode(found["thread-index"][0])
    assert raw_index is not None and len(raw_index) == thread_index.HEADER_LEN
    assert found["thread-topic"] == ["Your printer question"]
    log = log_lines(out.stderr)
    assert len(log) == 1 and "direction=outbound case=C-000001 match=new" in log[0], log
    # The first run made the index's token key, said so once, and never logged the key.
    assert len(stderr_lines(out.stderr)) == 2
    key_hex = re.search(r"key:\s*([0-9a-f]+)", (run_filter.index / "token.key").read_text())
    assert key_hex and key_hex.group(1) not in out.stderr.decode()

    reply = (DATA / "customer-reply.eml").read_bytes().replace(
        b"<PLACEHOLDER>", message_id.encode()
    )
    inb = run_filter("--direction", "inbound", "--rcpt", "support@example.com", "-", stdin=reply)
    assert inb.returncode == 0, inb.stderr
    found = headers_of(inb.stdout)
    assert found["x-case-id"] == ["C-000001"]  # the forged C-999999 is gone
    assert found["x-case-match"] == ["in-reply-to"]
    assert "x-case-duplicate" not in found
    assert found["x-case-queue"] == ["support"]
    assert found["x-case-auto"] == ["no"]
    assert found["x-case-sender"] == ["known"]  # Pat was in To of the agent's mail
    assert "x-case-token" not in found
    log = stderr_lines(inb.stderr)  # the key exists now: nothing but the decision
    assert len(log) == 1 and "direction=inbound case=C-000001 match=in-reply-to" in log[0], log

    # The same reply delivered twice is a duplicate of the same case.
    again = run_filter("--direction", "inbound", "-", stdin=reply)
    assert again.returncode == 0, again.stderr
    found = headers_of(again.stdout)
    assert found["x-case-id"] == ["C-000001"]
    assert found["x-case-match"] == ["duplicate"]
    assert found["x-case-duplicate"] == ["yes"]


def test_crlf_file_keeps_crlf(run_filter: Any) -> None:
    raw = (DATA / "agent-first.eml").read_bytes().replace(b"\n", b"\r\n")
    p = run_filter("--direction", "outbound", "-", stdin=raw)
    assert p.returncode == 0, p.stderr
    head, _, body = raw.partition(b"\r\n\r\n")
    tagged = TAGGED.search(p.stdout)
    assert tagged, p.stdout
    tok = tagged.group(1)
    assert p.stdout.startswith(head.replace(SUBJECT, tagged.group(0)) + b"\r\nMessage-ID: <")
    anchor = b"<" + tok + b".case@support.example.com>"
    assert b"\r\nX-Case-ID: C-000001\r\nReferences: " + anchor + b"\r\n" in p.stdout
    token_line = b"\r\n[ref:" + tok + b"]\r\n"
    assert p.stdout.endswith(b"\r\nThread-Topic: Your printer question\r\n\r\n" + body + token_line)
    assert b"\n" not in p.stdout.replace(b"\r\n", b"")


def test_direction_auto_with_daemon_name_is_outbound(run_filter: Any) -> None:
    p = run_filter(
        "--direction", "auto", "--daemon-name", "ORIGINATING",
        "--rcpt", "pat@customer.example.org", str(DATA / "agent-first.eml"),
    )
    assert p.returncode == 0, p.stderr
    assert case_id(p.stdout) == "C-000001"
    assert "direction=outbound" in p.stderr.decode()


def test_direction_auto_without_signals_passes_through(run_filter: Any) -> None:
    raw = (DATA / "agent-first.eml").read_bytes()
    p = run_filter(
        "--direction", "auto", "--daemon-name", "mx.example.com",
        "--rcpt", "pat@customer.example.org", "-", stdin=raw,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout == raw
    assert "direction=other" in p.stderr.decode()


def test_direction_auto_other_strips_forged_headers(run_filter: Any) -> None:
    raw = b"From: a@b.example\nX-Case-ID: C-000042\nSubject: s\n\nbody\n"
    p = run_filter("--direction", "auto", "-", stdin=raw)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"From: a@b.example\nSubject: s\n\nbody\n"


def test_direction_auto_inbound_from_rcpt_and_config(run_filter: Any, tmp_path: Path) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text('inbound:\n  addresses:\n    - "@help.example.com"\n')
    raw = b"From: pat@customer.example.org\nSubject: help\n\nplease\n"
    p = run_filter(
        "--config", str(config), "--direction", "auto", "--rcpt", "<Desk@HELP.example.com>",
        "-", stdin=raw,
    )
    assert p.returncode == 0, p.stderr
    assert case_id(p.stdout) == "C-000001"
    assert "direction=inbound" in p.stderr.decode()
    # With the built-in defaults no address is inbound.
    p = run_filter("--direction", "auto", "--rcpt", "desk@help.example.com", "-", stdin=raw)
    assert p.stdout == raw


def test_auth_user_and_client_address_signals(run_filter: Any, tmp_path: Path) -> None:
    raw = (DATA / "agent-first.eml").read_bytes()
    p = run_filter("--direction", "auto", "--auth-user", "dana", "-", stdin=raw)
    assert "direction=outbound" in p.stderr.decode()
    config = tmp_path / "nets.yaml"
    config.write_text("outbound:\n  client_networks: [192.0.2.0/24]\n")
    p = run_filter(
        "--config", str(config), "--direction", "auto", "--client-address", "192.0.2.7",
        "-", stdin=raw,
    )
    assert "direction=outbound" in p.stderr.decode()
    p = run_filter(
        "--config", str(config), "--direction", "auto", "--client-address", "198.51.100.7",
        "-", stdin=raw,
    )
    assert "direction=other" in p.stderr.decode()
    # The MTA's spellings of an IPv6 client; an IPv4-mapped one counts as its IPv4 address.
    for spelled in ("IPv6:::ffff:192.0.2.9", "[::ffff:192.0.2.9]"):
        p = run_filter("--config", str(config), "--direction", "auto", "--client-address",
                       spelled, "-", stdin=raw)
        assert "direction=outbound" in p.stderr.decode(), spelled
    # A typo is a usage error: the mail would pass as other, unstamped, without a word.
    p = run_filter("--config", str(config), "--direction", "auto", "--client-address",
                   "192.0.2.x", "-", stdin=raw)
    assert (p.returncode, p.stdout) == (2, b"")
    assert "--client-address: '192.0.2.x' is no IP address" in p.stderr.decode()


def test_outbound_without_rcpt_says_internal_recipients_cannot_apply(
        run_filter: Any, tmp_path: Path) -> None:
    """The milter always has the envelope's recipients; a file run without --rcpt has none,
    so an agent's note to a colleague opened a case there that the MTA's run would not
    open, with nothing on stderr to say why."""
    config = tmp_path / "internal.yaml"
    config.write_text('outbound:\n  internal_recipients: ["@support.example.com"]\n')
    raw = (DATA / "agent-first.eml").read_bytes().replace(
        b"pat@customer.example.org", b"bo@support.example.com")
    p = run_filter("--config", str(config), "--direction", "outbound", "-", stdin=raw)
    assert "match=new" in p.stderr.decode()
    assert "no --rcpt: outbound.internal_recipients cannot apply" in p.stderr.decode()
    p = run_filter("--config", str(config), "--direction", "outbound",
                   "--rcpt", "bo@support.example.com", "-", stdin=raw)
    assert "notes=internal-recipients" in p.stderr.decode()
    assert "no --rcpt" not in p.stderr.decode()
    # Without the setting there is nothing to say.
    p = run_filter("--direction", "outbound", "-", stdin=raw)
    assert "no --rcpt" not in p.stderr.decode()


def test_index_path_from_config(run_filter: Any, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {tmp_path / 'from-config'}\n")
    p = run_filter(
        "--config", str(config), "--direction", "outbound", str(DATA / "agent-first.eml"),
        index=False,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "from-config").is_dir()
    assert not (tmp_path / "casethread-data").exists()


def test_dry_run_writes_nothing(run_filter: Any) -> None:
    dry = run_filter("--dry-run", "--direction", "outbound", str(DATA / "agent-first.eml"))
    assert dry.returncode == 0, dry.stderr
    # The dry run shows what a real run would do...
    assert case_id(dry.stdout) == "C-000001"
    # ...but a later real run still allocates the first case number.
    real = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert real.returncode == 0, real.stderr
    assert case_id(real.stdout) == "C-000001"
    (message_id,) = headers_of(real.stdout)["message-id"]
    # A dry-run inbound reply threads through the real index but records nothing.
    reply = (
        b"From: pat@customer.example.org\nMessage-ID: <dry@customer.example.org>\n"
        b"In-Reply-To: " + message_id.encode() + b"\n\nthanks\n"
    )
    dry = run_filter("--dry-run", "--direction", "inbound", "-", stdin=reply)
    assert dry.returncode == 0, dry.stderr
    assert headers_of(dry.stdout)["x-case-match"] == ["in-reply-to"]
    real = run_filter("--direction", "inbound", "-", stdin=reply)
    found = headers_of(real.stdout)
    assert found["x-case-id"] == ["C-000001"]
    assert found["x-case-match"] == ["in-reply-to"]  # not "duplicate": the dry run left no trace


def test_dry_run_on_a_missing_index_creates_nothing(run_filter: Any, tmp_path: Path) -> None:
    p = run_filter("--dry-run", "--direction", "outbound", str(DATA / "agent-first.eml"))
    assert p.returncode == 0, p.stderr
    assert case_id(p.stdout) == "C-000001"
    assert not (tmp_path / "index").exists()


def test_bad_config_exits_2_with_one_line(run_filter: Any, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("inbound:\n  references_limit: 100\n  adresses: [support@example.com]\n")
    p = run_filter("--config", str(config), "--direction", "outbound", "-", stdin=b"A: b\n\n")
    assert p.returncode == 2
    assert p.stdout == b""
    lines = stderr_lines(p.stderr)
    assert len(lines) == 1, lines
    assert str(config) in lines[0]
    assert ":3:" in lines[0]
    assert "adresses" in lines[0]
    assert not (tmp_path / "index").exists()


def test_missing_config_exits_2(run_filter: Any, tmp_path: Path) -> None:
    p = run_filter("--config", str(tmp_path / "nope.yaml"), "--direction", "inbound", "-")
    assert p.returncode == 2
    assert len(stderr_lines(p.stderr)) == 1


def test_usage_error_exits_2(run_filter: Any) -> None:
    p = run_filter("--direction", "sideways", "-")
    assert p.returncode == 2
    assert b"--direction" in p.stderr


def test_stdin_dash_and_default(run_filter: Any) -> None:
    raw = (DATA / "agent-first.eml").read_bytes()
    explicit = run_filter("--direction", "outbound", "-", stdin=raw)
    assert explicit.returncode == 0, explicit.stderr
    assert case_id(explicit.stdout) == "C-000001"
    implicit = run_filter("--direction", "outbound", stdin=raw)  # FILE defaults to -
    assert implicit.returncode == 0, implicit.stderr
    assert case_id(implicit.stdout) == "C-000002"


@pytest.mark.parametrize("name", ["nope.eml", "a-directory"])
def test_an_unreadable_message_file_exits_1_as_its_help_says(
    run_filter: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    p = run_filter("--direction", "outbound", str(tmp_path / name))
    assert p.returncode == 1
    assert p.stdout == b""
    (line,) = stderr_lines(p.stderr)
    assert line.startswith(f"casethread: {tmp_path / name}: "), line
    assert not run_filter.index.exists()  # read before the index is opened
    with pytest.raises(SystemExit):
        build_parser().parse_args(["filter", "--help"])
    status = " ".join(capsys.readouterr().out.split("exit status:")[1].split())
    assert "1 the message file, the index or a key file cannot be read" in status, status


def test_an_empty_message_file_name_is_named_in_the_error(run_filter: Any) -> None:
    p = run_filter("--direction", "outbound", "")  # `filter "$FILE"` with FILE unset
    assert (p.returncode, p.stdout) == (1, b"")
    assert p.stderr == b"casethread: '': No such file or directory\n"


def _run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["serve", "--socket", ""], "casethread: --socket: milter.socket: '' is not a milter"),
        (["serve", "--index", ""], "casethread: --index: index.path: must not be empty"),
        (["filter", "--index", "", "--direction", "outbound", "-"],
         "casethread: --index: index.path: must not be empty"),
        (["stats", "--index", ""], "casethread: --index: index.path: must not be empty"),
        (["case", "show", "C-000001", "--index", ""],
         "casethread: --index: index.path: must not be empty"),
        (["check-config", "--config", ""], "casethread: --config: an empty file name; leave"),
    ],
)
def test_an_empty_option_value_is_a_usage_error_not_the_default(
    casethread_bin: Path, tmp_path: Path, argv: list[str], line: str
) -> None:
    """`--index "$DIR"` with DIR unset: an empty value was taken for no option, so `serve`
    listened on the default socket with a new index and key in its directory."""
    p = _run(casethread_bin, *argv, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    (only,) = p.stderr.splitlines()
    assert only.startswith(line), only
    assert list(tmp_path.iterdir()) == []  # no ./casethread-data


def test_check_config_refuses_what_serve_refuses(casethread_bin: Path, tmp_path: Path) -> None:
    """`systemctl reload` trusts check-config: a key file or socket group that stops `serve`
    must fail it too, not print OK."""
    key = tmp_path / "token.key"
    assert _run(casethread_bin, "keygen", str(key), "--id", "1", cwd=tmp_path).returncode == 0
    config = tmp_path / "c.yaml"
    config.write_text(f"tokens:\n  keys: [{key}]\n")
    ok = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (ok.returncode, ok.stdout) == (0, "OK\n"), ok.stderr
    key.chmod(0o644)
    loose = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert loose.returncode == 1 and "chmod 600" in loose.stderr and loose.stdout == ""
    config.write_text(f"tokens:\n  keys: [{tmp_path / 'missing.key'}]\n")
    missing = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert missing.returncode == 1 and "missing.key" in missing.stderr
    config.write_text(f"milter:\n  socket: unix:{tmp_path / 'm.sock'}\n"
                      "  socket_group: no-such-group-here\n")
    group = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (group.returncode, group.stderr) == (
        2, f"casethread: {config}: milter.socket_group: no such group 'no-such-group-here'\n")
    # An inet socket has no group: a key left over from a unix socket stops nothing.
    config.write_text("milter:\n  socket: inet:8894@127.0.0.1\n"
                      "  socket_group: no-such-group-here\n")
    inet = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (inet.returncode, inet.stdout) == (0, "OK\n"), inet.stderr


def test_check_config_shows_what_is_in_effect_and_the_defaults(
    casethread_bin: Path, tmp_path: Path
) -> None:
    """--show prints the settings in effect as YAML that reads back the same; a failed check
    prints none of it; --defaults reads no file, as `postconf -d`."""
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {tmp_path / 'idx'}\n"
                      "inbound:\n  addresses: [support@example.com]\n"
                      "routing:\n  rules:\n    - {queue: vip, sender: ['@vip.example.com']}\n")
    shown = _run(casethread_bin, "check-config", "--config", str(config), "--show", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "OK" not in shown.stdout.splitlines()
    assert "    - queue: vip\n" in shown.stdout and "  timeout: 60\n" in shown.stdout
    again = tmp_path / "shown.yaml"
    again.write_text(shown.stdout)
    assert load_config(again) == load_config(config)
    config.write_text("milter:\n  timeout: 0\n")
    bad = _run(casethread_bin, "check-config", "--config", str(config), "--show", cwd=tmp_path)
    assert (bad.returncode, bad.stdout) == (2, "")
    defaults = _run(casethread_bin, "check-config", "--config", str(config), "--defaults",
                    cwd=tmp_path)
    assert (defaults.returncode, defaults.stdout) == (0, render_defaults()), defaults.stderr
    both = _run(casethread_bin, "check-config", "--show", "--defaults", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_serve_refuses_a_missing_socket_group_before_it_makes_an_index(
    casethread_bin: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {tmp_path / 'idx'}\n"
                      f"milter:\n  socket: unix:{tmp_path / 'm.sock'}\n"
                      "  socket_group: no-such-group-here\n")
    p = _run(casethread_bin, "serve", "--config", str(config), cwd=tmp_path)
    assert (p.returncode, p.stderr.splitlines()[-1]) == (
        2, f"casethread: {config}: milter.socket_group: no such group 'no-such-group-here'")
    assert not (tmp_path / "idx").exists() and not (tmp_path / "m.sock").exists()


def test_check_config_warns_of_a_body_tag_inbound_cannot_read(
    casethread_bin: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {tmp_path / 'idx'}\n"
                      "inbound:\n  addresses: [s@example.com]\n"
                      "stamp:\n  text_template: \"\\nTicket: {token}\\n\"\n")
    p = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (p.returncode, p.stdout) == (0, "OK\n")
    assert p.stderr.startswith("warning: stamp.text_template does not hold {token} in the form "
                               "of tokens.subject_template ([ref:{token}])"), p.stderr


def test_an_empty_config_file_is_refused_by_check_config_and_serve(
    casethread_bin: Path, tmp_path: Path
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text("# rendered from casethread.yaml.j2\n")
    line = (f"casethread: {config}: empty configuration; run without --config for the "
            "embedded defaults\n")
    for command in (["check-config"], ["serve", "--socket", f"unix:{tmp_path / 's.sock'}"]):
        p = _run(casethread_bin, *command, "--config", str(config), cwd=tmp_path)
        assert (p.returncode, p.stdout, p.stderr) == (2, "", line), command
    assert not (tmp_path / "casethread-data").exists()


def test_a_lost_index_key_beside_cases_stops_filter_and_check_config(
    run_filter: Any, casethread_bin: Path, tmp_path: Path
) -> None:
    """Only data.mdb restored (or token.key deleted): generating a key would break every token
    in mail already sent, silently. Both refuse with one line and exit 1; a dry run warns."""
    first = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert first.returncode == 0, first.stderr
    index = tmp_path / "index"
    key = index / "token.key"
    key.unlink()
    (index / "lock.mdb").unlink()  # only data.mdb restored
    refusal = (f"casethread: the index at {index} holds 1 case but {key} is missing: restore "
               f"it from the backup, or run `casethread keygen {key}` to start a new key "
               "knowingly")
    p = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert (p.returncode, p.stdout, stderr_lines(p.stderr)) == (1, b"", [refusal])
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {index}\n")
    (index / "lock.mdb").unlink(missing_ok=True)
    check = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (check.returncode, check.stdout, check.stderr) == (1, "", refusal + "\n")
    assert not key.exists()
    # Run as root, a lock.mdb it made would be root's: the milter's user could not open it.
    assert not (index / "lock.mdb").exists()
    dry = run_filter("--dry-run", "--direction", "outbound", str(DATA / "agent-first.eml"))
    assert dry.returncode == 0 and b"throwaway key" in dry.stderr
    # Starting a new key is the operator's decision; then everything runs again.
    made = _run(casethread_bin, "keygen", str(key), "--id", "2", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    check = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "OK\n"), check.stderr
    assert run_filter("--direction", "outbound", str(DATA / "agent-first.eml")).returncode == 0


@pytest.mark.parametrize("restored", ["truncated", "empty", "missing"])
def test_check_config_reads_a_partly_restored_index_without_crashing(
    run_filter: Any, casethread_bin: Path, tmp_path: Path, restored: str
) -> None:
    """The key is missing exactly when a restore was partial: a truncated data.mdb must give
    one line, not SIGBUS (the count is read without the milter's open); an empty one is a new
    index, as serve takes it."""
    for _ in range(30):
        assert run_filter("--direction", "outbound", str(DATA / "agent-first.eml")).returncode == 0
    index = tmp_path / "index"
    (index / "token.key").unlink()
    (index / "lock.mdb").unlink()
    data = index / "data.mdb"
    if restored == "truncated":
        data.write_bytes(data.read_bytes()[:8192])
    elif restored == "empty":
        data.write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {index}\n")
    check = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    if restored == "truncated":
        assert (check.returncode, check.stdout) == (1, ""), check.stderr
        assert "data.mdb is truncated" in check.stderr and "Fatal" not in check.stderr
    elif restored == "empty":
        assert (check.returncode, check.stdout) == (0, "OK\n"), check.stderr
    else:
        assert (check.returncode, check.stdout) == (1, ""), check.stderr
        assert "holds 30 cases" in check.stderr
    assert not (index / "lock.mdb").exists()


def test_configured_key_files_run_beside_cases_without_an_index_key(
    run_filter: Any, casethread_bin: Path, tmp_path: Path
) -> None:
    key = tmp_path / "token-1.key"
    assert _run(casethread_bin, "keygen", str(key), cwd=tmp_path).returncode == 0
    config = tmp_path / "c.yaml"
    config.write_text(f"tokens:\n  keys: [{key}]\n")
    for _ in range(2):
        p = run_filter("--config", str(config), "--direction", "outbound",
                       str(DATA / "agent-first.eml"))
        assert p.returncode == 0, p.stderr
    assert not (tmp_path / "index" / "token.key").exists()
    config.write_text(f"index:\n  path: {tmp_path / 'index'}\ntokens:\n  keys: [{key}]\n")
    check = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "OK\n"), check.stderr


def test_a_dry_run_refuses_a_bad_key_file_as_a_real_run_does(
    run_filter: Any, tmp_path: Path
) -> None:
    """Troubleshooting runs `filter --dry-run`: a key it cannot use must not turn every token
    into `X-Case-Token: invalid` in silence."""
    first = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert first.returncode == 0, first.stderr
    (tmp_path / "index" / "token.key").chmod(0o644)
    for dry in ([], ["--dry-run"]):
        p = run_filter(*dry, "--direction", "outbound", str(DATA / "agent-first.eml"))
        assert p.returncode == 1 and p.stdout == b"", (dry, p.stderr)
        assert b"chmod 600" in p.stderr


def test_a_dry_run_without_an_index_says_so(run_filter: Any) -> None:
    reply = b"From: pat@customer.example.org\nSubject: Re: x [ref:1112G2MVPAVE3DGZSFX]\n\nhi\n"
    p = run_filter("--dry-run", "--direction", "inbound", "-", stdin=reply)
    assert p.returncode == 0
    err = p.stderr.decode()
    assert "dry run: no case index at" in err
    assert "dry run: no token key at" in err and "throwaway key" in err


def test_a_closed_pipe_ends_a_command_quietly(casethread_bin: Path, tmp_path: Path) -> None:
    """`casethread stats | head -1`: the reader left; no traceback, no error line, and the
    status a shell gives a writer killed by SIGPIPE (a cut `export` is no success)."""
    assert _run(casethread_bin, "filter", "--index", str(tmp_path / "index"), "--direction",
                "outbound", str(DATA / "agent-first.eml"), cwd=tmp_path).returncode == 0
    script = (
        "import os, sys\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
        "from casethread.cli import main\n"
        f"sys.exit(main(['stats', '--index', {str(tmp_path / 'index')!r}]))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
    assert (p.returncode, p.stderr) == (141, "")


class _RawStdout:
    """sys.stdout under PYTHONUNBUFFERED=1 or `python -u`: `buffer` is the raw file, whose
    write takes at most `take` bytes and says so only by the count it returns (a pipe's reader
    that leaves mid-write, a signal), then, after `cut` bytes, fails as a left pipe does."""

    def __init__(self, take: int, cut: int | None = None) -> None:
        self.take, self.cut, self.got = take, cut, bytearray()
        self.buffer = self
        self._sink = open(os.devnull, "wb")  # noqa: SIM115 (closed by the test)

    def write(self, data: bytes) -> int:
        if self.cut is not None and len(self.got) >= self.cut:
            raise BrokenPipeError(32, "Broken pipe")
        self.got += bytes(data[: self.take])
        return min(self.take, len(data))

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self._sink.fileno()


def test_filter_writes_all_of_a_message_to_a_raw_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`PYTHONUNBUFFERED=1 casethread filter ... > out.eml` printed the message's first 64 KiB
    and exit status 0 when the pipe took no more at once; a reader that left then (`| head`)
    was not told by status 141 either."""
    mail = tmp_path / "big.eml"
    mail.write_bytes(b"From: pat@customer.example.org\nSubject: big\n\n"
                     + b"line of text\n" * 20_000)
    args = ["filter", "--index", str(tmp_path / "index"), "--direction", "inbound", str(mail)]
    whole = _RawStdout(take=4096)
    monkeypatch.setattr(sys, "stdout", whole)
    assert main(args) == 0
    assert bytes(whole.got).endswith(b"line of text\n" * 100)
    assert len(whole.got) > len(mail.read_bytes())  # the message and the fields we added
    cut = _RawStdout(take=4096, cut=8192)
    monkeypatch.setattr(sys, "stdout", cut)
    try:
        assert main(args) == 141
    finally:
        cut._sink.close()
        whole._sink.close()


def test_every_command_has_help_with_examples() -> None:
    """The README promises `--help` with examples for every command."""
    def commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, str]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield f"{prefix}{name}", sub.format_help()
                    yield from commands(sub, f"{prefix}{name} ")

    found = dict(commands(build_parser()))
    assert {"serve", "check-config", "filter", "lookup", "case merge", "stats"} <= set(found)
    assert [name for name, text in found.items() if "example" not in text] == []


def test_every_option_says_what_it_takes() -> None:
    """`--help` is the reference on the server: an option listed bare (`--rcpt A`) leaves the
    reader to guess whether A is one address or several (README, Command line)."""
    def bare(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from bare(sub, f"{prefix}{name} ")
            elif action.option_strings and not action.help:
                yield prefix + "/".join(action.option_strings)

    assert list(bare(build_parser())) == []


def test_a_message_the_milter_refuses_is_not_printed(run_filter: Any) -> None:
    forged = b"".join(b"X-Case-ID: C-%d\n" % n for n in range(MAX_OWN_FIELDS + 1))
    raw = b"From: pat@customer.example.org\nSubject: s\n" + forged + b"\nbody\n"
    p = run_filter("--direction", "inbound", "-", stdin=raw)
    assert (p.returncode, p.stdout) == (3, b"")
    err = p.stderr.decode()
    assert "refused" in err and f"at most {MAX_OWN_FIELDS}" in err


@pytest.mark.parametrize("schema", [b"1", b"3"])
def test_check_config_refuses_an_index_of_another_schema(
    run_filter: Any, casethread_bin: Path, tmp_path: Path, schema: bytes
) -> None:
    """As `serve` refuses it at start, with the same line, and without making a lock.mdb
    (check-config may run as root)."""
    assert run_filter("--direction", "outbound", str(DATA / "agent-first.eml")).returncode == 0
    index = tmp_path / "index"
    env = lmdb.open(str(index), max_dbs=5)
    with env.begin(write=True) as txn:
        txn.put(b"schema", schema, db=env.open_db(b"meta", txn=txn))
    env.close()
    (index / "lock.mdb").unlink()
    config = tmp_path / "c.yaml"
    config.write_text(f"index:\n  path: {index}\n")
    check = _run(casethread_bin, "check-config", "--config", str(config), cwd=tmp_path)
    assert not (index / "lock.mdb").exists()
    with pytest.raises(SchemaMismatch) as refused:
        LmdbIndex(index, 1 << 20)
    assert f"schema version {schema.decode()}" in str(refused.value)
    assert (check.returncode, check.stdout, check.stderr) == (
        1, "", f"casethread: {refused.value}\n")


def test_explain_escapes_control_characters_as_log_lines_do(run_filter: Any,
                                                            tmp_path: Path) -> None:
    """A From whose quoted local part holds an ESC sequence (the audit's esc1, esc2): the
    trace names it (over the flood limit), escaped, never as bytes a terminal acts on."""
    config = tmp_path / "flood.yaml"
    config.write_text("inbound:\n  addresses: [support@support.example.com]\n"
                      "  flood:\n    limit: 1\n    window: 1h\n")
    err = b""
    for n in (1, 2):
        raw = (b'From: "\\\x1b]0;PWNED\\\x07\\\x1bc"@evil.example\r\n'
               b"To: support@support.example.com\r\nSubject: hello\r\n"
               b"Message-ID: <esc%d@evil.example>\r\n\r\nhi\r\n" % n)
        p = run_filter("--config", str(config), "--direction", "inbound", "--rcpt",
                       "support@support.example.com", "--explain", "-", stdin=raw)
        assert p.returncode == 0, p.stderr
        err += p.stderr
    assert b'  loop: "\\x1b]0;pwned\\x07\\x1bc"@evil.example sent more than' in err
    assert re.search(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", err) is None, err


@pytest.mark.parametrize("app_id", [b"-", b"..", b":"])
def test_an_app_case_id_of_no_letter_or_digit_is_a_bad_one(run_filter: Any,
                                                           app_id: bytes) -> None:
    """The audit's f5 input: `X-Case-ID: -` named a case `-` (`case=-` in the log line, which
    means no case). Now it is ignored and noted, and the mail opens a case of ours."""
    raw = (b"From: Dana Agent <dana@support.example.com>\n"
           b"To: Pat <pat@customer.example.org>\nSubject: Hello\n"
           b"Date: Mon, 30 Nov 2026 12:00:00 +0000\nX-Case-ID: " + app_id + b"\n"
           b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\ntext\n")
    p = run_filter("--direction", "outbound", "-", stdin=raw)
    assert p.returncode == 0, p.stderr
    assert case_id(p.stdout) == "C-000001"
    (line,) = log_lines(p.stderr)
    assert " case=C-000001 match=new " in line and "bad-app-case-id" in line, line


def test_python_m_casethread_is_the_command(casethread_bin: Path, tmp_path: Path) -> None:
    """`python -m casethread` (a checkout run in place) is the installed command."""
    milter_root = Path(__file__).resolve().parents[2] / "milter"
    by_module = subprocess.run(
        [sys.executable, "-m", "casethread", "--version"], capture_output=True, text=True,
        cwd=tmp_path, env={"PYTHONPATH": str(milter_root), "PATH": "/usr/bin:/bin"},
        timeout=60, check=False)
    installed = _run(casethread_bin, "--version", cwd=tmp_path)
    assert (by_module.returncode, by_module.stdout) == (0, installed.stdout), by_module.stderr
    assert by_module.stdout.startswith("casethread ")


def test_inbound_body_is_read_only_up_to_read_limit_as_the_milter_reads_it(
    run_filter: Any, tmp_path: Path
) -> None:
    # The milter keeps inbound.read_limit bytes of a body its header fields do not resolve
    # (engine.body_wanted) and tells the MTA to skip the rest: a token past it is not seen.
    # filter once read the whole body, and threaded what the milter opens a new case for.
    config = tmp_path / "casethread.yaml"
    config.write_text("inbound:\n  addresses: [support@support.example.com]\n"
                      "  read_limit: 1KiB\n")
    out = run_filter("--config", str(config), "--direction", "outbound",
                     str(DATA / "agent-first.eml"))
    tagged = TAGGED.search(out.stdout)
    assert out.returncode == 0 and tagged, out.stderr
    tag = b"[ref:" + tagged.group(1) + b"]"

    def reply(padding: int, message_id: str) -> bytes:
        return (b"From: Pat Customer <pat@customer.example.org>\nTo: support@support.example.com\n"
                b"Subject: Re: printer\nMessage-ID: " + message_id.encode() + b"\n\n"
                + b"x" * padding + b"\n> " + tag + b"\n")

    inside = run_filter("--config", str(config), "--direction", "auto", "--rcpt",
                        "support@support.example.com", "-", stdin=reply(100, "<in@pat>"))
    assert (case_id(inside.stdout), headers_of(inside.stdout)["x-case-match"]) == (
        "C-000001", ["token"])
    past = reply(2000, "<past@pat>")
    beyond = run_filter("--config", str(config), "--direction", "auto", "--rcpt",
                        "support@support.example.com", "-", stdin=past)
    assert beyond.returncode == 0, beyond.stderr
    assert (case_id(beyond.stdout), headers_of(beyond.stdout)["x-case-match"]) == (
        "C-000002", ["new"])
    assert beyond.stdout.endswith(past.partition(b"\n\n")[2])  # the body leaves whole


def test_inbound_mail_its_header_fields_resolve_logs_body_skipped(run_filter: Any) -> None:
    out = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    tagged = TAGGED.search(out.stdout)
    assert out.returncode == 0 and tagged, out.stderr
    reply = (b"From: pat@customer.example.org\nSubject: Re: " + tagged.group(0)[9:]
             + b"\n\nthanks\n")
    inb = run_filter("--direction", "inbound", "-", stdin=reply)
    (line,) = log_lines(inb.stderr)
    assert "match=token" in line and line.endswith(" body=skipped"), line


@pytest.mark.parametrize("fields", [
    b"Auto-Submitted: auto-replied\n",  # a text out-of-office
    b"Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=b\n",  # a responder's, its logo attached
    b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b\n",  # Exchange's
])
def test_an_out_of_office_under_the_null_sender_resolved_by_its_subject_skips_the_body(
        run_filter: Any, fields: bytes) -> None:
    """RFC 3834 has responders send under the null sender: the bounce strategy, which reads
    attached mail of other null-sender mail (a carrier's error notice), read such a reply's
    body, though its Subject names the case, so the milter read every out-of-office whole."""
    out = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    tagged = TAGGED.search(out.stdout)
    assert out.returncode == 0 and tagged, out.stderr
    body = (b"--b\nContent-Type: text/plain\n\nI am away.\n--b--\n" if b"boundary" in fields
            else b"I am away.\n")
    reply = (b"From: pat@customer.example.org\n" + fields + b"Subject: Automatic reply: "
             + tagged.group(0)[9:] + b"\n\n" + body)
    inb = run_filter("--direction", "inbound", "--mail-from", "<>", "-", stdin=reply)
    (line,) = log_lines(inb.stderr)
    assert "match=token" in line and line.endswith(" body=skipped"), line


def test_a_dragonfly_bounce_without_mail_from_is_a_bounce(run_filter: Any) -> None:
    """DragonFly Mail Agent writes `From: MAILER-DAEMON <>` and no Auto-Submitted: saved
    without its envelope, the From says the null sender, as `--mail-from '<>'` would."""
    out = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert out.returncode == 0, out.stderr
    (message_id,) = headers_of(out.stdout)["message-id"]
    bounce = (b"Received: from MAILER-DAEMON\n\tid 1a2b3\n\tby mx.customer.example.org "
              b"(DragonFly Mail Agent v0.13);\n\tMon, 30 Nov 2026 09:15:07 +0000\n"
              b"X-Original-To: <pat@customer.example.org>\nFrom: MAILER-DAEMON <>\n"
              b"To: dana@support.example.com\nSubject: Mail delivery failed\n"
              b"Message-Id: <1a2b3@mx.customer.example.org>\n\n"
              b"There was an error delivering your mail to <pat@customer.example.org>.\n\n"
              b"Message headers follow.\n\nMessage-ID: " + message_id.encode() + b"\n")
    for envelope in ([], ["--mail-from", "<>"]):
        inb = run_filter("--direction", "inbound", "--dry-run", *envelope, "-", stdin=bounce)
        found = headers_of(inb.stdout)
        assert (found["x-case-auto"], found["x-case-match"], found["x-case-id"]) == (
            ["bounce"], ["bounce"], ["C-000001"]), (envelope, inb.stderr)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_body_without_a_final_line_break_ends_as_the_mta_ends_it(
    run_filter: Any, newline: bytes
) -> None:
    # SMTP and sendmail(1) end the last line of a body: the milter's body always ends in one.
    raw = (DATA / "agent-first.eml").read_bytes().rstrip(b"\n").replace(b"\n", newline)
    assert not raw.endswith(b"\n")
    p = run_filter("--direction", "outbound", "-", stdin=raw)
    tagged = TAGGED.search(p.stdout)
    assert p.returncode == 0 and tagged, p.stderr
    tail = newline.join([b"Dana", b"", b"[ref:" + tagged.group(1) + b"]", b""])
    assert p.stdout.endswith(newline + tail), p.stdout[-60:]
    passed = run_filter("--direction", "auto", "-", stdin=raw)
    assert passed.stdout == raw + newline


def test_outbound_unstamped_reply_still_threads_by_a_quoted_body_token(
    run_filter: Any, tmp_path: Path
) -> None:
    """With stamping off, an agent's reply whose only token is in the quoted body continues
    that case (the body is read up to read_limit), as it does with stamping on."""
    config = tmp_path / "casethread.yaml"
    config.write_text("stamp:\n  html: false\n  text: false\n")
    first = run_filter("--config", str(config), "--direction", "outbound",
                       str(DATA / "agent-first.eml"))
    tagged = TAGGED.search(first.stdout)
    assert first.returncode == 0 and tagged, first.stderr
    reply = (b"From: dana@support.example.com\nTo: pat@customer.example.org\n"
             b"Subject: Re: printer\n\nMore info.\n\n> [ref:" + tagged.group(1) + b"]\n")
    out = run_filter("--config", str(config), "--direction", "outbound", "-", stdin=reply)
    assert (case_id(out.stdout), headers_of(out.stdout).get("x-case-match")) == (
        "C-000001", None), out.stderr  # outbound has no X-Case-Match; the case id tells


def test_a_mailbox_from_line_on_top_is_read_as_postfix_reads_it(run_filter: Any) -> None:
    """A message saved from a mailbox (or a `git format-patch` file) starts with a "From "
    line. Postfix's cleanup makes it an X-Mailbox-Line field before the milter sees the mail,
    so the milter stamps the message below it; `filter` read the whole file as a body (no
    Subject, no Message-ID: a new Subject field, the token line after the header)."""
    original = (DATA / "agent-first.eml").read_bytes()
    postmark = b"From dana@support.example.com Mon Mar  2 09:15:00 2026\n"
    p = run_filter("--direction", "outbound", "-", stdin=postmark + original)
    assert p.returncode == 0, p.stderr
    tagged = TAGGED.search(p.stdout)
    assert tagged, p.stdout[:400]
    assert p.stdout.startswith(b"X-Mailbox-Line: " + postmark), p.stdout[:200]
    found = headers_of(p.stdout)
    assert len(found["subject"]) == 1 and len(found["from"]) == 1, found
    # Only at the top: below a field, such a line starts the body, for Postfix too.
    head, _, body = original.partition(b"\n\n")
    later = run_filter("--direction", "auto", "-", stdin=head + b"\n" + postmark + body)
    assert later.stdout == head + b"\n\n" + postmark + body


@pytest.mark.parametrize("tagged", [False, True], ids=["in-reply-to", "subject-tag"])
def test_explain_of_a_saved_reply_shows_its_strategies_too(run_filter: Any,
                                                           tagged: bool) -> None:
    """README, Troubleshooting check 4: "save the reply and run filter --explain --dry-run".
    A reply saved from the mailbox went through the milter, so its Message-ID is recorded and
    the decision is `duplicate`; the trace showed only that line, never why the reply had
    landed where it did (the walkthrough's broken reply: a damaged Subject tag). The trace now
    adds what the strategies find for it, read only: the copy keeps its case. A reply whose
    header fields name its case (our Subject tag: the body is skipped, as the milter skips
    it) showed those strategies twice, once above the `auto:` line (walk27)."""
    out = run_filter("--direction", "outbound", str(DATA / "agent-first.eml"))
    assert out.returncode == 0, out.stderr
    found = headers_of(out.stdout)
    (message_id,) = found["message-id"]
    reply = (DATA / "customer-reply.eml").read_bytes().replace(
        b"<PLACEHOLDER>", message_id.encode())
    if tagged:
        reply = reply.replace(b"Subject: Re: Your printer question",
                              b"Subject: Re: " + found["subject"][0].encode())
    first = run_filter("--direction", "inbound", "--rcpt", "support@example.com", "-",
                       stdin=reply)
    assert first.returncode == 0, first.stderr
    assert first.stderr.rstrip().endswith(b"body=skipped") == tagged, first.stderr
    saved = first.stdout  # as delivered: with our X-Case-* fields
    again = run_filter("--direction", "inbound", "--rcpt", "support@example.com", "--explain",
                       "--dry-run", "-", stdin=saved)
    assert again.returncode == 0, again.stderr
    assert headers_of(again.stdout)["x-case-match"] == ["duplicate"]
    trace = stderr_lines(again.stderr)
    explained = trace[trace.index("explain:") + 1:]
    assert explained[:2] == [
        "  auto: no", "  duplicate: this Message-ID is already recorded for C-000001 -> C-000001"
    ], explained
    by = "token" if tagged else "in-reply-to"
    assert explained.count(f"  {by}: -> C-000001") == 1, explained
    assert explained.count("  bounce: no match") == 1, explained
    assert explained[-1] == f"  as a first delivery: -> C-000001 by {by}", explained
    # Without --explain a duplicate runs no strategy (the milter's path).
    plain = run_filter("--direction", "inbound", "--rcpt", "support@example.com", "--dry-run",
                       "-", stdin=saved)
    assert plain.returncode == 0 and b"in-reply-to" not in plain.stderr


def test_filter_prints_the_message_as_it_came_when_removing_forged_fields_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    """As the milter's fallback: an error while deciding, and another while removing the
    forged X-Case-* fields, still print the message (as it came) with status 0. It ended in a
    traceback and status 1, after a line saying the message passed."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(Engine, "process", broken)  # `unchanged` decides through it too
    raw = b"From: pat@customer.example.org\nX-Case-ID: C-000001\nSubject: hi\n\nbody\n"
    mail = tmp_path / "mail.eml"
    mail.write_bytes(raw)
    args = ["filter", "--index", str(tmp_path / "index"), "--direction", "inbound",
            "--rcpt", "support@example.com", str(mail)]
    assert main(args) == 0
    out, err = capfdbinary.readouterr()
    assert out == raw
    assert b"queue_id=filter internal error" in err
    assert b"queue_id=filter could not remove forged fields; message passed unchanged" in err
