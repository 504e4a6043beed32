"""One contract for every case index (LMDB, memory, a dry-run overlay), then what only the LMDB
one and only the overlay promise."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from casethread.core.model import Alias, AliasHit, AliasKind, CaseRecord, CaseState, CounterBump
from casethread.core.settings import CaseSettings, IndexSettings, Settings
from casethread.core.store import CaseIndex, Expect, StaleDecision
from casethread.index import (
    CaseIndexError,
    IndexFull,
    IndexUnavailable,
    LmdbIndex,
    MemoryIndex,
    SchemaMismatch,
    keys,
    open_index,
)
from casethread.index.lmdb_env import MAX_DBS, META_SCHEMA
from casethread.index.overlay_index import OverlayIndex

from ..helpers.index_writes import count_event, record_message, store

MAP_SIZE = 64 << 20
MILTER_DIR = Path(__file__).resolve().parents[2] / "milter"
MakeIndex = Callable[..., CaseIndex]
HOUR = 3600


@pytest.fixture(params=["memory", "lmdb", "overlay"])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeIndex]:
    opened: list[CaseIndex] = []

    def make(id_prefix: str = "C-", id_digits: int = 6) -> CaseIndex:
        index: CaseIndex
        path = tmp_path / f"index{len(opened)}"
        if request.param == "memory":
            index = MemoryIndex(id_prefix, id_digits)
        elif request.param == "lmdb":
            index = LmdbIndex(path, MAP_SIZE, id_prefix, id_digits)
        else:
            # A dry run over an empty real index must keep the whole contract too.
            base = LmdbIndex(path, MAP_SIZE, id_prefix, id_digits)
            opened.append(base)
            index = OverlayIndex(base, CaseSettings(id_prefix=id_prefix, id_digits=id_digits))
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


@pytest.fixture
def index(make_index: MakeIndex) -> CaseIndex:
    return make_index()


def run_threads(target: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()


# --- the contract: cases --------------------------------------------------------------------


def test_unknown_lookups_return_none(index: CaseIndex) -> None:
    assert index.case_for_message("<nobody@example.org>") is None
    for kind in AliasKind:
        assert index.find(kind, "<nobody@example.org>") is None
    assert index.get_case("C-000001") is None
    assert index.get_case("not a case id!") is None
    for number in (1, 0, -1, 1 << 64, 1 << 70):
        assert index.case_for_number(number) is None
    assert index.last_number() == 0


def test_create_case_numbers_from_one(index: CaseIndex) -> None:
    records = [index.create_case(now=100 + n, queue="support") for n in range(3)]
    assert [r.number for r in records] == [1, 2, 3]
    assert [r.case_id for r in records] == ["C-000001", "C-000002", "C-000003"]
    assert records[0] == CaseRecord(
        "C-000001", 1, CaseState.OPEN, "support", 100, 100, state_changed=100
    )
    assert index.get_case("C-000002") == records[1]
    assert index.last_number() == 3


def test_custom_prefix_and_digits(make_index: MakeIndex) -> None:
    index = make_index(id_prefix="CASE-", id_digits=4)
    assert index.create_case(now=1).case_id == "CASE-0001"
    assert index.create_case(now=1).case_id == "CASE-0002"
    with pytest.raises(ValueError):
        make_index(id_prefix="bad prefix ", id_digits=4)


def test_adoption_numbers_and_skips_colliding_ids(index: CaseIndex) -> None:
    adopted = index.create_case(now=5, case_id="C-000002", queue="billing")
    assert adopted == CaseRecord("C-000002", 1, CaseState.OPEN, "billing", 5, 5, 5)
    generated = index.create_case(now=6)
    # Number 2 would be named C-000002, which the adopted case holds.
    assert (generated.case_id, generated.number) == ("C-000003", 3)
    helpdesk = index.create_case(now=7, case_id="HD-77")
    assert (helpdesk.case_id, helpdesk.number) == ("HD-77", 4)
    assert index.create_case(now=8).case_id == "C-000005"
    assert index.get_case("C-000002") == adopted


def test_case_for_number_finds_generated_and_adopted_cases(index: CaseIndex) -> None:
    adopted = index.create_case(now=1, case_id="HD-9")
    index.create_case(now=1, case_id="C-000002")
    generated = index.create_case(now=1)
    assert index.case_for_number(1) == adopted.case_id == "HD-9"
    assert index.case_for_number(2) == "C-000002"
    assert generated.number == 3  # the skipped number names no case
    assert index.case_for_number(3) == generated.case_id == "C-000003"
    assert index.case_for_number(4) is None


def test_adopting_twice_returns_the_existing_record(index: CaseIndex) -> None:
    first = index.create_case(now=10, case_id="HD-1", queue="a")
    again = index.create_case(now=99, case_id="HD-1", queue="b")
    assert again == first
    generated = index.create_case(now=11)
    assert index.create_case(now=99, case_id=generated.case_id) == generated
    assert index.create_case(now=12).number == 3


def test_adopting_an_invalid_id_is_refused(index: CaseIndex) -> None:
    with pytest.raises(ValueError):
        index.create_case(now=1, case_id="no spaces allowed")
    assert index.create_case(now=1).number == 1


def test_modify_case_persists_and_an_unknown_case_is_none(index: CaseIndex) -> None:
    record = index.create_case(now=1, queue="support")
    changed = replace(record, state=CaseState.RESOLVED, queue="billing", updated=50)
    assert index.modify_case(record.case_id, lambda _current: changed) == changed
    assert index.get_case(record.case_id) == changed
    assert index.modify_case(record.case_id, lambda _current: None) == changed  # left as it is
    assert index.modify_case("C-999999", lambda current: replace(current, updated=2)) is None
    assert index.get_case("C-999999") is None


def test_case_links_round_trip(index: CaseIndex) -> None:
    a, b, c = (index.create_case(now=10, queue="support") for _ in range(3))
    split = replace(
        a, state=CaseState.CLOSED, updated=70, state_changed=60, children=(b.case_id, c.case_id)
    )
    merged = replace(
        b, state=CaseState.CLOSED, state_changed=80, merged_into=c.case_id, parent=a.case_id
    )
    store(index, split)
    store(index, merged)
    assert index.get_case(a.case_id) == split
    assert index.get_case(b.case_id) == merged
    # Back to the defaults: the links are gone, not kept from the previous version.
    store(index, replace(merged, parent=None, merged_into=None, state_changed=b.created))
    assert index.get_case(b.case_id) == replace(b, state=CaseState.CLOSED)
    # state_changed 0 differs from `created`: it must come back as 0, not as `created`.
    store(index, replace(c, state_changed=0))
    stored = index.get_case(c.case_id)
    assert stored is not None and stored.state_changed == 0


def test_modify_case_refuses_bad_links_and_renumbering(index: CaseIndex) -> None:
    record = index.create_case(now=1)
    for bad in (
        replace(record, parent="not an id"),
        replace(record, merged_into=""),
        replace(record, children=("C-000002", "bad id")),
        replace(record, number=7),
    ):
        with pytest.raises(ValueError):
            index.modify_case(record.case_id, lambda _current, bad=bad: bad)
    assert index.get_case(record.case_id) == record
    assert index.case_for_number(1) == record.case_id


def test_closed_index_refuses_calls(index: CaseIndex) -> None:
    index.create_case(now=1)
    index.close()
    calls: list[Callable[[], object]] = [
        lambda: index.get_case("C-000001"),
        lambda: index.create_case(now=1),
        lambda: index.find(AliasKind.MESSAGE, "<m@x>"),
        lambda: index.case_for_number(1),
        lambda: index.record([Alias(AliasKind.MESSAGE, "<m@x>", "C-000001")], now=1),
        lambda: index.record((), now=1, bumps=[CounterBump("a@example.org", 60)]),
        lambda: index.peek_counter("a@example.org"),
        lambda: index.last_number(),
    ]
    for call in calls:
        with pytest.raises(CaseIndexError):
            call()


def test_concurrent_threads_never_share_a_number(index: CaseIndex) -> None:
    results: list[list[CaseRecord]] = [[] for _ in range(50)]

    def work(n: int) -> None:
        results[n].extend(index.create_case(now=1) for _ in range(20))

    run_threads(work, 50)
    records = [r for slot in results for r in slot]
    assert sorted(r.number for r in records) == list(range(1, 1001))
    assert len({r.case_id for r in records}) == 1000
    assert {index.case_for_number(r.number) for r in records} == {r.case_id for r in records}


# --- the contract: aliases ------------------------------------------------------------------


def test_reads_in_a_snapshot_see_its_writes(index: CaseIndex) -> None:
    case = index.create_case(now=1)
    with index.snapshot():
        assert index.case_for_message("<a@x>") is None
        index.record([Alias(AliasKind.MESSAGE, "<a@x>", case.case_id)], now=2)
        assert index.case_for_message("<a@x>") == case.case_id
        new = index.create_case(now=3)
        assert index.get_case(new.case_id) == new
        with index.snapshot():  # nested: one view, ended by the outer one
            record_message(index, "<b@x>", new.case_id, now=4)
            assert index.case_for_message("<b@x>") == new.case_id
        assert index.case_for_message("<b@x>") == new.case_id
    assert index.case_for_message("<b@x>") == new.case_id


def test_a_snapshot_is_one_view_until_its_thread_writes(tmp_path: Path) -> None:
    """LMDB: a snapshot's reads share one read transaction; another thread's write shows after
    this thread writes, or after the snapshot."""
    index = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    try:
        case = index.create_case(now=1)

        def elsewhere(n: int) -> None:
            record_message(index, f"<other{n}@x>", case.case_id, now=2)

        with index.snapshot():
            assert index.case_for_message("<other0@x>") is None
            run_threads(elsewhere, 1)
            assert index.case_for_message("<other0@x>") is None  # the same view
            record_message(index, "<mine@x>", case.case_id, now=3)
            assert index.case_for_message("<other0@x>") == case.case_id
            run_threads(lambda n: elsewhere(n + 1), 1)
            assert index.case_for_message("<other1@x>") is None
        assert index.case_for_message("<other1@x>") == case.case_id
    finally:
        index.close()


def test_a_message_id_round_trips_and_is_overwritten(index: CaseIndex) -> None:
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    record_message(index, "<m1@example.org>", a.case_id, now=2)
    assert index.case_for_message("<m1@example.org>") == a.case_id
    assert index.find(AliasKind.MESSAGE, "<m1@example.org>") == AliasHit(a.case_id, 2)
    record_message(index, "<m1@example.org>", a.case_id, now=3)
    assert index.find(AliasKind.MESSAGE, "<m1@example.org>") == AliasHit(a.case_id, 3)
    record_message(index, "<m1@example.org>", b.case_id, now=4)
    assert index.case_for_message("<m1@example.org>") == b.case_id
    assert index.case_for_message("<m2@example.org>") is None


def test_alias_kinds_are_separate_namespaces(index: CaseIndex) -> None:
    cases = {kind: index.create_case(now=1).case_id for kind in AliasKind}
    key = "shared-key@example.org"
    index.record([Alias(kind, key, case_id) for kind, case_id in cases.items()], now=5)
    for kind, case_id in cases.items():
        assert index.find(kind, key) == AliasHit(case_id, 5)
    assert index.case_for_message(key) == cases[AliasKind.MESSAGE]
    # Overwriting under one kind leaves the others alone.
    index.record([Alias(AliasKind.SUBJECT, key, cases[AliasKind.MESSAGE])], now=6)
    assert index.find(AliasKind.SUBJECT, key) == AliasHit(cases[AliasKind.MESSAGE], 6)
    assert index.find(AliasKind.THREAD_ROOT, key) == AliasHit(cases[AliasKind.THREAD_ROOT], 5)
    assert index.find(AliasKind.PARTICIPANT, key) == AliasHit(cases[AliasKind.PARTICIPANT], 5)


def test_record_writes_a_batch(index: CaseIndex) -> None:
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    batch = [
        Alias(AliasKind.MESSAGE, "<out.1@example.org>", a.case_id),
        Alias(AliasKind.THREAD_ROOT, "01d9" + "ab" * 20, a.case_id),
        Alias(AliasKind.PARTICIPANT, f"{a.case_id} pat@customer.example", a.case_id),
        Alias(AliasKind.EXTERNAL, "servicenow:INC0012345", b.case_id),
        # The same key twice in one batch: the later one wins, as with separate calls.
        Alias(AliasKind.MESSAGE, "<out.1@example.org>", b.case_id),
    ]
    index.record(batch, now=9)
    assert index.find(AliasKind.MESSAGE, "<out.1@example.org>") == AliasHit(b.case_id, 9)
    assert index.find(AliasKind.THREAD_ROOT, "01d9" + "ab" * 20) == AliasHit(a.case_id, 9)
    participant = f"{a.case_id} pat@customer.example"
    assert index.find(AliasKind.PARTICIPANT, participant) == AliasHit(a.case_id, 9)
    assert index.find(AliasKind.PARTICIPANT, f"{b.case_id} pat@customer.example") is None
    assert index.find(AliasKind.EXTERNAL, "servicenow:INC0012345") == AliasHit(b.case_id, 9)
    index.record([], now=10)  # an empty batch is no error and changes nothing
    assert index.find(AliasKind.MESSAGE, "<out.1@example.org>") == AliasHit(b.case_id, 9)


@pytest.mark.parametrize(
    "bad",
    [
        Alias(AliasKind.MESSAGE, "<bad.case@example.org>", "no such id!"),
        Alias(AliasKind.SUBJECT, "", "C-000001"),
    ],
    ids=["invalid-case-id", "empty-key"],
)
def test_record_is_all_or_nothing(index: CaseIndex, bad: Alias) -> None:
    a = index.create_case(now=1)
    record_message(index, "<old@example.org>", a.case_id, now=1)
    batch = [
        Alias(AliasKind.MESSAGE, "<new@example.org>", a.case_id),
        Alias(AliasKind.MESSAGE, "<old@example.org>", "C-000077"),
        Alias(AliasKind.PARTICIPANT, f"{a.case_id} pat@customer.example", a.case_id),
        bad,
    ]
    with pytest.raises(ValueError):
        index.record(batch, now=2)
    assert index.find(AliasKind.MESSAGE, "<new@example.org>") is None
    assert index.find(AliasKind.MESSAGE, "<old@example.org>") == AliasHit(a.case_id, 1)
    assert index.find(AliasKind.PARTICIPANT, f"{a.case_id} pat@customer.example") is None


def test_long_keys_of_every_kind(index: CaseIndex) -> None:
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    # Same first 1,990 characters: hashing must cover the whole key.
    long_a = "<" + "x" * 1990 + "a@example.org>"
    long_b = "<" + "x" * 1990 + "b@example.org>"
    assert len(long_a) > 2000
    for kind in AliasKind:
        index.record([Alias(kind, long_a, a.case_id), Alias(kind, long_b, b.case_id)], now=2)
        assert index.find(kind, long_a) == AliasHit(a.case_id, 2)
        assert index.find(kind, long_b) == AliasHit(b.case_id, 2)
        assert index.find(kind, long_a[:400]) is None
    assert index.case_for_message(long_a) == a.case_id


def test_eight_bit_message_ids(index: CaseIndex) -> None:
    raw = b"<caf\xe9@example.org>".decode("utf-8", "surrogateescape")
    utf8 = "<café@example.org>"
    a = index.create_case(now=1)
    b = index.create_case(now=1)
    record_message(index, raw, a.case_id, now=2)
    record_message(index, utf8, b.case_id, now=2)
    assert index.case_for_message(raw) == a.case_id
    assert index.case_for_message(utf8) == b.case_id
    index.record([Alias(AliasKind.PARTICIPANT, raw, b.case_id)], now=3)
    assert index.find(AliasKind.PARTICIPANT, raw) == AliasHit(b.case_id, 3)
    assert index.find(AliasKind.PARTICIPANT, utf8) is None


def test_concurrent_batches_all_land(index: CaseIndex) -> None:
    case_id = index.create_case(now=1).case_id

    def work(n: int) -> None:
        for m in range(10):
            index.record(
                [Alias(kind, f"<{n}.{m}@example.org>", case_id) for kind in AliasKind], now=n
            )

    run_threads(work, 20)
    for n in range(20):
        for m in range(10):
            for kind in AliasKind:
                assert index.find(kind, f"<{n}.{m}@example.org>") == AliasHit(case_id, n)


# --- the contract: counters -----------------------------------------------------------------


def test_counters_count_per_key_and_expire(index: CaseIndex) -> None:
    sender = "flood@example.org"
    assert [count_event(index, sender, now=1000 + n, window=HOUR) for n in range(3)] == [1, 2, 3]
    assert count_event(index, "other@example.org", now=1002, window=HOUR) == 1
    # Fixed windows: the last second of the window still counts, its end restarts at 1.
    assert count_event(index, sender, now=1000 + HOUR - 1, window=HOUR) == 4
    assert count_event(index, sender, now=1000 + HOUR, window=HOUR) == 1
    assert count_event(index, sender, now=1000 + HOUR + 5, window=HOUR) == 2
    assert count_event(index, "other@example.org", now=1000 + HOUR + 5, window=HOUR) == 1
    # A racing caller that read the clock a moment earlier still counts in the window...
    assert count_event(index, sender, now=1000 + HOUR - 2, window=HOUR) == 3
    # ...a clock stepped back by a whole window restarts it.
    assert count_event(index, sender, now=1000, window=HOUR) == 1


def test_counters_refuse_bad_input(index: CaseIndex) -> None:
    for window in (0, -5):
        with pytest.raises(ValueError):
            count_event(index, "a@example.org", now=1, window=window)
    with pytest.raises(ValueError):
        count_event(index, "", now=1, window=60)
    assert count_event(index, "a@example.org", now=1, window=60) == 1


def test_counters_lose_no_bump_under_threads(index: CaseIndex) -> None:
    busy = CounterBump("busy@example.org", HOUR)

    def work(n: int) -> None:
        for _ in range(50):
            index.record((), 500, [busy])

    run_threads(work, 20)
    assert count_event(index, "busy@example.org", now=501, window=HOUR) == 1001  # none was lost


def test_a_new_case_and_its_aliases_are_created_together(index: CaseIndex) -> None:
    case = index.create_case(
        now=7, aliases=lambda c: [Alias(AliasKind.MESSAGE, f"<first-of-{c.case_id}@x>", c.case_id)]
    )
    first = f"<first-of-{case.case_id}@x>"
    assert index.find(AliasKind.MESSAGE, first) == AliasHit(case.case_id, 7)


def test_a_new_case_with_a_bad_alias_is_not_created(index: CaseIndex) -> None:
    with pytest.raises(ValueError):
        index.create_case(now=7, aliases=lambda c: [
            Alias(AliasKind.MESSAGE, "<ok@x>", c.case_id), Alias(AliasKind.MESSAGE, "", c.case_id)])
    assert index.last_number() == 0
    assert index.get_case("C-000001") is None and index.case_for_message("<ok@x>") is None
    assert index.create_case(now=8).case_id == "C-000001"


def test_aliases_come_with_generated_cases_only(index: CaseIndex) -> None:
    with pytest.raises(ValueError):
        index.create_case(now=7, case_id="APP-1", aliases=lambda c: [])
    with pytest.raises(ValueError):
        index.create_case(now=7, case_id="APP-1", bumps=[CounterBump("flood a@x", HOUR)])
    assert index.get_case("APP-1") is None
    assert index.next_count("flood a@x", now=7, window=HOUR) == 1


def test_a_new_case_counts_its_bumps(index: CaseIndex) -> None:
    bump = CounterBump("flood a@example.org", HOUR)
    index.create_case(now=1000, bumps=[bump])
    index.create_case(now=1001, bumps=[bump])
    assert index.next_count("flood a@example.org", now=1002, window=HOUR) == 3
    with pytest.raises(ValueError):  # a bad bump: no case, no count
        index.create_case(now=1002, bumps=[bump, CounterBump("b", 0)])
    assert index.last_number() == 2
    assert index.next_count("flood a@example.org", now=1002, window=HOUR) == 3


def test_record_applies_case_changes_with_the_aliases(index: CaseIndex) -> None:
    a, b = index.create_case(now=1), index.create_case(now=1)
    touched = index.record(
        [Alias(AliasKind.MESSAGE, "<m@x>", a.case_id)], 50, [CounterBump("flood p@x", HOUR)],
        [(a.case_id, lambda c: replace(c, updated=50)),
         (b.case_id, lambda c: None),  # no change: the record as it is
         ("C-999999", lambda c: replace(c, updated=50))],  # no such case: left out
    )
    assert touched == {a.case_id: replace(a, updated=50), b.case_id: b}
    assert index.get_case(a.case_id) == replace(a, updated=50)
    assert index.get_case(b.case_id) == b
    assert index.case_for_message("<m@x>") == a.case_id
    assert index.next_count("flood p@x", now=51, window=HOUR) == 2
    # Two changes of one case apply in order, the second to the first's result.
    index.record((), 60, changes=[(a.case_id, lambda c: replace(c, updated=c.updated + 1)),
                                  (a.case_id, lambda c: replace(c, updated=c.updated * 2))])
    assert index.get_case(a.case_id) == replace(a, updated=102)


def test_record_with_a_bad_case_change_writes_nothing(index: CaseIndex) -> None:
    case = index.create_case(now=1)
    with pytest.raises(ValueError):  # a change may not renumber a case
        index.record([Alias(AliasKind.MESSAGE, "<m@x>", case.case_id)], 50, changes=[
            (case.case_id, lambda c: replace(c, updated=50)),
            (case.case_id, lambda c: replace(c, number=c.number + 1)),
        ])
    assert index.get_case(case.case_id) == case
    assert index.case_for_message("<m@x>") is None


def test_a_new_case_changes_other_cases_in_its_commit(index: CaseIndex) -> None:
    """A closed case names its follow-up as the follow-up is created: one transaction."""
    earlier = replace(index.create_case(now=1), state=CaseState.CLOSED)
    store(index, earlier)
    new = index.create_case(now=5, changes=lambda n: [
        (earlier.case_id, lambda c: replace(c, followup=n.case_id, updated=5))])
    assert index.get_case(earlier.case_id) == replace(earlier, followup=new.case_id, updated=5)
    with pytest.raises(ValueError):  # like aliases: not for an adopted id, which may exist
        index.create_case(now=7, case_id="APP-1", changes=lambda n: [])
    assert index.get_case("APP-1") is None


def test_a_new_case_can_be_numbered_past_a_lost_one(index: CaseIndex) -> None:
    """A token named number 7, which the index does not hold: numbers go on after it."""
    index.create_case(now=1)
    assert index.create_case(now=2, number_above=7).number == 8
    assert index.create_case(now=3).number == 9 and index.last_number() == 9
    assert index.create_case(now=4, number_above=2).number == 10  # never backwards


def test_a_write_whose_expectation_fails_writes_nothing(index: CaseIndex) -> None:
    """The check runs inside the write: what another writer committed since the read makes
    the write refuse, and the writer decides again."""
    case = index.create_case(now=1)
    record_message(index, "<seen@x>", case.case_id, now=2)
    bump = CounterBump("flood p@x", HOUR)
    write_recorded = Expect(absent=((AliasKind.MESSAGE, "<seen@x>"),))
    with pytest.raises(StaleDecision):
        index.record([Alias(AliasKind.MESSAGE, "<new@x>", case.case_id)], 3, [bump],
                     [(case.case_id, lambda c: replace(c, updated=3))], expect=write_recorded)
    with pytest.raises(StaleDecision):
        index.create_case(now=3, bumps=[bump], expect=write_recorded)
    # Found as the body writes that very alias, after its case change: still nothing written.
    with pytest.raises(StaleDecision):
        index.record([Alias(AliasKind.MESSAGE, "<seen@x>", case.case_id)], 3, [bump],
                     [(case.case_id, lambda c: replace(c, updated=3))], expect=write_recorded)
    with pytest.raises(StaleDecision):
        index.create_case(now=3, bumps=[bump], expect=write_recorded, aliases=lambda n: [
            Alias(AliasKind.MESSAGE, "<seen@x>", n.case_id)])
    assert index.case_for_message("<new@x>") is None and index.last_number() == 1
    assert index.get_case(case.case_id) == case
    assert index.next_count("flood p@x", now=4, window=HOUR) == 1
    # A case whose state or links moved since it was read; its `updated` time does not count.
    read = index.get_case(case.case_id)
    assert read is not None
    store(index, replace(read, updated=9))
    assert index.record((), 10, [bump], expect=Expect(cases=(read,))) == {}
    store(index, replace(read, state=CaseState.CLOSED))
    for moved in (read, replace(read, case_id="C-999999")):  # changed, and gone
        with pytest.raises(StaleDecision):
            index.record((), 11, [bump], expect=Expect(cases=(moved,)))
    assert index.next_count("flood p@x", now=12, window=HOUR) == 2
    # An alias whose case is gone names none; a waiting case opened meanwhile is as read.
    index.record([Alias(AliasKind.MESSAGE, "<orphan@x>", "C-000777")], 12)
    waiting = replace(index.get_case(case.case_id) or case, state=CaseState.WAITING)
    store(index, waiting)
    store(index, replace(waiting, state=CaseState.OPEN, state_changed=12))
    index.record((), 12, [bump], expect=Expect(((AliasKind.MESSAGE, "<orphan@x>"),),
                                               (waiting,)))
    store(index, replace(waiting, state=CaseState.CLOSED))
    # What still holds lets the write through.
    fresh = index.get_case(case.case_id)
    assert fresh is not None
    assert index.create_case(now=13, expect=Expect(((AliasKind.MESSAGE, "<new@x>"),),
                                                   (fresh,))).number == 2


def test_next_count_looks_without_counting(index: CaseIndex) -> None:
    assert index.next_count("a@example.org", now=1000, window=HOUR) == 1
    assert index.next_count("a@example.org", now=1000, window=HOUR) == 1
    count_event(index, "a@example.org", now=1000, window=HOUR)
    assert index.next_count("a@example.org", now=1001, window=HOUR) == 2
    assert index.next_count("a@example.org", now=1000 + HOUR, window=HOUR) == 1  # expired


def test_peek_counter_shows_the_window_without_counting(index: CaseIndex) -> None:
    """What a dry run's overlay starts its counters from."""
    assert index.peek_counter("a@example.org") is None
    bump = CounterBump("a@example.org", HOUR)
    index.record((), 1000, [bump])
    index.record((), 1010, [bump])
    window = index.peek_counter("a@example.org")
    assert window is not None and (window.start, window.count) == (1000, 2)
    assert index.peek_counter("a@example.org") == window  # looking counted nothing
    assert index.peek_counter("b@example.org") is None


def test_record_counts_its_bumps_with_the_aliases(index: CaseIndex) -> None:
    case = index.create_case(now=1)
    bump = CounterBump("flood a@example.org", HOUR)
    index.record([Alias(AliasKind.MESSAGE, "<m@x>", case.case_id)], 1000, [bump])
    index.record((), 1001, [bump, CounterBump("flood b@example.org", HOUR)])
    assert index.case_for_message("<m@x>") == case.case_id
    assert index.next_count("flood a@example.org", now=1002, window=HOUR) == 3
    assert count_event(index, "flood b@example.org", now=1002, window=HOUR) == 2


def test_record_with_a_bad_bump_writes_nothing(index: CaseIndex) -> None:
    case = index.create_case(now=1)
    with pytest.raises(ValueError):
        index.record([Alias(AliasKind.MESSAGE, "<m@x>", case.case_id)], 1000,
                     [CounterBump("flood a@example.org", HOUR), CounterBump("b", 0)])
    assert index.case_for_message("<m@x>") is None
    assert index.next_count("flood a@example.org", now=1000, window=HOUR) == 1


# --- shared encodings ------------------------------------------------------------------------


def test_alias_keys_are_the_kind_byte_and_a_16_byte_digest() -> None:
    m = AliasKind.MESSAGE
    # The on-disk format (schema 2): SHA-256("abc") is the FIPS 180-2 test vector.
    assert keys.alias_key(m, "abc") == b"m" + bytes.fromhex("ba7816bf8f01cfea414140de5dae2223")
    assert keys.alias_key("m", "abc") == keys.alias_key(m, "abc")  # type: ignore[arg-type]
    # Each kind is its own namespace: same digest, another first byte.
    subject = keys.alias_key(AliasKind.SUBJECT, "abc")
    assert subject[:1] == b"s" and subject[1:] == keys.alias_key(m, "abc")[1:]
    # Any length, even past LMDB's 511-byte key limit, gives 17 bytes.
    for key in ("<a@b>", "<" + "x" * 5000 + "@example.org>", "\x00" * 33, "Grüße"):
        assert len(keys.alias_key(m, key)) == 17
    # A raw 8-bit byte (surrogateescape) is hashed as that byte, not as a replacement.
    assert keys.alias_key(m, "<caf\udce9@x>") == b"m" + hashlib.sha256(b"<caf\xe9@x>").digest()[:16]
    assert keys.alias_key(m, "<caf\udce9@x>") != keys.alias_key(m, "<caf\u00e9@x>")
    for kind in AliasKind:
        with pytest.raises(ValueError):
            keys.alias_key(kind, "")
    with pytest.raises(ValueError, match="unknown alias kind"):
        keys.alias_key("q", "<a@b>")  # type: ignore[arg-type]


def test_a_digest_gives_the_key_its_clear_text_would() -> None:
    """What import does with a `{"hash": ...}` key, including a schema 1 export's SHA-256."""
    key = "C-000001 pat.customer@example.org"
    full = hashlib.sha256(key.encode()).digest()
    for digest in (full, full[:16]):
        assert keys.alias_key_from_digest(AliasKind.PARTICIPANT, digest) == keys.alias_key(
            AliasKind.PARTICIPANT, key)
    for bad in (b"", full[:15], full + b"x"):
        with pytest.raises(ValueError, match="16 or 32 bytes"):
            keys.alias_key_from_digest(AliasKind.PARTICIPANT, bad)


def test_no_key_is_stored_in_clear() -> None:
    address = "pat.customer@example.org"
    for kind, key in ((AliasKind.PARTICIPANT, f"C-000001 {address}"),
                      (AliasKind.MESSAGE, f"<x1@{address}>")):
        assert address.encode() not in keys.alias_key(kind, key)
    assert keys.alias_key(AliasKind.PARTICIPANT, f"C-000001 {address}") != keys.alias_key(
        AliasKind.PARTICIPANT, f"C-000002 {address}")
    assert len(keys.counter_key(address)) == 32
    assert address.encode() not in keys.counter_key(address)


def test_alias_values_carry_the_time() -> None:
    assert keys.decode_alias(keys.encode_alias("C-000001", 1_700_000_000)) == AliasHit(
        "C-000001", 1_700_000_000
    )
    assert keys.encode_alias("C-1", 5)[:4] == b"\x00\x00\x00\x05"
    assert keys.decode_alias(keys.encode_alias("C-1", -3)).recorded == 0
    assert keys.decode_alias(keys.encode_alias("C-1", 1 << 40)).recorded == 0xFFFFFFFF


def test_case_records_stay_small() -> None:
    fresh = keys.new_case("C-000001", 1, 1_700_000_000, "support")
    data = keys.encode_case(fresh)
    # No link and an unchanged state: the new fields cost nothing.
    assert set(json.loads(data)) == {"n", "s", "q", "c", "u"}
    assert len(data) < 70
    assert keys.decode_case("C-000001", data) == fresh


case_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
times = st.integers(min_value=0, max_value=0xFFFFFFFF)


@given(
    number=st.integers(min_value=1, max_value=(1 << 64) - 1),
    state=st.sampled_from(CaseState),
    queue=st.text(max_size=40),
    created=times,
    updated=times,
    state_changed=times,
    parent=st.none() | case_ids,
    merged_into=st.none() | case_ids,
    children=st.lists(case_ids, max_size=5).map(tuple),
    followup=st.none() | case_ids,
    thread_root=st.none() | st.binary(min_size=22, max_size=22).map(bytes.hex),
    follows=st.none() | case_ids,
)
def test_case_encoding_round_trips(**fields: Any) -> None:
    record = CaseRecord(case_id="C-1", **fields)
    data = keys.encode_case(record)
    assert keys.decode_case("C-1", data) == record
    # Written by hand, byte for byte what json.dumps writes for the same fields.
    expected: dict[str, Any] = {"n": record.number, "s": record.state.value, "q": record.queue,
                                "c": record.created, "u": record.updated}
    if record.state_changed != record.created:
        expected["sc"] = record.state_changed
    for name, link in (("p", record.parent), ("m", record.merged_into), ("f", record.followup),
                       ("fo", record.follows)):
        if link is not None:
            expected[name] = link
    if record.children:
        expected["ch"] = list(record.children)
    if record.thread_root is not None:
        expected["r"] = record.thread_root
    assert data == json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode()


# --- LMDB only ------------------------------------------------------------------------------


def test_lmdb_persists_across_reopen(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    first = index.create_case(now=1, queue="q")
    index.create_case(now=2, case_id="HD-5")
    record_message(index, "<m@example.org>", first.case_id, now=3)
    index.record([Alias(AliasKind.PARTICIPANT, "C-000001 p@example.org", first.case_id)], 4)
    linked = replace(first, state=CaseState.WAITING, state_changed=5, children=("HD-5",))
    store(index, linked)
    assert count_event(index, "s@example.org", now=10, window=HOUR) == 1
    index.close()

    index = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    try:
        assert index.get_case(first.case_id) == linked
        assert index.case_for_message("<m@example.org>") == first.case_id
        hit = index.find(AliasKind.PARTICIPANT, "C-000001 p@example.org")
        assert hit == AliasHit(first.case_id, 4)
        assert index.case_for_number(2) == "HD-5"
        assert count_event(index, "s@example.org", now=11, window=HOUR) == 2
        assert index.create_case(now=4).number == 3
    finally:
        index.close()


def _all_records(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every key and value of every named database, read with lmdb itself."""
    env = lmdb.open(str(path), max_dbs=MAX_DBS, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [name for name, _ in txn.cursor()]
            return {name: list(txn.cursor(db=env.open_db(name, txn=txn))) for name in names}
    finally:
        env.close()


def test_lmdb_stores_no_key_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    address = "pat.customer@example.org"
    clear = [
        (AliasKind.PARTICIPANT, f"{{case}} {address}"),
        (AliasKind.MESSAGE, "<visible.id@example.org>"),
        (AliasKind.SUBJECT, "printer keeps jamming"),
        (AliasKind.EXTERNAL, "servicenow:INC0012345"),
    ]
    index = LmdbIndex(path, MAP_SIZE)
    case_id = index.create_case(now=1).case_id
    aliases = [(kind, key.format(case=case_id)) for kind, key in clear]
    index.record([Alias(kind, key, case_id) for kind, key in aliases], now=2)
    count_event(index, address, now=2, window=HOUR)
    index.close()

    records = _all_records(path)
    assert set(records) == {b"aliases", b"cases", b"counters", b"meta", b"numbers"}
    dumped = b"".join(k + v for rows in records.values() for k, v in rows)
    on_disk = (path / "data.mdb").read_bytes()
    # The scan sees what is stored in clear (the case id), and none of the keys.
    assert case_id.encode() in dumped and case_id.encode() in on_disk
    for text in (address, "pat.customer", "visible.id", "jamming", "INC0012345"):
        assert text.encode() not in dumped
        assert text.encode() not in on_disk
    assert len(records[b"aliases"]) == 4 and all(len(k) == 17 for k, _ in records[b"aliases"])
    assert len(records[b"counters"]) == 1
    reopened = LmdbIndex(path, MAP_SIZE)
    try:
        for kind, key in aliases:
            assert reopened.find(kind, key) == AliasHit(case_id, 2)
    finally:
        reopened.close()


def test_lmdb_two_objects_on_one_path_share_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    a = LmdbIndex(path, MAP_SIZE)
    b = LmdbIndex(str(path) + "/", MAP_SIZE)  # another spelling of the same directory
    made = a.create_case(now=1)
    assert b.get_case(made.case_id) == made
    assert b.create_case(now=1).number == 2
    a.close()
    assert b.create_case(now=1).number == 3  # a's close left b's env open
    b.close()
    # The last close really closed it: py-lmdb refuses a second open in one process.
    env = lmdb.open(str(path), max_dbs=MAX_DBS)
    env.close()


def _race_a_child_process(path: Path, work: str, mine: Callable[[LmdbIndex], Any]) -> Any:
    """Run `work` (an expression over `index`) in a second process while `mine` runs here.

    Returns (what `mine` returned, what the child's expression returned).
    """
    child_code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(MILTER_DIR)!r})\n"
        "from casethread.core.model import CounterBump\n"
        "from casethread.index import LmdbIndex\n"
        f"index = LmdbIndex({str(path)!r}, {MAP_SIZE})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        f"result = {work}\n"
        "index.close()\n"
        "print(json.dumps(result), flush=True)\n"
    )
    index = LmdbIndex(path, MAP_SIZE)
    child = subprocess.Popen(
        [sys.executable, "-c", child_code],
        cwd=path.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        ours = mine(index)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        index.close()
    assert child.returncode == 0
    return ours, json.loads(out)


def test_lmdb_second_process_never_duplicates_a_number(tmp_path: Path) -> None:
    per_side = 300
    mine, theirs = _race_a_child_process(
        tmp_path / "idx",
        f"[index.create_case(now=1).number for _ in range({per_side})]",
        lambda index: [index.create_case(now=1).number for _ in range(per_side)],
    )
    assert sorted(mine + theirs) == list(range(1, 2 * per_side + 1))


def test_lmdb_second_process_loses_no_counter_bump(tmp_path: Path) -> None:
    per_side = 300
    busy = CounterBump("busy@example.org", HOUR)
    _, theirs = _race_a_child_process(
        tmp_path / "idx",
        f"len([index.record((), 100, [{busy!r}]) for _ in range({per_side})])",
        lambda index: [index.record((), 100, [busy]) for _ in range(per_side)],
    )
    assert theirs == per_side
    again = LmdbIndex(tmp_path / "idx", MAP_SIZE)
    try:
        assert again.peek_counter(busy.key) == keys.Window(100, 2 * per_side)  # none was lost
    finally:
        again.close()


def test_lmdb_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    index = LmdbIndex(path, MAP_SIZE)
    index.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / "data.mdb").stat().st_mode) == 0o600
    assert stat.S_IMODE((path / "lock.mdb").stat().st_mode) == 0o600


def test_lmdb_full_map_raises_index_full(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "tiny", 64 << 10, max_map_size=64 << 10)
    try:
        first = index.create_case(now=1)
        # max_map_size is set, so that is the setting to raise (not map_size).
        with pytest.raises(IndexFull, match=r"raise index\.max_map_size in the configuration$"):
            for n in range(100_000):
                record_message(index, f"<{n}.{'x' * 200}@example.org>", first.case_id, now=1)
        # The failed write rolled back; the index stays readable.
        assert index.get_case(first.case_id) == first
    finally:
        index.close()


@pytest.mark.parametrize("where", ["missing/idx", "file/idx"])
def test_lmdb_unopenable_path_raises_unavailable(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(IndexUnavailable, match=str(tmp_path)):
        LmdbIndex(tmp_path / where, MAP_SIZE)


def test_lmdb_corrupt_file_raises_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"garbage " * 4096)
    with pytest.raises(IndexUnavailable, match="idx"):
        LmdbIndex(path, MAP_SIZE)


@pytest.mark.parametrize(("schema", "advice"), [(b"99", "use a newer casethread"),
                                               (b"1", "export it with the casethread")])
def test_lmdb_other_schema_is_refused_with_advice(tmp_path: Path, schema: bytes,
                                                  advice: str) -> None:
    path = tmp_path / "idx"
    LmdbIndex(path, MAP_SIZE).close()
    env = lmdb.open(str(path), max_dbs=MAX_DBS)
    with env.begin(write=True) as txn:
        txn.put(META_SCHEMA, schema, db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaMismatch, match=f"version {schema.decode()};.*{advice}"):
        LmdbIndex(path, MAP_SIZE)
    # The file is left as it was, and the refused env was closed, not left registered.
    env = lmdb.open(str(path), max_dbs=MAX_DBS)
    with env.begin() as txn:
        assert txn.get(META_SCHEMA, db=env.open_db(b"meta", txn=txn)) == schema
    env.close()


def test_open_index_uses_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        index=IndexSettings(path=str(tmp_path / "idx"), map_size=1 << 20),
        cases=CaseSettings(id_prefix="T-", id_digits=3),
    )
    index = open_index(settings)
    try:
        assert isinstance(index, LmdbIndex)
        assert index.create_case(now=1).case_id == "T-001"
    finally:
        index.close()
    assert os.path.exists(tmp_path / "idx" / "data.mdb")


# --- the dry-run overlay --------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Iterator[LmdbIndex]:
    index = LmdbIndex(tmp_path / "base", MAP_SIZE)
    yield index
    index.close()


def test_overlay_reads_fall_through_and_writes_stay(base: LmdbIndex) -> None:
    known = base.create_case(now=1, queue="support")
    base.record(
        [
            Alias(AliasKind.MESSAGE, "<seen@example.org>", known.case_id),
            Alias(AliasKind.THREAD_ROOT, "01d9ab", known.case_id),
        ],
        now=2,
    )
    overlay = OverlayIndex(base, CaseSettings())
    try:
        assert overlay.find(AliasKind.THREAD_ROOT, "01d9ab") == AliasHit(known.case_id, 2)
        assert overlay.case_for_message("<seen@example.org>") == known.case_id
        assert overlay.case_for_number(1) == known.case_id
        assert overlay.get_case(known.case_id) == known

        new = overlay.create_case(now=3)
        assert (new.case_id, new.number) == ("C-000002", 2)  # what a real run would allocate
        overlay.record(
            [
                Alias(AliasKind.MESSAGE, "<seen@example.org>", new.case_id),
                Alias(AliasKind.SUBJECT, "printer on fire", new.case_id),
            ],
            now=4,
        )
        changed = replace(known, state=CaseState.RESOLVED, state_changed=4, children=("C-000002",))
        store(overlay, changed)
        assert overlay.case_for_message("<seen@example.org>") == new.case_id
        assert overlay.find(AliasKind.SUBJECT, "printer on fire") == AliasHit(new.case_id, 4)
        assert overlay.case_for_number(2) == new.case_id
        assert overlay.get_case(known.case_id) == changed
        assert overlay.create_case(now=5, case_id=known.case_id) == changed
        # Shadowing a base case allocated no number.
        assert overlay.last_number() == 2
        assert overlay.create_case(now=5).number == 3
    finally:
        overlay.close()
    # The real index never saw any of it.
    assert base.last_number() == 1
    assert base.get_case(known.case_id) == known
    assert base.get_case("C-000002") is None
    assert base.case_for_number(2) is None
    assert base.case_for_message("<seen@example.org>") == known.case_id
    assert base.find(AliasKind.SUBJECT, "printer on fire") is None


def test_overlay_counters_start_from_the_base(base: LmdbIndex) -> None:
    for _ in range(5):
        count_event(base, "flood@example.org", now=100, window=HOUR)
    overlay = OverlayIndex(base, CaseSettings())
    try:
        assert count_event(overlay, "flood@example.org", now=200, window=HOUR) == 6
        assert count_event(overlay, "flood@example.org", now=201, window=HOUR) == 7
        assert count_event(overlay, "new@example.org", now=200, window=HOUR) == 1
        # The base's window started at 100, so it ends at 100 + HOUR, not 200 + HOUR.
        assert count_event(overlay, "flood@example.org", now=100 + HOUR, window=HOUR) == 1
    finally:
        overlay.close()
    assert count_event(base, "flood@example.org", now=300, window=HOUR) == 6
    assert base.peek_counter("new@example.org") is None


def test_lmdb_async_sync_flushes_in_the_background_and_on_close(tmp_path: Path) -> None:
    # index.sync: async -> no fsync per commit; a flusher thread syncs, close() syncs last.
    path = tmp_path / "async"
    index = LmdbIndex(path, 1 << 20, sync=False)
    flushers = [t for t in threading.enumerate() if t.name == "casethread-index-flush"]
    assert len(flushers) == 1
    case = index.create_case(now=5)
    record_message(index, "a@b.example", case.case_id, now=5)
    index.close()
    assert not flushers[0].is_alive()
    again = LmdbIndex(path, 1 << 20)
    try:
        assert again.case_for_message("a@b.example") == case.case_id
        assert not [t for t in threading.enumerate() if t.name == "casethread-index-flush"]
    finally:
        again.close()


def test_a_damaged_thread_root_reads_as_none() -> None:
    """The derived root is used then, instead of failing the outbound mail on bytes.fromhex."""
    for bad in ('"xyz"', "42", '"' + "AB" * 22 + '"'):
        data = b'{"n":1,"s":"open","q":"","c":1,"u":1,"r":' + bad.encode() + b"}"
        assert keys.decode_case("C-1", data).thread_root is None


def test_lmdb_pid_of_another_namespace_is_named(tmp_path: Path) -> None:
    """A process of another PID namespace with our PID holds our byte of lock.mdb (LMDB's
    reader mark): a container beside ours on the same index volume. Made here by a child
    that takes the lock LMDB would take for this PID."""
    path = tmp_path / "idx"
    LmdbIndex(path, MAP_SIZE).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys\n"
         f"fd = os.open({str(path / 'lock.mdb')!r}, os.O_RDWR)\n"
         f"fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, {os.getpid()}, os.SEEK_SET)\n"
         "print('held', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(IndexUnavailable, match=r"another PID namespace .*`docker exec`"):
            LmdbIndex(path, MAP_SIZE)
    finally:
        holder.communicate("")
    LmdbIndex(path, MAP_SIZE).close()  # the lock gone, the index opens
