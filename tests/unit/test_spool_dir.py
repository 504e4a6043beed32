"""The start-up check of where message bodies spool (`spool.spool_dir_problem`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from casethread.spool import spool_dir_problem


@pytest.fixture(autouse=True)
def _fresh_tempdir() -> Iterator[None]:
    yield
    tempfile.tempdir = None  # the next test (and pytest) read TMPDIR again


def test_a_writable_tmpdir_is_no_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert spool_dir_problem() is None
    assert tempfile.gettempdir() == str(tmp_path)


def test_a_tmpdir_python_passes_over_is_named(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Python takes /tmp without a word when TMPDIR is missing or not writable."""
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("TMPDIR", str(missing))
    problem = spool_dir_problem()
    assert problem is not None
    assert problem.startswith(f"TMPDIR={missing} is not a writable directory")
    assert f"spool in {tempfile.gettempdir()} instead" in problem


def test_a_tmpdir_that_is_a_file_is_named(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a directory (a mode would not stop root, who runs the tests)."""
    a_file = tmp_path / "tmp"
    a_file.write_text("")
    monkeypatch.setenv("TMPDIR", str(a_file))
    problem = spool_dir_problem()
    assert problem is not None and problem.startswith(f"TMPDIR={a_file} is not")
