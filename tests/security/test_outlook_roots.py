"""Outlook Thread-Index roots as an attacker sees them (adversarial audit).

A recorded root threads any mail that carries it (`thread-index`), so:
- the root a case is opened with must not be one a stranger can work out. Until this version
  a case without an Outlook root of its own had one derived from its id, its number and the
  second it was opened: a stranger's mail with nothing but a Thread-Index, one per candidate
  second, threaded into another customer's case;
- inbound mail must not move a root another case holds: anyone who saw a customer's Outlook
  mail (a Cc copy, a forward, a list archive) could put its root into a mail of their own
  case, and the customer's next Outlook reply that carries nothing but its Thread-Index
  went to the attacker's case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from casethread import case_admin
from casethread.core import thread_index
from casethread.core.model import CaseRecord, CaseState

SUPPORT = "support@example.com"
AGENT = "Dana Agent <dana@support.example.com>"
BOB = "Bob Customer <bob@customer.example.org>"
ALICE = "Alice <alice@other.example.net>"
EVE = "Eve <eve@evil.example>"


def derived_root(case_id: str, number: int, created: int) -> bytes:
    """The root earlier versions gave a case: public facts only (the case id, its number, the
    second it was opened), as an attacker computes it."""
    seed = f"{case_id}\x00{number}\x00{created}".encode()
    guid = hashlib.sha256(b"casethread-thread-root\x00" + seed).digest()[:16]
    return thread_index.new_root(created, guid)


def only_thread_index(harness: Any, root: bytes, n: int, sender: str = EVE) -> Any:
    """A stranger's mail whose one link is a Thread-Index answering `root`."""
    value = thread_index.encode(thread_index.child(root, harness.clock.now + 5))
    return harness.inbound(("From", sender), ("To", SUPPORT), ("Subject", "RE: your mail"),
                           ("Message-ID", f"<guess{n}@evil.example>"), ("Thread-Index", value))


def bob_writes_from_outlook(harness: Any) -> tuple[bytes, Any]:
    """Bob's first mail, from Outlook: his case keeps his conversation's root."""
    bob_root = thread_index.new_root(harness.clock.now, bytes(range(16)))
    bob = harness.inbound(("From", BOB), ("To", SUPPORT), ("Subject", "Printer broken"),
                          ("Message-ID", "<b1@customer.example.org>"),
                          ("Thread-Index", thread_index.encode(bob_root)))
    return bob_root, bob


def test_a_new_cases_outlook_root_cannot_be_worked_out(
    make_harness: Callable[..., Any],
) -> None:
    harness = make_harness()
    opened: list[CaseRecord] = []
    # Opened by an agent's mail, by a customer's mail without Outlook, by an app's X-Case-ID.
    out = harness.outbound(("From", AGENT), ("To", BOB), ("Subject", "Your invoice"))
    opened.append(harness.case(out.case_id))
    came = harness.inbound(("From", BOB), ("To", SUPPORT), ("Subject", "Printer"),
                           ("Message-ID", "<b1@customer.example.org>"))
    opened.append(harness.case(came.case_id))
    app = harness.outbound(("From", AGENT), ("To", BOB), ("Subject", "Ticket"),
                           ("X-Case-ID", "TICKET-7"))
    opened.append(harness.case(app.case_id))
    case_admin.split(harness.index, came.case_id, [], 1, int(harness.clock.now))
    opened.append(harness.case(harness.case(came.case_id).children[0]))
    tried = threaded = 0
    for case in opened:
        # No guess from the case id and a window around its creation threads...
        for created in range(case.created - 30, case.created + 31):
            tried += 1
            got = only_thread_index(harness, derived_root(case.case_id, case.number, created),
                                    tried)
            if got.decision.match == "thread-index" or case.case_id in got.decision.case_ids:
                threaded += 1
    assert tried == 4 * 61 and threaded == 0
    # ...as each case keeps a random root of its own, which its mail carries.
    assert all(case.thread_root is not None for case in opened)
    assert len({case.thread_root for case in opened}) == len(opened)
    # Control: the real root (our answer's Thread-Index) threads.
    answer = harness.outbound(("From", AGENT), ("To", BOB), ("Subject", "Re: Your invoice"),
                              ("X-Case-ID", out.case_id))
    root = thread_index.root_of(thread_index.decode(answer.one("Thread-Index")) or b"")
    assert root == bytes.fromhex(opened[0].thread_root or "")
    got = only_thread_index(harness, root, 0, sender=BOB)
    assert (got.decision.match, got.decision.case_ids) == ("thread-index", (out.case_id,))


def test_inbound_mail_does_not_move_another_cases_outlook_root(
    make_harness: Callable[..., Any],
) -> None:
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    # Alice has a case of her own (our mail, with its token), and a copy of Bob's mail.
    alice_case = harness.outbound(("From", AGENT), ("To", ALICE), ("Subject", "Your order"))
    assert alice_case.case_id != bob.case_id
    stolen = thread_index.encode(thread_index.child(bob_root, harness.clock.now))
    # Her mail names her case by its token, or answers her own earlier mail.
    for n, link in enumerate([("Subject", f"Re: {alice_case.one('Subject')}"),
                              ("In-Reply-To", "<a-steal0@other.example.net>")]):
        subject = [] if link[0] == "Subject" else [("Subject", "Re: order")]
        mail = harness.inbound(("From", ALICE), ("To", SUPPORT), *subject, link,
                               ("Message-ID", f"<a-steal{n}@other.example.net>"),
                               ("Thread-Index", stolen))
        assert mail.case_id == alice_case.case_id  # her mail goes where its link says
        # Bob's next Outlook reply, with nothing but its Thread-Index, is still Bob's.
        reply = only_thread_index(harness, bob_root, 100 + n, sender=BOB)
        assert (reply.decision.match, reply.decision.case_ids) == ("thread-index",
                                                                   (bob.case_id,))
        assert reply.one("X-Case-Sender") == "known"


def test_a_follow_up_does_not_take_another_cases_outlook_root(
    make_harness: Callable[..., Any],
) -> None:
    """The same theft through a case of her own closed long ago: her mail opens its follow-up,
    which must not take Bob's root along (review of the adversarial audit's fix)."""
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    alice_case = harness.outbound(("From", AGENT), ("To", ALICE), ("Subject", "Your order"))
    harness.set_case(alice_case.case_id, state=CaseState.CLOSED)
    stolen = thread_index.encode(thread_index.child(bob_root, harness.clock.now))
    mail = harness.inbound(("From", ALICE), ("To", SUPPORT),
                           ("Subject", f"Re: {alice_case.one('Subject')}"),
                           ("Message-ID", "<a-steal@other.example.net>"), ("Thread-Index", stolen))
    assert mail.one("X-Case-Related") == alice_case.case_id  # her follow-up
    reply = only_thread_index(harness, bob_root, 100, sender=BOB)
    assert (reply.decision.match, reply.decision.case_ids) == ("thread-index", (bob.case_id,))
    assert reply.one("X-Case-Sender") == "known"
    # Nor does our answer in her follow-up (it records the follow-up's own root).
    assert harness.case(mail.case_id).thread_root != bob_root.hex()
    harness.outbound(("From", AGENT), ("To", ALICE), ("Subject", "Re: your order"),
                     ("X-Case-ID", mail.case_id))
    reply = only_thread_index(harness, bob_root, 101, sender=BOB)
    assert (reply.decision.match, reply.decision.case_ids) == ("thread-index", (bob.case_id,))


def test_an_agents_outlook_forward_to_someone_else_leaves_the_root(
    make_harness: Callable[..., Any],
) -> None:
    """An agent forwards Bob's mail from Outlook to Carol, who is no participant: the forward
    carries Bob's conversation's Thread-Index, which `thread-index` does not take for her, so
    it opens a case. That case gets a root of its own: recorded for it, Bob's root took his
    next Outlook reply to Carol's case."""
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    forward = harness.outbound(
        ("From", AGENT), ("To", "Carol <carol@third.example>"), ("Subject", "FW: Printer broken"),
        ("Thread-Index", thread_index.encode(thread_index.child(bob_root, harness.clock.now))))
    assert forward.decision.match == "new" and forward.case_id != bob.case_id
    assert harness.case(forward.case_id).thread_root not in (None, bob_root.hex())
    reply = only_thread_index(harness, bob_root, 100, sender=BOB)
    assert (reply.decision.match, reply.decision.case_ids) == ("thread-index", (bob.case_id,))


def bob_replies_to_his_closed_case(harness: Any, bob_root: bytes, case_id: str) -> Any:
    """Bob's case closed, his Outlook reply in its conversation: it opens a follow-up."""
    harness.set_case(case_id, state=CaseState.CLOSED)
    return harness.inbound(("From", BOB), ("To", SUPPORT), ("Subject", "RE: Printer broken"),
                           ("Message-ID", "<b2@customer.example.org>"),
                           ("Thread-Index", thread_index.encode(
                               thread_index.child(bob_root, harness.clock.now))))


def test_a_follow_up_of_the_customers_own_case_keeps_the_conversation(
    make_harness: Callable[..., Any],
) -> None:
    """Control: Bob's own reply to his closed case opens a follow-up; his next reply with
    nothing but the Thread-Index reaches that follow-up, through the closed case's link."""
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    again = bob_replies_to_his_closed_case(harness, bob_root, bob.case_id)
    assert again.one("X-Case-Related") == bob.case_id
    reply = only_thread_index(harness, bob_root, 101, sender=BOB)
    assert reply.decision.case_ids == (again.case_id,)


def test_an_agents_outlook_answer_does_not_take_a_closed_cases_root(
    make_harness: Callable[..., Any],
) -> None:
    """Outlook audit: Bob's case is closed. Alice puts his root into a reply of her own case
    (her token); inbound leaves it with Bob's case. The agent answers her from Outlook, which
    continues her mail's Thread-Index, so the answer carries Bob's root: recorded for Alice's
    case, Bob's next Outlook reply with nothing but its Thread-Index went to her case (as
    `unknown`; a helpdesk portal shows her the ticket's mail), not to a follow-up of his."""
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    harness.set_case(bob.case_id, state=CaseState.CLOSED)
    alice_case = harness.outbound(("From", AGENT), ("To", ALICE), ("Subject", "Your order"))
    stolen = thread_index.encode(thread_index.child(bob_root, harness.clock.now))
    mail = harness.inbound(("From", ALICE), ("To", SUPPORT),
                           ("Subject", f"Re: {alice_case.one('Subject')}"),
                           ("Message-ID", "<a-steal@other.example.net>"), ("Thread-Index", stolen))
    assert mail.case_id == alice_case.case_id
    answer = harness.outbound(
        ("From", AGENT), ("To", ALICE), ("Subject", f"RE: {alice_case.one('Subject')}"),
        ("In-Reply-To", "<a-steal@other.example.net>"),
        ("Thread-Index", thread_index.encode(thread_index.child(
            thread_index.decode(stolen) or b"", harness.clock.now))))
    assert answer.case_id == alice_case.case_id
    reply = only_thread_index(harness, bob_root, 100, sender=BOB)
    assert reply.decision.case_ids != (alice_case.case_id,)
    assert reply.one("X-Case-Related") == bob.case_id  # his follow-up
    assert reply.one("X-Case-Sender") == "known"


def test_an_answer_in_the_follow_up_still_takes_the_closed_cases_root(
    make_harness: Callable[..., Any],
) -> None:
    """Control: the root of a closed case whose mail goes to this case anyway (its follow-up)
    is recorded for it, as before: the conversation is the follow-up's now."""
    harness = make_harness()
    bob_root, bob = bob_writes_from_outlook(harness)
    again = bob_replies_to_his_closed_case(harness, bob_root, bob.case_id)
    followup = again.case_id
    assert again.one("X-Case-Related") == bob.case_id
    answer = harness.outbound(
        ("From", AGENT), ("To", BOB), ("Subject", "RE: Printer broken"),
        ("In-Reply-To", "<b2@customer.example.org>"),
        ("Thread-Index", thread_index.encode(thread_index.child(bob_root, harness.clock.now))))
    assert answer.case_id == followup
    assert not any("thread root not recorded" in line for line in answer.decision.trace)
    # Recorded for the follow-up: it holds the conversation even once the closed case's
    # follow-up link is gone (reopened and closed again).
    harness.set_case(bob.case_id, followup=None)
    reply = only_thread_index(harness, bob_root, 101, sender=BOB)
    assert reply.decision.case_ids == (followup,)
