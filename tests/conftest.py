"""Shared fixtures for the core, engine and CLI tests.

Fixtures are kept here: pytest runs with --import-mode=importlib, where test files cannot import
one another. Plain functions several test files share are in tests/helpers/, imported relatively
(`from ..helpers.index_writes import store`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from casethread.core.decision import Decision
from casethread.core.edits import ChangeHeader, apply_edits
from casethread.core.message import Envelope, Header, Message
from casethread.core.model import CaseRecord, Direction
from casethread.core.resolve import Found
from casethread.core.settings import Settings
from casethread.core.stamp import apply_splices
from casethread.core.token import Keyring
from casethread.engine import Engine
from casethread.index import MemoryIndex

# Property tests assert behaviour, never time: a loaded CI machine must not fail one on
# hypothesis's per-example deadline.
settings.register_profile("casethread", deadline=None)
settings.load_profile("casethread")

DATA = Path(__file__).resolve().parent / "data"
HOSTNAME = "mx.host.example.net"
START = 1_772_442_900.0  # 2026-03-02, a fixed clock


class Clock:
    """A settable clock, so created/recorded times and Message-ID time parts are known."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Result:
    """An engine decision together with the headers the MTA would leave."""

    def __init__(self, msg: Message, decision: Decision) -> None:
        self.msg = msg
        self.decision = decision
        self.headers = apply_edits(msg.headers, list(decision.edits))

    @property
    def body(self) -> bytes:
        """The body as the MTA would pass it on (stamped outbound mail differs)."""
        return apply_splices(self.msg.body, self.decision.body_splices)

    def all(self, name: str) -> list[str]:
        return [h.value for h in self.headers if h.name.lower() == name.lower()]

    def one(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"{name}: {values}"
        return values[0]

    @property
    def case_id(self) -> str:
        return self.one("X-Case-ID")

    def ours(self, prefix: str = "X-Case-") -> list[tuple[str, str]]:
        """Our fields as the MTA leaves them, in order: (name, value)."""
        wanted = prefix.lower()
        return [(h.name, h.value) for h in self.headers if h.name.lower().startswith(wanted)]

    def removals(self) -> list[ChangeHeader]:
        return [e for e in self.decision.edits if isinstance(e, ChangeHeader) and not e.value]


def make_message(
    *headers: tuple[str, str],
    body: bytes = b"",
    rcpts: tuple[str, ...] = ("support@example.com",),
    **envelope: Any,
) -> Message:
    return Message(
        Envelope(rcpts=rcpts, **envelope),
        tuple(Header(name, value) for name, value in headers),
        body,
    )


def with_settings(base: Settings, **sections: dict[str, Any]) -> Settings:
    """`with_settings(s, inbound={"references_limit": 5})`: dataclasses.replace per section."""
    changes = {
        name: dataclasses.replace(getattr(base, name), **values)
        for name, values in sections.items()
    }
    return dataclasses.replace(base, **changes)


DEFAULT_SETTINGS = with_settings(
    Settings(),
    inbound={"addresses": ("support@example.com", "@help.example.com")},
)


# A fixed key so tokens are reproducible across a test; never a real key.
TEST_KEYRING = Keyring([(1, bytes(range(32)))])


class Harness:
    """An engine on a MemoryIndex with a fixed clock; `run` returns a `Result`."""

    def __init__(self, settings: Settings = DEFAULT_SETTINGS, index: Any = None) -> None:
        self.settings = settings
        self.index = index if index is not None else MemoryIndex(
            settings.cases.id_prefix, settings.cases.id_digits
        )
        self.clock = Clock()
        self.keyring = TEST_KEYRING
        self.engine = Engine(
            settings, self.index, self.keyring, clock=self.clock, hostname=HOSTNAME
        )

    def run(self, msg: Message, direction: Direction | None = None,
            found: Found | None = None) -> Result:
        self.clock.now += 1
        return Result(msg, self.engine.process(msg, direction, found))

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    def case(self, case_id: str) -> CaseRecord:
        found = self.index.get_case(case_id)
        assert found is not None, f"no case {case_id}"
        return found

    def set_case(self, case_id: str, **changes: Any) -> CaseRecord:
        """Change a stored case (state, links) the way `casethread case ...` would."""
        changed = self.index.modify_case(case_id,
                                         lambda case: dataclasses.replace(case, **changes))
        assert changed is not None, f"no case {case_id}"
        return changed

    def token(self, case_id: str) -> str:
        """The token the engine writes for this case (the harness's fixed key signs it)."""
        return self.keyring.make(self.case(case_id).number)

    def outbound(self, *headers: tuple[str, str], **kw: Any) -> Result:
        return self.run(make_message(*headers, **kw), Direction.OUTBOUND)

    def inbound(self, *headers: tuple[str, str], **kw: Any) -> Result:
        return self.run(make_message(*headers, **kw), Direction.INBOUND)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The most permissive umask (a container's, or a parent shell's `umask 0`)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
def build() -> Callable[..., Message]:
    """`build(("From", "a@b"), body=b"...", rcpts=(...), auth_user=...)`: a Message."""
    return make_message


@pytest.fixture
def tweak() -> Callable[..., Settings]:
    """`tweak(inbound={"references_limit": 5})`: the test defaults with sections replaced."""

    def tweak(base: Settings = DEFAULT_SETTINGS, **sections: dict[str, Any]) -> Settings:
        return with_settings(base, **sections)

    return tweak


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    return Harness


@pytest.fixture
def casethread_bin() -> Path:
    """The venv's console script (the installed entry point, not `python -m`)."""
    path = Path(sys.executable).with_name("casethread")
    assert path.exists(), f"{path} missing: run `.venv/bin/pip install -e .`"
    return path


class FilterRunner:
    """Runs `casethread filter` as the installed console script, index and cwd in tmp_path."""

    def __init__(self, exe: Path, tmp_path: Path) -> None:
        self.exe = exe
        self.cwd = tmp_path
        self.index = tmp_path / "index"

    def __call__(
        self, *args: str, stdin: bytes = b"", index: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.exe), "filter", *args]
        if index:
            argv[2:2] = ["--index", str(self.index)]
        return subprocess.run(
            argv, input=stdin, capture_output=True, cwd=self.cwd, timeout=timeout, check=False
        )


@pytest.fixture
def run_filter(casethread_bin: Path, tmp_path: Path) -> FilterRunner:
    return FilterRunner(casethread_bin, tmp_path)


class SmallDisks:
    """Small tmpfs mounts: a disk that can fill up, or be made read-only. Mounting needs root
    with CAP_SYS_ADMIN (`make test` runs as root); without it the test fails, never skips."""

    @staticmethod
    @contextlib.contextmanager
    def tmpfs(size: str, prefix: str = "casethread-disk-") -> Iterator[Path]:
        """A new tmpfs of `size` (`mount -o size=`), unmounted and removed afterwards."""
        mountpoint = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               str(mountpoint)], capture_output=True, text=True, timeout=30,
                              check=False)
        if done.returncode != 0:
            mountpoint.rmdir()
            pytest.fail(f"this test mounts a small tmpfs and needs root with CAP_SYS_ADMIN: "
                        f"{done.stderr.strip()}", pytrace=False)
        try:
            yield mountpoint
        finally:
            # Lazy: a process that still has a file open must not keep the mount alive.
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30,
                           check=False)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()

    @staticmethod
    @contextlib.contextmanager
    def read_only_file(path: Path) -> Iterator[None]:
        """`path` bind-mounted read-only onto itself: not writable, root included, while its
        directory stays writable."""
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True,
                       capture_output=True, timeout=30)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True,
                           capture_output=True, timeout=30)
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True, capture_output=True, timeout=30)

    @staticmethod
    def remount(mountpoint: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mountpoint)], check=True,
                       capture_output=True, timeout=30)

    @staticmethod
    def fill(directory: Path) -> Path:
        """Fill the file system holding `directory` to the last byte; returns the filler."""
        filler = directory / "filler"
        with open(filler, "wb", buffering=0) as out:
            for size in (65536, 4096, 1):  # down to the last partial block
                with contextlib.suppress(OSError):
                    while out.write(b"\0" * size):
                        pass
        return filler


@pytest.fixture
def small_disks() -> SmallDisks:
    return SmallDisks()
