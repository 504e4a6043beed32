"""casethread end to end: a real Postfix (configured from contrib/postfix/), the real
`casethread serve` process with a real LMDB index, and a receiver behind relayhost.

Agents send through the submission port (ORIGINATING: outbound); customers reply through the
inbound port. Every assertion is on what the receiver got.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from casethread.core import thread_index

from .harness import (
    MilterFactory,
    MilterProcess,
    MilterSocket,
    PostfixFactory,
    PostfixHarness,
    ReceivedMessage,
    casethread_argv,
    casethread_serve_argv,
    normalize_crlf,
    strip_headers,
)

AGENT = "agent@helpdesk.example"
CUSTOMER = "pat@customer.example"
SUPPORT = "support@helpdesk.example"
OURS = ("X-Case-ID", "X-Case-Match", "X-Case-State", "X-Case-Queue", "X-Case-Auto",
        "X-Case-Sender", "X-Case-Token", "X-Case-Related", "X-Case-Duplicate", "X-Case-Loop")
STAMPED = ("Subject", "Message-ID", "References", "Thread-Index", "Thread-Topic", "X-Case-ID")
BOTH_SOCKETS = pytest.mark.parametrize("milter_socket_kind", ["inet", "unix"])


@dataclass
class Casethread:
    proc: MilterProcess
    config: Path
    index: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(sys.executable).with_name("casethread")
        return subprocess.run(
            [str(script), *args, "--config", str(self.config), "--index", str(self.index)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    def log(self) -> str:
        return self.proc.output()


@pytest.fixture
def casethread(
    milter_factory: MilterFactory, milter_socket: MilterSocket, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Casethread:
    """The milter with the test defaults; `indirect` parameters: more `inbound:` lines."""
    config = tmp_path / "casethread.yaml"
    index = tmp_path / "index"
    lines = ["inbound:", f"  addresses: [{SUPPORT}, {AGENT}]", *getattr(request, "param", ())]
    if milter_socket.path is not None:
        lines += ["milter:", "  socket_group: postfix"]
    config.write_text("\n".join(lines) + "\n")
    argv = casethread_serve_argv(milter_socket, config=config, index=index)
    proc = milter_factory(argv, None, milter_socket, cwd=tmp_path)
    return Casethread(proc, config, index)


def agent_mail(subject: str = "Your printer", message_id: str | None = None) -> bytes:
    lines = [
        f"From: Dana Agent <{AGENT}>",
        f"To: Pat Customer <{CUSTOMER}>",
        f"Subject: {subject}",
        "Date: Sat, 28 Nov 2026 10:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "X-Mailer: helpdesk-app 1.0",
    ]
    if message_id:
        lines.append(f"Message-ID: {message_id}")
    return ("\r\n".join(lines) + "\r\n\r\nHello Pat,\r\nplease try a restart.\r\n").encode()


def reply(extra: list[str], subject: str = "Re: Your printer", body: str = "Thanks!",
          message_id: str = "<r1@customer.example>") -> bytes:
    lines = [
        f"From: Pat Customer <{CUSTOMER}>",
        f"To: <{SUPPORT}>",
        f"Subject: {subject}",
        "Date: Sat, 28 Nov 2026 11:00:00 +0000",
        f"Message-ID: {message_id}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode()


def send_outbound(postfix: PostfixHarness, raw: bytes) -> ReceivedMessage:
    before = len(postfix.received)
    postfix.send(raw, AGENT, [CUSTOMER], port=postfix.submission_port)
    return postfix.wait_for(before + 1)[before]


def send_inbound(postfix: PostfixHarness, raw: bytes, sender: str = CUSTOMER) -> ReceivedMessage:
    before = len(postfix.received)
    postfix.send(raw, sender, [SUPPORT])
    return postfix.wait_for(before + 1)[before]


def token_of(msg: ReceivedMessage) -> str:
    subject = msg.header("Subject") or ""
    assert "[ref:" in subject, subject
    return subject.rsplit("[ref:", 1)[1].rstrip("]").strip()


@BOTH_SOCKETS
def test_reply_threads_to_the_agents_case_and_forged_header_is_removed(
    postfix_factory: PostfixFactory, milter_socket: MilterSocket, casethread: Casethread
) -> None:
    # A remote app server: Postfix does not add a Message-ID, so casethread must.
    postfix = postfix_factory(milter_socket, rewrite_local_headers=False)
    sent = agent_mail()
    out = send_outbound(postfix, sent)
    case_id = out.header("X-Case-ID")
    assert case_id == "C-000001", casethread.log()
    assert out.get_all("X-Case-ID") == [case_id]
    message_id = out.header("Message-ID")
    assert message_id and message_id.endswith("@helpdesk.example>")
    assert (out.header("Subject") or "").startswith("Your printer [ref:")
    assert (out.header("References") or "").endswith(".case@helpdesk.example>")
    assert out.header("Thread-Topic") == "Your printer"
    # Nothing else changed: every original header byte for byte, and the body only gained
    # the token line at its end.
    head, body = out.without(STAMPED).split(b"\r\n\r\n", 1)
    sent_head, sent_body = strip_headers(sent, {"Subject"}).split(b"\r\n\r\n", 1)
    assert head == sent_head
    assert body == sent_body + f"\r\n[ref:{token_of(out)}]\r\n".encode()

    sent_reply = reply([f"In-Reply-To: {message_id}", "X-Case-ID: C-999999"])
    got = send_inbound(postfix, sent_reply)
    assert got.get_all("X-Case-ID") == [case_id], casethread.log()
    assert got.header("X-Case-Match") == "in-reply-to"
    assert got.header("X-Case-State") == "open"
    assert got.header("X-Case-Auto") == "no"
    assert got.header("X-Case-Sender") == "known"
    assert "C-999999" not in got.raw.decode("utf-8", "replace")
    assert got.without(OURS) == strip_headers(sent_reply, {"X-Case-ID"})

    log = casethread.log()
    # With Postfix's queue id: over a unix socket the MTA skips the DATA step (P_NODATA), whose
    # macros named it; RCPT's or end of headers' name it then.
    assert re.search(r"queue_id=[0-9A-F]{6,} direction=outbound case=C-000001 match=new", log)
    assert re.search(r"queue_id=[0-9A-F]{6,} direction=inbound case=C-000001 "
                     "match=in-reply-to", log)


def test_filter_prints_what_postfix_delivers_for_a_mailbox_file_with_odd_names(
    postfix_factory: PostfixFactory, milter_socket: MilterSocket, casethread: Casethread,
    tmp_path: Path,
) -> None:
    """`casethread filter` prints a message as it leaves the MTA. Two things only a real
    Postfix shows: it makes a mailbox's "From " line an X-Mailbox-Line field, and it writes a
    changed field under the name the milter gives (so the adapter gives the message's own)."""
    postfix = postfix_factory(milter_socket, rewrite_local_headers=False)
    sent = (b"From agent@helpdesk.example Sat Nov 28 10:00:00 2026\n"
            + agent_mail(message_id="<odd.1@helpdesk.example>")
            .replace(b"Subject:", b"references: <earlier@customer.example>\r\nSUBJECT:"))
    snapshot = tmp_path / "snapshot"
    backup = casethread.cli("backup", str(snapshot))
    assert backup.returncode == 0, backup.stderr
    out = send_outbound(postfix, sent)
    mail = tmp_path / "sent.eml"
    mail.write_bytes(sent)
    printed = subprocess.run(
        [*casethread_argv(), "filter", "--config", str(casethread.config), "--index",
         str(snapshot), "--direction", "outbound", "--rcpt", CUSTOMER, str(mail)],
        capture_output=True, timeout=60, check=False)
    assert printed.returncode == 0, printed.stderr
    # Postfix's Received on top; the Thread-Index of a new case is random.
    delivered = out.without(["Thread-Index"])
    assert delivered.startswith(b"X-Mailbox-Line: From agent@"), delivered[:200]
    assert b"\r\nSUBJECT: Your printer [ref:" in delivered, delivered
    assert delivered == strip_headers(normalize_crlf(printed.stdout), {"Thread-Index"})


def test_postfix_added_message_id_is_recorded(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    # Default local_header_rewrite_clients: Postfix adds the Message-ID before the milter runs.
    out = send_outbound(postfix, agent_mail())
    message_id = out.header("Message-ID")
    assert message_id and "message-id-added" not in casethread.log()
    got = send_inbound(postfix, reply([f"References: <x@y> {message_id}"]))
    assert (got.header("X-Case-ID"), got.header("X-Case-Match")) == ("C-000001", "references")


@BOTH_SOCKETS
def test_mail_is_refused_while_the_milter_is_dead(
    postfix: PostfixHarness, casethread: Casethread, milter_factory: MilterFactory,
    milter_socket: MilterSocket,
) -> None:
    """milter_default_action = tempfail (contrib): a 451 while casethread is down, so nothing
    passes unfiltered (forged X-Case-* fields included); the re-sent message is filtered."""
    casethread.proc.kill()
    raw = reply(["X-Case-ID: C-999999"])
    with pytest.raises(smtplib.SMTPResponseException) as refused:
        postfix.send(raw, CUSTOMER, [SUPPORT])
    assert refused.value.smtp_code == 451, refused.value
    assert postfix.received == []
    milter_factory(casethread.proc.argv, None, milter_socket, cwd=casethread.config.parent)
    got = send_inbound(postfix, raw)
    assert got.get_all("X-Case-ID") == ["C-000001"] and got.header("X-Case-Match") == "new"


def test_outlook_reply_with_only_a_thread_index(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    out = send_outbound(postfix, agent_mail())
    root = thread_index.decode(out.header("Thread-Index") or "")
    assert root is not None and len(root) == 22
    answer = base64.b64encode(thread_index.child(root, 1_800_000_000)).decode()
    got = send_inbound(postfix, reply([f"Thread-Index: {answer}"], subject="RE: printer"))
    assert (got.header("X-Case-ID"), got.header("X-Case-Match")) == ("C-000001", "thread-index")


def test_token_only_in_the_quoted_body(postfix: PostfixHarness, casethread: Casethread) -> None:
    token = token_of(send_outbound(postfix, agent_mail()))
    body = f"It works now.\n\n> Hello Pat,\n> please try a restart. [ref:\n> {token}]\n"
    got = send_inbound(postfix, reply([], subject="printer", body=body))
    assert (got.header("X-Case-ID"), got.header("X-Case-Match")) == ("C-000001", "token")


def test_forged_token_never_matches(postfix: PostfixHarness, casethread: Casethread) -> None:
    token = token_of(send_outbound(postfix, agent_mail()))
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    got = send_inbound(postfix, reply([], subject=f"Re: Your printer [ref:{forged}]"))
    assert got.header("X-Case-Token") == "invalid"
    assert got.header("X-Case-Match") == "new"
    assert got.header("X-Case-ID") == "C-000002"


@pytest.mark.parametrize("casethread", [["  list_authors: true"]], indirect=True)
def test_our_own_groups_copy_is_the_customers_mail(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    """support@ is a Google Group (`inbound.list_authors: true`): its copy of Pat's mail
    under its own From (DMARC mitigation) opens Pat's case, and Pat's next mail through the
    group is `known`."""
    group = [f"X-Original-From: Pat Customer <{CUSTOMER}>",
             f"Reply-To: Pat Customer <{CUSTOMER}>", "Precedence: list",
             "List-ID: Support <support.helpdesk.example>", f"List-Post: <mailto:{SUPPORT}>"]

    def via(raw: bytes) -> bytes:
        return raw.replace(f"From: Pat Customer <{CUSTOMER}>".encode(),
                           f"From: \"'Pat Customer' via Support\" <{SUPPORT}>".encode(), 1)

    first = send_inbound(postfix, via(reply(group, subject="Printer jams",
                                            message_id="<g1@customer.example>")),
                         sender="support+bncB@helpdesk.example")
    again = send_inbound(postfix, via(reply([*group, "In-Reply-To: <g1@customer.example>"],
                                            message_id="<g2@customer.example>")),
                         sender="support+bncB@helpdesk.example")
    assert (first.header("X-Case-ID"), first.header("X-Case-Match")) == ("C-000001", "new")
    assert (again.header("X-Case-ID"), again.header("X-Case-Match"),
            again.header("X-Case-Sender")) == ("C-000001", "in-reply-to", "known")


def test_bounce_of_our_own_message(postfix: PostfixHarness, casethread: Casethread) -> None:
    out = send_outbound(postfix, agent_mail())
    returned = strip_headers(out.raw, ("Received", "Return-Path", "X-Original-To"))
    head = returned.split(b"\r\n\r\n", 1)[0]
    dsn = b"\r\n".join([
        b"From: Mail Delivery System <MAILER-DAEMON@relay.example>",
        f"To: <{AGENT}>".encode(),
        b"Subject: Undelivered Mail Returned to Sender",
        b"Message-ID: <dsn-1@relay.example>",
        b"Auto-Submitted: auto-replied",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"',
        b"",
        b"--B",
        b"Content-Type: text/plain",
        b"",
        b"Your message could not be delivered.",
        b"--B",
        b"Content-Type: message/delivery-status",
        b"",
        b"Reporting-MTA: dns; relay.example",
        b"",
        f"Final-Recipient: rfc822; {CUSTOMER}".encode(),
        b"Action: failed",
        b"Status: 5.1.1",
        b"--B",
        b"Content-Type: text/rfc822-headers",
        b"",
        head,
        b"--B--",
        b"",
    ])
    before = len(postfix.received)
    postfix.send(dsn, "", [AGENT])
    got = postfix.wait_for(before + 1)[before]
    assert got.header("X-Case-Match") == "bounce", casethread.log()
    assert got.header("X-Case-ID") == "C-000001"
    assert got.header("X-Case-Auto") == "bounce"


GONE = "kim@bounce.example"
# Postfix bounces mail for GONE itself, after queueing it (as for a remote server's 5xx):
# the error transport, and no check at RCPT that would refuse the address up front.
BOUNCING = {
    "transport_maps": "inline:{{bounce.example = error:5.1.1 mailbox unavailable}}",
    "smtpd_reject_unlisted_recipient": "no",
}


def assert_threaded_postfix_bounce(dsn: ReceivedMessage, case_id: str) -> None:
    assert (dsn.mail_from, dsn.rcpt_tos) == ("<>", (SUPPORT,))
    assert (dsn.header("Content-Type") or "").startswith("multipart/report")
    assert GONE.encode() in dsn.body
    assert dsn.get_all("X-Case-ID") == [case_id]
    assert dsn.header("X-Case-Match") == "bounce"
    assert dsn.header("X-Case-Auto") == "bounce"


def test_a_bounce_postfix_itself_generates_threads_to_the_agents_case(
    postfix_factory: PostfixFactory, milter_socket: MilterSocket, casethread: Casethread
) -> None:
    """contrib's internal_mail_filter_classes = bounce: the DSN Postfix's bounce daemon writes
    for agent mail it could not deliver passes casethread (non_smtpd_milters) on its way to
    the support address that was the envelope sender."""
    postfix = postfix_factory(milter_socket, extra_main=BOUNCING)
    postfix.send(agent_mail(), SUPPORT, [CUSTOMER, GONE], port=postfix.submission_port)
    delivered = {msg.mail_from: msg for msg in postfix.wait_for(2)}
    out, dsn = delivered[SUPPORT], delivered["<>"]
    assert out.header("X-Case-ID") == "C-000001", casethread.log()
    assert_threaded_postfix_bounce(dsn, "C-000001")
    assert "direction=inbound case=C-000001 match=bounce" in casethread.log()


def test_a_postfix_bounce_waits_while_casethread_is_down(
    postfix_factory: PostfixFactory, milter_socket: MilterSocket, casethread: Casethread,
    milter_factory: MilterFactory,
) -> None:
    """milter_default_action = tempfail holds Postfix's own bounce too: the original stays
    queued ("bounce failed") and the bounce is written, threaded, once casethread is back."""
    # The error transport delivers only when flushed: after the milter is gone.
    postfix = postfix_factory(milter_socket, extra_main={**BOUNCING, "defer_transports": "error"})
    queue_id = postfix.send(agent_mail(), SUPPORT, [GONE], port=postfix.submission_port)
    assert "direction=outbound case=C-000001" in casethread.log()
    casethread.proc.kill()
    # A flush while the message is still in the active queue does nothing: flush until the
    # error transport has run.
    deadline = time.monotonic() + 20
    while not any("status=deferred (bounce failed)" in line
                  for line in postfix.maillog_for(queue_id)):
        assert time.monotonic() < deadline, postfix.maillog_tail()
        postfix.flush()
        time.sleep(0.5)
    assert postfix.received == []
    milter_factory(casethread.proc.argv, None, milter_socket, cwd=casethread.config.parent)
    assert_threaded_postfix_bounce(postfix.wait_for(1)[0], "C-000001")


def test_reply_to_a_merged_case_and_auto_reply_to_a_resolved_case(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    first = send_outbound(postfix, agent_mail("First question"))
    second = send_outbound(postfix, agent_mail("Second question"))
    assert (first.header("X-Case-ID"), second.header("X-Case-ID")) == ("C-000001", "C-000002")
    # The CLI writes to the index while the milter runs (LMDB is multi-process).
    merged = casethread.cli("case", "merge", "C-000001", "C-000002")
    assert merged.returncode == 0, merged.stderr
    got = send_inbound(postfix, reply([f"In-Reply-To: {first.header('Message-ID')}"]))
    assert (got.header("X-Case-ID"), got.header("X-Case-Match")) == ("C-000002", "in-reply-to")

    resolved = casethread.cli("case", "set-state", "C-000002", "resolved")
    assert resolved.returncode == 0, resolved.stderr
    auto = reply(
        [f"In-Reply-To: {second.header('Message-ID')}", "Auto-Submitted: auto-replied"],
        subject="Automatic reply: Second question", message_id="<ooo-1@customer.example>",
    )
    got = send_inbound(postfix, auto)
    assert got.header("X-Case-ID") == "C-000002"
    assert got.header("X-Case-Auto") == "auto-replied"
    assert got.header("X-Case-State") == "resolved"  # threads, never reopens

    human = reply([f"In-Reply-To: {second.header('Message-ID')}"],
                  message_id="<r2@customer.example>")
    got = send_inbound(postfix, human)
    assert (got.header("X-Case-ID"), got.header("X-Case-State")) == ("C-000002", "reopened")


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"


def multipart_mail(with_signature: bool = False) -> bytes:
    """An agent's HTML+plain mail with a PDF attachment (or a multipart/signed one)."""
    pdf_b64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")
    inner = b"\r\n".join([
        b'Content-Type: multipart/alternative; boundary="alt"',
        b"",
        b"--alt",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: quoted-printable",
        b"",
        b"Hello Pat, your invoice is attached. Gr=C3=BC=C3=9Fe",
        b"--alt",
        b"Content-Type: text/html; charset=utf-8",
        b"",
        b"<html><body><p>Hello Pat, your invoice is attached.</p></body></html>",
        b"--alt--",
    ])
    if with_signature:
        body = b"\r\n".join([
            b"--sig", inner, b"--sig",
            b"Content-Type: application/pgp-signature",
            b"",
            b"-----BEGIN PGP SIGNATURE-----\r\nAAAA\r\n-----END PGP SIGNATURE-----",
            b"--sig--", b"",
        ])
        top = b'Content-Type: multipart/signed; protocol="application/pgp-signature"; ' \
              b'micalg=pgp-sha256; boundary="sig"'
    else:
        body = b"\r\n".join([
            b"--mix", inner, b"--mix",
            b"Content-Type: application/pdf",
            b'Content-Disposition: attachment; filename="invoice.pdf"',
            b"Content-Transfer-Encoding: base64",
            b"",
            pdf_b64 + b"--mix--", b"",
        ])
        top = b'Content-Type: multipart/mixed; boundary="mix"'
    head = b"\r\n".join([
        f"From: Dana Agent <{AGENT}>".encode(),
        f"To: <{CUSTOMER}>".encode(),
        b"Subject: Invoice",
        b"MIME-Version: 1.0",
        top,
    ])
    return head + b"\r\n\r\n" + body


def test_outbound_html_plain_with_attachment_is_stamped_and_attachment_untouched(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    import email
    from email import policy

    out = send_outbound(postfix, multipart_mail())
    token = token_of(out)
    parsed = email.message_from_bytes(out.raw, policy=policy.default)
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().rstrip().endswith(f"[ref:{token}]"), casethread.log()
    assert "Grüße" in plain.get_content()
    assert f'data-casethread-ref="{token}"' in html.get_content()
    assert "display:none" in html.get_content()
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content() == PDF
    # The attachment's encoded bytes arrive exactly as sent.
    sent_tail = multipart_mail().split(b"Content-Transfer-Encoding: base64\r\n\r\n", 1)[1]
    assert sent_tail in out.raw
    assert "body=stamped" in casethread.log()

    # A reply quoting only the HTML threads by the hidden tag's token.
    quoted = f"Thanks!\n\n> Hello Pat, your invoice is attached. [ref:{token}]\n"
    got = send_inbound(postfix, reply([], subject="invoice", body=quoted))
    assert (got.header("X-Case-ID"), got.header("X-Case-Match")) == ("C-000001", "token")


def test_signed_mail_keeps_its_body_byte_identical(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    sent = multipart_mail(with_signature=True)
    out = send_outbound(postfix, sent)
    assert out.header("X-Case-ID") == "C-000001"
    assert (out.header("Subject") or "").startswith("Invoice [ref:")  # headers still stamped
    assert out.body == sent.split(b"\r\n\r\n", 1)[1]


def test_a_non_ascii_field_name_ends_the_header_section_in_postfix(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    # pymilter cannot decode such a name; Postfix never sends one: it starts the body there,
    # so what follows (a forged X-Case-ID) is body text, never a header downstream trusts.
    raw = (f"From: <{CUSTOMER}>\r\nTo: <{SUPPORT}>\r\nSubject: s\r\nX-Bad\xe9: v\r\n"
           "X-Case-ID: C-999999\r\n\r\nbody\r\n").encode("latin-1")
    got = send_inbound(postfix, raw)
    assert got.get_all("X-Case-ID") == ["C-000001"], casethread.log()
    assert b"X-Case-ID: C-999999" in got.body


def test_forged_case_fields_in_every_spelling_postfix_passes_are_removed(
    postfix: PostfixHarness, casethread: Casethread
) -> None:
    """What Postfix 3.7 gives the milter, seen only with a real one: a name written with
    blanks before its colon (RFC 5322 obs-field) arrives bare, so it is removed as ours; a
    line that is no field ends the header and Postfix writes an empty line before it, so a
    forged field below it is body text to Sieve and procmail too."""
    forged = ["X-Case-Queue : vip", "x-case-id\t:C-999999", "X-CASE-STATE:", " closed",
              "X-Case-Auto: =?utf-8?q?no?=", "X-Case-Loop: n\u00e9", "X-Case-Sender: known",
              "X-Case-ID: C-999998"]
    raw = b"X-Case-Match: token\r\n" + reply(forged)  # UTF-8 in X-Case-Loop: 8-bit
    got = send_inbound(postfix, raw)
    ours = [(name, value) for name, value in got.headers() if name.lower().startswith("x-case")]
    assert ours == [("X-Case-ID", "C-000001"), ("X-Case-Match", "new"),
                    ("X-Case-State", "new"), ("X-Case-Queue", "support"),
                    ("X-Case-Auto", "no")], got.raw
    colonless = reply(["Just some words", "X-Case-Queue: vip"],
                      message_id="<colonless@customer.example>")
    got = send_inbound(postfix, colonless)
    assert got.get_all("X-Case-Queue") == ["support"], got.raw
    assert got.body.startswith(b"Just some words\r\nX-Case-Queue: vip\r\n\r\n"), got.raw


def test_backup_taken_under_load_opens_and_holds_what_was_acknowledged(
    postfix: PostfixHarness, casethread: Casethread, tmp_path: Path
) -> None:
    import json
    import threading

    sent: list[ReceivedMessage] = []

    def agents() -> None:
        for n in range(15):
            sent.append(send_outbound(postfix, agent_mail(f"Question {n}")))

    writer = threading.Thread(target=agents)
    writer.start()
    backups = []
    try:
        for n in range(3):  # while the milter writes
            dest = tmp_path / f"backup-{n}"
            done = casethread.cli("backup", str(dest))
            assert done.returncode == 0, done.stderr
            backups.append(dest)
    finally:
        writer.join(120)
    assert len(sent) == 15
    for dest in backups:
        stats = subprocess.run(
            [str(Path(sys.executable).with_name("casethread")), "stats", "--json",
             "--index", str(dest)], capture_output=True, text=True, timeout=60, check=True,
        )
        counts = json.loads(stats.stdout)
        # A consistent copy: every case number it knows has its case.
        assert counts["cases"] == counts["numbers"] == counts["last_number"]
        assert (dest / "token.key").stat().st_mode & 0o777 == 0o600
    # The last backup, taken after the load, knows every case the receiver saw.
    final = tmp_path / "backup-final"
    assert casethread.cli("backup", str(final)).returncode == 0
    for msg in sent:
        found = subprocess.run(
            [str(Path(sys.executable).with_name("casethread")), "lookup", "--message-id",
             msg.header("Message-ID") or "", "--index", str(final), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["case_id"] == msg.header("X-Case-ID")
