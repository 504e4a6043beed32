"""Start and stop the real `casethread serve` process for the wire tests.

Every process started here is stopped in a finalizer (SIGTERM, then SIGKILL after 15 s), and
every wait is bounded. Readiness is a connect-retry loop, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from .milterclient import Endpoint

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CASETHREAD = Path(sys.executable).with_name("casethread")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MilterProcess:
    """One `casethread serve` child with its log file."""

    def __init__(
        self, endpoint: Endpoint, index: Path, config: Path | None, log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.index = index
        self.config = config
        self.log_path = log_path
        argv = [str(CASETHREAD), "serve", "--socket", endpoint.spec, "--index", str(index)]
        if config is not None:
            argv[2:2] = ["--config", str(config)]
        self.argv = argv
        self.term_sent_at: float | None = None
        with open(log_path, "wb") as log:
            # A known umask, so the socket-mode test shows the chmod and not the umask.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                umask=0o022, env=None if env is None else {**os.environ, **env},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"casethread serve exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                self.endpoint.connect(timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"casethread serve not ready after {timeout} s:\n{self.log()}"
                    ) from None
                time.sleep(0.05)

    def send_term(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """The stop signal (SIGTERM, or SIGINT/SIGHUP), once: a second one means "stop now"."""
        if self.term_sent_at is None and self.proc.poll() is None:
            self.term_sent_at = time.monotonic()
            self.proc.send_signal(signum)

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """SIGTERM (once) and wait; returns (exit status, seconds since the signal).

        SIGKILLs a process that does not stop in time, and fails."""
        self.send_term()
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log()}") from None
        return status, time.monotonic() - (self.term_sent_at or time.monotonic())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class MilterStarter:
    """`start(...)` launches a milter and waits until it accepts connections."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[MilterProcess] = []

    def start(
        self,
        config_text: str | None = None,
        endpoint: Endpoint | None = None,
        index: Path | None = None,
        name: str = "milter",
        env: Mapping[str, str] | None = None,
    ) -> MilterProcess:
        """`env`: variables set for the milter on top of ours (e.g. its TMPDIR)."""
        config = None
        if config_text is not None:
            config = self.workdir / f"{name}.yaml"
            config.write_text(config_text)
        index = index or self.workdir / f"{name}-index"
        # A free port can be taken by someone else before the milter binds it: a milter that
        # exited at start gets another port (twice at most).
        attempts = 3 if endpoint is None else 1
        for attempt in range(1, attempts + 1):
            proc = MilterProcess(
                endpoint or Endpoint.tcp(free_port()), index, config,
                self.workdir / f"{name}.log", env,
            )
            self.started.append(proc)
            try:
                proc.wait_ready()
                return proc
            except AssertionError:
                if attempt == attempts or proc.proc.poll() is None:
                    raise
        raise AssertionError("not reached")

    def stop_all(self) -> None:
        # SIGTERM all first: each pymilter process takes seconds to exit (FIELD-NOTES).
        running = [p for p in self.started if p.proc.poll() is None]
        for p in running:
            p.send_term()
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in running:
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def _starter(workdir: Path) -> Iterator[MilterStarter]:
    assert CASETHREAD.exists(), f"{CASETHREAD} missing: run `.venv/bin/pip install -e .`"
    starter = MilterStarter(workdir)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture
def milters(tmp_path: Path) -> Iterator[MilterStarter]:
    yield from _starter(tmp_path)


@pytest.fixture(scope="module")
def module_milters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterStarter]:
    yield from _starter(tmp_path_factory.mktemp("milters"))


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run another `casethread` command (bounded); returns the finished process."""

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(CASETHREAD), *args], input=stdin, capture_output=True, timeout=60, check=False
        )

    return run
