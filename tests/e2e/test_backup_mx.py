"""A backup MX in front of the primary (README, *Where casethread goes*): a second Postfix
that queues support mail and relays it to the primary, which runs casethread.

- without casethread on the backup, a customer's reply relayed through it is inbound at the
  primary and threads by its token as if it had come direct;
- with a casethread of its own on the backup (its own index and key, id 1 like the
  primary's), the backup fails the primary's token (`X-Case-Token: invalid`) and opens a case
  of its own numbering; the primary removes every field the backup added and threads the
  reply to its own case.
"""

from __future__ import annotations

import re
from pathlib import Path

from .harness import (
    MilterFactory,
    MilterProcess,
    MilterSocket,
    PostfixFactory,
    PostfixHarness,
    ReceivedMessage,
    casethread_serve_argv,
)

SUPPORT = "support@helpdesk.example"
AGENT = "agent@helpdesk.example"
CUSTOMER = "pat@customer.example"


def casethread(milter_factory: MilterFactory, tmp_path: Path,
               name: str) -> tuple[MilterSocket, MilterProcess]:
    """A `casethread serve` with an index (and so a key) of its own."""
    home = tmp_path / name
    home.mkdir()
    config = home / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}]\n")
    socket_ = MilterSocket.inet()
    proc = milter_factory(casethread_serve_argv(socket_, config=config, index=home / "index"),
                          None, socket_, cwd=home)
    return socket_, proc


def backup_of(postfix_factory: PostfixFactory, primary: PostfixHarness,
              milter: MilterSocket | None) -> PostfixHarness:
    """A Postfix that relays everything to the primary's port 25 service."""
    return postfix_factory(milter, extra_main={"relayhost": f"[127.0.0.1]:{primary.inbound_port}"})


def stamped_subject(primary: PostfixHarness) -> tuple[str, str]:
    """Send agent mail through the primary's submission service: its case and Subject."""
    raw = (f"From: <{AGENT}>\r\nTo: <{CUSTOMER}>\r\nSubject: Your order\r\n"
           "Message-ID: <order@helpdesk.example>\r\n\r\nHello Pat\r\n").encode()
    primary.send(raw, AGENT, [CUSTOMER], port=primary.submission_port)
    sent = primary.wait_for(1)[0]
    subject, case = sent.header("Subject"), sent.header("X-Case-ID")
    assert subject and case and re.search(r"\[ref:[0-9A-Z]+\]$", subject), sent.raw
    return case, subject


def reply_through(backup: PostfixHarness, primary: PostfixHarness) -> tuple[str, ReceivedMessage]:
    """The customer's reply to the primary's mail, naming its case by the Subject tag alone
    (a client that kept no In-Reply-To) and with an X-Case-ID of its own, sent to the backup:
    the case, and the reply as the primary passed it on. It threads there by the token."""
    case, subject = stamped_subject(primary)
    raw = (f"From: <{CUSTOMER}>\r\nTo: <{SUPPORT}>\r\nSubject: Re: {subject}\r\n"
           "Message-ID: <reply@customer.example>\r\nX-Case-ID: C-999999\r\n\r\n"
           "Thanks\r\n").encode()
    backup.send(raw, CUSTOMER, [SUPPORT])
    got = primary.wait_for(2, timeout=30)[1]
    assert got.get_all("X-Case-ID") == [case]
    assert got.header("X-Case-Match") == "token"
    return case, got


def test_reply_relayed_by_a_backup_mx_threads_at_the_primary(
    postfix_factory: PostfixFactory, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    primary = postfix_factory(casethread(milter_factory, tmp_path, "primary")[0])
    _, got = reply_through(backup_of(postfix_factory, primary, None), primary)
    assert got.header("X-Case-Sender") == "known"


def test_backup_mx_with_its_own_casethread_never_decides_for_the_primary(
    postfix_factory: PostfixFactory, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    primary = postfix_factory(casethread(milter_factory, tmp_path, "primary")[0])
    backup_socket, backup_milter = casethread(milter_factory, tmp_path, "backup")
    case, got = reply_through(backup_of(postfix_factory, primary, backup_socket), primary)
    # The backup's decision is gone: the primary's one X-Case-ID, no X-Case-Token.
    assert got.get_all("X-Case-Token") == []
    # The backup's own key (id 1 as well) failed the primary's token: it opened a case of
    # its own numbering, the same id as the primary's, and joined none.
    decided = [line for line in backup_milter.output().splitlines() if "direction=" in line]
    assert len(decided) == 1, backup_milter.output()
    assert f"case={case} match=new" in decided[0]
    assert "notes=token-invalid:bad-mac" in decided[0]
