"""casethread behind a real Sendmail: Debian's sendmail-bin, unpacked (never installed, it
would remove Postfix), configured from contrib/sendmail/casethread.mc, with the real
`casethread serve` process.

Agents send through the snippet's submission daemon (Name=ORIGINATING: {daemon_name} makes
the mail outbound); customers reply through a plain port-25-like daemon. The snippet's F=T
makes Sendmail refuse mail with 451 while the milter is down or when it dies on a message;
without it Sendmail would deliver what a dying milter left half edited (checked too).
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .dying_milter import ADDED_HEADER, EXIT_STATUS, REPLACED_BODY, dying_milter_argv
from .harness import (
    REPO_ROOT,
    HarnessError,
    MilterFactory,
    MilterProcess,
    MilterSocket,
    ReceivedMessage,
    casethread_serve_argv,
    free_port,
)
from .sendmail_harness import (
    CONTRIB_MC,
    DEBIAN_MSP_FEATURE,
    SendmailHarness,
    SendmailInstall,
    base_mc,
    contrib_msp_feature,
    debian_sendmail_cf,
    ensure_sendmail,
    render_cf,
)

AGENT = "agent@helpdesk.example"
CUSTOMER = "pat@customer.example"
SUPPORT = "support@helpdesk.example"
BOTH_SOCKETS = pytest.mark.parametrize("milter_socket_kind", ["inet", "unix"])


@pytest.fixture(scope="session")
def sendmail_install() -> SendmailInstall:
    """Debian's Sendmail unpacked by contrib/sendmail/unpack-sendmail.sh (fails, never
    skips, when that cannot be done)."""
    return ensure_sendmail()


@pytest.fixture
def milter_socket(milter_socket_kind: str) -> Iterator[MilterSocket]:
    """Overrides conftest's: the unix socket lives below /run, as in production
    (/run/casethread, see contrib/systemd/README.md). Sendmail refuses to start with one in a
    group- or world-writable directory without the sticky bit ("unsafe: World writable
    directory"); /tmp itself, sticky, it accepts."""
    if milter_socket_kind == "inet":
        yield MilterSocket.inet()
        return
    sock_dir = Path(tempfile.mkdtemp(prefix="casethread-test-", dir="/run"))
    try:
        yield MilterSocket.unix(sock_dir / "casethread.sock")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def start_casethread(
    milter_factory: MilterFactory, milter_socket: MilterSocket, tmp_path: Path
) -> MilterProcess:
    """The real `casethread serve` on `milter_socket`, with a real LMDB index in `tmp_path`
    (a second call starts it again on the same index)."""
    config = tmp_path / "casethread.yaml"
    config.write_text(f"inbound:\n  addresses: [{SUPPORT}]\n")
    argv = casethread_serve_argv(milter_socket, config=config, index=tmp_path / "index")
    return milter_factory(argv, None, milter_socket, cwd=tmp_path)


@pytest.fixture
def casethread(
    milter_factory: MilterFactory, milter_socket: MilterSocket, tmp_path: Path
) -> MilterProcess:
    return start_casethread(milter_factory, milter_socket, tmp_path)


@pytest.fixture
def sendmail(
    sendmail_install: SendmailInstall, milter_socket: MilterSocket
) -> Iterator[SendmailHarness]:
    harness = SendmailHarness(milter_socket, sendmail_install)
    with harness:
        yield harness


def agent_mail(message_id: str) -> bytes:
    return (
        f"From: Dana Agent <{AGENT}>\r\n"
        f"To: Pat Customer <{CUSTOMER}>\r\n"
        "Subject: Your printer\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
        "Hello Pat,\r\nplease try a restart.\r\n"
    ).encode()


def customer_reply(in_reply_to: str) -> bytes:
    return (
        f"From: Pat Customer <{CUSTOMER}>\r\n"
        f"To: <{SUPPORT}>\r\n"
        "Subject: Re: Your printer\r\n"
        "Date: Sat, 28 Nov 2026 11:00:00 +0000\r\n"
        "Message-ID: <r1@customer.example>\r\n"
        f"In-Reply-To: {in_reply_to}\r\n"
        "X-Case-ID: C-999999\r\n"
        "\r\n"
        "Thanks, it works.\r\n"
    ).encode()


def deliver(
    sendmail: SendmailHarness, raw: bytes, mail_from: str, rcpt: str, port: int
) -> tuple[str, ReceivedMessage]:
    before = len(sendmail.received)
    queue_id = sendmail.send(raw, mail_from, [rcpt], port=port)
    return queue_id, sendmail.wait_for(before + 1)[before]


def test_contrib_mc_renders_the_filter_macros_and_daemon(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """The snippet as shipped (no substitution) through m4 and Sendmail's cf macros."""
    mc = tmp_path / "sendmail.mc"
    mc.write_text(base_mc(tmp_path, 25, 2525, CONTRIB_MC))
    warnings = render_cf(sendmail_install, mc, tmp_path / "sendmail.cf")
    assert warnings == ""
    cf = (tmp_path / "sendmail.cf").read_text()
    lines = cf.splitlines()
    # F=T: Sendmail tempfails mail while the filter is unavailable or broken.
    assert [x for x in lines if x.startswith("Xcasethread")] == [
        "Xcasethread, S=inet:8894@127.0.0.1, T=C:10s;S:30s;R:60s;E:5m, F=T"
    ]
    assert "O InputMailFilters=casethread" in lines
    options = dict(
        x[2:].split("=", 1) for x in lines if x.startswith("O Milter.macros.")
    )
    connect = [m.strip() for m in options["Milter.macros.connect"].split(",")]
    envfrom = [m.strip() for m in options["Milter.macros.envfrom"].split(",")]
    assert {"{daemon_name}", "{client_addr}", "j"} <= set(connect)
    assert {"{daemon_name}", "{auth_authen}", "i"} <= set(envfrom)
    daemons = [x for x in lines if x.startswith("O DaemonPortOptions=")]
    assert "O DaemonPortOptions=Family=inet, Name=ORIGINATING, Port=submission, " \
           "Addr=127.0.0.1, M=E" in daemons
    # FEATURE(no_default_msa): Sendmail's own MSA daemon would collide on the same port.
    assert not any("Name=MSA" in x for x in daemons)


def _readme_sendmail_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    return readme.split("\n## Sendmail\n", 1)[1].split("\n## ", 1)[0]


# Step 3's line: Debian's own submission daemon, as the README quotes it.
_README_MSP_LINE = re.compile(r"``(DAEMON_OPTIONS\(`Family=inet, +Name=MSP-v4,[^`]*'\)dnl)``")
# Step 4's check: a code block whose first line is the root prompt's command.
_README_CHECK = re.compile(r"\n( *)```\n( *# grep .*?)\n *```\n", re.S)


def _paste_snippet(mc: str, line: str, *, after: bool = False) -> str:
    """Step 2: contrib/sendmail/casethread.mc pasted as a whole before (or after) `line`."""
    assert mc.count(line) == 1
    snippet = CONTRIB_MC.read_text()
    return mc.replace(line, line + snippet if after else snippet + line)


def _daemon_names(cf: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^O DaemonPortOptions=.*?Name=([^,\s]+)",
                                            cf.read_text(), re.M)]


def test_readme_steps_on_debians_sendmail_mc_give_the_check_it_shows(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """The README's Sendmail steps 2-4 on the package's own sendmail.mc, built as Debian's
    `make -C /etc/mail` builds it (which appends the .mc as comments): m4 warns of nothing,
    and the check command prints exactly the lines the README shows (an unanchored pattern
    also printed a comment of the snippet's)."""
    section = _readme_sendmail_section()
    [msp_line] = _README_MSP_LINE.findall(section)
    check = _README_CHECK.search(section)
    assert check is not None
    command, *shown = textwrap.dedent(check.group(2)).splitlines()

    def steps(mc: str) -> str:
        assert mc.count(msp_line + "\n") == 1  # step 3 quotes Debian's line as it is
        return _paste_snippet(mc.replace(msp_line + "\n", ""), "MAILER_DEFINITIONS\n")

    assert debian_sendmail_cf(sendmail_install, tmp_path, steps) == ""
    cf = tmp_path / "sendmail.cf"
    result = subprocess.run(
        ["sh", "-c", command.removeprefix("# ").replace("/etc/mail/sendmail.cf", str(cf))],
        capture_output=True, text=True, timeout=10, check=False)
    assert result.stdout.splitlines() == shown
    assert _daemon_names(cf) == ["MTA-v4", "ORIGINATING"]


def test_readme_names_the_submission_daemon_that_cannot_bind_when_both_are_kept(
    sendmail_install: SendmailInstall, tmp_path: Path
) -> None:
    """Step 3's warning: with Debian's MSP-v4 kept, the submission daemon declared later
    cannot bind 127.0.0.1:587 and is the one Sendmail's log names; which one that is depends
    on where step 2 put the snippet (measured: `daemon ORIGINATING: cannot bind` above
    MAILER_DEFINITIONS, `daemon MSP-v4` below DOMAIN())."""
    later: list[str] = []
    for line, after in (("MAILER_DEFINITIONS\n", False), ("DOMAIN(`debian-mta')dnl\n", True)):
        work = tmp_path / str(len(later))
        work.mkdir()
        debian_sendmail_cf(sendmail_install, work,
                           lambda mc, at=line, aft=after: _paste_snippet(mc, at, after=aft))
        submission = [n for n in _daemon_names(work / "sendmail.cf") if n != "MTA-v4"]
        assert sorted(submission) == ["MSP-v4", "ORIGINATING"]
        later.append(submission[-1])
    above_mailers, below_domain = later
    flat = " ".join(_readme_sendmail_section().split())
    assert (f"`MAILER_DEFINITIONS`, Debian's `MSP-v4` comes first and Sendmail logs `NOQUEUE: "
            f"SYSERR(root): opendaemonsocket: daemon {above_mailers}: cannot bind: Address "
            "already in use`") in flat
    assert f"(`daemon {below_domain}` with the snippet right below `DOMAIN()`)" in flat


@BOTH_SOCKETS
def test_outbound_via_originating_and_reply_threads(
    sendmail: SendmailHarness, casethread: MilterProcess
) -> None:
    qid, out = deliver(sendmail, agent_mail("<a1@helpdesk.example>"), AGENT, CUSTOMER,
                       sendmail.submission_port)
    log = casethread.output()
    assert out.get_all("X-Case-ID") == ["C-000001"], f"{log}\n{sendmail.diagnostics()}"
    subject = out.header("Subject") or ""
    match = re.fullmatch(r"Your printer \[ref:([0-9A-Z]+)\]", subject)
    assert match, subject
    token = match.group(1)
    assert out.header("References") == f"<{token}.case@helpdesk.example>"
    assert out.header("Thread-Topic") == "Your printer"
    assert out.body.endswith(f"\r\n[ref:{token}]\r\n".encode())
    # Sendmail's queue id reached the milter (macro i at MAIL FROM).
    assert qid and f"queue_id={qid} direction=outbound case=C-000001 match=new" in log

    # The same kind of mail on the plain daemon is not outbound: only the daemon name
    # (the client, 127.0.0.1, is the same) made the difference.
    _, plain = deliver(sendmail, agent_mail("<a2@helpdesk.example>"), AGENT, CUSTOMER,
                       sendmail.inbound_port)
    assert plain.header("X-Case-ID") is None
    assert plain.header("Subject") == "Your printer"

    qid, got = deliver(sendmail, customer_reply("<a1@helpdesk.example>"), CUSTOMER, SUPPORT,
                       sendmail.inbound_port)
    log = casethread.output()
    assert got.get_all("X-Case-ID") == ["C-000001"], log  # the forged C-999999 is gone
    assert got.header("X-Case-Match") == "in-reply-to"
    assert got.header("X-Case-State") == "open"
    assert got.header("X-Case-Sender") == "known"
    assert got.header("X-Case-Queue") == "support"
    assert f"queue_id={qid} direction=inbound case=C-000001 match=in-reply-to" in log


def test_forged_case_fields_are_removed_and_ours_come_last_once(
    sendmail: SendmailHarness, casethread: MilterProcess
) -> None:
    """Sendmail's smfi_addheader would put a field above the first field of its name, even a
    forged one just deleted (ours then took the forged ones' places, and repeated fields came
    in reverse order); casethread inserts past the last field, so the fields end up where
    Postfix puts them: below all others, each once."""
    raw = (
        "x-case-id: C-999999\r\n"
        f"From: Pat Customer <{CUSTOMER}>\r\nX-CASE-QUEUE: vip\r\nTo: <{SUPPORT}>\r\n"
        "Subject: New problem\r\nDate: Sat, 28 Nov 2026 11:00:00 +0000\r\n"
        "X-Case-State:\r\n closed\r\n"
        "Message-ID: <f1@customer.example>\r\nX-CASE-QUEUE: vip2\r\n\r\nHelp.\r\n"
    ).encode()
    _, got = deliver(sendmail, raw, CUSTOMER, SUPPORT, sendmail.inbound_port)
    names = [n for n, _ in got.headers() if n.lower() != "received"]
    assert names == ["From", "To", "Subject", "Date", "Message-ID", "X-Case-ID", "X-Case-Match",
                     "X-Case-State", "X-Case-Queue", "X-Case-Auto"], got.raw
    assert got.get_all("X-Case-Queue") == ["support"]
    assert got.get_all("X-Case-State") == ["new"]


def test_mail_is_tempfailed_while_the_milter_is_down(
    sendmail: SendmailHarness, casethread: MilterProcess, milter_factory: MilterFactory,
    milter_socket: MilterSocket, tmp_path: Path,
) -> None:
    """F=T: with the milter dead, Sendmail refuses MAIL FROM with 451 and keeps nothing; the
    client's retry once casethread is back is filtered (delayed, never passed unfiltered)."""
    casethread.kill()
    raw = customer_reply("<nothing@helpdesk.example>")
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        sendmail.send(raw, CUSTOMER, [SUPPORT])
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        451, b"4.3.2 Please try again later"), refused.value
    sendmail.wait_for_log("Milter: initialization failed, temp failing commands")
    sendmail.wait_for_empty_queue()
    assert sendmail.received == []

    start_casethread(milter_factory, milter_socket, tmp_path)
    _, got = deliver(sendmail, raw, CUSTOMER, SUPPORT, sendmail.inbound_port)
    assert got.get_all("X-Case-ID") == ["C-000001"]  # filtered: the forged C-999999 is gone
    assert got.header("X-Case-Match") == "new"


def test_milter_dying_after_body_replacement_is_tempfailed(
    sendmail: SendmailHarness, milter_factory: MilterFactory, milter_socket: MilterSocket,
    tmp_path: Path,
) -> None:
    """The contrib F=T: a milter that dies after replacing the body, before its final reply,
    gets the message refused with 451 at end of DATA; nothing is delivered or left in the
    queue, and the re-sent message is delivered, filtered, once casethread is back."""
    dying = milter_factory(dying_milter_argv(milter_socket), None, milter_socket,
                           kill_at_teardown=True)
    raw = agent_mail("<a1@helpdesk.example>")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        sendmail.send(raw, AGENT, [CUSTOMER], port=sendmail.submission_port)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        451, b"4.3.2 Please try again later"), refused.value
    assert dying.wait(10) == EXIT_STATUS
    log = "\n".join(sendmail.wait_for_log("stat=Please try again later"))
    assert "Milter: data, reject=451 4.3.2 Please try again later" in log
    # Sendmail had applied the edits (the body is rewritten in the queue file as it arrives)
    # when it noticed the milter was gone: F=T throws the whole message away.
    assert "Milter (casethread) message: body replaced" in log
    assert "milter_sys_read(casethread): cmd read returned 0, expecting 5" in log
    assert "stat=Sent" not in log
    sendmail.wait_for_empty_queue()
    assert sendmail.received == []

    start_casethread(milter_factory, milter_socket, tmp_path)
    _, got = deliver(sendmail, raw, AGENT, CUSTOMER, sendmail.submission_port)
    assert got.get_all("X-Case-ID") == ["C-000001"]
    assert got.body.startswith(b"Hello Pat,\r\nplease try a restart.\r\n")
    assert REPLACED_BODY not in got.raw
    assert len(sendmail.received) == 1


def test_why_f_t_without_it_sendmail_delivers_a_half_edited_message(
    sendmail_install: SendmailInstall, milter_factory: MilterFactory,
    milter_socket: MilterSocket,
) -> None:
    """The reason contrib sets F=T, checked against the Sendmail we run: without an F= flag,
    Sendmail 8.17 answers 250 for the same message and delivers the edits the milter made
    before dying, which it never confirmed: its header, and the new body as far as it got
    (the original body is gone). If this ever fails, Sendmail discards unconfirmed edits."""
    dying = milter_factory(dying_milter_argv(milter_socket), None, milter_socket,
                           kill_at_teardown=True)
    with SendmailHarness(milter_socket, sendmail_install, filter_flags="") as sendmail:
        assert [x for x in sendmail.cf_path.read_text().splitlines()
                if x.startswith("Xcasethread")] == [
            f"Xcasethread, S={milter_socket.libmilter}, T=C:10s;S:30s;R:60s;E:5m"]
        qid, got = deliver(sendmail, agent_mail("<a1@helpdesk.example>"), AGENT, CUSTOMER,
                           sendmail.submission_port)
        assert dying.wait(10) == EXIT_STATUS
        assert got.get_all(ADDED_HEADER[0]) == [ADDED_HEADER[1]]
        assert got.body == REPLACED_BODY
        log = "\n".join(sendmail.wait_for_log("stat=Sent", qid))
        assert "milter_sys_read(casethread): cmd read returned 0, expecting 5" in log
        assert "Milter (casethread): to error state" in log


def app_mail() -> bytes:
    """What a helpdesk app pipes into `sendmail -t`: no Message-ID or Date (the MSP adds
    them), a state for the case."""
    return (
        f"From: Dana Agent <{AGENT}>\nTo: Pat Customer <{CUSTOMER}>\n"
        "Subject: Your printer\nX-Case-State: waiting\n\nHello Pat,\nplease try a restart.\n"
    ).encode()


def test_local_submission_with_debians_submit_mc_is_of_neither_direction(
    sendmail: SendmailHarness, casethread: MilterProcess
) -> None:
    """sendmail(8) on a Sendmail host is the MSP: with Debian's submit.mc it hands the mail
    over SMTP to the port-25 daemon, so casethread sees it from 127.0.0.1 on that daemon
    with no AUTH login: not outbound (README, Sendmail: local submission)."""
    sendmail.submit_local(app_mail(), ["-t", "-i", "-f", AGENT], DEBIAN_MSP_FEATURE)
    got = sendmail.wait_for(1)[0]
    log = casethread.output()
    assert got.header("X-Case-ID") is None, log
    assert got.header("X-Case-State") is None  # removed: it could be forged
    assert got.header("Subject") == "Your printer"
    # The MSP wrote Message-Id and Date before the MTA and casethread saw the mail.
    assert (got.header("Message-Id") or "").endswith("@mx.casethread.test>")
    assert "direction=other case=- match=none edits=1 notes=case-fields-removed" in log
    assert "daemon=MTA, relay=localhost [127.0.0.1]" in sendmail.maillog()


def test_local_submission_through_the_contrib_submit_mc_is_outbound(
    sendmail: SendmailHarness, casethread: MilterProcess
) -> None:
    """contrib/sendmail/submit.mc's FEATURE(`msp') line makes the MSP hand its mail to the
    ORIGINATING daemon: an app's `sendmail -t` mail is stamped, and so is every other
    program's (cron's, here), as README warns."""
    feature = contrib_msp_feature()
    assert feature == "FEATURE(`msp', `[127.0.0.1]', `MSA')dnl\n"
    sendmail.submit_local(app_mail(), ["-t", "-i", "-f", AGENT], feature)
    out = sendmail.wait_for(1)[0]
    log = casethread.output()
    assert out.mail_from == AGENT and out.rcpt_tos == (CUSTOMER,)
    assert out.get_all("X-Case-ID") == ["C-000001"], f"{log}\n{sendmail.diagnostics()}"
    assert re.fullmatch(r"Your printer \[ref:[0-9A-Z]+\]", out.header("Subject") or "")
    assert out.header("X-Case-State") is None  # read, not delivered
    msg_id = out.header("Message-Id") or ""
    assert msg_id.endswith("@mx.casethread.test>")  # the MSP's, kept and recorded
    assert "direction=outbound case=C-000001 match=new state=waiting" in log
    assert "daemon=ORIGINATING, relay=localhost [127.0.0.1]" in sendmail.maillog()

    # The customer's reply threads by the MSP's Message-ID.
    _, reply = deliver(sendmail, customer_reply(msg_id), CUSTOMER, SUPPORT,
                       sendmail.inbound_port)
    assert [reply.header(n) for n in ("X-Case-ID", "X-Case-Match")] == [
        "C-000001", "in-reply-to"], casethread.output()

    # Every local program's mail is outbound now: cron's report to an outside address.
    sendmail.submit_local(f"To: <{CUSTOMER}>\nSubject: Cron report\n\nok\n".encode(),
                          ["-t", "-i"], feature)
    cron = sendmail.wait_for(3)[2]
    assert cron.mail_from == "root@mx.casethread.test"
    assert cron.get_all("X-Case-ID") == ["C-000002"]


def test_local_submission_to_a_daemon_that_requires_auth_is_refused(
    sendmail_install: SendmailInstall, casethread: MilterProcess, milter_socket: MilterSocket,
) -> None:
    """Why contrib/sendmail/submit.mc needs the snippet's ORIGINATING daemon (M=E): pointed at
    Debian's own submission daemon (Name=MSP-v4, M=Ea), the MSP does not log in and gets a
    530: sendmail(8) fails and nothing is delivered."""
    port = free_port()
    msp_v4 = f"DAEMON_OPTIONS(`Family=inet, Name=MSP-v4, Port={port}, M=Ea, Addr=127.0.0.1')dnl\n"
    with SendmailHarness(milter_socket, sendmail_install, mc_after=msp_v4) as sendmail:
        with pytest.raises(HarnessError, match="exited with 69"):
            sendmail.submit_local(app_mail(), ["-t", "-i", "-f", AGENT], contrib_msp_feature(),
                                  port=port)
        sendmail.wait_for_log("reply=530 5.7.0 Authentication required")
        assert sendmail.received == []
    assert "queue_id=" not in casethread.output()


def test_utf8_mail_without_smtputf8_threads_as_behind_postfix(
    sendmail: SendmailHarness, casethread: MilterProcess
) -> None:
    """Debian's Sendmail 8.17 is built without USE_EAI: it offers no SMTPUTF8. It takes raw
    UTF-8 header fields (RFC 6532 text without SMTPUTF8) and UTF-8 envelope addresses
    without the parameter and passes them on as they are, so casethread gets what Postfix
    gives it for SMTPUTF8 mail and threads it alike (tests/e2e/test_smtputf8.py): U-label
    and A-label spellings of a domain are one participant. An address with a UTF-8 byte
    from 0x80 to 0x9F (Ü, ß, most Cyrillic) Sendmail refuses itself (README, Sendmail)."""
    with smtplib.SMTP("127.0.0.1", sendmail.inbound_port,
                      local_hostname="client.casethread.test", timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("8bitmime") and not smtp.has_extn("smtputf8")
    subject = "Ihre Bestellung – Größe ändern"
    joerg_u, joerg_a = "jörg@bücher.example", "jörg@xn--bcher-kva.example"
    agent = (
        f"From: Dana Agentin <{AGENT}>\nTo: Jörg Bücher <{joerg_u}>\nSubject: {subject}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\nHallo Jörg,\nbitte prüfen.\n")
    _, out = deliver(sendmail, agent.encode(), AGENT, joerg_u, sendmail.submission_port)
    assert out.rcpt_tos == (joerg_u,)
    assert out.get_all("X-Case-ID") == ["C-000001"], casethread.output()
    stamped = out.header("Subject") or ""
    assert stamped.startswith(subject + " [ref:") and "=?" not in stamped
    assert out.header("Thread-Topic") == subject
    reply = (f"From: Jörg <{joerg_u}>\nTo: <{SUPPORT}>\nSubject: AW: {stamped}\n"
             "Message-ID: <r1@example.org>\n\nDanke\n")
    _, r1 = deliver(sendmail, reply.encode(), joerg_u, SUPPORT, sendmail.inbound_port)
    assert [r1.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Sender")] == [
        "C-000001", "token", "known"]
    again = (f"From: Jörg <{joerg_a}>\nTo: <{SUPPORT}>\nSubject: AW: Größe\n"
             f"In-Reply-To: {out.header('Message-ID')}\nMessage-ID: <r2@example.org>\n\nNoch\n")
    _, r2 = deliver(sendmail, again.encode(), joerg_a, SUPPORT, sendmail.inbound_port)
    assert [r2.header(n) for n in ("X-Case-ID", "X-Case-Match", "X-Case-Sender")] == [
        "C-000001", "in-reply-to", "known"]
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        sendmail.send(reply.encode(), "JÖRG@bücher.example", [SUPPORT])
    assert refused.value.smtp_code == 501 and b"8-bit character" in refused.value.smtp_error
    log = casethread.output()
    assert "ERROR" not in log and "Traceback" not in log
