"""A private, throw-away Sendmail, configured from contrib/sendmail/casethread.mc.

Sendmail conflicts with the postfix package, so it is never installed: Debian's packages are
unpacked into a private directory by contrib/sendmail/unpack-sendmail.sh, and the daemon runs
from there (LD_LIBRARY_PATH for the two libraries a Postfix machine lacks). Its sendmail.cf is
built with m4 from the unpacked cf macros: a small base (what Debian's /etc/mail/sendmail.mc
would give: paths, a port-25 daemon, a smart host) plus contrib/sendmail/casethread.mc as
written, with only the milter socket and the submission port substituted.

Sendmail sleeps 60 s at start-up when the host's name has no dot and does not resolve (this
machine's name is a bare "vm"), so the daemon runs in its own UTS namespace (`unshare --uts`,
root only) whose hostname is a FQDN. It logs only through syslog(3), and a test machine may
have no syslog daemon: the daemon also gets its own mount namespace, where /dev is overlaid
with a layer that adds /dev/log as a link to the harness's own receiver. Nothing else of the
machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller

from .harness import (
    REPO_ROOT,
    HarnessError,
    MilterSocket,
    ReceivedMessage,
    _Collector,
    _distinct_free_ports,
    live_group_members,
    normalize_crlf,
    port_listening,
    smtp_transaction,
)

CONTRIB_SENDMAIL = REPO_ROOT / "contrib" / "sendmail"
CONTRIB_MC = CONTRIB_SENDMAIL / "casethread.mc"
CONTRIB_SUBMIT_MC = CONTRIB_SENDMAIL / "submit.mc"
# Debian's /etc/mail/submit.mc: the MSP hands mail to the port-25 daemon.
DEBIAN_MSP_FEATURE = "FEATURE(`msp', `[127.0.0.1]', `25')dnl\n"
UNPACK_SCRIPT = CONTRIB_SENDMAIL / "unpack-sendmail.sh"
# The script's default; CASETHREAD_SENDMAIL_ROOT moves it (for both).
SENDMAIL_ROOT = Path(os.environ.get("CASETHREAD_SENDMAIL_ROOT", "/var/tmp/casethread-sendmail"))

# What the test substitutes in the contrib snippet; each must occur exactly once there.
CONTRIB_SOCKET = "S=inet:8894@127.0.0.1"
CONTRIB_SUBMISSION_PORT = "Port=submission"
# The filter's F= flag in the INPUT_MAIL_FILTER line (contrib_mc can replace it).
FILTER_FLAGS = re.compile(r"^(INPUT_MAIL_FILTER\(.*?), F=\w*", re.M)

MYHOSTNAME = "mx.casethread.test"
UNPACK_TIMEOUT = 300.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class SendmailInstall:
    """Debian's Sendmail, unpacked (not installed) below `root`."""

    root: Path

    @property
    def tree(self) -> Path:
        return self.root / "root"

    @property
    def sendmail(self) -> Path:
        return self.tree / "usr" / "libexec" / "sendmail" / "sendmail"

    @property
    def cf_dir(self) -> Path:
        return self.tree / "usr" / "share" / "sendmail" / "cf"

    @property
    def lib_dirs(self) -> list[Path]:
        """Directories of the unpacked shared libraries (liblockfile, libwrap)."""
        return sorted({p.parent for p in self.tree.glob("usr/lib/*/lib*.so.*")})

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in self.lib_dirs]
        if env.get("LD_LIBRARY_PATH"):
            paths.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = ":".join(paths)
        return env


def ensure_sendmail(root: Path = SENDMAIL_ROOT) -> SendmailInstall:
    """The unpacked Sendmail, unpacking it first when needed (the script is idempotent)."""
    if os.geteuid() != 0:
        raise HarnessError("the Sendmail e2e harness must run as root (Sendmail starts as root)")
    for tool in ("m4", "unshare", "hostname", "apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise HarnessError(
                f"`{tool}` is missing: the Sendmail e2e test needs m4 (apt-get install m4), "
                "util-linux, hostname, apt and dpkg"
            )
    result = subprocess.run(
        ["sh", str(UNPACK_SCRIPT), str(root)],
        capture_output=True, text=True, timeout=UNPACK_TIMEOUT, check=False,
    )
    install = SendmailInstall(root)
    if result.returncode != 0 or not os.access(install.sendmail, os.X_OK):
        raise HarnessError(
            f"{UNPACK_SCRIPT} {root} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return install


def contrib_mc(
    milter: MilterSocket, submission_port: int, path: Path = CONTRIB_MC,
    filter_flags: str | None = None,
) -> str:
    """contrib/sendmail/casethread.mc with the milter socket and the submission port
    substituted; everything else as written, except the filter's F= flag when
    `filter_flags` is given ("" drops it: what the contrib choice is measured against)."""
    text = path.read_text()
    for needle in (CONTRIB_SOCKET, CONTRIB_SUBMISSION_PORT):
        if text.count(needle) != 1:
            raise HarnessError(f"{path}: expected {needle!r} exactly once")
    if filter_flags is not None:
        text, found = FILTER_FLAGS.subn(
            lambda m: m.group(1) + (f", F={filter_flags}" if filter_flags else ""), text)
        if found != 1:
            raise HarnessError(f"{path}: expected one INPUT_MAIL_FILTER line with F=")
    # Sendmail's S= takes libmilter's spelling: inet:PORT@HOST or unix:/path.
    text = text.replace(CONTRIB_SOCKET, f"S={milter.libmilter}")
    return text.replace(CONTRIB_SUBMISSION_PORT, f"Port={submission_port}")


def base_mc(work: Path, inbound_port: int, sink_port: int, snippet: Path) -> str:
    """The rest of a sendmail.mc (Debian's own sendmail.mc plays this part on a real host):
    private paths, no DNS, a plain daemon on `inbound_port` and everything relayed to
    127.0.0.1:`sink_port`. The contrib snippet is included where the README says, before the
    MAILER() lines."""
    return f"""\
divert(-1)
divert(0)dnl
OSTYPE(`linux')dnl
define(`MAIL_SETTINGS_DIR', `{work}/')dnl
define(`confDOMAIN_NAME', `{MYHOSTNAME}')dnl
define(`QUEUE_DIR', `{work}/mqueue')dnl
define(`confPID_FILE', `{work}/sendmail.pid')dnl
define(`STATUS_FILE', `{work}/statistics')dnl
define(`HELP_FILE', `{work}/helpfile')dnl
define(`ALIAS_FILE', `')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confSERVICE_SWITCH_FILE', `{work}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confTO_CONNECT', `5s')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={inbound_port}, Addr=127.0.0.1')dnl
include(`{snippet}')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


def contrib_msp_feature(path: Path = CONTRIB_SUBMIT_MC) -> str:
    """The FEATURE(`msp') line of contrib/sendmail/submit.mc, as written."""
    lines = [x for x in path.read_text().splitlines() if x.startswith("FEATURE(`msp'")]
    if len(lines) != 1:
        raise HarnessError(f"{path}: expected one FEATURE(`msp') line")
    return lines[0] + "\n"


def submit_mc(work: Path, msp_feature: str) -> str:
    """A submit.mc (Debian's /etc/mail/submit.mc plays this part on a real host): private
    paths, no DNS, then `msp_feature`, the FEATURE(`msp') line under test. The MSP runs as
    user nobody (Debian's is smmsp, which a Postfix machine lacks; Sendmail refuses to run an
    MSP as root)."""
    return f"""\
divert(-1)
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{MYHOSTNAME}')dnl
define(`MSP_QUEUE_DIR', `{work}/clientmqueue')dnl
define(`confPID_FILE', `{work}/sm-client.pid')dnl
define(`STATUS_FILE', `{work}/sm-client.st')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confRUN_AS_USER', `nobody')dnl
define(`confSERVICE_SWITCH_FILE', `{work}/service.switch')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
{msp_feature}"""


# The MSP's relay mailer (the MSP's hop to the MTA) and its port: none is 25, `MSA' gives 587.
_MSP_RELAY_ARGS = re.compile(r"^(Mrelay,.*\n(?:[ \t]+(?!A=).*\n)*[ \t]+)A=TCP \$h(?: (\d+))?$",
                             re.M)


def render_cf(install: SendmailInstall, mc: Path, out: Path) -> str:
    """Build sendmail.cf from `mc` with m4, as `make -C /etc/mail` does. Returns m4's stderr
    (warnings); raises on failure."""
    cf_dir = install.cf_dir
    result = subprocess.run(
        ["m4", f"-D_CF_DIR_={cf_dir}/", str(cf_dir / "m4" / "cf.m4"), str(mc)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if result.returncode != 0 or not result.stdout:
        raise HarnessError(f"m4 {mc} failed ({result.returncode}): {result.stderr}")
    out.write_text(result.stdout)
    return result.stderr


# Where Debian's sendmail.mc and the cf macros name their own tree and /etc/mail/m4.
DEBIAN_CF_DIR = "/usr/share/sendmail/cf/"
DEBIAN_SITE_M4_DIR = "/etc/mail/m4/"


def debian_sendmail_cf(install: SendmailInstall, work: Path, edit: Callable[[str], str]) -> str:
    """Build `work`/sendmail.cf as Debian's `make -C /etc/mail` does, from the package's own
    sendmail.mc (what sendmail-bin's postinst installs as /etc/mail/sendmail.mc) after `edit`
    (a sysadmin's changes): m4, then the .mc appended as `# ` comment lines. The package's
    absolute paths point into a copy of its cf tree (a Postfix machine has no
    /usr/share/sendmail) and at empty dialup.m4/provider.m4 (created by its postinst).
    Returns m4's stderr."""
    cf_dir = work / "cf"
    shutil.copytree(install.cf_dir, cf_dir)
    site = work / "m4"
    site.mkdir()
    for name in ("dialup.m4", "provider.m4"):
        (site / name).write_text("")

    def relocate(text: str) -> str:
        return (text.replace(DEBIAN_CF_DIR, f"{cf_dir}/")
                .replace(DEBIAN_SITE_M4_DIR, f"{site}/"))

    for m4_file in cf_dir.rglob("*.m4"):
        m4_file.write_text(relocate(m4_file.read_text()))
    mc_text = edit((install.cf_dir / "debian" / "sendmail.mc").read_text())
    mc = work / "sendmail.mc"
    mc.write_text(relocate(mc_text))
    result = subprocess.run(["m4", str(mc)], capture_output=True, text=True, timeout=30,
                            check=False)
    if result.returncode != 0 or not result.stdout:
        raise HarnessError(f"m4 {mc} failed ({result.returncode}): {result.stderr}")
    comments = "".join(f"# {line}\n" for line in mc_text.splitlines())
    (work / "sendmail.cf").write_text(
        result.stdout + "### /etc/mail/sendmail.mc ###\n" + comments)
    return result.stderr


# Run inside `unshare --uts --mount`: set the hostname, give Sendmail a /dev/log (a tmpfs
# layer over /dev, private to the namespace and gone with it), then exec Sendmail.
NAMESPACE_SETUP = """\
hostname "$0"
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay overlay -o "lowerdir=/dev,upperdir=$1/upper,workdir=$1/work" /dev
ln -s "$2" /dev/log
if [ -n "${CASETHREAD_SASL_DIR:-}" ]; then mount --bind "$CASETHREAD_SASL_DIR" /usr/lib/sasl2; fi
shift 2
exec "$@"
"""


class _SyslogReceiver:
    """What Sendmail sends to /dev/log (RFC 3164 datagrams), kept as text lines."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o666)  # Sendmail's delivery agents may log as another user
        self._sock.settimeout(0.1)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sendmail-syslog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # "<PRI>Mmm dd hh:mm:ss sendmail[pid]: text": the priority prefix is noise.
            line = re.sub(r"^<\d+>", "", data.decode(errors="replace")).rstrip("\n\0")
            with self._lock:
                self._lines.append(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class SendmailHarness:
    """A private Sendmail daemon with a plain port ("inbound", Name=MTA) and the contrib
    submission daemon (Name=ORIGINATING), relaying everything to an aiosmtpd receiver.
    `filter_flags` replaces the snippet's F= flag (see contrib_mc). `mc_before`/`mc_after`:
    sendmail.mc lines put before/after the snippet, e.g. another INPUT_MAIL_FILTER (Sendmail
    calls filters in the order they are declared).

    `sasl_dir`: a directory holding Cyrus SASL's Sendmail.conf (and the sasldb it names),
    for SMTP AUTH. Sendmail gives libsasl2 no configuration path and clears its environment
    (so SASL_CONF_PATH is not seen): libsasl2 reads Sendmail.conf from its built-in search
    path, /etc/sasl2:/etc/sasl:/usr/lib/<multiarch>/sasl2:/usr/lib/sasl2. The daemon's own
    mount namespace gets `sasl_dir` bind-mounted over /usr/lib/sasl2 (nothing of the machine
    changes), so Sendmail.conf must name the sasldb by that path: /usr/lib/sasl2/sasldb2.
    Sendmail checks that file's safety: root's, not group- or world-writable."""

    def __init__(
        self, milter: MilterSocket, install: SendmailInstall, filter_flags: str | None = None,
        *, mc_before: str = "", mc_after: str = "", sasl_dir: Path | None = None,
    ) -> None:
        self.milter = milter
        self.install = install
        self.filter_flags = filter_flags
        self.mc_before = mc_before
        self.mc_after = mc_after
        self.sasl_dir = sasl_dir
        self.base_dir: Path | None = None
        self.inbound_port = 0
        self.submission_port = 0
        self.sink_port = 0
        self.m4_warnings = ""
        self._collector = _Collector()
        self._controller: Controller | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._syslog: _SyslogReceiver | None = None

    def _path(self, name: str) -> Path:
        if self.base_dir is None:
            raise HarnessError("harness not started")
        return self.base_dir / name

    @property
    def cf_path(self) -> Path:
        return self._path("sendmail.cf")

    # life cycle ------------------------------------------------------------
    def start(self) -> SendmailHarness:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="casethread-sendmail-", dir="/tmp"))
        self.base_dir.chmod(0o755)
        (self.base_dir / "mqueue").mkdir(mode=0o700)
        # Host names from /etc/hosts only: no resolver on a loopback-only machine.
        (self.base_dir / "service.switch").write_text("hosts files\naliases files\n")
        self.inbound_port, self.submission_port, self.sink_port = _distinct_free_ports(3)

        self._collector = _Collector()
        self._controller = Controller(
            self._collector, hostname="127.0.0.1", port=self.sink_port,
            server_hostname="sink.casethread.test", ready_timeout=10.0,
        )
        self._controller.start()

        snippet = self._path("casethread.mc")
        snippet.write_text(
            self.mc_before
            + contrib_mc(self.milter, self.submission_port, filter_flags=self.filter_flags)
            + self.mc_after)
        mc = self._path("sendmail.mc")
        mc.write_text(base_mc(self.base_dir, self.inbound_port, self.sink_port, snippet))
        self.m4_warnings = render_cf(self.install, mc, self.cf_path)

        self._syslog = _SyslogReceiver(self._path("syslog.sock"))
        dev_layer = self._path("dev-layer")
        dev_layer.mkdir()
        argv = [
            "unshare", "--uts", "--mount", "--", "sh", "-ec", NAMESPACE_SETUP, MYHOSTNAME,
            str(dev_layer), str(self._path("syslog.sock")),
            str(self.install.sendmail), "-bD", "-C", str(self.cf_path),
            # -X writes every SMTP exchange (both directions, with the message) to a file.
            "-X", str(self._path("trace.log")),
        ]
        env = self.install.env()
        if self.sasl_dir is not None:
            for shadowing in ("/etc/sasl2/Sendmail.conf", "/etc/sasl/Sendmail.conf"):
                if os.path.exists(shadowing):
                    raise HarnessError(f"{shadowing} exists and comes first in libsasl2's "
                                       "search path: the private Sendmail.conf would be ignored")
            if not os.path.isdir("/usr/lib/sasl2"):
                raise HarnessError("/usr/lib/sasl2 is missing (package libsasl2-2): there is "
                                   "nothing to mount the private SASL directory on")
            env["CASETHREAD_SASL_DIR"] = str(self.sasl_dir)
        with open(self._path("sendmail.out"), "wb") as out:
            self._proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.inbound_port, self.submission_port):
            while not port_listening(port):
                code = self._proc.poll()
                if code is not None or time.monotonic() > deadline:
                    raise HarnessError(
                        f"Sendmail not listening on 127.0.0.1:{port} (exit status {code}):\n"
                        f"{self.diagnostics()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the daemon, wait for it and its delivery children, stop the receiver,
        remove the directory. Safe to call more than once and after a failed start."""
        try:
            if self._proc is not None:
                pgid = self._proc.pid
                if self._proc.poll() is None:
                    self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(STOP_TIMEOUT)
                deadline = time.monotonic() + STOP_TIMEOUT
                while live_group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                # Only our own session's leftovers (a delivery child), never anything else.
                if live_group_members(pgid):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
        finally:
            self._proc = None
            if self._syslog is not None:
                self._syslog.close()
                self._syslog = None
            if self._controller is not None:
                with contextlib.suppress(Exception):
                    self._controller.stop()
                self._controller = None
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def __enter__(self) -> SendmailHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # local submission --------------------------------------------------------
    def submit_local(
        self, raw: bytes, args: Sequence[str], msp_feature: str = DEBIAN_MSP_FEATURE,
        timeout: float = 60.0, port: int | None = None,
    ) -> str:
        """Submit `raw` with Sendmail's sendmail(8) (the MSP, `-C submit.cf`) and `args`
        (e.g. `-t -i -f ADDR`), as an application on the host does. Its submit.cf is built
        from `submit_mc` with `msp_feature`; the MSP's hop to the MTA goes to the daemon the
        line names: port 25 (Debian's default) is this harness's plain daemon, 587 (`MSA')
        its submission daemon. The MSP delivers at once (DeliveryMode=i), before it exits.
        `port` sends the MSP to another daemon instead (one added with `mc_after`).
        Returns the MSP's stdout and stderr; raises when it exits with a status."""
        n = len(list(self._path(".").glob("msp-*")))
        work = self._path(f"msp-{n}")
        work.mkdir(mode=0o755)
        queue = work / "clientmqueue"
        queue.mkdir(mode=0o770)
        nobody = pwd.getpwnam("nobody")
        os.chown(queue, nobody.pw_uid, nobody.pw_gid)
        shutil.copy(self._path("service.switch"), work / "service.switch")
        mc = work / "submit.mc"
        mc.write_text(submit_mc(work, msp_feature))
        cf = work / "submit.cf"
        render_cf(self.install, mc, cf)
        ports = {None: self.inbound_port, "587": self.submission_port}

        def relay_port(match: re.Match[str]) -> str:
            if match.group(2) not in ports:
                raise HarnessError(f"{cf}: the MSP relays to port {match.group(2)}")
            return f"{match.group(1)}A=TCP $h {port or ports[match.group(2)]}"

        text, found = _MSP_RELAY_ARGS.subn(relay_port, cf.read_text())
        if found != 1:
            raise HarnessError(f"{cf}: expected one relay mailer with A=TCP $h [PORT]")
        cf.write_text(text)
        dev_layer = work / "dev-layer"
        dev_layer.mkdir()
        argv = [
            "unshare", "--uts", "--mount", "--", "sh", "-ec", NAMESPACE_SETUP, MYHOSTNAME,
            str(dev_layer), str(self._path("syslog.sock")),
            str(self.install.sendmail), "-C", str(cf), *args,
        ]
        result = subprocess.run(argv, input=raw, capture_output=True, env=self.install.env(),
                                timeout=timeout, check=False)
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise HarnessError(f"sendmail(8) exited with {result.returncode}: {output}")
        return output

    # mail ------------------------------------------------------------------
    def send(
        self, raw: bytes, mail_from: str, rcpts: Sequence[str], port: int | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Submit `raw` over SMTP to 127.0.0.1:`port` (default: the plain port). Returns
        Sendmail's queue id; rejections raise smtplib's exceptions. Addresses go out as UTF-8,
        without SMTPUTF8 (which this Sendmail does not offer), as a client that has no
        other spelling for them sends them."""
        with smtplib.SMTP(
            "127.0.0.1", port or self.inbound_port,
            local_hostname="client.casethread.test", timeout=timeout,
        ) as smtp:
            smtp.command_encoding = "utf-8"  # smtplib's default, ascii, refuses them
            resp = smtp_transaction(smtp, mail_from, rcpts, normalize_crlf(raw))
        match = re.search(rb"2\.0\.0 (\S+) Message accepted", resp)
        return match.group(1).decode() if match else ""

    @property
    def received(self) -> list[ReceivedMessage]:
        return self._collector.snapshot()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedMessage]:
        """Wait until the receiver holds at least `count` messages; return all of them."""
        return self._collector.wait_for(count, timeout, lambda: "\n" + self.diagnostics())

    def maillog(self) -> str:
        """Everything Sendmail logged through syslog so far, one line per entry."""
        return "".join(line + "\n" for line in self._syslog.lines()) if self._syslog else ""

    def maillog_for(self, queue_id: str) -> list[str]:
        return [line for line in self.maillog().splitlines() if f" {queue_id}: " in line]

    def wait_for_log(
        self, text: str, queue_id: str | None = None, timeout: float = 10.0
    ) -> list[str]:
        """The log lines (of `queue_id`, or all) once one of them contains `text`: the
        receiver thread may not have read a line yet when Sendmail's SMTP reply arrives, and
        Sendmail logs a delivery only after the receiver has the message."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.maillog_for(queue_id) if queue_id else self.maillog().splitlines()
            if any(text in line for line in lines):
                return lines
            if time.monotonic() > deadline:
                raise HarnessError(f"{text!r} not logged in {timeout} s:\n" + self.diagnostics())
            time.sleep(0.05)

    def queue_files(self) -> list[str]:
        """The files in Sendmail's queue directory (qf/df pairs of queued mail)."""
        return sorted(os.listdir(self._path("mqueue")))

    def wait_for_empty_queue(self, timeout: float = 10.0) -> None:
        """Return once the queue directory is empty (Sendmail removes a refused message's
        files after its reply); raise if something stays."""
        deadline = time.monotonic() + timeout
        while self.queue_files():
            if time.monotonic() > deadline:
                raise HarnessError(f"queue not empty after {timeout} s:\n" + self.diagnostics())
            time.sleep(0.05)

    def diagnostics(self, lines: int = 60) -> str:
        """Sendmail's own output, its log, the tail of its SMTP trace and the queue listing."""
        parts: list[str] = []
        if self._syslog is not None:
            parts.append("--- syslog:\n" + "\n".join(self._syslog.lines()[-lines:]))
        for name in ("sendmail.out", "trace.log"):
            with contextlib.suppress(OSError, HarnessError):
                tail = self._path(name).read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}:\n" + "\n".join(tail))
        with contextlib.suppress(OSError, HarnessError):
            parts.append("--- queue: " + " ".join(self.queue_files()))
        return "\n".join(parts)
