"""Clients that break off, send odd things or send a lot, against the real `casethread serve`
over its socket: the milter frees what the message held (its spooled body), keeps serving, and
keeps its memory bounded.

The milter's own process is read in /proc: its open files (a spooled body is an unlinked file
in its TMPDIR) and its heap (RssAnon).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from miltertest import constants as c
from miltertest.client import MilterError

from .conftest import MilterProcess, MilterStarter
from .milterclient import MtaSession, Transaction, values
from .scenario import CONFIG, SUPPORT, customer_headers

CUSTOMER = "pat@customer.example.org"
CONNECT_MACROS = {"j": "mx.example.com", "{daemon_name}": "mx"}
SPOOL_THRESHOLD = 64 * 1024
LINE = "A line of the customer's mail, with nothing in it to thread by.\r\n"
MIB = 1 << 20
WAIT = 10.0


class Interrupted(Exception):
    """Raised from a hook to leave a message unfinished."""


@pytest.fixture(scope="module")
def milter(module_milters: MilterStarter) -> MilterProcess:
    """One milter whose bodies spool past 64 KiB into a TMPDIR of its own."""
    spool = module_milters.workdir / "spool"
    spool.mkdir()
    return module_milters.start(
        CONFIG + f"stamp:\n  spool_threshold: {SPOOL_THRESHOLD}\n", name="clients",
        env={"TMPDIR": str(spool)})


def spool_dir(proc: MilterProcess) -> str:
    return str(proc.log_path.parent / "spool")


def open_files(proc: MilterProcess) -> set[tuple[str, str]]:
    """The milter's open descriptors and what each names (a connection `socket:[inode]`, a
    spooled body `SPOOL/#123 (deleted)`)."""
    named = set()
    for fd in os.listdir(f"/proc/{proc.proc.pid}/fd"):
        try:
            named.add((fd, os.readlink(f"/proc/{proc.proc.pid}/fd/{fd}")))
        except FileNotFoundError:  # closed meanwhile
            continue
    return named


def spooled(proc: MilterProcess) -> list[str]:
    return [name for _, name in open_files(proc) if name.startswith(spool_dir(proc))]


def heap_kib(proc: MilterProcess) -> int:
    found = re.search(r"RssAnon:\s+(\d+) kB", Path(f"/proc/{proc.proc.pid}/status").read_text())
    assert found
    return int(found.group(1))


def settles(condition: Callable[[], bool]) -> bool:
    """`condition` holds within WAIT seconds (the milter's threads finish a closed connection
    on their own time)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def connected(proc: MilterProcess) -> MtaSession:
    mta = MtaSession.open(proc.endpoint)
    # Postfix writes each step as it comes; without this, Nagle's algorithm holds a step
    # back until the milter acknowledges the one before, which it delays (~40 ms a step).
    mta.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mta.negotiate()
    assert mta.connect(CONNECT_MACROS) == c.SMFIR_CONTINUE
    return mta


def customer_mail(mta: MtaSession, queue_id: str, body: str = "Hello\r\n",
                  sender: str = CUSTOMER, before_eom: Callable[[], None] | None = None
                  ) -> Transaction:
    """An inbound message from `sender` with a forged X-Case-ID, which the milter must replace.
    (The flood limit counts a sender's new cases: 20 an hour, then X-Case-Loop.)"""
    headers = [("From", sender), *customer_headers(f"<{queue_id}@customer.example.org>",
                                                   ("X-Case-ID", "C-999999"))[1:]]
    return mta.message(sender, [SUPPORT], headers, body, rcpt_macros={"i": queue_id},
                       eom_macros={"i": queue_id}, before_eom=before_eom)


def assert_filtered(t: Transaction) -> None:
    assert t.disposition == c.SMFIR_CONTINUE, t
    assert ("X-Case-ID", 1) in t.removals()
    assert t.added("X-Case-ID") and t.added("X-Case-ID") != ["C-999999"], t.actions


def assert_serves_on(proc: MilterProcess, queue_id: str) -> None:
    """A new connection's message is filtered as usual, and nothing went wrong in the log."""
    with connected(proc) as mta:
        assert_filtered(customer_mail(mta, queue_id, sender=f"{queue_id}@customer.example.org"))
        mta.quit()
    log = proc.log()
    assert " ERROR " not in log and "Traceback" not in log, log


def half_packet(mta: MtaSession, command: bytes) -> None:
    """A packet that says 1,000 bytes follow, and three of them."""
    mta.sock.sendall(struct.pack("!Lc", 1001, command) + b"abc")


# --------------------------------------------------------------------------- breaking off


def cut_in_the_header(mta: MtaSession) -> Iterator[tuple[str, str]]:
    yield ("From", f"Pat <{CUSTOMER}>")
    yield ("To", SUPPORT)
    half_packet(mta, c.SMFIC_HEADER.encode())
    raise Interrupted


@pytest.mark.parametrize(("where", "body_lines"), [
    ("in-the-header", 0), ("in-a-body-chunk", 10), ("in-a-spooled-body-chunk", 20_000),
    ("before-end-of-message", 20_000)])
def test_a_client_gone_mid_message_leaves_nothing_open_and_the_milter_serves_on(
    milter: MilterProcess, where: str, body_lines: int
) -> None:
    before = open_files(milter)
    mta = connected(milter)
    seen_spooled: list[str] = []

    def break_off() -> None:
        seen_spooled.extend(spooled(milter))
        if where == "in-a-body-chunk" or where == "in-a-spooled-body-chunk":
            half_packet(mta, c.SMFIC_BODY.encode())
        raise Interrupted

    with pytest.raises(Interrupted):
        if where == "in-the-header":
            mta.message(CUSTOMER, [SUPPORT], cut_in_the_header(mta), rcpt_macros={"i": "QCUT"})
        else:
            customer_mail(mta, f"QCUT{body_lines}", LINE * body_lines, before_eom=break_off)
    mta.close()
    # A body past the threshold was in a file, and that file is closed with the connection.
    assert bool(seen_spooled) == (len(LINE) * body_lines > SPOOL_THRESHOLD), seen_spooled
    # Every descriptor the connection opened is closed (one of an earlier connection's may
    # close meanwhile).
    assert settles(lambda: open_files(milter) <= before), open_files(milter) - before
    assert spooled(milter) == []
    assert_serves_on(milter, f"QAFTERCUT{body_lines}")


def test_an_abort_in_a_spooled_body_frees_it_for_the_next_message_on_the_connection(
    milter: MilterProcess,
) -> None:
    with connected(milter) as mta:
        held: list[str] = []

        def abort_it() -> None:
            held.extend(spooled(milter))
            raise Interrupted

        with pytest.raises(Interrupted):
            customer_mail(mta, "QABORTED", LINE * 20_000, before_eom=abort_it)
        mta.abort()  # RSET, or the client gone: Postfix ends the message so
        assert held and settles(lambda: spooled(milter) == [])
        after = customer_mail(mta, "QAFTERABORT", sender="lee@customer.example.org")
        mta.quit()
    assert_filtered(after)
    assert f"queue_id=QAFTERABORT direction=inbound case={after.added('X-Case-ID')[0]} " \
        "match=new" in milter.log()
    assert "QABORTED " not in milter.log()  # the aborted message made no decision


# --------------------------------------------------------------------------- odd envelopes


def test_a_message_with_no_usable_recipient_is_neither_direction(milter: MilterProcess) -> None:
    with connected(milter) as mta:
        # RCPT TO:<> (no MTA takes it, but the milter must not care).
        empty = customer_mail_to(mta, [""], "QNORCPT")
        # DATA with no RCPT before it: no MTA sends it, and libmilter answers no such step;
        # the connection is given up, the milter serves on.
        mta._macro(c.SMFIC_MAIL, {"{mail_addr}": CUSTOMER})
        mta._step(c.SMFIC_MAIL, args=[f"<{CUSTOMER}>"])
        mta.conn._send(c.SMFIC_DATA)
    assert empty.disposition == c.SMFIR_CONTINUE
    assert empty.actions and all(not a.value for a in empty.actions)  # forged fields only
    assert "queue_id=QNORCPT direction=other " in milter.log()
    assert_serves_on(milter, "QAFTERNORCPT")


def customer_mail_to(mta: MtaSession, rcpts: list[str], queue_id: str) -> Transaction:
    headers = customer_headers(f"<{queue_id}@customer.example.org>", ("X-Case-ID", "C-999999"))
    return mta.message(CUSTOMER, rcpts, headers, "Hello\r\n", eom_macros={"i": queue_id})


ODD_NAMES: list[bytes] = [b"X Space", b"X:Colon", b"X-\x01control", "Ümläut".encode(),
                          b"X-Tab\t", b"Subject ", b"X-" + b"N" * 5000, b"\x7f", b"-"]


def test_odd_header_names_pass_and_a_near_spelling_of_ours_is_removed(
    milter: MilterProcess,
) -> None:
    sent: list[tuple[str | bytes, str | bytes]] = [(name, b"value") for name in ODD_NAMES]
    sent += [(b"x-case-id ", b"C-1")]  # obsolete syntax: blanks before the colon
    sent += customer_headers("<odd-names@customer.example.org>", ("X-Case-ID", "C-999999"))
    with connected(milter) as mta:
        t = mta.message(CUSTOMER, [SUPPORT], sent, "Hello\r\n", eom_macros={"i": "QODD"})
        mta.quit()
    assert t.disposition == c.SMFIR_CONTINUE
    assert sorted(t.removals()) == [("X-Case-ID", 1), ("x-case-id ", 1)]
    assert values(t.result(sent), "X-Case-Match") == ["new"]
    # A name pymilter cannot decode is one ERROR line (test_serve); an empty one libmilter
    # refuses by closing the connection, and the milter serves on.
    with connected(milter) as mta, pytest.raises((MilterError, OSError)):
        mta.message(CUSTOMER, [SUPPORT], [(b"", b"value")], "", rcpt_macros={"i": "QEMPTY"})
    assert_serves_on(milter, "QAFTEREMPTY")


# --------------------------------------------------------------------------- many and big


def test_100_messages_on_one_connection_each_filtered_with_bounded_memory(
    milter: MilterProcess,
) -> None:
    heaps: list[int] = []
    with connected(milter) as mta:
        for n in range(100):
            if n % 10:  # to someone else: neither direction, forged fields removed
                t = customer_mail_to(mta, ["friend@elsewhere.test"], f"QMANY{n}")
                assert t.disposition == c.SMFIR_CONTINUE and t.removals() == [("X-Case-ID", 1)]
            else:  # a new case each (one sender each: the flood limit counts a sender's)
                assert_filtered(customer_mail(mta, f"QMANY{n}",
                                              sender=f"c{n}@customer.example.org"))
            mta.abort()  # as Postfix ends each transaction
            if n in (9, 99):
                heaps.append(heap_kib(milter))
        mta.quit()
    log = milter.log()
    assert all(re.search(rf"queue_id=QMANY{n} direction=(inbound|other) ", log)
               for n in range(100))
    # 90 messages later the heap is where it was (a leak of one body or decision each shows).
    assert heaps[1] - heaps[0] < 4 * 1024, heaps


def attachment_mail(size: int) -> tuple[list[tuple[str, str]], str]:
    """An agent's mail: a short text part, then an attachment of `size` bytes (base64)."""
    encoded = base64.encodebytes(bytes(range(256)) * (size // 256)).decode().replace("\n", "\r\n")
    body = ("--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour invoice.\r\n"
            "--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=big.pdf\r\n\r\n{encoded}--b--\r\n")
    headers = [("From", "Dana <dana@support.example.com>"), ("To", f"Pat <{CUSTOMER}>"),
               ("Subject", "Your invoice"), ("MIME-Version", "1.0"),
               ("Content-Type", 'multipart/mixed; boundary="b"')]
    return headers, body


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_a_50mb_body_is_spooled_and_the_heap_stays_bounded(
    milter: MilterProcess, direction: str
) -> None:
    held: list[str] = []

    def hook() -> None:
        held.extend(spooled(milter))

    heap = heap_kib(milter)
    with connected(milter) as mta:
        if direction == "inbound":
            # Nothing in its header fields names a case: read to inbound.read_limit (32 MiB),
            # then SKIP.
            t = customer_mail(mta, "QBIGIN", LINE * (50 * MIB // len(LINE)),
                              sender="big@customer.example.org", before_eom=hook)
            assert t.body_skipped
            assert_filtered(t)
        else:
            headers, body = attachment_mail(37 * MIB)  # 50 MB once in base64
            t = mta.message("dana@support.example.com", [CUSTOMER], headers, body,
                            mail_macros={"{auth_authen}": "dana"}, eom_macros={"i": "QBIGOUT"},
                            before_eom=hook)
            assert t.disposition == c.SMFIR_CONTINUE
            assert any(a.kind == c.SMFIR_REPLBODY for a in t.actions)  # the text part stamped
            assert len(t.added("X-Case-ID")) == 1
        mta.quit()
    assert held, "the body was not spooled"
    assert settles(lambda: spooled(milter) == [])
    # The body went through a file: the heap grew by far less than the body (README: 14 MiB
    # for 53 MB).
    assert heap_kib(milter) - heap < 24 * 1024, (heap, heap_kib(milter))
