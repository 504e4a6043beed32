"""Logging set-up shared by `serve` and the other commands: one line per event, on stderr or
to syslog (facility mail, next to the MTA's own lines)."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from logging.handlers import SysLogHandler

SYSLOG_ADDRESS = "/dev/log"
STDERR_FORMAT = "%(asctime)s casethread %(levelname)s %(message)s"
LOGGER = "casethread"

# The handler this module installed last, closed when it is replaced (a syslog socket).
_installed: logging.Handler | None = None
_installed_syslog: str | None = None  # the syslog socket `_installed` writes to, if it does

# C0 controls, DEL and C1 controls.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escaped(found: re.Match[str]) -> str:
    char = found.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def one_line(text: str) -> str:
    """`text` with its control characters escaped (`\\n`, `\\x1b`): a value taken from mail
    can neither forge a second line nor reach the terminal that shows it (an ESC sequence
    retitles or clears it)."""
    # Every control character is unprintable: a printable line (nearly every one) has none,
    # told by one C loop, where the substitution scanned it in the regex engine.
    return text if text.isprintable() else _CONTROLS.sub(_escaped, text)


class OneLineFormatter(logging.Formatter):
    """A record, traceback included, on one line: journald and syslog store lines, and a header
    value with a newline or an escape sequence in it cannot forge a second log line or reach
    a terminal."""

    # The milter logs a line per message, most within the second of the line before: the
    # time's text is made once a second, not once a line.
    _second: tuple[float, str | None, str] = (-1.0, None, "")

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = record.created // 1
        held_second, held_fmt, text = self._second
        if second != held_second or datefmt != held_fmt:
            text = time.strftime(datefmt or self.default_time_format, self.converter(second))
            self._second = (second, datefmt, text)
        if datefmt or not self.default_msec_format:
            return text
        return self.default_msec_format % (text, record.msecs)


class SyslogFormatter(OneLineFormatter):
    """Postfix's convention: info and debug lines bare, the others prefixed `warning: ` etc.
    No timestamp or host: syslog adds them, and the handler's ident names the process."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


class JournalFormatter(SyslogFormatter):
    """Standard error read by journald (a systemd unit's default): the journal stamps each line
    with the time, host and `casethread[PID]` already, so the line is the syslog one, led by
    its priority as `<N>` (sd-daemon(3)), which journald strips and keeps as the entry's
    level: `journalctl -p warning -u casethread` then shows the warnings and errors."""

    _PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                   (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        priority = 7  # debug, and any level below info
        for level, value in self._PRIORITIES:
            if record.levelno >= level:
                priority = value
                break
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether standard error is a journald stream: systemd sets `JOURNAL_STREAM` to its
    `DEVICE:INODE` (systemd.exec(5)); a child whose stderr was redirected inherits the
    variable, so the numbers are compared with stderr's own."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or not a real file
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def _syslog_handler(address: str) -> tuple[logging.Handler | None, str]:
    """A SysLogHandler on the socket at `address`, or None and why not.

    SysLogHandler swallows a failed connect (and then drops records), so the socket is probed
    first; /dev/log is a datagram socket under journald and rsyslog, a stream one under some
    syslog-ng set-ups.
    """
    problem = "not a syslog socket"
    for socktype in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, socktype) as probe:
            try:
                probe.connect(address)
            except OSError as exc:
                problem = exc.strerror or str(exc)
                continue
        handler = SysLogHandler(address=address, facility=SysLogHandler.LOG_MAIL,
                                socktype=socktype)
        handler.ident = f"casethread[{os.getpid()}]: "
        handler.setFormatter(SyslogFormatter())
        return handler, ""
    return None, problem


def configure(
    level: str, target: str = "stderr", *, syslog_address: str = SYSLOG_ADDRESS
) -> logging.Handler:
    """Send the `casethread` logger to `target` ("stderr" or "syslog") at `level`.

    Without a usable syslog socket the lines go to stderr, after one warning saying so: a
    milter must start (and log somewhere) even on a host without syslog.
    """
    global _installed, _installed_syslog
    root = logging.getLogger(LOGGER)
    if (target == "syslog" and _installed_syslog == syslog_address and _installed is not None
            and _installed in root.handlers):
        # A reload keeps the syslog connection: closing it while other threads write their
        # lines through it would cost them a "Logging error" on stderr.
        root.setLevel(level.upper())
        return _installed
    fallback = ""
    handler: logging.Handler | None = None
    if target == "syslog":
        handler, problem = _syslog_handler(syslog_address)
        if handler is None:
            fallback = f"syslog socket {syslog_address}: {problem}; logging to stderr instead"
    elif target != "stderr":
        raise ValueError(f"unknown log target {target!r} (stderr or syslog)")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter() if stderr_is_journal()
                             else OneLineFormatter(STDERR_FORMAT))
    # The milter logs a line per message: its records skip what no format here uses (the
    # logging HOWTO's "Optimization": thread, process and source-line lookups).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    previous = _installed if _installed is not None and _installed in root.handlers else None
    root.handlers[:] = [handler]  # before the old one is closed: threads log on meanwhile
    root.setLevel(level.upper())
    root.propagate = False
    if previous is not None:
        previous.close()
    _installed = handler
    _installed_syslog = syslog_address if isinstance(handler, SysLogHandler) else None
    if fallback:
        root.warning("%s", fallback)
    return handler
