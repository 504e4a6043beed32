"""`CaseIndex.snapshot()` on LMDB: a decision's reads share one read transaction, held only where
nothing slow happens (found in review: a view held across an outbound body's stamping made every
writer that drains the readers, a stale decision's abort or a map growth, wait for it, and every
other session's reads with it)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from casethread.core import stamp
from casethread.core.model import CaseState, Direction
from casethread.core.store import Expect, StaleDecision
from casethread.index import CaseIndexError, LmdbIndex

from ..helpers.index_writes import record_message

STAMPING = 0.8  # seconds the outbound body stamping takes (a 15 MB HTML body: ~0.3 s here)


def test_a_stale_write_during_another_sessions_stamping_stalls_no_session(
    tmp_path: Path, make_harness: Any, build: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = LmdbIndex(tmp_path / "idx", 16 << 20)
    try:
        h = make_harness(index=index)
        first = h.outbound(("From", "Dana <dana@example.com>"), ("To", "pat@customer.example.org"),
                           ("Subject", "Printer"), rcpts=("pat@customer.example.org",),
                           auth_user="dana")
        case_id = first.case_id
        subject = first.one("Subject")

        stamping = threading.Event()
        real = stamp.plan_message_stamp

        def slow_plan(*args: Any, **kw: Any) -> Any:
            stamping.set()
            time.sleep(STAMPING)  # stands in for the CPU time of a big body
            return real(*args, **kw)

        monkeypatch.setattr(stamp, "plan_message_stamp", slow_plan)
        big = build(("From", "Dana <dana@example.com>"), ("To", "pat@customer.example.org"),
                    ("Subject", subject), ("Message-ID", "<big@example.com>"),
                    body=b"Hello Pat,\r\nsee attached.\r\n", rcpts=("pat@customer.example.org",),
                    auth_user="dana")
        stamper = threading.Thread(target=lambda: h.engine.process(big, Direction.OUTBOUND))
        stamper.start()
        assert stamping.wait(10)

        # Another session's write finds its decision stale (the CLI closed the case meanwhile).
        stale = dataclasses.replace(index.get_case(case_id), state=CaseState.CLOSED)
        errors: list[BaseException] = []

        def stale_write() -> None:
            try:
                index.record([], now=5, changes=[(case_id, lambda c: c)],
                             expect=Expect((), (stale,)))
            except StaleDecision:
                pass
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=stale_write)
        writer.start()
        time.sleep(0.2)  # the writer is in _commit_batch's `gate.upgrade()` now

        # A third session's plain lookup.
        started = time.monotonic()
        index.get_case(case_id)
        waited = time.monotonic() - started
        writer.join(10)
        stamper.join(10)
        assert not errors
        assert waited < STAMPING / 2, (
            f"a one-key lookup waited {waited:.2f} s for another session's body stamping")
    finally:
        index.close()


def test_a_write_inside_a_read_transaction_is_refused_inside_a_snapshot_too(
    tmp_path: Path,
) -> None:
    """Outside a snapshot, a write while the thread holds a read transaction raises
    CaseIndexError ("write inside a transaction of the same thread"). Inside one, `reading()`
    hands out the kept transaction, `_write` ends it under the caller, and the caller's next
    use of its `txn` fails with an untranslated lmdb.Error."""
    index = LmdbIndex(tmp_path / "idx", 1 << 20)
    try:
        case = index.create_case(now=1)
        with pytest.raises(CaseIndexError, match="inside a transaction"), index.reading():
            record_message(index, "<a@x>", case.case_id, now=2)
        refused = pytest.raises(CaseIndexError, match="inside a transaction")
        with index.snapshot(), refused, index.reading() as (txn, db):
            record_message(index, "<b@x>", case.case_id, now=3)
            txn.stat(db.cases)  # the caller's transaction, still in use
    finally:
        index.close()
