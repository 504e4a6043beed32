"""LMDB commits: concurrent writes share one transaction and one commit (each writer still
gets its own result, its own error and its own rollback), and one message commits as few times
as it can."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import lmdb
import pytest

from casethread.core.model import Alias, AliasKind, CaseState, CounterBump
from casethread.core.store import Expect, StaleDecision
from casethread.index import LmdbIndex
from casethread.index.lmdb_env import SharedEnv

WRITERS = 20
WAIT = 30.0


@pytest.fixture
def index(tmp_path: Path) -> Iterator[LmdbIndex]:
    idx = LmdbIndex(tmp_path / "index", 64 << 20)
    yield idx
    idx.close()


def _shared(index: LmdbIndex) -> SharedEnv:
    return index._live()


def _last_txnid(index: LmdbIndex) -> int:
    return int(_shared(index).env.info()["last_txnid"])


def _queued_behind_a_held_writer(
    index: LmdbIndex, writes: list[Callable[[], Any]]
) -> list[tuple[Any, BaseException | None]]:
    """Hold the writer lock with one slow write, queue `writes` from their own threads behind
    it, release, and return each write's (result, error) in order."""
    release = threading.Event()
    holding = threading.Event()

    def hold(txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
        txn.put(b"held", b"1", db=db.meta)  # a commit that writes nothing is no transaction
        holding.set()
        assert release.wait(WAIT)

    holder = threading.Thread(target=index.writing, args=(hold,))
    holder.start()
    assert holding.wait(WAIT)
    outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(writes)

    def run(n: int) -> None:
        try:
            outcomes[n] = (writes[n](), None)
        except BaseException as exc:
            outcomes[n] = (None, exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(writes))]
    deadline = time.monotonic() + WAIT
    for queued, thread in enumerate(threads, 1):
        thread.start()
        # One at a time: the batch runs them in the order given, which tests of what each
        # write sees rely on.
        while len(_shared(index).pending) < queued:
            assert time.monotonic() < deadline, "the writers never queued"
            time.sleep(0.001)
    release.set()
    for thread in [holder, *threads]:
        thread.join(WAIT)
        assert not thread.is_alive()
    return outcomes


def _record(index: LmdbIndex, n: int) -> Callable[[], None]:
    return lambda: index.record([Alias(AliasKind.MESSAGE, f"<m{n}@example.com>", "C-000001")],
                               1_700_000_000)


def test_concurrent_writes_share_one_commit(index: LmdbIndex) -> None:
    index.create_case(1_700_000_000)
    before = _last_txnid(index)
    outcomes = _queued_behind_a_held_writer(index, [_record(index, n) for n in range(WRITERS)])
    assert [error for _, error in outcomes] == [None] * WRITERS
    # The held write, then every queued one in a single transaction.
    assert _last_txnid(index) == before + 2
    for n in range(WRITERS):
        assert index.case_for_message(f"<m{n}@example.com>") == "C-000001"


def test_each_writer_gets_its_own_result(index: LmdbIndex) -> None:
    touched = index.create_case(0)
    creates = [lambda: index.create_case(1_700_000_000) for _ in range(WRITERS)]
    bump = CounterBump("flood a@example.com", 60)
    touch = [(touched.case_id, lambda c: replace(c, updated=c.updated + 1))]
    touches = [lambda: index.record((), 1_700_000_000, [bump], touch) for _ in range(WRITERS)]
    outcomes = _queued_behind_a_held_writer(index, creates + touches)
    numbers = sorted(case.number for case, _ in outcomes[:WRITERS])
    assert numbers == list(range(2, WRITERS + 2))
    # Bodies in one transaction still see each other's writes: every change and every bump
    # counted once.
    after = sorted(changed[touched.case_id].updated for changed, _ in outcomes[WRITERS:])
    assert after == list(range(1, WRITERS + 1))
    counted = index.peek_counter(bump.key)
    assert counted is not None and counted.count == WRITERS


def test_a_failing_write_rolls_back_alone(index: LmdbIndex) -> None:
    index.create_case(1_700_000_000)

    def half_then_fail(txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
        txn.put(b"m" + b"<half@example.com>", b"junk", db=db.aliases)
        raise ValueError("this write fails")

    writes: list[Callable[[], Any]] = [_record(index, n) for n in range(5)]
    writes.insert(2, lambda: index.writing(half_then_fail))
    case = index.get_case("C-000001")
    assert case is not None
    stale = Expect(cases=(replace(case, state=CaseState.CLOSED),))
    writes.insert(4, lambda: index.record((), 1_700_000_000, [CounterBump("flood a@x", 60)],
                                          expect=stale))
    outcomes = _queued_behind_a_held_writer(index, writes)
    errors = [type(error) if error else None for _, error in outcomes]
    assert errors == [None, None, ValueError, None, StaleDecision, None, None]
    assert index.peek_counter("flood a@x") is None
    with index.reading() as (txn, db):
        assert txn.get(b"m<half@example.com>", db=db.aliases) is None
    for n in range(5):
        assert index.case_for_message(f"<m{n}@example.com>") == "C-000001"


def test_a_batch_runs_its_writes_in_one_transaction_without_nesting(index: LmdbIndex) -> None:
    # A nested transaction per write cost a begin and a commit (which releases the GIL) each.
    index.create_case(1_700_000_000)
    shared = _shared(index)
    real = shared.env
    begins: list[bool] = []

    class Counting:
        def begin(self, **kw: Any) -> Any:
            begins.append(kw.get("parent") is not None)
            return real.begin(**kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    shared.env = Counting()  # type: ignore[assignment]
    try:
        outcomes = _queued_behind_a_held_writer(index, [_record(index, n) for n in range(5)])
    finally:
        shared.env = real
    assert [error for _, error in outcomes] == [None] * 5
    assert begins.count(True) == 0, begins


def test_a_failing_write_leaves_the_others_what_they_saw(index: LmdbIndex) -> None:
    # Each write sees the ones queued before it, never the failing one's half.
    index.create_case(1_700_000_000)
    seen: dict[str, list[bytes]] = {}

    def writer(name: str, fail: bool = False) -> Callable[[], Any]:
        def body(txn: lmdb.Transaction[bytes], db: SharedEnv) -> str:
            seen[name] = [key for key in (b"a", b"b", b"c") if txn.get(key, db=db.meta)]
            txn.put(name.encode(), b"1", db=db.meta)
            if fail:
                raise ValueError(name)
            return name

        return lambda: index.writing(body)

    outcomes = _queued_behind_a_held_writer(
        index, [writer("a"), writer("b", fail=True), writer("c")])
    assert [(result, type(error)) for result, error in outcomes] == [
        ("a", type(None)), (None, ValueError), ("c", type(None))]
    assert seen == {"a": [], "b": [b"a"], "c": [b"a"]}
    with index.reading() as (txn, db):
        assert [txn.get(key, db=db.meta) for key in (b"a", b"b", b"c")] == [b"1", None, b"1"]


def test_a_batch_that_fills_the_map_grows_it_and_commits_everyone(tmp_path: Path) -> None:
    index = LmdbIndex(tmp_path / "small", 256 << 10)
    blob = b"x" * 8000

    def put_blobs(n: int) -> Callable[[], None]:
        def body(txn: lmdb.Transaction[bytes], db: SharedEnv) -> None:
            for i in range(10):
                txn.put(f"blob {n} {i}".encode(), blob, db=db.meta)

        return lambda: index.writing(body)

    try:
        start = index.map_info()["map_size"]
        outcomes = _queued_behind_a_held_writer(index, [put_blobs(n) for n in range(WRITERS)])
        assert [error for _, error in outcomes] == [None] * WRITERS
        assert index.map_info()["map_size"] > start
        with index.reading() as (txn, db):
            assert all(txn.get(f"blob {n} 9".encode(), db=db.meta) == blob
                       for n in range(WRITERS))
    finally:
        index.close()


def test_a_lone_writer_commits_each_write_at_once(index: LmdbIndex) -> None:
    # One writer at a time (the 1-session case): nothing to wait for, one commit per write.
    before = _last_txnid(index)
    for n in range(3):
        _record(index, n)()
    assert _last_txnid(index) == before + 3


# --- what one message costs: write transactions per message through the engine ------------


def test_each_message_costs_the_fewest_commits(
    index: LmdbIndex, make_harness: Callable[..., Any]
) -> None:
    """Commits are what a message waits for (an fsync each): one per message, whatever it does
    to its case. The harness's clock moves a second per message, so every reply changes its
    case (its `updated` time) as in real traffic."""
    h = make_harness(index=index)
    customer, agent = "pat@customer.example.org", "support@example.com"

    def commits(direction: str, subject: str, message_id: str,
                *extra: tuple[str, str]) -> tuple[int, str, str]:
        sender, rcpt = (agent, customer) if direction == "out" else (customer, agent)
        send = h.outbound if direction == "out" else h.inbound
        before = _last_txnid(index)
        result = send(("From", sender), ("To", rcpt), ("Subject", subject),
                      ("Message-ID", message_id), *extra, body=b"Hello.\r\n")
        decision = result.decision
        return _last_txnid(index) - before, decision.match, decision.state

    assert commits("out", "Your order", "<o1@example.com>") == (1, "new", "open")  # + aliases
    case_id = h.index.case_for_message("o1@example.com")
    assert case_id is not None
    subject = f"Your order [ref:{h.token(case_id)}]"
    assert commits("out", subject, "<o2@example.com>") == (1, "token", "open")
    # The first reply gives the case its queue too, later ones its new `updated` time: the
    # case change rides in the message's commit.
    updated = h.case(case_id)
    assert updated.queue == ""
    assert commits("in", "Re: " + subject, "<i0@customer.example.org>") == (1, "token", "open")
    routed = h.case(case_id)
    assert routed.queue == "support" and routed.updated > updated.updated
    assert commits("in", "Re: " + subject, "<i1@customer.example.org>") == (1, "token", "open")
    assert h.case(case_id).updated > routed.updated
    # A resolved case reopens in the same commit.
    h.set_case(case_id, state=CaseState.RESOLVED, state_changed=int(h.clock.now))
    assert commits("in", "Re: " + subject, "<i2@customer.example.org>") == (
        1, "token", "reopened")
    # A new case, its aliases and the sender's flood count: one commit.
    assert commits("in", "A new question", "<i3@customer.example.org>") == (1, "new", "new")
    # A duplicate writes nothing (it does not count against the flood limit): no commit.
    assert commits("in", "A new question", "<i3@customer.example.org>") == (
        0, "duplicate", "open")
    # An agent's mail whose app sets the case's state: the change rides in the mail's commit.
    assert commits("out", subject, "<o3@example.com>", ("X-Case-State", "resolved")) == (
        1, "token", "resolved")
    assert h.case(case_id).state is CaseState.RESOLVED
    # A reply to a closed case opens a related case, which the closed case names as its
    # follow-up in the same commit.
    h.set_case(case_id, state=CaseState.CLOSED)
    assert commits("in", "Re: " + subject, "<i4@customer.example.org>") == (1, "token", "new")
    followup = h.case(case_id).followup
    assert followup is not None and h.index.case_for_message("i4@customer.example.org") == followup


def test_creates_that_meet_an_adopted_id_in_one_batch_keep_numbers_unique(
        index: LmdbIndex) -> None:
    # The next generated id is held by an adopted case: every create of the batch meets it
    # in turn (each first try is rolled back with the batch's transaction and made again with
    # the reading allocation). Nothing of a first try stays: no alias of it, no count of it.
    adopted = index.create_case(1_700_000_000, case_id="C-000002")
    bump = CounterBump("flood a@example.com", 60)

    def create(n: int) -> Callable[[], Any]:
        return lambda: index.create_case(1_700_000_000, bumps=[bump], aliases=lambda case: [
            Alias(AliasKind.MESSAGE, f"<new{n}@example.com>", case.case_id)])

    outcomes = _queued_behind_a_held_writer(index, [create(n) for n in range(WRITERS)])
    assert [error for _, error in outcomes] == [None] * WRITERS
    cases = [case for case, _ in outcomes]
    # Number 2 is skipped (C-000002 is the adopted case's id), as documented; none other.
    assert sorted(case.number for case in cases) == list(range(3, WRITERS + 3))
    assert all(case.case_id == f"C-{case.number:06d}" for case in cases)
    for n, case in enumerate(cases):
        assert index.case_for_message(f"<new{n}@example.com>") == case.case_id
        assert index.case_for_number(case.number) == case.case_id
    assert index.get_case("C-000002") == adopted
    assert index.case_for_number(2) is None and index.last_number() == WRITERS + 2
    counted = index.peek_counter(bump.key)
    assert counted is not None and counted.count == WRITERS
