"""A private, throw-away Postfix plus an SMTP sink, and a milter subprocess helper.

`PostfixHarness` runs a real Postfix (as root, no systemd, no syslog) from a temporary
directory, with two smtpd services on loopback ports: "inbound" (a plain smtpd, like port 25)
and "submission" (the service from contrib/postfix/master.cf, with its -o options, e.g.
milter_macro_daemon_name=ORIGINATING). Every milter setting is read from
contrib/postfix/main.cf, so the documented snippet is the tested one; only the milter socket
and the ports are substituted. Postfix relays everything to an aiosmtpd receiver that keeps
each delivered message as raw bytes with its envelope.

`MilterProcess` runs a milter (the tiny test milter or `casethread serve`) as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from casethread.core import msgid
from casethread.core.model import AliasKind
from casethread.index import keys

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRIB_POSTFIX = REPO_ROOT / "contrib" / "postfix"

MYHOSTNAME = "mx.casethread.test"
# Headers Postfix itself may add on the way through (trace headers; with header rewriting on
# for local clients also Message-ID, Date, From, To). Tests ignore these when they compare.
POSTFIX_TRACE_HEADERS = frozenset({"received", "return-path", "x-original-to", "delivered-to"})

POSTFIX_START_TIMEOUT = 15.0
POSTFIX_STOP_TIMEOUT = 10.0
MILTER_READY_TIMEOUT = 15.0
# pymilter (libmilter) needs 3.5-7 s to leave after SIGTERM.
MILTER_STOP_TIMEOUT = 15.0

# The Postfix daemons the private instance needs, all without chroot (paths stay real).
_MASTER_CF_BASE = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class HarnessError(RuntimeError):
    """The harness could not start or stop something; the message says why."""


class DeliveryTimeout(AssertionError):
    """Fewer messages reached the receiver than expected in time."""


# --------------------------------------------------------------------------- utilities


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind port 0; racy only against other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_sbin(name: str) -> str | None:
    """Path of a Postfix command (postfix, postconf, sendmail), also when /usr/sbin is not
    on PATH."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_postfix() -> str | None:
    return find_sbin("postfix")


def _postfix_ids() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam("postfix")
    except KeyError as exc:
        raise HarnessError("no user 'postfix' on this machine: is Postfix installed?") from exc
    return entry.pw_uid, entry.pw_gid


def postfix_accessible_dir(prefix: str = "casethread-e2e-") -> Path:
    """A new directory under /tmp that user postfix can enter (root:postfix, mode 0750).

    pytest's tmp_path lies below 0700 directories, where Postfix daemons (user postfix)
    cannot reach a queue or a milter socket.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    _, gid = _postfix_ids()
    os.chown(path, 0, gid)
    path.chmod(0o750)
    return path


@dataclass(frozen=True)
class MilterSocket:
    """One milter socket, in both spellings.

    `libmilter` is what a milter's --socket option takes (`inet:PORT@HOST`, `unix:PATH`);
    `postfix` is what smtpd_milters takes (`inet:HOST:PORT`, `unix:PATH`).
    """

    libmilter: str
    postfix: str
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @classmethod
    def inet(cls, port: int | None = None, host: str = "127.0.0.1") -> MilterSocket:
        port = free_port() if port is None else port
        return cls(f"inet:{port}@{host}", f"inet:{host}:{port}", host=host, port=port)

    @classmethod
    def inet6(
        cls, port: int | None = None, host: str = "::1", *, bracketed: bool = False
    ) -> MilterSocket:
        """An IPv6 TCP socket: libmilter's `inet6:PORT@HOST` (`inet6:PORT@[HOST]` with
        `bracketed`); Postfix has no inet6: scheme and takes `inet:[HOST]:PORT`."""
        port = free_port() if port is None else port
        spelt = f"[{host}]" if bracketed else host
        return cls(f"inet6:{port}@{spelt}", f"inet:[{host}]:{port}", host=host, port=port)

    @classmethod
    def unix(cls, path: Path) -> MilterSocket:
        """A unix socket at `path`; its directory must be enterable by user postfix
        (see `postfix_accessible_dir`) and the milter must create it writable for postfix."""
        path = Path(path).absolute()
        return cls(f"unix:{path}", f"unix:{path}", path=path)

    def connectable(self, timeout: float = 0.5) -> bool:
        """Whether something accepts connections on this socket right now."""
        try:
            if self.path is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(timeout)
                    s.connect(str(self.path))
            else:
                assert self.host is not None and self.port is not None
                with socket.create_connection((self.host, self.port), timeout=timeout):
                    pass
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- contrib parsing


def _logical_lines(text: str) -> list[str]:
    """Postfix config logical lines: comments and blank lines dropped, continuations joined."""
    lines: list[str] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if not lines:
                raise HarnessError(f"continuation line without a start: {raw!r}")
            lines[-1] += " " + raw.strip()
        else:
            lines.append(raw.strip())
    return lines


def parse_main_cf(text: str) -> dict[str, str]:
    """The `key = value` settings of a main.cf fragment, in file order."""
    settings: dict[str, str] = {}
    for line in _logical_lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise HarnessError(f"not a main.cf setting: {line!r}")
        settings[key.strip()] = value.strip()
    return settings


@dataclass(frozen=True)
class MasterService:
    """One master.cf entry: the 8 columns and its -o options."""

    fields: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return self.fields[0]

    def render(self, name: str, chroot: str = "n") -> str:
        fields = [name, *self.fields[1:4], chroot, *self.fields[5:]]
        lines = ["  ".join(fields)]
        lines.extend(f"  -o {key}={value}" for key, value in self.options)
        return "\n".join(lines) + "\n"


def parse_master_cf(text: str) -> list[MasterService]:
    services: list[MasterService] = []
    for line in _logical_lines(text):
        words = line.split()
        if len(words) < 8:
            raise HarnessError(f"not a master.cf entry: {line!r}")
        fields, rest = words[:8], words[8:]
        options: list[tuple[str, str]] = []
        i = 0
        while i < len(rest) and rest[i] == "-o":
            if i + 1 >= len(rest):
                raise HarnessError(f"-o without a value in: {line!r}")
            key, sep, value = rest[i + 1].partition("=")
            if not sep:
                raise HarnessError(f"-o option without '=' in: {line!r}")
            options.append((key, value))
            i += 2
        fields.extend(rest[i:])  # command arguments, if any
        services.append(MasterService(tuple(fields), tuple(options)))
    return services


def contrib_main_settings(
    milter: MilterSocket | None, contrib_dir: Path = CONTRIB_POSTFIX
) -> dict[str, str]:
    """contrib/postfix/main.cf's settings with the milter socket substituted.

    With `milter=None` the milter lists are emptied (a no-milter baseline); every other
    milter setting stays as documented.
    """
    settings = parse_main_cf((contrib_dir / "main.cf").read_text())
    if "smtpd_milters" not in settings:
        raise HarnessError(f"{contrib_dir / 'main.cf'} sets no smtpd_milters")
    settings["smtpd_milters"] = milter.postfix if milter is not None else ""
    return settings


def contrib_submission_service(contrib_dir: Path = CONTRIB_POSTFIX) -> MasterService:
    services = [s for s in parse_master_cf((contrib_dir / "master.cf").read_text())]
    smtpd = [s for s in services if s.fields[1] == "inet" and s.fields[7] == "smtpd"]
    if len(smtpd) != 1:
        raise HarnessError(f"{contrib_dir / 'master.cf'}: expected one smtpd service")
    return smtpd[0]


# --------------------------------------------------------------------------- messages


def normalize_crlf(raw: bytes) -> bytes:
    """Every line ending as CRLF, as SMTP carries it."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def smtp_transaction(smtp: smtplib.SMTP, mail_from: str, rcpts: Sequence[str], data: bytes,
                     options: Sequence[str] = ()) -> bytes:
    """EHLO, MAIL, each RCPT and DATA on a connected session; the DATA reply's text (it names
    the queue id, which smtplib's sendmail() does not return). Any refusal, even of one
    recipient of several, raises smtplib's exception for its stage (a milter's reject or
    tempfail at the end of the message: SMTPDataError)."""
    smtp.ehlo()
    code, resp = smtp.mail(mail_from, options)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, resp, mail_from)
    for rcpt in rcpts:
        code, resp = smtp.rcpt(rcpt)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({rcpt: (code, resp)})
    code, resp = smtp.data(data)
    if code != 250:
        raise smtplib.SMTPDataError(code, resp)
    return resp


def split_message(raw: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded lines and CRLFs, byte-exact) and the body."""
    raw = normalize_crlf(raw)
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, body = raw, b""
    fields: list[bytes] = []
    for line in (head + b"\r\n").splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, body


def field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def strip_headers(raw: bytes, names: Iterable[str]) -> bytes:
    """`raw` without the named header fields (case-insensitive); all else byte-identical."""
    drop = {n.lower() for n in names}
    fields, body = split_message(raw)
    kept = b"".join(f for f in fields if field_name(f) not in drop)
    return kept + b"\r\n" + body


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as the receiver behind Postfix got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes

    @property
    def body(self) -> bytes:
        return split_message(self.raw)[1]

    def headers(self) -> list[tuple[str, str]]:
        """(name as written, unfolded value) pairs in order; values decoded as UTF-8."""
        out: list[tuple[str, str]] = []
        for field in split_message(self.raw)[0]:
            name, _, value = field.partition(b":")
            text = re.sub(r"\r\n(?=[ \t])", "", value.decode("utf-8", "surrogateescape"))
            out.append((name.decode("ascii", "replace"), text.strip()))
        return out

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers() if n.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def without(self, names: Iterable[str] = ()) -> bytes:
        """The raw message minus Postfix's trace headers and the given header names."""
        return strip_headers(self.raw, {*POSTFIX_TRACE_HEADERS, *names})


class _Collector:
    """aiosmtpd handler: keeps every DATA as raw bytes, wakes waiters."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMessage] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = ReceivedMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(str(r) for r in envelope.rcpt_tos),
            raw=bytes(envelope.original_content),
        )
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()
        return "250 2.0.0 Ok: received"

    def snapshot(self) -> list[ReceivedMessage]:
        with self.cond:
            return list(self.messages)

    def wait_for(
        self, count: int, timeout: float, diagnostics: Callable[[], str]
    ) -> list[ReceivedMessage]:
        """Every message once at least `count` arrived; on timeout DeliveryTimeout with the
        MTA's `diagnostics()`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeliveryTimeout(
                        f"receiver got {len(self.messages)} of {count} messages in "
                        f"{timeout}s; {diagnostics()}"
                    )
                self.cond.wait(min(left, 0.5))
            return list(self.messages)


# --------------------------------------------------------------------------- processes


def _process_groups() -> dict[int, list[tuple[int, str]]]:
    """pgid -> [(pid, state)] for every process, from /proc."""
    groups: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[1].split()
        groups.setdefault(int(rest[2]), []).append((int(entry), rest[0]))
    return groups


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the process group that are still running (zombies count as ended)."""
    return [pid for pid, state in _process_groups().get(pgid, []) if state not in ("Z", "X")]


# --------------------------------------------------------------------------- Postfix


def send_retrying(postfix: PostfixHarness, raw: bytes, sender: str, rcpt: str,
                  outbound: bool) -> None:
    """Send to the submission service (`outbound`) or the port-25 one, again on a dropped
    connection: under many concurrent sessions Postfix's smtpd may close one at connect."""
    port = postfix.submission_port if outbound else postfix.inbound_port
    for attempt in range(5):
        try:
            postfix.send(raw, sender, [rcpt], port=port, timeout=60)
            return
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            if attempt == 4:
                raise
            time.sleep(0.2)


class PostfixHarness:
    """A private Postfix instance in a temporary directory, plus the receiver behind it.

    milter: the milter socket smtpd_milters/non_smtpd_milters point at (None: no milter).
    rewrite_local_headers: True keeps Postfix's default `local_header_rewrite_clients`
      (cleanup adds a missing Message-ID/Date for loopback clients); False sets it empty,
      as for mail from a remote app server.
    extra_main: more main.cf settings, applied last (tests only; keep milter ones in contrib).
    listen_hosts: the loopback addresses the inbound smtpd listens on, all on `inbound_port`
      (one master.cf service each); an IPv6 one (`::1`) turns on inet_protocols = all and
      adds [::1]/128 to mynetworks. The submission service stays on 127.0.0.1.
    config_files: more files below config_directory, {relative path: text}, written before
      Postfix starts (e.g. Debian's Postfix reads Cyrus SASL's smtpd.conf from
      $config_directory/sasl/ and ignores cyrus_sasl_config_path).
    The receiver announces SMTPUTF8 (aiosmtpd's default): Postfix relays SMTPUTF8 mail with
      UTF-8 addresses or header fields to it (to a next hop without it, Postfix bounces
      such mail, 5.6.7 "SMTPUTF8 is required, but was not offered").
    """

    def __init__(
        self,
        milter: MilterSocket | None,
        *,
        rewrite_local_headers: bool = True,
        myhostname: str = MYHOSTNAME,
        extra_main: Mapping[str, str] | None = None,
        contrib_dir: Path = CONTRIB_POSTFIX,
        listen_hosts: Sequence[str] = ("127.0.0.1",),
        config_files: Mapping[str, str] | None = None,
    ) -> None:
        self.milter = milter
        self.rewrite_local_headers = rewrite_local_headers
        self.myhostname = myhostname
        self.extra_main = dict(extra_main or {})
        self.contrib_dir = contrib_dir
        if not listen_hosts:
            raise HarnessError("listen_hosts is empty")
        self.listen_hosts = tuple(listen_hosts)
        self.config_files = dict(config_files or {})
        self.base_dir: Path | None = None
        self.inbound_port = 0
        self.submission_port = 0
        self.sink_port = 0
        self._collector = _Collector()
        self._controller: Controller | None = None
        self._master_pid: int | None = None
        self._postfix = find_postfix()

    # paths ---------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if self.base_dir is None:
            raise HarnessError("harness not started")
        return self.base_dir / name

    @property
    def config_dir(self) -> Path:
        return self._dir("etc")

    @property
    def queue_dir(self) -> Path:
        return self._dir("spool")

    @property
    def maillog_path(self) -> Path:
        return self._dir("log") / "maillog"

    # configuration ---------------------------------------------------------
    def main_settings(self) -> dict[str, str]:
        """The full main.cf this instance runs with (valid once ports are chosen)."""
        base = self.base_dir
        assert base is not None
        settings: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(base / "etc"),
            "queue_directory": str(base / "spool"),
            "data_directory": str(base / "data"),
            "maillog_file": str(base / "log" / "maillog"),
            "maillog_file_prefixes": str(base / "log"),
            "myhostname": self.myhostname,
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "append_dot_mydomain": "no",
            "biff": "no",
            # No DNS anywhere: the relay host is an IP literal and names come from files.
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtp_connect_timeout": "5s",
            # Deliver at once; retry soon if the receiver was not there.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "in_flow_delay": "0s",
            "delay_warning_time": "0h",
        }
        if any(":" in host for host in self.listen_hosts):
            settings["inet_protocols"] = "all"
            settings["mynetworks"] = "127.0.0.0/8 [::1]/128"
        settings.update(contrib_main_settings(self.milter, self.contrib_dir))
        if not self.rewrite_local_headers:
            settings["local_header_rewrite_clients"] = ""
        settings.update(self.extra_main)
        return settings

    def master_cf(self) -> str:
        inbound = "".join(
            f"{_endpoint(host, self.inbound_port)} inet  n  -  n  -  -  smtpd\n"
            for host in self.listen_hosts
        )
        submission = contrib_submission_service(self.contrib_dir).render(
            f"127.0.0.1:{self.submission_port}"
        )
        return _MASTER_CF_BASE + inbound + submission

    # life cycle ------------------------------------------------------------
    def start(self) -> None:
        """Start the receiver and Postfix; on any failure clean up, then raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if self._postfix is None:
            raise HarnessError(
                "Postfix is not installed (no `postfix` command): run `make test`, which "
                "installs it, or apt-get install postfix"
            )
        if os.geteuid() != 0:
            raise HarnessError("the Postfix e2e harness must run as root (Postfix starts as root)")
        postfix_uid, _ = _postfix_ids()
        # Queue and config must be reachable by user postfix: not below pytest's 0700 tmp.
        self.base_dir = Path(tempfile.mkdtemp(prefix="casethread-postfix-", dir="/tmp"))
        self.base_dir.chmod(0o755)
        for sub in ("etc", "spool", "data", "log"):
            (self.base_dir / sub).mkdir(mode=0o755)
        # master refuses to start unless data_directory belongs to mail_owner.
        os.chown(self.base_dir / "data", postfix_uid, -1)

        self.inbound_port, self.submission_port, self.sink_port = _distinct_free_ports(3)
        self._collector = _Collector()
        self._controller = Controller(
            self._collector,
            hostname="127.0.0.1",
            port=self.sink_port,
            # Without it aiosmtpd calls socket.getfqdn(), a DNS lookup.
            server_hostname="sink.casethread.test",
            ready_timeout=10.0,
        )
        self._controller.start()

        self._write_config()
        result = self._postfix_cmd("start", timeout=POSTFIX_START_TIMEOUT)
        if result.returncode != 0:
            raise HarnessError(
                f"postfix start failed ({result.returncode}): {result.stdout}{result.stderr}\n"
                f"maillog tail:\n{self.maillog_tail()}"
            )
        self._master_pid = self._read_master_pid()
        deadline = time.monotonic() + POSTFIX_START_TIMEOUT
        for port in (self.inbound_port, self.submission_port):
            while not port_listening(port):
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"Postfix smtpd not listening on 127.0.0.1:{port}\n{self.maillog_tail()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop Postfix, wait for its processes, stop the receiver, remove the directory.

        Safe to call more than once and after a failed start.
        """
        try:
            if self.base_dir is not None and self._postfix is not None:
                pid = self._master_pid or self._read_master_pid()
                if pid is not None or (self.queue_dir / "pid").exists():
                    self._postfix_cmd("stop", timeout=POSTFIX_STOP_TIMEOUT)
                if pid is not None:
                    self._wait_group_gone(pid)
        finally:
            self._master_pid = None
            if self._controller is not None:
                with contextlib.suppress(Exception):
                    self._controller.stop()
                self._controller = None
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def __enter__(self) -> PostfixHarness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running_pids(self) -> list[int]:
        """PIDs of this instance's master and daemons that are still alive."""
        return [] if self._master_pid is None else live_group_members(self._master_pid)

    @property
    def master_pid(self) -> int | None:
        return self._master_pid

    def _write_config(self) -> None:
        for relative, text in self.config_files.items():
            extra = self.config_dir / relative
            extra.parent.mkdir(parents=True, exist_ok=True)
            extra.write_text(text)
        main_cf = "".join(f"{k} = {v}\n" for k, v in self.main_settings().items())
        for name, text in (("main.cf", main_cf), ("master.cf", self.master_cf())):
            path = self.config_dir / name
            path.write_text(text)
            # Postfix re-reads a config file, pausing 0.3 s per try, until its mtime is more
            # than a second old (a guard against half-written files): backdate it.
            past = time.time() - 10
            os.utime(path, (past, past))

    def _read_master_pid(self) -> int | None:
        if self.base_dir is None:
            return None
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_group_gone(self, pgid: int) -> None:
        # master runs in its own session (pgid == its pid) and SIGTERMs the group on stop;
        # ended daemons linger as zombies until init reaps them, which is fine.
        deadline = time.monotonic() + POSTFIX_STOP_TIMEOUT
        while live_group_members(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                raise HarnessError(
                    f"Postfix processes {live_group_members(pgid)} outlived `postfix stop` by "
                    f"{POSTFIX_STOP_TIMEOUT}s; killed"
                )
            time.sleep(0.02)

    def _postfix_cmd(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self._postfix is not None
        # Output goes to a file, not a pipe: `postfix start` leaves a background
        # `postfix-script check-warn` holding its stdout, and reading a pipe to EOF would
        # wait ~2 s for it. -c needs an absolute path (a relative one makes `postfix reload`
        # fail silently).
        with tempfile.TemporaryFile() as out:
            result = subprocess.run(
                [self._postfix, "-c", str(self.config_dir), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            out.seek(0)
            text = out.read().decode(errors="replace")
        return subprocess.CompletedProcess(result.args, result.returncode, text, "")

    def postconf(self, name: str, *, expand: bool = False, service: str | None = None) -> str:
        """The value of main.cf parameter `name` as this instance's Postfix reads it
        (`expand`: with $names expanded). With `service` (e.g. "submission" or "inbound"),
        the value of that master.cf service's -o `name` instead."""
        if service is not None:
            port = {"inbound": self.inbound_port, "submission": self.submission_port}[service]
            host = self.listen_hosts[0] if service == "inbound" else "127.0.0.1"
            args = ["-h", "-P", f"{_endpoint(host, port)}/inet/{name}"]
        else:
            args = ["-xh" if expand else "-h", name]
        result = subprocess.run(
            [find_sbin("postconf") or "postconf", "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return result.stdout.strip()

    def reload(self) -> None:
        """Rewrite main.cf/master.cf from the current attributes and `postfix reload`."""
        self._write_config()
        result = self._postfix_cmd("reload", timeout=POSTFIX_START_TIMEOUT)
        if result.returncode != 0:
            raise HarnessError(f"postfix reload failed: {result.stdout}{result.stderr}")

    # mail ------------------------------------------------------------------
    def send(
        self,
        raw: bytes,
        mail_from: str,
        rcpts: Sequence[str],
        port: int | None = None,
        timeout: float = 30.0,
        host: str = "127.0.0.1",
        smtputf8: bool = False,
    ) -> str:
        """Submit `raw` over SMTP to `host`:`port` (default: the inbound port).

        Line endings are sent as CRLF. Returns Postfix's queue id. Rejections raise
        smtplib's exceptions (e.g. SMTPDataError for a milter's tempfail/reject).
        smtputf8: `MAIL FROM:<...> SMTPUTF8` (RFC 6531), for UTF-8 addresses and header fields.
        """
        data = normalize_crlf(raw)
        options = ["BODY=8BITMIME"] if any(b > 0x7F for b in data) else []
        if smtputf8:
            options.append("SMTPUTF8")
        with smtplib.SMTP(
            host,
            port or self.inbound_port,
            # Without it smtplib calls socket.getfqdn(), a DNS lookup.
            local_hostname="client.casethread.test",
            timeout=timeout,
        ) as smtp:
            resp = smtp_transaction(smtp, mail_from, rcpts, data, options)
        match = re.search(rb"queued as ([0-9A-Za-z]+)", resp)
        return match.group(1).decode() if match else ""

    def submit_local(
        self, raw: bytes, mail_from: str, rcpts: Sequence[str], timeout: float = 30.0
    ) -> None:
        """Submit `raw` with this instance's sendmail(1) (pickup -> cleanup, so
        non_smtpd_milters filter it)."""
        sendmail = find_sbin("sendmail") or "sendmail"
        result = subprocess.run(
            [sendmail, "-C", str(self.config_dir), "-i", "-f", mail_from, "--", *rcpts],
            input=raw,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")
            raise HarnessError(f"sendmail exited with {result.returncode}: {stderr}")

    @property
    def received(self) -> list[ReceivedMessage]:
        return self._collector.snapshot()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until the receiver holds at least `count` messages; return all of them.

        On timeout raise DeliveryTimeout with the tail of the Postfix maillog.
        """
        return self._collector.wait_for(
            count, timeout, lambda: f"Postfix maillog tail:\n{self.maillog_tail()}"
        )

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except (OSError, HarnessError):
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The maillog once it contains `text`: Postfix writes it through postlogd, after the
        SMTP reply that the test saw may already have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.maillog()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise HarnessError(f"{text!r} not logged in {timeout} s:\n{self.maillog_tail()}")
            time.sleep(0.05)

    def maillog_tail(self, lines: int = 40) -> str:
        return "\n".join(self.maillog().splitlines()[-lines:])

    def maillog_for(self, queue_id: str) -> list[str]:
        """The maillog lines about one queue id: what Postfix did with that message."""
        pattern = re.compile(rf"\b{re.escape(queue_id)}\b")
        return [line for line in self.maillog().splitlines() if pattern.search(line)]

    def flush(self) -> None:
        """`postqueue -f`: deliver the queued mail now (also for `defer_transports`)."""
        subprocess.run(
            [find_sbin("postqueue") or "postqueue", "-c", str(self.config_dir), "-f"],
            capture_output=True, timeout=30, check=True,
        )

    def queue_listing(self) -> str:
        """`postqueue -p`: the messages still in this instance's queue, and why."""
        result = subprocess.run(
            [find_sbin("postqueue") or "postqueue", "-c", str(self.config_dir), "-p"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        return (result.stdout + result.stderr).strip()


def _endpoint(host: str, port: int) -> str:
    """HOST:PORT as master.cf and postconf -P spell it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_listening(port: int) -> bool:
    """Whether a TCP socket listens on `port`, read from /proc/net/tcp.

    Not a test connection: every connection to Postfix's smtpd opens a milter session too.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def _distinct_free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --------------------------------------------------------------------------- milters


# What the postfix_factory / milter_factory fixtures (conftest.py) hand to tests.
PostfixFactory = Callable[..., "PostfixHarness"]
MilterFactory = Callable[..., "MilterProcess"]


class MilterStartError(HarnessError):
    """The milter exited or never accepted connections on its socket."""


class MilterProcess:
    """A milter subprocess: started, awaited on its socket, stopped by signal.

    stderr (and stdout) go to a file, read with `output()`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        ready_address: MilterSocket,
        *,
        log_path: Path | None = None,
        ready_timeout: float = MILTER_READY_TIMEOUT,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.socket = ready_address
        self.ready_timeout = ready_timeout
        # Without a log_path the output goes to a temporary file, kept in memory and removed
        # once the process has ended.
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="casethread-milter-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._final_output: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError("milter not started")
        return self.proc.pid

    def start(self) -> MilterProcess:
        """Start the process and wait (bounded) until its socket accepts connections."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in pytest does not reach it, we stop it by pid.
                start_new_session=True,
            )
        try:
            self._await_ready(self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not self.socket.connectable():
            code = proc.poll()
            if code is not None:
                raise MilterStartError(
                    f"milter exited with {code} before accepting on {self.socket.libmilter}; "
                    f"argv={self.argv}\noutput:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise MilterStartError(
                    f"milter not accepting on {self.socket.libmilter} after "
                    f"{self.ready_timeout}s; argv={self.argv}\noutput:\n{self.output()}"
                )
            time.sleep(0.02)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM without waiting."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = MILTER_STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL. Returns the exit status."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self._ended(self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL (like `kill -9`) and reap. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self._ended(self.proc.wait(10))

    def wait(self, timeout: float) -> int | None:
        """The exit status once the process ends within `timeout` s, else None."""
        if self.proc is None:
            return None
        try:
            return self._ended(self.proc.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def _ended(self, code: int) -> int:
        if self._own_log and self._final_output is None:
            self._final_output = self.output()
            self.log_path.unlink(missing_ok=True)
        return code

    def output(self) -> str:
        """Everything the milter wrote to stdout and stderr so far."""
        if self._final_output is not None:
            return self._final_output
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class IndexExport:
    """An index as `casethread export` writes it (the export must open and read it cleanly)."""

    counter: int
    cases: dict[str, int]  # id -> number
    messages: dict[str, str]  # Message-ID digest (hex, as exported) -> case id

    @classmethod
    def read(cls, index: Path) -> IndexExport:
        done = subprocess.run([*casethread_argv(), "export", "--index", str(index)],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"casethread export failed: {done.stderr}")
        counter, cases, messages = 0, {}, {}
        for line in done.stdout.splitlines():
            rec = json.loads(line)
            if rec["type"] == "meta":
                counter = int(rec["counter"])
            elif rec["type"] == "case":
                if rec["id"] in cases:
                    raise RuntimeError(f"case {rec['id']} exported twice")
                cases[rec["id"]] = int(rec["number"])
            elif rec["type"] == "alias" and rec["kind"] == "m":
                messages[rec["key"]["hash"]] = rec["case"]
        return cls(counter, cases, messages)

    def assert_numbering(self) -> None:
        """Case numbers unique and dense from 1, and the counter at the last of them."""
        numbers = sorted(self.cases.values())
        assert numbers == list(range(1, len(numbers) + 1)), "case numbers repeat or have gaps"
        assert self.counter == len(numbers), (self.counter, len(numbers))

    def case_of(self, message_id: str) -> str | None:
        """The case the Message-ID in a Message-ID field is recorded under: its alias key (as
        casethread normalises and hashes it) without the kind byte, as the export names it."""
        normalised = msgid.first_id(message_id)
        if not normalised:
            return None
        return self.messages.get(keys.alias_key(AliasKind.MESSAGE, normalised)[1:].hex())


def casethread_argv() -> list[str]:
    """The casethread command: the venv's console script when installed, else
    `python -m casethread.cli` (run it in a tmp cwd: `-m` puts the cwd on sys.path)."""
    script = Path(sys.executable).with_name("casethread")
    return [str(script)] if script.exists() else [sys.executable, "-m", "casethread.cli"]


def casethread_serve_argv(
    socket_: MilterSocket, *, config: Path | None = None, index: Path | None = None
) -> list[str]:
    """argv for the real milter (DESIGN §7); run it with MilterProcess(..., cwd=a tmp dir)."""
    argv = [*casethread_argv(), "serve", "--socket", socket_.libmilter]
    if config is not None:
        argv += ["--config", str(config)]
    if index is not None:
        argv += ["--index", str(index)]
    return argv
