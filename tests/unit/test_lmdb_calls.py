"""How many py-lmdb calls the index makes: each one that reaches LMDB releases the GIL, which
under twenty SMTP sessions mostly hands it to another thread (README, Performance;
`bench/calls.py` counts a whole message's). These pin the calls a write does without."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casethread.core.model import Alias, AliasKind
from casethread.index import LmdbIndex


class _Counted:
    """A py-lmdb environment or transaction whose calls are counted by name (a transaction's
    `begin` by the kind it begins)."""

    def __init__(self, real: Any, calls: collections.Counter[str]) -> None:
        self.real, self._calls = real, calls

    def begin(self, write: bool = False, parent: _Counted | None = None, **kw: Any) -> _Counted:
        self._calls["begin-nested" if parent else "begin-write" if write else "begin"] += 1
        return _Counted(self.real.begin(write=write, parent=parent.real if parent else None,
                                        **kw), self._calls)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            if name == "get":
                self._calls[f"get {bytes(args[0])!r}"] += 1
            return method(*args, **kwargs)

        return call


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LmdbIndex]:
    idx = LmdbIndex(tmp_path / "index", 64 << 20)
    yield idx
    idx.close()


@pytest.fixture
def calls(index: LmdbIndex) -> Iterator[collections.Counter[str]]:
    """The py-lmdb calls `index` makes from here on."""
    counted: collections.Counter[str] = collections.Counter()
    shared = index._live()
    real = shared.env
    shared.env = _Counted(real, counted)  # type: ignore[assignment]
    yield counted
    shared.env = real


def test_a_write_reads_the_map_size_only_when_it_filled_the_map(
        index: LmdbIndex, calls: collections.Counter[str]) -> None:
    case = index.create_case(100)
    index.record([Alias(AliasKind.MESSAGE, "<a@example.org>", case.case_id)], 100)
    assert calls["begin-write"] == calls["commit"] == 2
    assert calls["info"] == 0, calls



def test_a_new_case_is_written_without_reading_its_id_first(
        index: LmdbIndex, calls: collections.Counter[str]) -> None:
    case = index.create_case(100)
    assert case.case_id == "C-000001"
    assert calls["get b'C-000001'"] == 0, calls
    assert calls["put"] == 3  # the case, its number, the counter
    assert calls["begin-write"] == calls["commit"] == 1


def test_a_generated_id_an_adopted_case_holds_is_still_skipped(
        index: LmdbIndex, calls: collections.Counter[str]) -> None:
    adopted = index.create_case(100, case_id="C-000002")
    first = index.create_case(101, aliases=lambda case: [
        Alias(AliasKind.MESSAGE, "<first@example.org>", case.case_id)])
    assert (adopted.number, first.case_id, first.number) == (1, "C-000003", 3)
    assert index.find(AliasKind.MESSAGE, "<first@example.org>").case_id == "C-000003"
    assert index.get_case("C-000002") == adopted
    assert index.last_number() == 3
