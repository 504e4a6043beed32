"""Proves the e2e harness with a real Postfix and a tiny pymilter milter (tiny_milter.py).

The Postfix milter settings come from contrib/postfix/main.cf and master.cf; these tests
show they behave as documented: {daemon_name} per service, accept when the milter is down,
both socket kinds, and Message-ID handling with and without local header rewriting.
"""

from __future__ import annotations

import smtplib
import sys
from pathlib import Path

import pytest

from .harness import (
    CONTRIB_POSTFIX,
    MYHOSTNAME,
    DeliveryTimeout,
    MilterFactory,
    MilterProcess,
    MilterSocket,
    MilterStartError,
    PostfixFactory,
    PostfixHarness,
    contrib_submission_service,
    live_group_members,
    parse_main_cf,
    port_listening,
)

pytestmark = pytest.mark.e2e

SEEN = ("X-Seen-Daemon", "X-Seen-Auth", "X-Seen-Client", "X-Seen-Message-ID")
SENDER = "alice@client.example"
RCPT = "support@helpdesk.example"
BOTH_SOCKETS = pytest.mark.parametrize("milter_socket_kind", ["inet", "unix"])


def message(message_id: str | None, subject: bytes = b"smoke") -> bytes:
    """A message with what tends to get mangled: folding, tabs, dots, 8-bit, trailing WSP."""
    headers = [
        b"From: Alice Example <alice@client.example>",
        b"To: Support <support@helpdesk.example>",
        b"Subject: " + subject + b" =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and a subject long enough to",
        b"\tbe folded onto a second line",
        b"Date: Thu, 28 Nov 2024 10:00:00 +0000",
    ]
    if message_id is not None:
        headers.append(b"Message-ID: " + message_id.encode())
    headers += [
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"X-Custom:\ttab  value",
    ]
    body = [
        b"Hello,",
        b".a line that starts with a dot",
        b"..two dots",
        b".",
        b"\xc3\xa4\xc3\xb6\xc3\xbc 8-bit UTF-8",
        b"trailing spaces   ",
        b"",
        b"-- ",
        b"Alice",
    ]
    return b"\r\n".join([*headers, b"", *body]) + b"\r\n"


@BOTH_SOCKETS
def test_inbound_port_passes_myhostname_and_keeps_message(
    postfix: PostfixHarness, tiny_milter: MilterProcess
) -> None:
    raw = message("<inbound-1@client.example>")
    queue_id = postfix.send(raw, SENDER, [RCPT])
    [got] = postfix.wait_for(1)
    assert queue_id and queue_id in postfix.maillog()
    assert (got.mail_from, got.rcpt_tos) == (SENDER, (RCPT,))
    assert got.get_all("X-Seen-Daemon") == [MYHOSTNAME], postfix.maillog_tail()
    assert got.header("X-Seen-Auth") == "none"
    assert got.header("X-Seen-Client") == "127.0.0.1"  # milter_connect_macros
    assert got.header("X-Seen-Message-ID") == "yes"
    # Every original header (order, folding, whitespace) and the body arrive byte-identical.
    assert got.without(SEEN) == raw
    assert got.raw.startswith(b"Received: ")


@BOTH_SOCKETS
def test_submission_port_passes_originating(
    postfix: PostfixHarness, tiny_milter: MilterProcess
) -> None:
    raw = message("<submission-1@client.example>")
    postfix.send(raw, SENDER, [RCPT, "second@helpdesk.example"], port=postfix.submission_port)
    [got] = postfix.wait_for(1)
    assert sorted(got.rcpt_tos) == sorted([RCPT, "second@helpdesk.example"])
    assert got.get_all("X-Seen-Daemon") == ["ORIGINATING"], postfix.maillog_tail()
    assert got.without(SEEN) == raw


@BOTH_SOCKETS
def test_mail_is_refused_while_the_milter_is_killed(
    postfix: PostfixHarness, tiny_milter: MilterProcess, milter_socket: MilterSocket,
    milter_factory: MilterFactory,
) -> None:
    first = message("<before-kill@client.example>")
    postfix.send(first, SENDER, [RCPT])
    [before] = postfix.wait_for(1)
    assert before.header("X-Seen-Daemon") == MYHOSTNAME, postfix.maillog_tail()

    assert tiny_milter.kill() == -9
    second = message("<after-kill@client.example>", subject=b"after kill")
    # milter_default_action = tempfail (contrib): a 451, nothing queued; the client retries.
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        postfix.send(second, SENDER, [RCPT])
    assert refused.value.smtp_code == 451, refused.value
    postfix.wait_for_log(f"connect to Milter service {milter_socket.postfix}")
    assert len(postfix.received) == 1
    milter_factory(tiny_milter.argv, None, milter_socket, kill_at_teardown=True)
    postfix.send(second, SENDER, [RCPT])
    after = postfix.wait_for(2)[1]
    assert after.header("X-Seen-Daemon") == MYHOSTNAME
    assert after.without(SEEN) == second


@pytest.mark.parametrize("rewrite", [True, False], ids=["default-rewrite", "no-rewrite"])
def test_message_id_added_only_with_local_header_rewriting(
    postfix_factory: PostfixFactory,
    tiny_milter: MilterProcess,
    milter_socket: MilterSocket,
    rewrite: bool,
) -> None:
    postfix = postfix_factory(milter_socket, rewrite_local_headers=rewrite)
    assert postfix.postconf("local_header_rewrite_clients") == (
        "permit_inet_interfaces" if rewrite else ""
    )
    raw = message(None)
    postfix.send(raw, SENDER, [RCPT])
    [got] = postfix.wait_for(1)
    ids = got.get_all("Message-ID")
    if rewrite:
        # cleanup adds it before the milter sees the headers.
        assert len(ids) == 1 and ids[0].endswith(f"@{MYHOSTNAME}>")
        assert got.header("X-Seen-Message-ID") == "yes"
        assert got.without([*SEEN, "Message-ID"]) == raw
    else:
        # Like mail from a remote app server: nobody adds one, the milter must.
        assert ids == []
        assert got.header("X-Seen-Message-ID") == "no"
        assert got.without(SEEN) == raw


def test_sendmail_submissions_pass_non_smtpd_milters(
    postfix: PostfixHarness, tiny_milter: MilterProcess
) -> None:
    raw = message("<local-1@client.example>")
    postfix.submit_local(raw, SENDER, [RCPT])
    [got] = postfix.wait_for(1)
    assert got.header("X-Seen-Daemon") == MYHOSTNAME
    assert got.without(SEEN) == raw


def test_rendered_config_is_the_contrib_config(
    postfix: PostfixHarness, milter_socket: MilterSocket
) -> None:
    documented = parse_main_cf((CONTRIB_POSTFIX / "main.cf").read_text())
    assert documented["milter_default_action"] == "tempfail"
    assert "{daemon_name}" in documented["milter_mail_macros"].split()
    for name, value in documented.items():
        expected = milter_socket.postfix if name == "smtpd_milters" else value
        assert postfix.postconf(name) == expected, name
    assert postfix.postconf("non_smtpd_milters", expand=True) == milter_socket.postfix
    for name, value in contrib_submission_service().options:
        assert postfix.postconf(name, service="submission") == value
    assert postfix.postconf("milter_macro_daemon_name", service="submission") == "ORIGINATING"


def test_wait_for_timeout_shows_the_maillog(postfix: PostfixHarness) -> None:
    with pytest.raises(DeliveryTimeout, match="starting the Postfix mail system"):
        postfix.wait_for(1, timeout=0.3)


def test_stop_ends_every_postfix_process(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory(None)
    master, base_dir = postfix.master_pid, postfix.base_dir
    assert master is not None and base_dir is not None
    assert len(live_group_members(master)) >= 3  # master, qmgr, pickup at least
    assert port_listening(postfix.inbound_port) and port_listening(postfix.submission_port)
    postfix.stop()
    assert live_group_members(master) == []
    assert not port_listening(postfix.inbound_port)
    assert not Path(base_dir).exists()
    postfix.stop()  # idempotent


def test_milter_that_dies_at_start_is_reported(milter_factory: MilterFactory) -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit('no config here')"]
    with pytest.raises(MilterStartError, match=r"exited with 1[\s\S]*no config here"):
        milter_factory(argv, None, MilterSocket.inet())


def test_pymilter_stops_cleanly_on_sigterm(
    tiny_milter: MilterProcess, milter_socket: MilterSocket
) -> None:
    assert tiny_milter.running() and milter_socket.connectable()
    assert tiny_milter.stop() == 0
    assert not tiny_milter.running()
    assert not milter_socket.connectable()
