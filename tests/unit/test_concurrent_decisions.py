"""Messages decided at the same moment, on a real LMDB index with group commit.

Each message is decided from a read and written afterwards; on a busy server another message
(or `casethread case ...`) can write in between. The index here makes that interleaving happen
every time: each thread's first write waits until every thread has decided."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from casethread.core.model import Alias, AliasKind, CaseState
from casethread.core.settings import ExternalRefRule
from casethread.index import LmdbIndex

CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
AGENT = ("From", "Dana Agent <support@example.com>")
TIMEOUT = 20


class DecidedTogether:
    """An LMDB index whose first write in each thread waits at a barrier (armed by `arm`)
    after running `before_writes` once; `before_each_write` runs before every write (the
    command line writing between a decision and its write, again and again)."""

    def __init__(self, index: LmdbIndex) -> None:
        self._index = index
        self._barrier: threading.Barrier | None = None
        self._waited: set[int] = set()
        self.before_each_write: Callable[[], None] = lambda: None

    def arm(self, parties: int, before_writes: Callable[[], None] = lambda: None) -> None:
        self._barrier = threading.Barrier(parties, action=before_writes, timeout=TIMEOUT)

    def _wait(self) -> None:
        me = threading.get_ident()
        if self._barrier is not None and me not in self._waited:
            self._waited.add(me)
            self._barrier.wait()
        self.before_each_write()

    def record(self, *args: Any, **kw: Any) -> Any:
        self._wait()
        return self._index.record(*args, **kw)

    def create_case(self, *args: Any, **kw: Any) -> Any:
        self._wait()
        return self._index.create_case(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[DecidedTogether]:
    real = LmdbIndex(tmp_path / "index", 64 << 20)
    yield DecidedTogether(real)
    real.close()


def attempts(result: Any) -> int:
    """How many times the engine decided this message (its trace says so)."""
    again = [t for t in result.decision.trace if t.startswith("decided again (attempt ")]
    return int(again[-1].split("attempt ")[1].split(")")[0]) if again else 1


def together(messages: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [RuntimeError("not run")] * len(messages)

    def run(i: int) -> None:
        try:
            results[i] = messages[i]()
        except BaseException as exc:  # reported below, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_replies_to_a_closed_case_at_once_open_one_followup(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """Fifteen customers replied to the same closed case within milliseconds: sixteen cases,
    the closed one naming only the last follow-up (the audit's finding)."""
    h = make_harness(index=index)
    first = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Outage"))
    case_id = first.case_id
    h.set_case(case_id, state=CaseState.CLOSED)
    subject = f"Re: Outage [ref:{h.token(case_id)}]"
    n = 8
    index.arm(n)
    results = together([
        lambda i=i: h.inbound(("From", f"c{i}@customer{i}.example.org"), ("Subject", subject),
                              ("Message-ID", f"<r{i}@customer{i}.example.org>"))
        for i in range(n)
    ])
    followup = h.case(case_id).followup
    assert followup is not None
    assert {r.case_id for r in results} == {followup}
    assert index.last_number() == 2
    assert sorted(r.one("X-Case-State") for r in results) == ["new"] + ["open"] * (n - 1)
    for i in range(n):
        assert index.case_for_message(f"r{i}@customer{i}.example.org") == followup


def one_case_of_copies(index: DecidedTogether, n: int, send: Callable[[], Any]) -> list[Any]:
    """`n` copies of one mail decided at once: one case, the other copies duplicates."""
    index.arm(n)
    results = together([send] * n)
    assert index.last_number() == 1
    assert {r.case_id for r in results} == {"C-000001"}
    assert sorted(r.decision.match for r in results) == ["duplicate"] * (n - 1) + ["new"]
    return results


def test_copies_of_one_new_mail_at_once_open_one_case(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """The sender's MTA delivers one mail in a transaction per support domain, at once."""
    h = make_harness(index=index)
    one_case_of_copies(index, 4, lambda: h.inbound(
        CUSTOMER, ("Subject", "Printer on fire"), ("Message-ID", "<one@customer.example.org>")))


def test_a_close_from_the_command_line_between_decision_and_write_stays(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """A reply decided on a waiting case, written after `case set-state ID closed`: it used to
    reopen the case (and drop the follow-up the close left); it now opens the follow-up."""
    h = make_harness(index=index)
    case_id = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Invoice"),
                         ("X-Case-State", "waiting")).case_id
    subject = f"Re: Invoice [ref:{h.token(case_id)}]"

    def close() -> None:
        index.modify_case(case_id, lambda c: replace(c, state=CaseState.CLOSED))

    index.arm(1, before_writes=close)
    (reply,) = together([lambda: h.inbound(CUSTOMER, ("Subject", subject))])
    assert h.case(case_id).state is CaseState.CLOSED
    assert reply.case_id != case_id and h.case(case_id).followup == reply.case_id
    assert reply.one("X-Case-Related") == case_id


def test_copies_of_one_agent_mail_submitted_at_once_open_one_case(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """A client resending after a timeout while the first submission is still in flight."""
    h = make_harness(index=index)
    results = one_case_of_copies(index, 3, lambda: h.outbound(
        AGENT, ("To", "pat@customer.example.org"), ("Subject", "Quote"),
        ("Message-ID", "<quote-1@example.com>")))
    assert len({r.one("Subject") for r in results}) == 1


def test_a_close_of_the_followup_the_rules_walked_to_stays(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """The mail names a closed case; the rules go on to its waiting follow-up, which the CLI
    closes before the write: checked too, not only the case the mail names."""
    h = make_harness(index=index)
    earlier = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Invoice"))
    followup = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Invoice 2"),
                          ("X-Case-State", "waiting")).case_id
    h.set_case(earlier.case_id, state=CaseState.CLOSED, followup=followup)
    subject = f"Re: Invoice [ref:{h.token(earlier.case_id)}]"
    index.arm(1, before_writes=lambda: index.modify_case(
        followup, lambda c: replace(c, state=CaseState.CLOSED)))
    (reply,) = together([lambda: h.inbound(CUSTOMER, ("Subject", subject))])
    assert h.case(followup).state is CaseState.CLOSED
    assert reply.one("X-Case-Related") == followup and attempts(reply) == 2


@pytest.mark.parametrize("state", ["waiting", "resolved"])
def test_a_decision_stale_every_time_is_written_unchecked_at_last(
        index: DecidedTogether, make_harness: Callable[..., Any], state: str) -> None:
    """Another writer before every write: no StaleDecision reaches the milter (which would
    pass the mail without its case), and the unchecked last write still does not reopen a
    case the command line closed, nor says it did (`X-Case-State: reopened`)."""
    h = make_harness(index=index)
    other = h.outbound(AGENT, ("To", "x@elsewhere.example"), ("Subject", "Other")).case_id
    case_id = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Invoice"),
                         ("X-Case-State", state)).case_id
    edits = [lambda c: replace(c, parent=other), lambda c: replace(c, parent=None),
             lambda c: replace(c, parent=other), lambda c: replace(c, state=CaseState.CLOSED)]
    index.before_each_write = lambda: edits and index.modify_case(case_id, edits.pop(0))
    reply = h.inbound(CUSTOMER, ("Subject", f"Re: Invoice [ref:{h.token(case_id)}]"))
    assert attempts(reply) == 4 and reply.case_id == case_id
    assert h.case(case_id).state is CaseState.CLOSED
    assert reply.one("X-Case-State") == "closed"


def test_mails_of_one_external_ticket_at_once_open_one_case(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """A ticket system's "created" and "assigned" notices of one ticket in the same second."""
    base = make_harness().settings
    rule = ExternalRefRule(name="servicenow", pattern=r"\b(INC\d{7})\b",
                           sender=("@servicenow.example.net",))
    settings = replace(base, inbound=replace(
        base.inbound, external_refs=(rule,),
        strategies=(*base.inbound.strategies, "external-ref")))
    h = make_harness(settings, index=index)
    sender = ("From", "ServiceNow <noreply@servicenow.example.net>")
    index.arm(2)
    results = together([
        lambda: h.inbound(sender, ("Subject", "INC0012345 opened: printer"),
                          ("Message-ID", "<a@servicenow.example.net>")),
        lambda: h.inbound(sender, ("Subject", "INC0012345 assigned to Support"),
                          ("Message-ID", "<b@servicenow.example.net>")),
    ])
    assert {r.case_id for r in results} == {"C-000001"} and index.last_number() == 1


def test_a_message_id_left_by_a_case_that_is_gone_is_no_conflict(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """An alias naming no case (a partial import): the mail is new, decided once."""
    h = make_harness(index=index)
    index.record([Alias(AliasKind.MESSAGE, "gone@customer.example.org", "C-000777")], 1_000)
    r = h.inbound(CUSTOMER, ("Subject", "Hello"), ("Message-ID", "<gone@customer.example.org>"))
    assert r.one("X-Case-Match") == "new" and attempts(r) == 1


def test_replies_to_a_waiting_case_at_once_are_decided_once(
        index: DecidedTogether, make_harness: Callable[..., Any]) -> None:
    """The first reply opens the case; the others thread into it as decided."""
    h = make_harness(index=index)
    case_id = h.outbound(AGENT, ("To", "pat@customer.example.org"), ("Subject", "Outage"),
                         ("X-Case-State", "waiting")).case_id
    subject = f"Re: Outage [ref:{h.token(case_id)}]"
    n = 6
    index.arm(n)
    results = together([
        lambda i=i: h.inbound(("From", f"c{i}@customer{i}.example.org"), ("Subject", subject))
        for i in range(n)])
    assert {r.case_id for r in results} == {case_id}
    assert {r.one("X-Case-State") for r in results} == {"open"}
    assert h.case(case_id).state is CaseState.OPEN
    assert [attempts(r) for r in results] == [1] * n
