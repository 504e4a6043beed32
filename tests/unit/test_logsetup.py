"""logsetup.configure: one line per event on stderr, or syslog facility mail via a unix socket.

The syslog tests bind their own datagram socket in tmp_path and pass it as the address, so
they read exactly what a syslog daemon on /dev/log would receive.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from logging.handlers import SysLogHandler
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread import logsetup

LOG = logging.getLogger("casethread")
# PRI = facility * 8 + severity; facility mail = 2.
MAIL_INFO, MAIL_WARNING, MAIL_ERR, MAIL_DEBUG = "<22>", "<20>", "<19>", "<23>"


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """configure() rewires the process-wide `casethread` logger: put it back afterwards."""
    saved = (LOG.handlers[:], LOG.level, LOG.propagate)
    yield
    for handler in LOG.handlers:
        if handler not in saved[0]:
            handler.close()
    LOG.handlers[:], LOG.level, LOG.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def fake_syslog(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket standing in for /dev/log: (its path, the receiving socket)."""
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    try:
        yield path, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    data = sock.recv(65536)
    # SysLogHandler ends each message with a NUL, as syslog(3) does.
    assert data.endswith(b"\0"), data
    return data[:-1].decode("utf-8")


def nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.2)
    try:
        sock.recv(65536)
    except TimeoutError:
        return True
    return False


# --------------------------------------------------------------------------- stderr


def test_stderr_format_is_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    handler = logsetup.configure("info")
    assert isinstance(handler, logging.StreamHandler)
    LOG.info("queue_id=%s direction=inbound case=C-000001 match=new", "4Q1")
    LOG.debug("below the level")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} casethread INFO "
        r"queue_id=4Q1 direction=inbound case=C-000001 match=new",
        lines[0],
    ), lines[0]


def test_a_traceback_and_newlines_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("debug", "stderr")
    try:
        raise RuntimeError("index is full")
    except RuntimeError:
        LOG.exception("queue_id=%s error in eom", "4Q2")
    # A header value with a line break cannot forge a second log line.
    LOG.info("subject=%s", "hi\r\n2026-01-01 00:00:00,000 casethread INFO forged")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert " casethread ERROR queue_id=4Q2 error in eom\\nTraceback " in lines[0]
    assert lines[0].endswith("\\nRuntimeError: index is full")
    assert lines[1].endswith("subject=hi\\r\\n2026-01-01 00:00:00,000 casethread INFO forged")


def test_control_characters_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """C0 (ESC, BEL, tab, NUL), DEL and C1 (CSI) from mail reach no terminal that shows the
    log: an escape sequence could retitle or clear it."""
    logsetup.configure("info", "stderr")
    LOG.info("from=%s", "\"\x1b]0;PWNED\x07\x1bc\"@evil.example\t\x00\x7f\x9b2J ok\u00e9")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        'from="\\x1b]0;PWNED\\x07\\x1bc"@evil.example\\t\\x00\\x7f\\x9b2J ok\u00e9')


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.configure("warning")
    LOG.info("quiet")
    LOG.warning("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err and " casethread WARNING loud" in err
    assert LOG.propagate is False


def _stream_id(stream: object) -> str:
    found = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    return f"{found.st_dev}:{found.st_ino}"


def test_stderr_read_by_the_journal_gets_priorities_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under systemd (`JOURNAL_STREAM` naming stderr) each line was stamped twice, by journald
    and by us, and every line was the journal's priority 6 (info): `journalctl -p warning`
    showed none of our warnings or errors."""
    with (tmp_path / "journal").open("w+", encoding="utf-8") as journal:
        monkeypatch.setattr("sys.stderr", journal)
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(journal))
        logsetup.configure("debug")
        LOG.debug("probe")
        LOG.info("queue_id=4F2B3 direction=inbound")
        LOG.warning("reload refused")
        LOG.error("queue_id=4F2B3 error in eom\nsecond")
        LOG.critical("down")
        journal.seek(0)
        assert journal.read().splitlines() == [
            "<7>probe", "<6>queue_id=4F2B3 direction=inbound", "<4>warning: reload refused",
            "<3>error: queue_id=4F2B3 error in eom\\nsecond", "<2>critical: down"]


@pytest.mark.parametrize("stream", ["", "1:2", "x:y", "other"])
def test_stderr_that_is_no_journal_stream_keeps_its_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: str,
) -> None:
    """A child of the unit whose stderr was redirected inherits `JOURNAL_STREAM`: the variable
    alone does not make stderr the journal."""
    with (tmp_path / "file").open("w+", encoding="utf-8") as redirected, \
            (tmp_path / "journal").open("w", encoding="utf-8") as journal:
        monkeypatch.setattr("sys.stderr", redirected)
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(journal) if stream == "other" else stream)
        logsetup.configure("info")
        LOG.info("queue_id=4F2B3 direction=inbound")
        redirected.seek(0)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} casethread INFO "
                            r"queue_id=4F2B3 direction=inbound\n", redirected.read())


def test_unknown_target_is_refused() -> None:
    with pytest.raises(ValueError, match="journald"):
        logsetup.configure("info", "journald")


# --------------------------------------------------------------------------- syslog


def test_syslog_sends_mail_facility_with_ident_and_no_timestamp(
    fake_syslog: tuple[str, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    path, sock = fake_syslog
    handler = logsetup.configure("info", "syslog", syslog_address=path)
    assert handler.formatter is not None
    LOG.info("queue_id=%s direction=inbound case=C-000001 match=new", "4Q3")
    ident = f"casethread[{os.getpid()}]: "
    assert received(sock) == (
        f"{MAIL_INFO}{ident}queue_id=4Q3 direction=inbound case=C-000001 match=new"
    )
    LOG.warning("syslog socket went away")
    assert received(sock) == f"{MAIL_WARNING}{ident}warning: syslog socket went away"
    try:
        raise KeyError("x")
    except KeyError:
        LOG.exception("queue_id=4Q4 error in eom")
    text = received(sock)
    assert text.startswith(f"{MAIL_ERR}{ident}error: queue_id=4Q4 error in eom\\nTraceback ")
    assert "\n" not in text
    LOG.debug("not at info level")
    assert nothing_more(sock)
    # Nothing went to stderr: syslog is the only target.
    assert capsys.readouterr().err == ""


def test_syslog_debug_level_maps_to_debug_priority(
    fake_syslog: tuple[str, socket.socket],
) -> None:
    path, sock = fake_syslog
    logsetup.configure("debug", "syslog", syslog_address=path)
    LOG.debug("detail")
    assert received(sock) == f"{MAIL_DEBUG}casethread[{os.getpid()}]: detail"


def test_missing_syslog_socket_falls_back_to_stderr_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no-such-log")
    handler = logsetup.configure("info", "syslog", syslog_address=missing)
    assert isinstance(handler, logging.StreamHandler)
    LOG.info("queue_id=4Q5 direction=other")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(
        f" casethread WARNING syslog socket {missing}: No such file or directory; "
        "logging to stderr instead"
    )
    assert lines[1].endswith(" casethread INFO queue_id=4Q5 direction=other")


def test_a_file_that_is_no_socket_falls_back_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_socket = tmp_path / "log"
    not_socket.write_text("")
    handler = logsetup.configure("info", "syslog", syslog_address=str(not_socket))
    assert isinstance(handler, logging.StreamHandler)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"syslog socket {not_socket}: " in err


def test_reconfiguring_closes_the_syslog_socket(
    fake_syslog: tuple[str, socket.socket], capsys: pytest.CaptureFixture[str]
) -> None:
    path, sock = fake_syslog
    first = logsetup.configure("info", "syslog", syslog_address=path)
    assert isinstance(first, SysLogHandler)
    connection = first.socket
    assert connection.fileno() != -1
    logsetup.configure("info", "stderr")
    assert connection.fileno() == -1
    LOG.info("now on stderr")
    assert nothing_more(sock)
    assert "now on stderr" in capsys.readouterr().err


def test_a_reload_keeps_the_syslog_connection(
    fake_syslog: tuple[str, socket.socket],
) -> None:
    """Reconfiguring to the same syslog socket (every reload) keeps the handler: closing it
    while other threads log through it cost them a "Logging error"; the level still changes."""
    path, sock = fake_syslog
    first = logsetup.configure("info", "syslog", syslog_address=path)
    connection = first.socket  # type: ignore[attr-defined]
    again = logsetup.configure("warning", "syslog", syslog_address=path)
    assert again is first and connection.fileno() != -1
    LOG.info("below the new level")
    LOG.warning("still on syslog")
    assert received(sock).endswith("still on syslog")
    assert nothing_more(sock)


# --------------------------------------------------------------------------- the line's cost

CONTROL_TEXT = st.text(alphabet=st.characters(max_codepoint=0x200), max_size=60)


@given(CONTROL_TEXT)
def test_one_line_escapes_as_the_substitution_does(text: str) -> None:
    assert logsetup.one_line(text) == logsetup._CONTROLS.sub(logsetup._escaped, text)


def test_a_printable_line_skips_the_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refuses:
        def sub(self, *args: object) -> str:
            raise AssertionError("a printable line needs no substitution")

    monkeypatch.setattr(logsetup, "_CONTROLS", Refuses())
    line = "queue_id=4XyZ1abc2 direction=inbound case=C-000042 match=token · Grüße"
    assert logsetup.one_line(line) == line


@given(st.floats(min_value=0, max_value=4e9), st.sampled_from([None, "%H:%M:%S", "%d %b"]))
def test_the_time_reads_as_the_standard_formatter_writes_it(created: float,
                                                            datefmt: str | None) -> None:
    record = logging.makeLogRecord({"created": created, "msecs": created % 1 * 1000 // 1})
    formatter = logsetup.OneLineFormatter(logsetup.STDERR_FORMAT)
    for _ in range(2):  # the second time from what the first one kept
        assert formatter.formatTime(record, datefmt) == (
            logging.Formatter().formatTime(record, datefmt))


def test_the_time_is_made_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[float] = []
    strftime = time.strftime

    def counted(fmt: str, when: time.struct_time) -> str:
        made.append(time.mktime(when))
        return strftime(fmt, when)

    monkeypatch.setattr(time, "strftime", counted)
    formatter = logsetup.OneLineFormatter(logsetup.STDERR_FORMAT)
    for created in (1_772_442_900.25, 1_772_442_900.5, 1_772_442_900.75, 1_772_442_901.0):
        formatter.formatTime(logging.makeLogRecord({"created": created, "msecs": 0}))
    assert len(made) == 2
