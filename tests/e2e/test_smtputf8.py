"""Internationalised mail end to end (RFC 6530-6532): a real Postfix with SMTPUTF8 (on by
default in Postfix >= 3.0 at compatibility_level >= 1; contrib/postfix/main.cf sets nothing),
the real `casethread serve`, SMTPUTF8 clients and the harness's receiver (which announces
SMTPUTF8).

A customer writes `jörg@müller.example` in one mail and `jörg@xn--mller-kva.example` in the
next; a support address is configured as its A-label and reached in either spelling.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from .harness import (
    MilterFactory,
    MilterSocket,
    PostfixFactory,
    PostfixHarness,
    ReceivedMessage,
    casethread_serve_argv,
    free_port,
)

AGENT = "agent@helpdesk.example"
SUPPORT = "support@helpdesk.example"
IDN_SUPPORT = "support@xn--mller-kva.example"  # configured as the A-label
JOERG_U = "jörg@bücher.example"
JOERG_A = "jörg@xn--bcher-kva.example"
SUBJECT = "Ihre Bestellung – Größe ändern"


class _Refuser:
    """A next hop that refuses every recipient with a 5xx: Postfix writes the bounce."""

    def __init__(self) -> None:
        self.rcpts: list[str] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        with self.lock:
            self.rcpts.append(address)
        return "550 5.1.1 no such user here"


def start(milter_factory: MilterFactory, postfix_factory: PostfixFactory, tmp_path: Path,
          **postfix_options: Any) -> tuple[PostfixHarness, Any]:
    config = tmp_path / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}, {IDN_SUPPORT}]\n", encoding="utf-8")
    sock = MilterSocket.inet()
    argv = casethread_serve_argv(sock, config=config, index=tmp_path / "index")
    proc = milter_factory(argv, None, sock, cwd=tmp_path)
    # A remote app server: Postfix adds no Message-ID, casethread does.
    postfix = postfix_factory(sock, rewrite_local_headers=False, **postfix_options)
    return postfix, proc


def deliver(postfix: PostfixHarness, text: str, mail_from: str, rcpts: list[str],
            port: int | None = None, smtputf8: bool = True) -> ReceivedMessage:
    before = len(postfix.received)
    postfix.send(text.encode("utf-8"), mail_from, rcpts, port=port, smtputf8=smtputf8)
    return postfix.wait_for(before + 1, timeout=15)[before]


def test_utf8_customer_is_stamped_and_known_in_either_spelling_of_the_domain(
    milter_factory: MilterFactory, postfix_factory: PostfixFactory, tmp_path: Path
) -> None:
    postfix, proc = start(milter_factory, postfix_factory, tmp_path)
    out = deliver(postfix, (
        f"From: Dana Agentin <{AGENT}>\nTo: Jörg Bücher <{JOERG_U}>\nSubject: {SUBJECT}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\nHallo Jörg,\nbitte prüfen.\n"
    ), AGENT, [JOERG_U], port=postfix.submission_port)
    assert out.header("X-Case-ID") == "C-000001", proc.output()
    subject = out.header("Subject") or ""
    # The raw UTF-8 Subject keeps its text; the ASCII tag is appended, nothing RFC 2047.
    assert subject.startswith(SUBJECT + " [ref:") and "=?" not in subject
    assert out.header("Thread-Topic") == SUBJECT
    assert (out.header("Message-ID") or "").endswith("@helpdesk.example>")
    token = subject.rsplit("[ref:", 1)[1].rstrip("]")
    assert out.body.endswith(f"[ref:{token}]\r\n".encode())

    # The customer's replies: raw UTF-8 Subject with the tag, From in U-label form; then
    # In-Reply-To only, From in A-label form; both from a known participant.
    r1 = deliver(postfix, (
        f"From: Jörg <{JOERG_U}>\nTo: <{SUPPORT}>\nSubject: AW: {subject}\n"
        "Message-ID: <r1@example.org>\n\nDanke\n"), JOERG_U, [SUPPORT])
    assert [r1.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Sender")] == [
        "C-000001", "token", "known"]
    r2 = deliver(postfix, (
        f"From: Jörg <{JOERG_A}>\nTo: <{SUPPORT}>\nSubject: AW: Größe\n"
        f"In-Reply-To: {out.header('Message-ID')}\nMessage-ID: <r2@example.org>\n\nNoch\n"),
        JOERG_A, [SUPPORT])
    assert [r2.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Sender")] == [
        "C-000001", "in-reply-to", "known"]

    # A new customer writes to the IDN support address in U-label form (upper case), and
    # answers from the A-label form of their own domain to the A-label support address.
    n1 = deliver(postfix, (
        "From: Zoë <zoë@bücher.example>\nTo: <support@müller.example>\n"
        "Subject: Neue Anfrage\nMessage-ID: <n1@example.org>\n\nHilfe\n"),
        "zoë@bücher.example", ["SUPPORT@MÜLLER.example"])
    assert [n1.header(n) for n in ("X-Case-ID", "X-Case-Match")] == ["C-000002", "new"]
    n2 = deliver(postfix, (
        "From: Zoë <ZOË@xn--bcher-kva.example>\nTo: <support@xn--mller-kva.example>\n"
        "Subject: Re: Neue Anfrage\nIn-Reply-To: <n1@example.org>\n"
        "Message-ID: <n2@example.org>\n\nHilfe 2\n"),
        "zoë@xn--bcher-kva.example", [IDN_SUPPORT])
    assert [n2.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Sender")] == [
        "C-000002", "in-reply-to", "known"]
    assert "ERROR" not in proc.output() and "Traceback" not in proc.output()


def test_postfixs_bounce_of_a_utf8_recipient_threads_to_the_case(
    milter_factory: MilterFactory, postfix_factory: PostfixFactory, tmp_path: Path
) -> None:
    """Postfix's report for SMTPUTF8 mail is RFC 6533's (message/global-delivery-status,
    the returned mail as message/global): it reaches the support address as a bounce."""
    refuser = _Refuser()
    port = free_port()
    controller = Controller(refuser, hostname="127.0.0.1", port=port, ready_timeout=10.0,
                            server_hostname="refuser.casethread.test", enable_SMTPUTF8=True)
    controller.start()
    try:
        postfix, proc = start(milter_factory, postfix_factory, tmp_path, extra_main={
            "transport_maps": f"inline:{{nowhere.example=smtp:[127.0.0.1]:{port}}}"})
        out_before = len(postfix.received)
        postfix.send((
            f"From: Agent <{AGENT}>\nTo: Jörg <jörg@nowhere.example>\nSubject: {SUBJECT}\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n\nGrüße\n").encode(), SUPPORT,
            ["jörg@nowhere.example"], port=postfix.submission_port, smtputf8=True)
        report = postfix.wait_for(out_before + 1, timeout=20)[out_before]
    finally:
        controller.stop()
    assert refuser.rcpts == ["jörg@nowhere.example"]
    assert report.mail_from in ("", "<>") and report.rcpt_tos == (SUPPORT,)
    assert b"message/global-delivery-status" in report.raw
    assert [report.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Auto")] == [
        "C-000001", "bounce", "bounce"], proc.output()
