"""The real `casethread serve` process, driven over its socket by a milter client (miltertest).

Each test speaks the milter protocol as Postfix does: option negotiation, connect macros with
`{daemon_name}`, MAIL, RCPT, DATA, headers, EOH, body (the steps the milter did not ask to skip),
EOM; and asserts on the modification actions the milter sends back, and on the header fields an
MTA would leave after replaying them (`Transaction.result`, an independent oracle).

The engine grows (tokens, Thread-Index, References ...): these tests pin the wire contract
(DESIGN §2, §6, §7, §8), not every header the engine may add.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from miltertest import constants as c

from casethread.core.case_headers import MAX_OWN_FIELDS
from casethread.index import LmdbIndex
from casethread.keyfile import load_keyring, write_key_file

from .conftest import CASETHREAD, STOP_TIMEOUT, MilterProcess, MilterStarter
from .milterclient import Action, Endpoint, MtaSession, Transaction, values
from .scenario import CONFIG, SUPPORT, customer_headers

MSGID_RE = re.compile(r"<[0-9a-z]+\.[0-9a-z]+@support\.example\.com>")
CASE_RE = re.compile(r"C-\d{6}")
# An MTA that can skip no step (it only knows SMFIS_SKIP): HELO, EOH and body are all sent.
# (Offering 0 would not do: libmilter then assumes a V1 MTA that can skip steps.)
NO_SKIP = c.SMFIP_SKIP
RunCli = Callable[..., subprocess.CompletedProcess[bytes]]


def agent_headers(subject: str = "Your printer question") -> list[tuple[str, str]]:
    return [
        ("From", "Dana Agent <dana@support.example.com>"),
        ("To", "Pat Customer <pat@customer.example.org>"),
        ("Subject", subject),
        ("Date", "Mon, 02 Mar 2026 09:15:00 +0000"),
    ]


def transact(
    endpoint: Endpoint,
    *,
    daemon_name: str,
    mail_from: str,
    rcpts: list[str],
    headers: Sequence[tuple[str | bytes, str | bytes]],
    queue_id: str,
    body: str = "Hello,\r\nthe body.\r\n",
    auth: str | None = None,
    mta_protocol: int = c.SMFI_V6_PROT,
    client: tuple[str, str] = (c.SMFIA_INET, "198.51.100.7"),
) -> Transaction:
    """One SMTP connection with one message, as Postfix drives a milter."""
    with MtaSession.open(endpoint) as mta:
        mta.negotiate(protocol=mta_protocol)
        connect_macros = {
            "j": "mx.example.com",
            "{daemon_name}": daemon_name,
            "_": "client.example.org [198.51.100.7]",
        }
        family, address = client
        assert mta.connect(connect_macros, family=family, address=address) == c.SMFIR_CONTINUE
        mail_macros = {"{mail_addr}": mail_from}
        if auth:
            mail_macros["{auth_authen}"] = auth
        t = mta.message(
            mail_from, rcpts, headers, body, mail_macros=mail_macros,
            rcpt_macros={"i": queue_id}, eom_macros={"i": queue_id},
        )
        mta.quit()
    return t


def all_continued(t: Transaction) -> bool:
    return bool(t.replies) and all(reply == c.SMFIR_CONTINUE for reply in t.replies.values())


def send_agent_mail(endpoint: Endpoint, queue_id: str, **kw: object) -> tuple[str, str]:
    """The agent's first mail through submission; returns (Message-ID, case id) it got."""
    t = transact(
        endpoint, daemon_name="ORIGINATING", mail_from="dana@support.example.com",
        rcpts=["pat@customer.example.org"], headers=agent_headers(), queue_id=queue_id,
        **kw,  # type: ignore[arg-type]
    )
    assert all_continued(t), t
    assert t.disposition == c.SMFIR_CONTINUE
    return assert_outbound_stamp(t, agent_headers())


def assert_outbound_stamp(
    t: Transaction, sent: Sequence[tuple[str | bytes, str | bytes]]
) -> tuple[str, str]:
    """A Message-ID was added, exactly one X-Case-ID, none of the inbound headers."""
    after = t.result(sent)
    (message_id,) = values(after, "Message-ID")
    assert t.added("Message-ID") == [message_id], t.actions
    (case_id,) = values(after, "X-Case-ID")
    assert values(after, "X-Case-Match") == [], t.actions
    assert MSGID_RE.fullmatch(message_id), message_id
    assert CASE_RE.fullmatch(case_id), case_id
    return message_id, case_id


def removed_before_added(t: Transaction) -> bool:
    """DESIGN §6: every inbound X-Case-* field is removed before ours are added."""
    kinds = [a.kind for a in t.actions]
    last_removal = max(i for i, a in enumerate(t.actions) if a.kind == "m" and not a.value)
    return not {"h", "i"} & set(kinds[: last_removal + 1])


@pytest.fixture(scope="module")
def shared(module_milters: MilterStarter) -> MilterProcess:
    """One TCP milter for the scenarios that do not stop or break it."""
    return module_milters.start(CONFIG, name="shared")


# --------------------------------------------------------------------------- negotiation


def test_negotiation_requests_data_headers_and_header_actions(shared: MilterProcess) -> None:
    with MtaSession.open(shared.endpoint) as mta:
        actions, protocol = mta.negotiate()
        mta.quit()
    # Exactly what casethread uses: add/change headers and replace the body (stamping); never
    # recipients, the sender or quarantine.
    assert actions == c.SMFIF_ADDHDRS | c.SMFIF_CHGHDRS | c.SMFIF_CHGBODY, hex(actions)
    # DATA stays: a skipped DATA costs ~40 ms per message on Postfix (FIELD-NOTES). The body
    # is wanted too (inbound token scan, DESIGN §5), and EOH where its budget is set.
    for sent in (c.SMFIP_NODATA, c.SMFIP_NOCONNECT, c.SMFIP_NOMAIL, c.SMFIP_NORCPT,
                 c.SMFIP_NOHDRS, c.SMFIP_NOEOH, c.SMFIP_NOBODY):
        assert not protocol & sent, hex(protocol)
    for skipped in (c.SMFIP_NOHELO, c.SMFIP_NOUNKNOWN):
        assert protocol & skipped, hex(protocol)


# --------------------------------------------------------------------------- threading


@pytest.mark.parametrize(
    "mta_protocol", [c.SMFI_V6_PROT, NO_SKIP], ids=["mta-skips-steps", "mta-sends-all-steps"]
)
def test_outbound_then_inbound_reply_thread_to_one_case(
    shared: MilterProcess, mta_protocol: int
) -> None:
    ep = shared.endpoint
    sent_id, case_id = send_agent_mail(ep, "QOUT" + str(mta_protocol), mta_protocol=mta_protocol)

    sent = customer_headers(
        f"<reply.{mta_protocol}@customer.example.org>",
        ("In-Reply-To", sent_id),
        ("References", sent_id),
        ("X-Case-ID", "C-999999"),
    )
    reply = transact(
        ep, daemon_name="mx.example.com", mail_from="pat@customer.example.org", rcpts=[SUPPORT],
        headers=sent, queue_id="QIN" + str(mta_protocol), mta_protocol=mta_protocol,
    )

    assert all_continued(reply), reply
    # EOH and the body were sent and acknowledged.
    assert reply.replies["eoh"] == c.SMFIR_CONTINUE
    assert reply.replies["body"] == c.SMFIR_CONTINUE
    assert reply.disposition == c.SMFIR_CONTINUE
    # The forged field goes (change-header, index 1, empty value) before ours come.
    assert reply.removals() == [("X-Case-ID", 1)]
    assert removed_before_added(reply)
    after = reply.result(sent)
    assert values(after, "X-Case-ID") == [case_id]
    assert values(after, "X-Case-Match") == ["in-reply-to"]
    lines = shared.log().splitlines()
    assert any(f"queue_id=QOUT{mta_protocol} direction=outbound case={case_id} " in line
               for line in lines)
    assert any(f"queue_id=QIN{mta_protocol} direction=inbound case={case_id} " in line
               for line in lines)


def test_forged_case_headers_are_removed(shared: MilterProcess) -> None:
    forged = [("X-Case-ID", "C-000001"), ("x-case-match", "token"), ("X-Case-ID", "C-000002")]
    removals = [("X-Case-ID", 2), ("X-Case-ID", 1), ("x-case-match", 1)]
    sent = customer_headers("<forged.1@customer.example.org>", *forged)
    inbound = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=[SUPPORT], headers=sent, queue_id="QFORGED1",
    )
    assert inbound.disposition == c.SMFIR_CONTINUE
    # Highest index first per name, so an MTA that renumbers after a deletion removes both.
    assert sorted(inbound.removals()) == sorted(removals)
    assert inbound.removals().index(("X-Case-ID", 2)) < inbound.removals().index(("X-Case-ID", 1))
    assert removed_before_added(inbound)
    after = inbound.result(sent)
    (new_case,) = values(after, "X-Case-ID")
    assert CASE_RE.fullmatch(new_case)
    assert values(after, "X-Case-Match") == ["new"]

    # Neither outbound nor to a support address: only the removals, nothing added.
    sent = customer_headers("<forged.2@customer.example.org>", *forged)
    other = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=["friend@elsewhere.test"], headers=sent, queue_id="QFORGED2",
    )
    assert other.disposition == c.SMFIR_CONTINUE
    assert sorted(other.removals()) == sorted(removals)
    assert [a.kind for a in other.actions] == ["m"] * 3
    assert other.result(sent) == [(n, v) for n, v in sent if n not in ("X-Case-ID", "x-case-match")]


def test_more_case_fields_than_can_be_removed_get_a_reply_code(shared: MilterProcess) -> None:
    """Past MAX_OWN_FIELDS the milter refuses (550 5.7.1 with its text, SMFIR_REPLYCODE)
    instead of sending a removal per field, which Postfix's cleanup cannot take in thousands."""
    sent = customer_headers("<many.1@customer.example.org>",
                            *[("X-Case-ID", f"C-{n}") for n in range(MAX_OWN_FIELDS + 1)])
    refused = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=[SUPPORT], headers=sent, queue_id="QMANY1",
    )
    assert refused.disposition == c.SMFIR_REPLYCODE
    assert refused.actions == []


def test_two_messages_on_one_connection_do_not_share_state(shared: MilterProcess) -> None:
    with MtaSession.open(shared.endpoint) as mta:
        mta.negotiate()
        assert mta.connect({"{daemon_name}": "mx.example.com"}) == c.SMFIR_CONTINUE
        first = mta.message(
            "dana@support.example.com", [SUPPORT], agent_headers("authenticated"),
            mail_macros={"{auth_authen}": "dana", "{mail_addr}": "dana@support.example.com"},
            eom_macros={"i": "QCONN1"},
        )
        # Postfix ends each transaction with ABORT and sends fresh MAIL macros for the next.
        mta.abort()
        second = mta.message(
            "pat@customer.example.org", ["friend@elsewhere.test"],
            customer_headers("<conn.2@customer.example.org>"),
            mail_macros={"{mail_addr}": "pat@customer.example.org"},
            eom_macros={"i": "QCONN2"},
        )
        mta.quit()
    # Authenticated: outbound, even to the support address.
    assert_outbound_stamp(first, agent_headers("authenticated"))
    # No auth, no support recipient: other. A leaked auth or recipient would stamp it.
    assert second.actions == []
    assert second.disposition == c.SMFIR_CONTINUE
    log = shared.log()
    assert "queue_id=QCONN1 direction=outbound" in log
    assert "queue_id=QCONN2 direction=other" in log


@pytest.mark.parametrize(
    ("family", "address", "outbound"),
    [
        (c.SMFIA_INET, "10.1.2.3", True),
        (c.SMFIA_INET6, "2001:db8:1::25", True),
        (c.SMFIA_INET, "198.51.100.7", False),
        (c.SMFIA_INET6, "2001:db8:2::25", False),
        # An unknown family: no client address at all. (Postfix presents sendmail(1) mail
        # as from 127.0.0.1, port 0.)
        (c.SMFIA_UNKNOWN, "", False),
    ],
)
def test_client_networks_make_mail_outbound(
    shared: MilterProcess, family: str, address: str, outbound: bool
) -> None:
    # The client address reaches the adapter only through the connect callback's real
    # (address, port, ...) tuple, which TestCtx does not reproduce.
    t = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="app@support.example.com",
        rcpts=["pat@customer.example.org"], headers=agent_headers(), queue_id="QNET",
        client=(family, address),
    )
    assert t.disposition == c.SMFIR_CONTINUE
    if outbound:
        assert_outbound_stamp(t, agent_headers())
    else:
        assert t.actions == []


def test_an_eight_bit_message_id_is_recorded_byte_exact(shared: MilterProcess) -> None:
    headers: list[tuple[str | bytes, str | bytes]] = [
        ("From", "Pat <pat@customer.example.org>"),
        ("Subject", b"caf\xe9"),
        ("Message-ID", b"<caf\xe9.wire@customer.example.org>"),
    ]
    runs = [
        transact(
            shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
            rcpts=[SUPPORT], headers=headers, queue_id=f"Q8BIT{n}",
        )
        for n in (1, 2)
    ]
    first, second = (t.result(headers) for t in runs)
    assert values(first, "X-Case-Match") == ["new"]
    # The second delivery of the same (8-bit) Message-ID is found again.
    assert values(second, "X-Case-Match") == ["duplicate"]
    assert values(second, "X-Case-Duplicate") == ["yes"]
    assert values(second, "X-Case-ID") == values(first, "X-Case-ID")
    assert values(second, "Subject") == ["caf\udce9"]  # the 8-bit byte passed through intact


@pytest.mark.parametrize(
    "mta_protocol", [c.SMFI_V6_PROT, NO_SKIP], ids=["headers-unanswered", "headers-answered"]
)
def test_a_header_name_pymilter_cannot_decode_is_skipped_and_the_message_filtered(
    shared: MilterProcess, mta_protocol: int
) -> None:
    # pymilter decodes field names as strict UTF-8 before our code runs, and answers its own
    # exception with its policy, which casethread sets to CONTINUE: on a step the MTA does not
    # wait for, any other answer would end the message on the milter's side while the MTA goes
    # on (libmilter acts on the answer it drops), and the MTA would wait for an end-of-message
    # reply that never comes. (Postfix itself never sends such a name: it starts the body there.)
    queue_id = f"QRAW{mta_protocol}"
    sent: list[tuple[str | bytes, str | bytes]] = [
        ("From", "Pat Customer <pat@customer.example.org>"),
        ("To", f"Support <{SUPPORT}>"),
        ("Subject", "hi"),
        (b"X-Case-\xe9", b"forged"),
        ("X-Case-ID", "C-999999"),
        ("Message-ID", f"<raw.{mta_protocol}@customer.example.org>"),
    ]
    with MtaSession.open(shared.endpoint) as mta:
        mta.negotiate(protocol=mta_protocol)
        assert mta.connect({"{daemon_name}": "mx.example.com"}) == c.SMFIR_CONTINUE
        broken = mta.message(
            "pat@customer.example.org", [SUPPORT], sent, "Hello\r\n",
            rcpt_macros={"i": queue_id}, eom_macros={"i": queue_id},
        )
        after = mta.message(
            "pat@customer.example.org", ["friend@elsewhere.test"],
            customer_headers(f"<raw.next.{mta_protocol}@customer.example.org>",
                             ("X-Case-ID", "C-1")),
            eom_macros={"i": f"QRAWNEXT{mta_protocol}"},
        )
        mta.quit()
    # Every step went on, and the message was filtered without the field it could not see: the
    # fields after it were seen (the forged X-Case-ID goes), and the message opened a case.
    assert all_continued(broken), broken
    assert broken.disposition == c.SMFIR_CONTINUE
    assert broken.removals() == [("X-Case-ID", 1)]
    result = broken.result(sent)
    assert values(result, "X-Case-Match") == ["new"]
    (case_id,) = values(result, "X-Case-ID")
    assert case_id != "C-999999"
    log = shared.log()
    assert "error inside pymilter, before casethread's code: UnicodeDecodeError" in log
    assert re.search(rf"queue_id={queue_id} direction=inbound case={case_id} match=new", log)
    # The same connection goes on; the next message is handled normally.
    assert after.actions == [Action("m", "X-Case-ID", "", 1)]
    assert after.disposition == c.SMFIR_CONTINUE


def test_a_token_in_the_body_threads_across_body_chunks(shared: MilterProcess) -> None:
    sent = agent_headers("Body token test")
    out = transact(
        shared.endpoint, daemon_name="ORIGINATING", mail_from="dana@support.example.com",
        rcpts=["pat@customer.example.org"], headers=sent, queue_id="QBODY0",
    )
    _message_id, case_id = assert_outbound_stamp(out, sent)
    (subject,) = values(out.result(sent), "Subject")
    found = re.search(r"\[ref:([0-9A-Za-z]+)\]", subject)
    assert found, subject
    # The customer's client dropped In-Reply-To/References and the subject tag; only the
    # quoted original in the body names the case, straddling the first 64 KiB body chunk.
    token = found.group(1)
    quote = f"> Subject: {subject}\r\n"
    split = c.MILTER_CHUNK_SIZE - quote.index(token) - len(token) // 2
    filler = ("x" * 78 + "\r\n") * (split // 80) + "y" * (split % 80)
    body = filler + quote + ("z" * 78 + "\r\n") * 1000
    # The chunk boundary cuts the token itself in two.
    assert body.index(token) < c.MILTER_CHUNK_SIZE < body.index(token) + len(token)
    headers = [
        ("From", "Pat Customer <pat@customer.example.org>"),
        ("To", f"Support <{SUPPORT}>"),
        ("Subject", "my printer again"),
        ("Message-ID", "<body-token.1@customer.example.org>"),
    ]
    reply = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=[SUPPORT], headers=headers, body=body, queue_id="QBODY1",
    )
    assert reply.replies["body"] == c.SMFIR_CONTINUE
    assert not reply.body_skipped and reply.body_chunks == -(-len(body) // c.MILTER_CHUNK_SIZE) > 1
    after = reply.result(headers)
    assert values(after, "X-Case-ID") == [case_id]
    assert values(after, "X-Case-Match") == ["token"]

    # The same reply with the token in its Subject: its header fields name the case, so the
    # milter answers SKIP to the first body chunk (an MTA that knows SKIP sends no more).
    headers[2] = ("Subject", f"Re: {subject}")
    headers[3] = ("Message-ID", "<body-token.2@customer.example.org>")
    reply = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=[SUPPORT], headers=headers, body=body, queue_id="QBODY2",
    )
    assert reply.body_skipped and reply.body_chunks == 1
    after = reply.result(headers)
    assert values(after, "X-Case-ID") == [case_id]
    assert values(after, "X-Case-Match") == ["token"]
    # The log line says so; the first reply's, whose body was read, does not.
    lines = {q: line for line in shared.log().splitlines()
             for q in ("QBODY1", "QBODY2") if f"queue_id={q} " in line}
    assert lines["QBODY2"].endswith(" body=skipped"), lines
    assert "body=" not in lines["QBODY1"], lines


def test_the_index_is_readable_by_filter_while_the_milter_runs(
    shared: MilterProcess, run_cli: RunCli, tmp_path: Path
) -> None:
    sent_id, case_id = send_agent_mail(shared.endpoint, "QDRY0")
    reply = "\r\n".join(
        f"{name}: {value}"
        for name, value in customer_headers(
            "<dry.1@customer.example.org>", ("In-Reply-To", sent_id)
        )
    ) + "\r\n\r\nIt is the LaserThing 3000.\r\n"
    eml = tmp_path / "reply.eml"
    eml.write_bytes(reply.encode())

    proc = run_cli("filter", "--index", str(shared.index), "--dry-run", "--direction", "inbound",
                   "--rcpt", SUPPORT, str(eml))

    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert f"\r\nX-Case-ID: {case_id}\r\n" in out
    assert "\r\nX-Case-Match: in-reply-to\r\n" in out
    # --dry-run recorded nothing: the milter sees that Message-ID for the first time.
    live = transact(
        shared.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=[SUPPORT],
        headers=customer_headers("<dry.1@customer.example.org>", ("In-Reply-To", sent_id)),
        queue_id="QDRY1",
    )
    assert live.added("X-Case-ID") == [case_id]
    assert live.added("X-Case-Match") == ["in-reply-to"]
    assert live.added("X-Case-Duplicate") == []


# --------------------------------------------------------------------------- process life


def test_sigterm_stops_the_milter_cleanly(milters: MilterStarter, tmp_path: Path) -> None:
    procs = [
        milters.start(CONFIG, name="tcp"),
        milters.start(CONFIG, endpoint=Endpoint.unix(str(tmp_path / "term.sock")), name="unix"),
    ]
    for n, proc in enumerate(procs):
        send_agent_mail(proc.endpoint, f"QTERM{n}")
    # Both at once: each takes seconds to leave libmilter's loop.
    for proc in procs:
        proc.send_term()
    for proc in procs:
        status, seconds = proc.terminate()
        assert status == 0, proc.log()
        assert seconds < STOP_TIMEOUT
        log = proc.log()
        assert log.rstrip().endswith("stopped"), log
        assert "Traceback" not in log
        assert "inbound.addresses is empty" not in log


def test_a_live_unix_socket_is_not_taken_over(milters: MilterStarter, tmp_path: Path) -> None:
    """A second `serve` on the socket of a running milter refuses to start; the first keeps
    serving, and removes its socket file when it stops."""
    path = tmp_path / "live.sock"
    first = milters.start(CONFIG, endpoint=Endpoint.unix(str(path)), name="first")
    spec = f"unix:{path}"
    second = subprocess.run(
        [str(CASETHREAD), "serve", "--socket", spec, "--index", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False,
    )
    assert second.returncode == 1, second.stderr
    assert second.stderr.splitlines()[-1] == (
        f"casethread: cannot listen on {spec}: another milter listens on {path}; stop it "
        "first or give this one another milter.socket"), second.stderr
    assert "Traceback" not in second.stderr
    assert not (tmp_path / "other").exists()  # refused before it made an index and a key
    send_agent_mail(first.endpoint, "QFIRST")  # still reachable
    status, _ = first.terminate()
    assert status == 0, first.log()
    assert not path.exists()


def test_a_stale_unix_socket_is_replaced(milters: MilterStarter, tmp_path: Path) -> None:
    """A socket file nobody listens on (its milter was killed) is removed and listened on."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closed without unlinking: what kill -9 leaves
    proc = milters.start(CONFIG, endpoint=Endpoint.unix(str(path)), name="stale")
    send_agent_mail(proc.endpoint, "QSTALE")
    assert f"removed the stale socket {path}" in proc.log()
    status, _ = proc.terminate()
    assert status == 0, proc.log()
    assert not path.exists()


def test_a_fatal_signal_leaves_a_traceback(milters: MilterStarter) -> None:
    """SIGSEGV (py-lmdb on a corrupt page) or SIGBUS must not end the milter without a line:
    faulthandler writes each thread's Python stack to stderr, the journal."""
    proc = milters.start(CONFIG, name="segv")
    proc.proc.send_signal(signal.SIGSEGV)
    assert proc.proc.wait(timeout=STOP_TIMEOUT) == -signal.SIGSEGV
    log = proc.log()
    assert "Fatal Python error: Segmentation fault" in log, log
    assert 'File "' in log and "casethread" in log.split("Fatal Python error", 1)[1], log


def test_a_milter_with_no_support_address_says_so(milters: MilterStarter) -> None:
    """The embedded defaults (`make run`) list no support address: nothing is inbound."""
    proc = milters.start(None, name="defaults")
    status, _ = proc.terminate()
    assert status == 0
    assert "WARNING inbound.addresses is empty: no mail is inbound" in proc.log()


def wait_for_log(proc: MilterProcess, text: str, count: int = 1) -> str:
    """The log once `text` is in it `count` times (bounded wait)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while proc.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{proc.log()}"
        time.sleep(0.05)
    return proc.log()


def customer_match(proc: MilterProcess, queue_id: str) -> list[str]:
    """X-Case-Match of a customer's new mail to the support address ([] unless inbound)."""
    sent = customer_headers(f"<{queue_id}@customer.example.org>")
    t = transact(proc.endpoint, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
                 rcpts=[SUPPORT], headers=sent, queue_id=queue_id)
    return values(t.result(sent), "X-Case-Match")


def test_a_reload_refuses_an_empty_file_and_warns_of_no_support_address(
    milters: MilterStarter,
) -> None:
    """A truncated file (or a template that rendered nothing) would switch a reload to the
    embedded defaults, whose empty inbound.addresses passes every reply as direction=other."""
    proc = milters.start(CONFIG, name="reload")
    assert proc.config is not None
    assert customer_match(proc, "QRELOAD1") == ["new"]
    proc.config.write_text("# casethread configuration\n")
    proc.proc.send_signal(signal.SIGUSR1)
    log = wait_for_log(proc, "reload refused")
    assert (f"ERROR reload refused, running configuration kept: {proc.config}: empty "
            "configuration; run without --config for the embedded defaults") in log
    assert customer_match(proc, "QRELOAD2") == ["new"]  # still threading
    # A file that loads but lists no support address is taken, and said once more.
    proc.config.write_text("routing:\n  default_queue: frontline\n")
    proc.proc.send_signal(signal.SIGUSR1)
    log = wait_for_log(proc, "inbound.addresses is empty")
    assert log.index("reloaded configuration") < log.index("inbound.addresses is empty")
    assert customer_match(proc, "QRELOAD3") == []
    status, _ = proc.terminate()
    assert status == 0, proc.log()


def test_a_reload_names_the_settings_that_wait_for_a_restart(milters: MilterStarter) -> None:
    proc = milters.start(CONFIG, name="restart-only")
    assert proc.config is not None
    # milter.timeout too: libmilter takes it once, when its loop starts (smfi_main).
    proc.config.write_text(CONFIG.replace("  timeout: 30\n", "  timeout: 90\n  socket_mode: 0600\n")
                           .replace("map_size: 64MiB", "map_size: 128MiB"))
    proc.proc.send_signal(signal.SIGUSR1)
    log = wait_for_log(proc, "reloaded configuration")
    assert ("WARNING reload: index.map_size, milter.socket_mode, milter.timeout change(s) only "
            "with a restart; running with the value(s) it started with") in log, log
    assert customer_match(proc, "QWAIT1") == ["new"]
    status, _ = proc.terminate()
    assert status == 0, proc.log()


def test_key_ids_are_logged_and_a_retired_keys_token_is_noted(
    milters: MilterStarter, tmp_path: Path
) -> None:
    """Removing key 1 from tokens.keys: the reload says which ids are in use and that id 1's
    tokens now fail, and each reply carrying one says so in its log line."""
    old_key, new_key = tmp_path / "token-1.key", tmp_path / "token-2.key"
    write_key_file(old_key, 1)
    write_key_file(new_key, 2)
    proc = milters.start(CONFIG + f"tokens:\n  keys: [{old_key}]\n", name="keys")
    assert proc.config is not None
    wait_for_log(proc, f"INFO token keys: id 1 signs, ids 1 verify ({old_key})")
    _, case_id = send_agent_mail(proc.endpoint, "QKEYS1")
    old_token = load_keyring([old_key]).make(int(case_id.removeprefix("C-")))
    proc.config.write_text(CONFIG + f"tokens:\n  keys: [{new_key}]\n")
    proc.proc.send_signal(signal.SIGUSR1)
    log = wait_for_log(proc, f"INFO token keys: id 2 signs, ids 2 verify ({new_key})")
    assert ("WARNING reload: token key id(s) 1 no longer configured: tokens signed with them "
            "now fail") in log
    sent = [("From", "Pat Customer <pat@customer.example.org>"), ("To", SUPPORT),
            ("Subject", f"Re: Your printer question [ref:{old_token}]"),
            ("Message-ID", "<keys.2@customer.example.org>")]
    reply = transact(proc.endpoint, daemon_name="mx.example.com",
                     mail_from="pat@customer.example.org", rcpts=[SUPPORT], headers=sent,
                     queue_id="QKEYS2")
    after = reply.result(sent)
    assert (values(after, "X-Case-Match"), values(after, "X-Case-Token")) == (["new"],
                                                                               ["invalid"])
    line = wait_for_log(proc, "queue_id=QKEYS2 ").split("queue_id=QKEYS2 ")[1].splitlines()[0]
    assert line.endswith(" notes=token-invalid:unknown-key"), line


@pytest.mark.parametrize(("mode_yaml", "mode"), [(None, 0o660), ("0600", 0o600)],
                         ids=["default-mode", "mode-0600"])
def test_unix_socket_serves_with_the_configured_mode(
    module_milters: MilterStarter, tmp_path: Path, mode_yaml: str | None, mode: int
) -> None:
    config = CONFIG
    if mode_yaml is not None:
        config = config.replace("  timeout: 30\n", f"  timeout: 30\n  socket_mode: {mode_yaml}\n")
    path = tmp_path / "casethread.sock"
    proc = module_milters.start(config, endpoint=Endpoint.unix(str(path)), name=f"unix-{mode:o}")
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    # The child runs with umask 022 (a fresh socket would be 0755): the chmod decides.
    assert stat.S_IMODE(st.st_mode) == mode
    send_agent_mail(proc.endpoint, "QUNIX")


# --------------------------------------------------------------------------- a full index

FILL_SCRIPT = """\
import sys
from casethread.core.model import Alias, AliasKind, CounterBump
from casethread.index import IndexFull, LmdbIndex

index = LmdbIndex(sys.argv[1], 1 << 20, max_map_size=1 << 20)
case = index.create_case(now=1)
index.record([Alias(AliasKind.MESSAGE, "known.1@customer.example.org", case.case_id)], now=1)
n = 0
# Batches (few commits), halved on failure; big keys first, then ever smaller ones, so no
# free page is left for any later write.
for size in (380, 100, 20, 1):
    batch = 256
    while batch:
        aliases = [Alias(AliasKind.MESSAGE, f"{n + i}.{'x' * size}@fill.example", case.case_id)
                   for i in range(batch)]
        try:
            index.record(aliases, now=1)
            n += batch
        except IndexFull:
            batch //= 2
        assert n < 200_000, "the index never filled"
for write in (lambda i: index.create_case(now=1),
              lambda i: index.record((), 1, [CounterBump(f"fill {i}", 60)])):
    for i in range(200_000):
        try:
            write(i)
        except IndexFull:
            break
for _ in range(3):  # failed writes roll back, so it stays full
    for write in (lambda: index.create_case(now=1),
                  lambda: index.record([Alias(AliasKind.MESSAGE, "probe@fill.example",
                                              case.case_id)], now=1),
                  lambda: index.record((), 1, [CounterBump("probe", 60)])):
        try:
            write()
        except IndexFull:
            continue
        sys.exit("a write succeeded on the full index")
index.close()
print(n)
"""


@pytest.fixture(scope="module")
def full_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LMDB index (map_size 1 MiB, the configurable minimum) with no room for any write."""
    path = tmp_path_factory.mktemp("full") / "index"
    proc = subprocess.run(
        [sys.executable, "-c", FILL_SCRIPT, str(path)], capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # Its key, as any index with cases has (without it serve and filter refuse to start).
    write_key_file(path / "token.key")
    return path


@pytest.fixture
def full_index_copy(full_index: Path, tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / "index"
    shutil.copytree(full_index, copy)
    yield copy


@pytest.mark.parametrize(("on_error", "disposition"),
                         [("accept", c.SMFIR_ACCEPT), ("tempfail", c.SMFIR_TEMPFAIL)])
def test_a_full_index_lets_every_message_through_unchanged(
    module_milters: MilterStarter, full_index_copy: Path, on_error: str, disposition: str
) -> None:
    proc = module_milters.start(
        f"milter:\n  timeout: 30\n  on_error: {on_error}\n"
        "index:\n  map_size: 1MiB\n  max_map_size: 1MiB\n"
        "inbound:\n  addresses: [support@example.com]\n",
        index=full_index_copy,
        name=f"full-{on_error}",
    )
    ep = proc.endpoint
    # Every direction that threads writes to the index, so every one of these fails there.
    results = {
        # Outbound: a new case cannot be created.
        "QFULL1": transact(
            ep, daemon_name="ORIGINATING", mail_from="dana@support.example.com",
            rcpts=["pat@customer.example.org"], headers=agent_headers(), queue_id="QFULL1",
        ),
        # Inbound, no match: a new case cannot be created.
        "QFULL2": transact(
            ep, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
            rcpts=[SUPPORT], headers=customer_headers("<full.2@customer.example.org>"),
            queue_id="QFULL2",
        ),
        # Inbound reply to a message the index knows, with a forged X-Case-ID: on accept the
        # message passes unchanged but for that field (downstream rules trust X-Case-*).
        "QFULL3": transact(
            ep, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
            rcpts=[SUPPORT],
            headers=customer_headers(
                "<full.3@customer.example.org>",
                ("In-Reply-To", "<known.1@customer.example.org>"),
                ("X-Case-ID", "C-999999"),
            ),
            queue_id="QFULL3",
        ),
    }
    for queue_id, t in results.items():
        assert all_continued(t), (queue_id, t)
        forged_removed = [Action("m", "X-Case-ID", "", 1)]
        expected = forged_removed if queue_id == "QFULL3" and on_error == "accept" else []
        assert t.actions == expected, (queue_id, t.actions)
        assert t.disposition == disposition, (queue_id, t)

    errors = [line for line in proc.log().splitlines() if " ERROR " in line]
    assert len(errors) == len(results), errors
    for queue_id, line in zip(results, errors, strict=True):
        assert f"queue_id={queue_id} " in line
        assert f"(on_error={on_error})" in line
    # Each failure is the full index, one line with the hint to raise the setting that
    # applies (max_map_size is set here), no traceback: an expected condition, not a bug.
    assert proc.log().count("is full (map_size 1048576 bytes, its growth ceiling): raise "
                            "index.max_map_size in the configuration;") == len(results)
    assert "Traceback" not in proc.log()

    # Still serving: mail that needs no index write is handled as usual.
    other = transact(
        ep, daemon_name="mx.example.com", mail_from="pat@customer.example.org",
        rcpts=["friend@elsewhere.test"],
        headers=customer_headers("<full.4@customer.example.org>", ("X-Case-ID", "C-1")),
        queue_id="QFULL4",
    )
    assert other.actions == [Action("m", "X-Case-ID", "", 1)]
    assert other.disposition == c.SMFIR_CONTINUE


# --------------------------------------------------------------------------- a body it cannot keep

FORGED = [("X-Case-ID", "C-000001"), ("X-Case-Queue", "vip"), ("X-Case-State", "closed")]
BIG_BODY = "A line of a long mail from the customer, with nothing to thread by.\r\n" * 4000


@pytest.mark.parametrize(("on_error", "disposition"),
                         [("accept", c.SMFIR_ACCEPT), ("tempfail", c.SMFIR_TEMPFAIL)])
def test_a_body_that_cannot_be_spooled_still_loses_forged_fields(
    milters: MilterStarter, small_disks: Any, on_error: str, disposition: str
) -> None:
    """The body step fails (its spool's file system is full): end of message still runs, and
    answers by the policy: forged X-Case-* fields removed and nothing else (accept), or 4xx."""
    config = CONFIG.replace("  timeout: 30\n", f"  timeout: 30\n  on_error: {on_error}\n")
    with small_disks.tmpfs("1m") as disk:
        proc = milters.start(config + "stamp:\n  spool_threshold: 64KiB\n",
                             name=f"spool-{on_error}", env={"TMPDIR": str(disk)})

        def send(n: int, *extra: tuple[str, str]) -> Transaction:
            return transact(proc.endpoint, daemon_name="mx.example.com",
                            mail_from="pat@customer.example.org", rcpts=[SUPPORT],
                            headers=customer_headers(f"<spool.{n}@customer.example.org>", *extra),
                            queue_id=f"QSPOOL{n}", body=BIG_BODY)

        # Spooled there while it has room (Python then keeps that TMPDIR for the process).
        healthy = send(1)
        assert healthy.disposition == c.SMFIR_CONTINUE and healthy.added("X-Case-ID")
        small_disks.fill(disk)
        sent = customer_headers("<spool.2@customer.example.org>", *FORGED)
        t = send(2, *FORGED)
    assert t.disposition == disposition, t
    assert t.body_skipped  # a body it cannot keep is not read on
    if on_error == "accept":
        assert t.result(sent) == [(n, v) for n, v in sent if not n.startswith("X-Case-")]
        assert all(a.kind == "m" and not a.value for a in t.actions), t.actions
    else:
        assert t.actions == []
    errors = [line for line in proc.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.log()
    assert "queue_id=QSPOOL2 error in body: cannot spool the body in " in errors[0]
    assert "No space left on device" in errors[0] and f"(on_error={on_error})" in errors[0]
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("where", ["port-taken", "ipv6-port-taken", "no-directory"])
def test_a_socket_it_cannot_listen_on_is_one_line_and_exit_1(tmp_path: Path, where: str) -> None:
    ipv6 = where == "ipv6-port-taken"
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("::1" if ipv6 else "127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        if where == "port-taken":
            spec, reason = f"inet:{port}@127.0.0.1", "Address already in use"
        elif ipv6:
            spec, reason = f"inet6:{port}@::1", "Address already in use"
        else:
            spec, reason = f"unix:{tmp_path / 'missing' / 'x.sock'}", "no directory"
        proc = subprocess.run(
            [str(CASETHREAD), "serve", "--socket", spec, "--index", str(tmp_path / "index")],
            capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False,
        )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any(line.startswith(f"casethread: cannot listen on {spec}: {reason}")
               for line in proc.stderr.splitlines()), proc.stderr
    # Refused before it opened the index: no new index or key (a second serve on the running
    # milter's port is the usual case).
    assert not (tmp_path / "index").exists()


def test_a_lost_index_key_beside_cases_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Only data.mdb restored: serve must not make a new key (every token already sent would
    fail, and look forged)."""
    index = tmp_path / "index"
    held = LmdbIndex(index, 1 << 20)
    for _ in range(2):
        held.create_case(now=1_800_000_000)
    held.close()
    key = index / "token.key"
    proc = subprocess.run(
        [str(CASETHREAD), "serve", "--socket", f"unix:{tmp_path / 'm.sock'}", "--index",
         str(index)], capture_output=True, text=True, timeout=STOP_TIMEOUT, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1:] == [
        f"casethread: the index at {index} holds 2 cases but {key} is missing: restore it from "
        f"the backup, or run `casethread keygen {key}` to start a new key knowingly"
    ], proc.stderr
    assert "Traceback" not in proc.stderr and "generated token key" not in proc.stderr
    assert not key.exists() and not (tmp_path / "m.sock").exists()


def test_filter_on_a_full_index_passes_the_message_but_not_forged_fields(
    full_index_copy: Path, tmp_path: Path
) -> None:
    """`casethread filter` follows the milter's policy on an internal error: the message as it
    came, without the forged X-Case-* fields that downstream rules would trust; and its log:
    one line for an expected condition such as a full index, no traceback."""
    config = tmp_path / "full.yaml"
    config.write_text("index:\n  map_size: 1MiB\n  max_map_size: 1MiB\n")
    raw = (b"From: pat@customer.example.org\nTo: support@example.com\nSubject: s\n"
           b"Message-ID: <full.9@customer.example.org>\nX-Case-ID: C-999999\n"
           b"X-Case-Queue: vip\n\nbody\n")
    proc = subprocess.run(
        [str(CASETHREAD), "filter", "--config", str(config), "--index", str(full_index_copy),
         "--direction", "inbound", "-"],
        input=raw, capture_output=True, timeout=STOP_TIMEOUT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.decode().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "queue_id=filter error: case index" in errors[0], proc.stderr
    assert "is full" in errors[0] and b"Traceback" not in proc.stderr
    assert proc.stdout == (b"From: pat@customer.example.org\nTo: support@example.com\n"
                           b"Subject: s\nMessage-ID: <full.9@customer.example.org>\n\nbody\n")


@pytest.mark.parametrize(("withheld", "action"), [(c.SMFIF_CHGBODY, "SMFIF_CHGBODY"),
                                                  (c.SMFIF_CHGHDRS, "SMFIF_CHGHDRS")])
def test_an_edit_the_mta_did_not_grant_passes_the_message_unchanged(
    shared: MilterProcess, withheld: int, action: str
) -> None:
    """An MTA that offers no body replacement (or header change) at negotiation: pymilter
    refuses that edit. Sent after the header edits, it tempfailed every outbound message
    ("half edited"), again on each retry until the queue lifetime bounced it. Nothing goes out
    now, and `on_error` answers (accept: passed unchanged), in one line naming the action."""
    queue_id = f"QGRANT{withheld}"
    with MtaSession.open(shared.endpoint) as mta:
        mta.negotiate(actions=c.SMFI_V6_ACTS & ~withheld)
        assert mta.connect({"{daemon_name}": "ORIGINATING"}) == c.SMFIR_CONTINUE
        t = mta.message("dana@support.example.com", ["pat@customer.example.org"],
                        agent_headers(), "Hello Pat,\r\nwhich model is it?\r\n",
                        rcpt_macros={"i": queue_id}, eom_macros={"i": queue_id})
        mta.quit()
    assert t.disposition == c.SMFIR_ACCEPT, t
    assert t.actions == []
    (line,) = [ln for ln in shared.log().splitlines()
               if f"queue_id={queue_id} " in ln and " ERROR " in ln]
    assert (f"error in eom: the MTA did not grant the milter {action}"
            in line), line
    assert "message passed unchanged (on_error=accept)" in line and "Traceback" not in line


def test_a_tmpdir_python_would_pass_over_is_warned_of_at_start(
    milters: MilterStarter, tmp_path: Path
) -> None:
    """Python spools to /tmp without a word when TMPDIR is not a writable directory: the
    milter says so once, at start, with where bodies go instead."""
    missing = tmp_path / "no-such-spool-dir"
    proc = milters.start(CONFIG, name="tmpdir", env={"TMPDIR": str(missing)})
    assert f"WARNING TMPDIR={missing} is not a writable directory" in proc.log()
    healthy = milters.start(CONFIG, name="tmpdir-ok", env={"TMPDIR": str(tmp_path)})
    assert "TMPDIR=" not in healthy.log()
