"""Concurrency (issue 6): 50 SMTP sessions through Postfix into the milter, and two more
writer processes at the same time (`casethread case set-state` and `casethread filter`),
all updating the same cases and the same flood counter.

- no lost update: a state the CLI set is never overwritten by the milter's concurrent writes
  (checked after every set-state, not just at the end); the flood counter counts every message
  of every process exactly;
- no duplicate case number, no gap; every new case is a distinct case;
- no deadlock: everything finishes within a bounded time.

A last test interleaves a CLI write with a milter write deterministically, to show what a
read-then-write (instead of an atomic `modify_case`) would lose.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from casethread import case_admin
from casethread.core.model import CaseRecord, CaseState
from casethread.index import LmdbIndex, MemoryIndex

from .harness import (
    IndexExport,
    MilterFactory,
    MilterSocket,
    PostfixFactory,
    casethread_argv,
    casethread_serve_argv,
)
from .harness import send_retrying as send

AGENT = "agent@helpdesk.example"
SUPPORT = "support@helpdesk.example"
FLOOD = "robot@customer.example"  # every auto-reply comes from it: one shared counter
THREADS = 50
PER_THREAD = 24
STATE_CASES = 3
DEADLINE = 240.0  # seconds for the whole concurrent phase: past it, something is stuck


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*casethread_argv(), *args], input=stdin, capture_output=True,
                          timeout=60, check=False)


def auto_reply(n: int, in_reply_to: str) -> bytes:
    return (f"From: Robot <{FLOOD}>\r\nTo: <{SUPPORT}>\r\nSubject: Auto: away ({n})\r\n"
            f"Message-ID: <auto-{n}@customer.example>\r\nIn-Reply-To: {in_reply_to}\r\n"
            f"Auto-Submitted: auto-replied\r\nX-Seq: {n}\r\n\r\nI am away.\r\n").encode()


def new_question(n: int) -> bytes:
    return (f"From: <new{n}@customer.example>\r\nTo: <{SUPPORT}>\r\nSubject: Help {n}\r\n"
            f"Message-ID: <q-{n}@customer.example>\r\nX-Seq: {n}\r\n\r\nHelp me.\r\n").encode()


def agent_mail(n: int, tag: str = "smtp") -> bytes:
    return (f"From: <{AGENT}>\r\nTo: <c{n}@customer.example>\r\nSubject: New {tag} {n}\r\n"
            f"Message-ID: <new-{tag}-{n}@helpdesk.example>\r\nX-Seq: {n}\r\n\r\nHello\r\n"
            ).encode()


def test_fifty_sessions_and_two_cli_writers_lose_no_update(
    postfix_factory: PostfixFactory, milter_factory: MilterFactory, milter_socket: MilterSocket,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}]\n")
    index_path = tmp_path / "index"
    proc = milter_factory(casethread_serve_argv(milter_socket, config=config, index=index_path),
                          None, milter_socket, cwd=tmp_path)
    postfix = postfix_factory(milter_socket)

    # The cases everybody will write to, made one by one first.
    anchors: list[str] = []
    for n in range(STATE_CASES):
        send(postfix, agent_mail(n, "anchor"), AGENT, f"c{n}@customer.example", outbound=True)
        anchors.append(f"<new-anchor-{n}@helpdesk.example>")
    got = postfix.wait_for(STATE_CASES, timeout=30)
    # Postfix delivers the three in any order (one run got C-1, C-3, C-2): the cases made are
    # what counts.
    state_cases = sorted(m.header("X-Case-ID") or "" for m in got)
    assert state_cases == [f"C-{n:06d}" for n in range(1, STATE_CASES + 1)], proc.output()

    reader = LmdbIndex(index_path, map_size=1 << 30)
    stop = threading.Event()
    errors: list[BaseException] = []
    tally: Counter[str] = Counter()
    lock = threading.Lock()
    lost: list[tuple[str, str, str]] = []
    cli_new_cases: list[str] = []

    def guarded(body: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                body(*args)
            except BaseException as exc:
                errors.append(exc)
        return run

    def sender(t: int) -> None:
        rng = random.Random(t)
        for k in range(PER_THREAD):
            n = t * PER_THREAD + k
            kind = rng.choice(["auto", "auto", "new", "outbound"])
            if kind == "auto":
                send(postfix, auto_reply(n, rng.choice(anchors)), FLOOD, SUPPORT, False)
            elif kind == "new":
                send(postfix, new_question(n), f"new{n}@customer.example", SUPPORT, False)
            else:
                send(postfix, agent_mail(n), AGENT, f"c{n}@customer.example", True)
            with lock:
                tally[kind] += 1

    def set_states() -> None:
        """CLI process after CLI process; after each, the state must stay what it set while
        the milter keeps writing the case (auto-replies touch `updated`, never the state)."""
        rng = random.Random(7)
        rounds = 0
        while not stop.is_set() or rounds < 6:
            case_id = rng.choice(state_cases)
            state = rng.choice([s.value for s in CaseState])
            done = cli("case", "set-state", case_id, state, "--index", str(index_path))
            assert done.returncode == 0, done.stderr
            for _ in range(3):
                time.sleep(0.05)
                seen = reader.get_case(case_id)
                assert seen is not None
                if seen.state.value != state:
                    lost.append((case_id, state, seen.state.value))
            with lock:
                tally["set-state"] += 1
            rounds += 1

    def filters() -> None:
        rounds = 0
        while not stop.is_set() or rounds < 6:
            if rounds % 2:
                raw = auto_reply(10_000 + rounds, random.choice(anchors))
                args = ["--direction", "inbound", "--rcpt", SUPPORT]
                kind = "filter inbound"
            else:
                raw = agent_mail(rounds, "cli")
                args = ["--direction", "outbound"]
                kind = "filter outbound"
            done = cli("filter", "--config", str(config), "--index", str(index_path), *args,
                       "-", stdin=raw)
            assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
            if kind == "filter outbound":
                head = done.stdout.split(b"\r\n\r\n", 1)[0].decode()
                case_id = [line.split(": ", 1)[1] for line in head.split("\r\n")
                           if line.startswith("X-Case-ID: ")]
                with lock:
                    cli_new_cases.extend(case_id)
            with lock:
                tally[kind] += 1
            rounds += 1

    started = time.monotonic()
    try:
        workers = [threading.Thread(target=guarded(sender), args=(t,), daemon=True)
                   for t in range(THREADS)]
        writers = [threading.Thread(target=guarded(f), daemon=True) for f in (set_states,
                                                                            filters)]
        for w in workers + writers:
            w.start()
        for w in workers:
            w.join(max(0.0, DEADLINE - (time.monotonic() - started)))
        stop.set()
        for w in writers:
            w.join(max(0.0, DEADLINE - (time.monotonic() - started)))
        stuck = [w.name for w in workers + writers if w.is_alive()]
        assert not stuck, f"not finished after {DEADLINE} s (deadlock?): {stuck}"
        assert not errors, errors[:3]
        elapsed = time.monotonic() - started
        sent_smtp = tally["auto"] + tally["new"] + tally["outbound"]
        received = postfix.wait_for(STATE_CASES + sent_smtp, timeout=120)[STATE_CASES:]

        # Lost updates: none of the CLI's states was overwritten.
        assert not lost, f"state set by the CLI overwritten: {lost[:5]}"
        # The shared counter saw every auto-reply, from the milter and from `filter`.
        window = reader.peek_counter(f"flood {FLOOD}")
        assert window is not None
        assert window.count == tally["auto"] + tally["filter inbound"]
    finally:
        reader.close()

    assert len(received) == sent_smtp
    seqs = Counter(m.header("X-Seq") for m in received)
    assert max(seqs.values()) == 1 and len(seqs) == sent_smtp
    assert all(m.header("X-Case-ID") for m in received if m.header("X-Case-Auto") != "bulk")
    # Every new case is its own case, and case numbers are dense and unique.
    new_cases = [m.header("X-Case-ID") for m in received
                 if m.header("X-Case-Match") == "new" or (m.header("Subject") or "").startswith(
                     "New smtp")]
    new_cases += cli_new_cases
    assert len(new_cases) == tally["new"] + tally["outbound"] + tally["filter outbound"]
    assert len(set(new_cases)) == len(new_cases), Counter(new_cases).most_common(3)
    dump = IndexExport.read(index_path)
    dump.assert_numbering()
    numbers = dump.cases.values()
    assert len(numbers) == STATE_CASES + len(new_cases)
    assert not [line for line in proc.output().splitlines() if " ERROR " in line]
    with capsys.disabled():
        print(f"\n[concurrency] {THREADS} SMTP threads + set-state and filter processes: "
              f"{dict(sorted(tally.items()))} in {elapsed:.1f} s; cases {len(numbers)}, "
              f"numbers unique and dense; flood counter {window.count} exact; "
              f"state checks after set-state: {3 * tally['set-state']}, lost 0")


# --- a deterministic interleaving ----------------------------------------------------------------


class MilterWritesBetween:
    """An index on which the milter commits a change right between the CLI's read of a case
    and the CLI's write of it: the window a read-then-write leaves open."""

    def __init__(self, inner: Any, milter_change: Callable[[CaseRecord], CaseRecord]) -> None:
        self.inner = inner
        self._milter_change = milter_change
        self.interleaved = 0

    def _milter(self, case_id: str) -> None:
        if not self.interleaved:
            self.interleaved += 1
            self.inner.modify_case(case_id, self._milter_change)

    def modify_case(self, case_id: str, change: Callable[[CaseRecord], CaseRecord | None]
                    ) -> CaseRecord | None:
        # An atomic read-modify-write: the milter's commit lands before it, never inside it.
        self._milter(case_id)
        result: CaseRecord | None = self.inner.modify_case(case_id, change)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_cli_set_state_keeps_a_concurrent_milter_write(tmp_path: Path, backend: str) -> None:
    """The milter routes a case opened by outbound mail on its first inbound mail (sets its
    queue) while `casethread case set-state` runs on it: the queue must survive."""
    inner: Any = (MemoryIndex() if backend == "memory"
                  else LmdbIndex(tmp_path / "index", map_size=1 << 24))
    try:
        case = inner.create_case(1_800_000_000)  # opened by outbound mail: no queue yet
        assert case.queue == ""
        index = MilterWritesBetween(
            inner, lambda c: replace(c, queue="billing", updated=1_800_000_050))
        case_admin.set_state(index, case.case_id, "waiting", 1_800_000_100)
        assert index.interleaved == 1
        final = inner.get_case(case.case_id)
        assert final.state is CaseState.WAITING
        assert final.queue == "billing", "the milter's concurrent write was lost"
    finally:
        if backend == "lmdb":
            inner.close()
