"""contrib/systemd/casethread.service: its options, systemd's own verdict on it, and the
behaviour it relies on, shown on the real `casethread serve` (there is no running systemd
here): ExecReload reloads without dropping connections, KillSignal stops in time, and the
milter runs with write-xor-execute memory enforced (MemoryDenyWriteExecute).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from miltertest import constants as c
from miltertest.client import MilterConnection

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "contrib" / "systemd" / "casethread.service"
CASETHREAD = Path(sys.executable).with_name("casethread")
INSTALLED_BIN = "/usr/local/bin/casethread"
INSTALLED_CONFIG = "/etc/casethread/casethread.yaml"
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
READY_TIMEOUT = 20.0

# MemoryDenyWriteExecute=yes, two ways, each a wrapper that runs the rest of argv with it:
# - "prctl": the kernel's own switch, PR_SET_MDWE (Linux >= 6.3), kept across execve; what
#   systemd >= 254 uses where the kernel has it;
# - "seccomp": the filter systemd <= 253 (Debian 12 ships 252) installs instead: mmap with
#   PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC and shmat with SHM_EXEC fail
#   with EPERM. It needs no_new_privs first, which is NoNewPrivileges=yes as well.
MDWE_PRCTL = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE) failed: errno {{ctypes.get_errno()}} (Linux >= 6.3 has it)")
os.execv(sys.argv[1], sys.argv[1:])
"""
MDWE_SECCOMP = """
import ctypes, os, platform, sys
# audit arch, syscall numbers of mmap, mprotect, pkey_mprotect, shmat
ARCH, MMAP, MPROTECT, PKEY_MPROTECT, SHMAT = {
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}[platform.machine()]
LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|..., BPF_RET
ALLOW, EPERM = 0x7FFF0000, 0x00050001
ARG2 = 16 + 2 * 8  # the low 32 bits of seccomp_data.args[2] (the prot / shmflg argument)
PROG = [
    (LD, 0, 0, 4), (JEQ, 1, 0, ARCH), (RET, 0, 0, EPERM),                 # 0-2
    (LD, 0, 0, 0),                                                        # 3
    (JEQ, 4, 0, MMAP), (JEQ, 6, 0, MPROTECT), (JEQ, 5, 0, PKEY_MPROTECT),  # 4-6
    (JEQ, 7, 0, SHMAT), (RET, 0, 0, ALLOW),                               # 7-8
    (LD, 0, 0, ARG2), (AND, 0, 0, 6), (JEQ, 6, 5, 6),                     # 9-11 W|X
    (LD, 0, 0, ARG2), (JSET, 4, 0, 4), (RET, 0, 0, ALLOW),                # 12-14 X
    (LD, 0, 0, ARG2), (JSET, 1, 0, 0o100000),                             # 15-16 SHM_EXEC
    (RET, 0, 0, ALLOW), (RET, 0, 0, EPERM),                               # 17-18
]
class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
insns = (Insn * len(PROG))(*[Insn(*i) for i in PROG])
prog = Prog(len(PROG), insns)
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
    sys.exit(f"seccomp filter refused: errno {ctypes.get_errno()}")
os.execv(sys.argv[1], sys.argv[1:])
"""
MDWE_WRAPPERS = {"prctl": MDWE_PRCTL, "seccomp": MDWE_SECCOMP}
MDWE_KINDS = pytest.mark.parametrize("mdwe", sorted(MDWE_WRAPPERS))


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in file order (systemd keys may repeat, e.g.
    ExecReload). configparser (strict=False) checks the file is well-formed INI first."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    assert parser.sections() == ["Unit", "Service", "Install"]
    unit: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            unit[section] = {}
            continue
        assert not line.endswith("\\"), f"continuation lines are not used here: {line}"
        key, sep, value = line.partition("=")
        assert sep, line
        unit[section].setdefault(key.strip(), []).append(value.strip())
    for name in parser.sections():
        for key in parser[name]:
            # configparser keeps the last of repeated keys, as systemd does for scalars.
            assert parser[name][key] == unit[name][key][-1]
    return unit


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT)


def one(unit: dict[str, dict[str, list[str]]], key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values is not None and len(values) == 1, f"{key}: {values}"
    return values[0]


def test_unit_runs_unprivileged_with_state_and_runtime_directories(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    assert one(unit, "Type") == "simple"
    assert (one(unit, "User"), one(unit, "Group")) == ("casethread", "casethread")
    assert one(unit, "SupplementaryGroups") == "postfix"
    assert one(unit, "ExecStart") == f"{INSTALLED_BIN} serve --config {INSTALLED_CONFIG}"
    assert unit["Service"]["ExecReload"] == [
        f"{INSTALLED_BIN} check-config --config {INSTALLED_CONFIG}",
        "/bin/kill -USR1 $MAINPID",
    ]
    assert one(unit, "KillSignal") == "SIGTERM"
    assert one(unit, "TimeoutStopSec") == "30"
    assert one(unit, "Restart") == "always"  # a stray SIGHUP stops it: it comes back
    assert (one(unit, "StateDirectory"), one(unit, "StateDirectoryMode")) == ("casethread", "0700")
    assert one(unit, "RuntimeDirectory") == "casethread"
    assert one(unit, "WorkingDirectory") == "/var/lib/casethread"
    assert one(unit, "UMask") == "0007"
    assert one(unit, "WantedBy", "Install") == "multi-user.target"
    assert "postfix.service" in one(unit, "Before", "Unit").split()


def test_unit_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "RestrictNamespaces", "RestrictRealtime",
                "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute"):
        assert one(unit, key) == "yes", key
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one(unit, "CapabilityBoundingSet") == ""
    assert one(unit, "SystemCallFilter") == "@system-service"
    # @system-service keeps chown(2), which milter.socket_group needs; nothing removes it.
    assert not any(v.startswith("~") for v in unit["Service"]["SystemCallFilter"])


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (make test installs "
                    "it; no running systemd is needed)", pytrace=False)
    return found


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The unit as written, except that the program it runs is this checkout's casethread:
    `systemd-analyze verify` insists the ExecStart binary exists."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_BIN) == 2
    path = tmp_path / "casethread.service"
    path.write_text(text.replace(INSTALLED_BIN, str(CASETHREAD)))
    return path


def test_systemd_analyze_verify_is_clean(verifiable_unit: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(verifiable_unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # verify exits 0 even for unknown keys or bad values; it only warns. No output at all.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_security_rates_the_unit_ok(verifiable_unit: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(verifiable_unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    # 0-10, lower is better; systemd calls <= 2.0 "OK" (a default unit scores 9.6 UNSAFE).
    assert float(match.group(1)) <= 2.0, result.stdout


# --------------------------------------------------------------------------- the live milter


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`casethread serve` on a fresh TCP port, optionally wrapped (argv prefix)."""

    def __init__(self, tmp_path: Path, config: Path, prefix: list[str]) -> None:
        self.port = _free_port()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        argv = [*prefix, str(CASETHREAD), "serve", "--config", str(config),
                "--socket", f"inet:{self.port}@127.0.0.1", "--index", str(tmp_path / "index")]
        with open(self.log_path, "wb") as log:
            # The unit's UMask, so files are made as under systemd.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=tmp_path, umask=0o007)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"serve exited: {self.log()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"serve not ready: {self.log()}"
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connect(self) -> MilterConnection:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        conn = MilterConnection(sock)
        # We offer to skip only HELO; so every other step gets a reply.
        conn.optneg_mta(actions=c.SMFI_V6_ACTS, protocol=c.SMFIP_NOHELO)
        conn.send_macro(c.SMFIC_CONNECT, **{"{daemon_name}": "MTA", "j": "mx.example.com"})
        assert conn.send_get(c.SMFIC_CONNECT, hostname="client.example.org",
                             family=c.SMFIA_INET, port=40000, address="198.51.100.7")[0] == "c"
        return conn


def inbound_message(conn: MilterConnection, msgid: str) -> dict[str, str]:
    """One customer message to support@; returns the headers the milter added."""
    conn.send_macro(c.SMFIC_MAIL, i=msgid)
    for cmd, arg in ((c.SMFIC_MAIL, "<pat@customer.example>"),
                     (c.SMFIC_RCPT, "<support@example.com>")):
        assert conn.send_get(cmd, args=[arg])[0] == "c"
    for name, value in (("From", "pat@customer.example"), ("To", "support@example.com"),
                        ("Subject", "Help"), ("Message-ID", f"<{msgid}@customer.example>")):
        assert conn.send_get(c.SMFIC_HEADER, name=name, value=value)[0] == "c"
    assert conn.send_get(c.SMFIC_EOH)[0] == "c"
    assert conn.send_get(c.SMFIC_BODY, buf="Hello\r\n")[0] == "c"
    conn._send(c.SMFIC_BODYEOB)
    added: dict[str, str] = {}
    for _ in range(50):
        cmd, data = conn.recv()
        if cmd in (c.SMFIR_ADDHEADER, c.SMFIR_INSHEADER):  # casethread inserts at the end
            added[data["name"]] = data["value"]
        elif cmd in (c.SMFIR_ACCEPT, c.SMFIR_CONTINUE):
            return added
        elif cmd not in (c.SMFIR_CHGHEADER, c.SMFIR_REPLBODY):
            raise AssertionError(f"unexpected reply {cmd!r} {data}")
    raise AssertionError("no end-of-message reply")


def unit_commands(key: str, config: Path, pid: int) -> list[list[str]]:
    """The unit's `key` command lines as argv, for this checkout and this process."""
    out = []
    for line in parse_unit(UNIT)["Service"][key]:
        line = line.replace(INSTALLED_BIN, str(CASETHREAD))
        line = line.replace(INSTALLED_CONFIG, str(config)).replace("$MAINPID", str(pid))
        out.append(shlex.split(line))
    return out


def run_reload(config: Path, pid: int) -> subprocess.CompletedProcess[str] | None:
    """ExecReload as systemd runs it: in order, stopping at the first failure (returned)."""
    for argv in unit_commands("ExecReload", config, pid):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            return result
    return None


def wait_for(predicate_text: str, serve: Serve, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while predicate_text not in serve.log():
        assert time.monotonic() < deadline, f"{predicate_text!r} not logged:\n{serve.log()}"
        time.sleep(0.05)


@pytest.fixture
def stop_after() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait(15)


def test_exec_reload_rereads_routing_without_dropping_connections_and_kill_signal_stops(
    tmp_path: Path, stop_after: list[Serve]
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text("inbound:\n  addresses: [support@example.com]\n")
    serve = Serve(tmp_path, config, [])
    stop_after.append(serve)
    early = serve.connect()  # a connection open across the reload
    assert inbound_message(early, "m1")["X-Case-Queue"] == "support"

    config.write_text("inbound:\n  addresses: [support@example.com]\n"
                      "routing:\n  default_queue: frontline\n")
    assert run_reload(config, serve.proc.pid) is None
    wait_for("reloaded configuration", serve)
    assert serve.proc.poll() is None
    late = serve.connect()
    assert inbound_message(late, "m2")["X-Case-Queue"] == "frontline"
    # The connection from before the reload still works (it keeps the engine it started with).
    assert inbound_message(early, "m3")["X-Case-Queue"] == "support"

    # A broken edit: check-config fails the reload and the signal is never sent.
    config.write_text("inbound:\n  adresses: [support@example.com]\n")
    failed = run_reload(config, serve.proc.pid)
    assert failed is not None and "adresses" in failed.stdout + failed.stderr
    assert serve.log().count("reloaded configuration") == 1
    assert inbound_message(serve.connect(), "m4")["X-Case-Queue"] == "frontline"
    early.sock.close()
    late.sock.close()

    # KillSignal=SIGTERM: a clean exit well within TimeoutStopSec.
    kill_signal = one(parse_unit(UNIT), "KillSignal")
    timeout = float(one(parse_unit(UNIT), "TimeoutStopSec"))
    started = time.monotonic()
    serve.proc.send_signal(getattr(signal, kill_signal))
    assert serve.proc.wait(timeout) == 0, serve.log()
    assert time.monotonic() - started < timeout / 2
    assert "stopped" in serve.log()


def test_sighup_would_stop_the_milter(tmp_path: Path, stop_after: list[Serve]) -> None:
    """Why ExecReload sends SIGUSR1: libmilter takes SIGHUP as a stop request."""
    config = tmp_path / "casethread.yaml"
    config.write_text("inbound:\n  addresses: [support@example.com]\n")
    serve = Serve(tmp_path, config, [])
    stop_after.append(serve)
    serve.proc.send_signal(signal.SIGHUP)
    assert serve.proc.wait(15) == 0
    assert "reloaded configuration" not in serve.log()
    assert "SIGHUP stops casethread" in serve.log()  # and says what reloads


# --------------------------------------------------------------------------- MDWE


def _mdwe_prefix(kind: str) -> list[str]:
    return [sys.executable, "-c", MDWE_WRAPPERS[kind]]


PROBE = f"""
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
print(libc.prctl({PR_GET_MDWE}, 0, 0, 0, 0), libc.prctl(39, 0, 0, 0, 0))  # MDWE, NO_NEW_PRIVS
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("allowed")
except PermissionError:
    print("refused")
"""


@MDWE_KINDS
def test_mdwe_wrapper_really_refuses_writable_executable_memory(mdwe: str) -> None:
    """The milter test below means something only if the child is really restricted."""
    result = subprocess.run([*_mdwe_prefix(mdwe), sys.executable, "-c", PROBE],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    expected = {"prctl": [str(PR_MDWE_REFUSE_EXEC_GAIN), "0"], "seccomp": ["0", "1"]}[mdwe]
    assert result.stdout.split() == [*expected, "refused"]
    # Unwrapped, the same probe maps such memory: the refusal comes from the wrapper.
    plain = subprocess.run([sys.executable, "-c", PROBE],
                           capture_output=True, text=True, timeout=60, check=False)
    assert plain.stdout.split() == ["0", "0", "allowed"], plain.stderr


@MDWE_KINDS
def test_milter_works_with_memory_deny_write_execute(
    mdwe: str, tmp_path: Path, stop_after: list[Serve]
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text("inbound:\n  addresses: [support@example.com]\n")
    serve = Serve(tmp_path, config, _mdwe_prefix(mdwe))
    stop_after.append(serve)
    conn = serve.connect()
    added = inbound_message(conn, "w1")
    assert (added["X-Case-ID"], added["X-Case-Match"]) == ("C-000001", "new")
    added = inbound_message(conn, "w2")
    assert added["X-Case-ID"] == "C-000002"
    conn.sock.close()
    # The filter command too (engine, YAML, LMDB on a fresh index).
    result = subprocess.run(
        [*_mdwe_prefix(mdwe), str(CASETHREAD), "filter", "--config", str(config),
         "--index", str(tmp_path / "filter-index"), "--direction", "inbound",
         "--rcpt", "support@example.com", "-"],
        input=b"From: a@b.example\nSubject: x\nMessage-ID: <x@b.example>\n\nhi\n",
        capture_output=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"X-Case-ID: C-000001" in result.stdout
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(30) == 0, serve.log()
    assert os.path.exists(tmp_path / "index")
