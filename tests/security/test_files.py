"""Security checks on files and logs (issue 6).

- The index directory is created 0700, its files and the token key 0600, whatever the umask.
- A token key that group or others can access stops `casethread serve` (and every command that
  reads it) with a non-zero exit and the `chmod 600` that fixes it.
- Nothing secret reaches a log: `casethread serve` (debug level, real Postfix traffic) and the
  other commands are run, and their output is searched for the key in hex, base32 and base64
  (and for any 8-byte piece of it in hex).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from casethread.keyfile import read_key_file

SUPPORT = "support@helpdesk.example"
AGENT = "agent@helpdesk.example"
CUSTOMER = "pat@customer.example"
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class Serve:
    """`casethread serve` on a fresh TCP port; output in a file; always stopped."""

    def __init__(self, exe: Path, cwd: Path, *args: str, umask: int = 0o022) -> None:
        self.port = free_port()
        self.log = cwd / f"serve-{self.port}.log"
        argv = [str(exe), "serve", "--socket", f"inet:{self.port}@127.0.0.1", *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, umask=umask,
                                         start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(self.port):
            assert self.proc.poll() is None, f"serve exited {self.proc.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"serve not listening: {self.output()}"
            time.sleep(0.05)

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def serve(casethread_bin: Path, tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:  # nothing to drain: kill -9 spares pymilter's seconds-long exit
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait(10)


def start(started: list[Serve], exe: Path, cwd: Path, *args: str, umask: int = 0o022) -> Serve:
    s = Serve(exe, cwd, *args, umask=umask)
    started.append(s)
    return s


# --- file modes ---------------------------------------------------------------------------------


def assert_private_index(index: Path) -> None:
    assert mode_of(index) == 0o700, oct(mode_of(index))
    for name in ("data.mdb", "lock.mdb", "token.key"):
        assert mode_of(index / name) == 0o600, (name, oct(mode_of(index / name)))


def test_index_and_key_are_created_private_whatever_the_umask(
    casethread_bin: Path, tmp_path: Path, serve: list[Serve]
) -> None:
    # `casethread filter` creating a fresh index under umask 000.
    index = tmp_path / "filter-index"
    raw = f"From: <{AGENT}>\r\nTo: <{CUSTOMER}>\r\nSubject: hi\r\n\r\nHello\r\n".encode()
    done = subprocess.run(
        [str(casethread_bin), "filter", "--index", str(index), "--direction", "outbound", "-"],
        input=raw, capture_output=True, timeout=60, umask=0, check=False, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert_private_index(index)

    # `casethread serve` on the embedded defaults (./casethread-data), umask 000.
    s = start(serve, casethread_bin, tmp_path, umask=0)
    s.wait_listening()
    assert_private_index(tmp_path / "casethread-data")

    # `casethread keygen` under umask 000.
    key = tmp_path / "rotated.key"
    made = subprocess.run([str(casethread_bin), "keygen", str(key), "--id", "2"],
                          capture_output=True, timeout=30, umask=0, check=False)
    assert made.returncode == 0, made.stderr
    assert mode_of(key) == 0o600
    # Keys are never overwritten.
    again = subprocess.run([str(casethread_bin), "keygen", str(key), "--id", "3"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert read_key_file(key)[0] == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o601, 0o610],
                         ids=lambda m: f"{m:04o}")
def test_key_readable_by_others_stops_serve(
    casethread_bin: Path, tmp_path: Path, serve: list[Serve], mode: int
) -> None:
    index = tmp_path / "index"
    key = index / "token.key"
    made = start(serve, casethread_bin, tmp_path, "--index", str(index))
    made.wait_listening()  # first start: the index and its key are generated
    made.proc.kill()
    made.proc.wait(10)
    key.chmod(mode)

    s = start(serve, casethread_bin, tmp_path, "--index", str(index))
    code = s.wait_exit()
    lines = s.output().strip().splitlines()
    assert code != 0
    assert len(lines) == 1, lines
    assert f"chmod 600 {key}" in lines[0], lines
    assert f"mode {mode:04o}" in lines[0]
    assert not listening(s.port)

    # A configured key file (tokens.keys) is checked the same way.
    configured = tmp_path / "other.key"
    subprocess.run([str(casethread_bin), "keygen", str(configured)], check=True,
                   capture_output=True, timeout=30)
    configured.chmod(mode)
    config = tmp_path / "casethread.yaml"
    config.write_text(f"tokens:\n  keys: [{configured}]\n")
    s = start(serve, casethread_bin, tmp_path, "--config", str(config), "--index", str(index))
    assert s.wait_exit() != 0
    assert f"chmod 600 {configured}" in s.output()
    # Once fixed, it starts.
    configured.chmod(0o600)
    s = start(serve, casethread_bin, tmp_path, "--config", str(config), "--index", str(index))
    s.wait_listening()


# --- nothing secret in logs ----------------------------------------------------------------------


def secret_forms(secret: bytes) -> list[str]:
    """The key as a log line might spell it, plus every 8-byte piece of it in hex."""
    forms = {
        secret.hex(), secret.hex().upper(),
        base64.b64encode(secret).decode(), base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("=").lower(),
        base64.b32hexencode(secret).decode().rstrip("="),
        repr(secret)[2:-1],  # a bytes repr
    }
    forms |= {secret[i : i + 8].hex() for i in range(len(secret) - 7)}
    # Base64 of 12-byte pieces on a 3-byte grid: 16 characters each.
    forms |= {base64.b64encode(secret[i : i + 12]).decode()
              for i in range(0, len(secret) - 11, 3)}
    return sorted(forms)


def assert_no_secret(text: str, secret: bytes, what: str) -> None:
    leaked = [form for form in secret_forms(secret) if form.lower() in text.lower()]
    assert not leaked, f"{what} contains the key as {leaked}:\n{text}"


def load_e2e_harness() -> ModuleType:
    """tests/e2e/harness.py, loaded by path (test files cannot import each other)."""
    name = "casethread_e2e_harness"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "e2e" / "harness.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def cli(exe: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, timeout=60,
                          check=False)


def test_nothing_secret_in_logs(casethread_bin: Path, tmp_path: Path) -> None:
    h = load_e2e_harness()
    index = tmp_path / "index"
    config = tmp_path / "casethread.yaml"
    config.write_text(
        f"milter:\n  log_level: debug\ninbound:\n  addresses: [{SUPPORT}]\n"
    )
    sock = h.MilterSocket.inet()
    milter = h.MilterProcess(h.casethread_serve_argv(sock, config=config, index=index), None,
                             sock, log_path=tmp_path / "serve.log", cwd=tmp_path)
    postfix = h.PostfixHarness(sock, rewrite_local_headers=False)
    logs: list[tuple[str, str]] = []
    try:
        milter.start()
        postfix.start()
        agent = (f"From: <{AGENT}>\r\nTo: <{CUSTOMER}>\r\nSubject: Printer\r\n"
                 "Content-Type: text/html\r\n\r\n<p>Hello</p>\r\n").encode()
        postfix.send(agent, AGENT, [CUSTOMER], port=postfix.submission_port)
        out = postfix.wait_for(1, timeout=30)[0]
        subject = out.header("Subject") or ""
        assert "[ref:" in subject, milter.output()
        tok = subject.rsplit("[ref:", 1)[1].rstrip("]")
        mails = [
            f"Subject: Re: Printer [ref:{tok}]",
            f"Subject: Re: Printer [ref:{tok[:-1]}{'A' if tok[-1] != 'A' else 'B'}]",
            "Subject: Re: Printer [Case C-000001]\r\nX-Case-ID: C-000001",
        ]
        for n, extra in enumerate(mails):
            raw = (f"From: <{CUSTOMER}>\r\nTo: <{SUPPORT}>\r\nMessage-ID: <s{n}@c.example>\r\n"
                   f"{extra}\r\n\r\nThanks\r\n").encode()
            postfix.send(raw, CUSTOMER, [SUPPORT])
        postfix.wait_for(1 + len(mails), timeout=30)
    finally:
        postfix.stop()
        code = milter.stop()
    serve_log = milter.output()
    assert code == 0, serve_log
    assert "match=token" in serve_log and "direction=outbound" in serve_log, serve_log
    logs.append(("casethread serve", serve_log))

    # The other commands, including their error paths.
    base = ("--config", str(config), "--index", str(index))
    reply = f"From: <{CUSTOMER}>\r\nSubject: Re: [ref:{tok}]\r\n\r\nok\r\n".encode()
    runs = [
        cli(casethread_bin, "filter", *base, "--direction", "inbound", "--rcpt", SUPPORT, "-",
            stdin=reply),
        cli(casethread_bin, "filter", *base, "--dry-run", "--direction", "outbound", "-",
            stdin=reply),
        cli(casethread_bin, "lookup", *base, "--token", tok),
        cli(casethread_bin, "lookup", *base, "--token", tok[:-2] + "00"),
        cli(casethread_bin, "case", "show", "C-000001", *base),
        cli(casethread_bin, "check-config", "--config", str(config)),
        cli(casethread_bin, "keygen", str(index / "token.key")),
    ]
    secret = read_key_file(index / "token.key")[1]
    # A key file with a broken line after the key: the error names the line, not the key.
    broken = tmp_path / "broken.key"
    broken.write_text(f"id: 3\nkey: {secret.hex()}\nkey {secret.hex()}\n")
    broken.chmod(0o600)
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(f"tokens:\n  keys: [{broken}]\n")
    runs.append(cli(casethread_bin, "filter", "--config", str(bad_config), "--index",
                    str(index), "--direction", "outbound", "-", stdin=reply))
    assert runs[-1].returncode != 0 and b"line 3" in runs[-1].stderr
    # The same key readable by others: refused, and the message does not print it.
    broken.write_text(f"id: 3\nkey: {secret.hex()}\n")
    broken.chmod(0o644)
    runs.append(cli(casethread_bin, "serve", "--config", str(bad_config), "--index", str(index),
                    "--socket", f"inet:{free_port()}@127.0.0.1"))
    assert runs[-1].returncode != 0 and b"chmod 600" in runs[-1].stderr
    for run in runs:
        logs.append((" ".join(map(str, run.args[1:3])), run.stderr.decode(errors="replace")))

    for what, text in logs:
        assert_no_secret(text, secret, what)
    # The search itself works: a line that does contain the key is caught.
    with pytest.raises(AssertionError):
        assert_no_secret(f"oops {base64.b64encode(secret).decode()}", secret, "control")
    assert os.path.getsize(tmp_path / "serve.log") > 0
