"""Fixtures for end-to-end tests against a real, private Postfix.

Without Postfix (or without root) these tests FAIL with the reason; they never skip.
Every test in tests/e2e is marked `e2e`.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    MILTER_STOP_TIMEOUT,
    MilterFactory,
    MilterProcess,
    MilterSocket,
    PostfixFactory,
    PostfixHarness,
    find_postfix,
    postfix_accessible_dir,
)

E2E_DIR = Path(__file__).resolve().parent
TINY_MILTER = E2E_DIR / "tiny_milter.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def postfix_installed() -> str:
    """The postfix command; fails (not skips) the test when Postfix is missing."""
    path = find_postfix()
    if path is None:
        pytest.fail(
            "Postfix is not installed, so the e2e tests cannot run: `make test` installs it "
            "(or: apt-get install postfix)",
            pytrace=False,
        )
    return path


@pytest.fixture
def milter_socket_kind() -> str:
    """Override with @pytest.mark.parametrize("milter_socket_kind", ["inet", "unix"])."""
    return "inet"


@pytest.fixture
def milter_socket(milter_socket_kind: str) -> Iterator[MilterSocket]:
    """A fresh milter socket per test: pymilter keeps its old one for seconds after SIGTERM.

    unix sockets live in a directory user postfix may enter (pytest's tmp_path may not be).
    """
    if milter_socket_kind == "inet":
        yield MilterSocket.inet()
    elif milter_socket_kind == "unix":
        sock_dir = postfix_accessible_dir("casethread-milter-")
        try:
            yield MilterSocket.unix(sock_dir / "milter.sock")
        finally:
            shutil.rmtree(sock_dir, ignore_errors=True)
    else:
        raise ValueError(f"unknown milter_socket_kind {milter_socket_kind!r}")


@pytest.fixture
def postfix_factory(postfix_installed: str) -> Iterator[PostfixFactory]:
    """make(milter, **PostfixHarness options) -> a started harness; all stopped afterwards."""
    harnesses: list[PostfixHarness] = []

    def make(milter: MilterSocket | None, **options: Any) -> PostfixHarness:
        harness = PostfixHarness(milter, **options)
        harnesses.append(harness)
        harness.start()
        return harness

    yield make
    errors: list[BaseException] = []
    for harness in reversed(harnesses):
        try:
            harness.stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def postfix(postfix_factory: PostfixFactory, milter_socket: MilterSocket) -> PostfixHarness:
    """A started private Postfix whose milter is `milter_socket` (default header rewriting)."""
    return postfix_factory(milter_socket)


@pytest.fixture(scope="session")
def _milter_reaper() -> Iterator[list[MilterProcess]]:
    # Milters get SIGTERM at the end of their test but pymilter needs seconds to exit; they
    # are awaited (then SIGKILLed) here once, at the end of the session.
    pending: list[MilterProcess] = []
    yield pending
    for proc in pending:
        proc.stop(MILTER_STOP_TIMEOUT)


@pytest.fixture
def milter_factory(tmp_path: Path, _milter_reaper: list[MilterProcess]) -> Iterator[MilterFactory]:
    """make(argv, env, ready_address, *, kill_at_teardown=False, **MilterProcess options)
    -> a started MilterProcess (its output in tmp_path).

    At teardown each one still running gets SIGTERM, and the wait for its exit is deferred to
    the end of the session (or SIGKILL at once with kill_at_teardown=True). Call .stop() in
    the test to check a clean exit.
    """
    procs: list[tuple[MilterProcess, bool]] = []

    def make(
        argv: list[str],
        env: dict[str, str] | None,
        ready_address: MilterSocket,
        *,
        kill_at_teardown: bool = False,
        **options: Any,
    ) -> MilterProcess:
        options.setdefault("log_path", tmp_path / f"milter-{len(procs)}.log")
        proc = MilterProcess(argv, env, ready_address, **options)
        procs.append((proc, kill_at_teardown))
        return proc.start()

    yield make
    for proc, kill in procs:
        if kill:
            proc.kill()
        elif proc.running():
            proc.terminate()
            _milter_reaper.append(proc)


@pytest.fixture
def tiny_milter(milter_factory: MilterFactory, milter_socket: MilterSocket) -> MilterProcess:
    """tests/e2e/tiny_milter.py running on `milter_socket`; stateless, so SIGKILLed at
    teardown."""
    argv = [sys.executable, str(TINY_MILTER), milter_socket.libmilter]
    return milter_factory(argv, None, milter_socket, kill_at_teardown=True)
