"""Two `casethread serve` processes on ONE index directory, each behind its own Postfix: the
topology of two Postfix instances (postmulti), or of the smtpd and submission services of one
Postfix given different milters, on one host (README, *Where casethread goes*).

Each process group-commits its own sessions' writes; the two serialise on LMDB's writer lock,
which lives in lock.mdb and so holds across processes. With mail through both at once:

- every new case has its own number, the numbers are dense (no gap, no repeat), and the
  index holds exactly one case per mail that opened one (no lost write);
- a case opened through one instance is found by a reply through the other (each reads what
  the other committed).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from .harness import (
    IndexExport,
    MilterFactory,
    MilterSocket,
    PostfixFactory,
    ReceivedMessage,
    casethread_serve_argv,
)
from .harness import send_retrying as send

SUPPORT = "support@helpdesk.example"
AGENT = "agent@helpdesk.example"
THREADS_EACH = 8
PER_THREAD = 10
DEADLINE = 180.0  # seconds for the concurrent phase: past it, something is stuck


def question(tag: str, n: int) -> bytes:
    return (f"From: <{tag}{n}@customer.example>\r\nTo: <{SUPPORT}>\r\nSubject: Help {tag} {n}\r\n"
            f"Message-ID: <q-{tag}-{n}@customer.example>\r\nX-Seq: {tag}-q-{n}\r\n\r\n"
            "Help me.\r\n").encode()


def agent_mail(tag: str, n: int) -> bytes:
    return (f"From: <{AGENT}>\r\nTo: <{tag}{n}@customer.example>\r\nSubject: Hello {tag} {n}\r\n"
            f"Message-ID: <a-{tag}-{n}@helpdesk.example>\r\nX-Seq: {tag}-a-{n}\r\n\r\n"
            "Hello\r\n").encode()


def reply(tag: str, n: int) -> bytes:
    """A customer's answer to agent_mail(tag, n) that names it by In-Reply-To only."""
    return (f"From: <{tag}{n}@customer.example>\r\nTo: <{SUPPORT}>\r\n"
            f"Subject: Re: Hello {tag} {n}\r\nMessage-ID: <r-{tag}-{n}@customer.example>\r\n"
            f"In-Reply-To: <a-{tag}-{n}@helpdesk.example>\r\nX-Seq: {tag}-r-{n}\r\n\r\n"
            "Thanks\r\n").encode()


def by_seq(messages: list[ReceivedMessage]) -> dict[str, ReceivedMessage]:
    seqs = Counter(m.header("X-Seq") for m in messages)
    assert max(seqs.values()) == 1, seqs.most_common(3)
    return {str(m.header("X-Seq")): m for m in messages}


def test_two_serve_processes_on_one_index_share_the_counter_and_lose_no_write(
    postfix_factory: PostfixFactory, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    config = tmp_path / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}]\n")
    index = tmp_path / "index"  # the one directory both processes open
    sockets = [MilterSocket.inet(), MilterSocket.inet()]
    milters = [milter_factory(casethread_serve_argv(s, config=config, index=index), None, s,
                              cwd=tmp_path) for s in sockets]
    instances = {"a": postfix_factory(sockets[0]), "b": postfix_factory(sockets[1])}
    errors: list[BaseException] = []

    def sender(tag: str, t: int) -> None:
        postfix = instances[tag]
        try:
            for k in range(PER_THREAD):
                n = t * PER_THREAD + k
                if k % 2:
                    send(postfix, question(tag, n), f"{tag}{n}@customer.example", SUPPORT, False)
                else:
                    send(postfix, agent_mail(tag, n), AGENT, f"{tag}{n}@customer.example", True)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    workers = [threading.Thread(target=sender, args=(tag, t), daemon=True)
               for t in range(THREADS_EACH) for tag in instances]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, DEADLINE - (time.monotonic() - started)))
    assert not [w for w in workers if w.is_alive()], f"not finished after {DEADLINE} s"
    assert not errors, errors[:3]
    each = THREADS_EACH * PER_THREAD
    first = {tag: by_seq(p.wait_for(each, timeout=120)) for tag, p in instances.items()}

    opened = [m.header("X-Case-ID") for got in first.values() for m in got.values()]
    assert None not in opened
    # One case per mail, whichever process opened it: no number handed out twice.
    assert len(set(opened)) == len(opened) == 2 * each, Counter(opened).most_common(3)
    dump = IndexExport.read(index)
    dump.assert_numbering()  # dense and unique, the counter at the last one
    assert dump.counter == len(dump.cases) == 2 * each

    # Each instance's agent mail, answered through the other instance, finds its case there.
    answers = {"a": "b", "b": "a"}
    for tag, other in answers.items():
        for n in range(0, THREADS_EACH * PER_THREAD, 2):
            send(instances[other], reply(tag, n), f"{tag}{n}@customer.example", SUPPORT, False)
    for tag, other in answers.items():
        got = by_seq(instances[other].wait_for(each + each // 2, timeout=120))
        for n in range(0, THREADS_EACH * PER_THREAD, 2):
            answered = got[f"{tag}-r-{n}"]
            assert answered.header("X-Case-Match") == "in-reply-to"
            assert answered.header("X-Case-ID") == first[tag][f"{tag}-a-{n}"].header("X-Case-ID")
    assert len(IndexExport.read(index).cases) == 2 * each  # the replies opened none
    for milter in milters:
        assert not [line for line in milter.output().splitlines() if " ERROR " in line]
