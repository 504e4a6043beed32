"""Direction from what the MTA vouches for, end to end: a real SMTP AUTH login (Cyrus SASL,
sasldb) and IPv6 clients, with the real `casethread serve`, behind Postfix and Sendmail.

The SASL login is on the plain inbound smtpd (no ORIGINATING daemon name), so only
`{auth_authen}` (sent at MAIL FROM by Postfix's default milter_mail_macros, and by
contrib/postfix/main.cf's list) can make the agent's mail outbound. The IPv6 tests run
casethread on an inet6 socket on ::1 and send over ::1 and 127.0.0.1 to the same Postfix, with
`outbound.client_networks` in IPv6 and IPv4-mapped spelling. Both MTAs hand casethread an
IPv6 client as AF_INET6 ('::1') at connect; a client on an IPv4-mapped socket reaches it as
AF_INET.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from .harness import (
    MilterFactory,
    MilterSocket,
    PostfixFactory,
    PostfixHarness,
    ReceivedMessage,
    casethread_serve_argv,
    contrib_main_settings,
    find_sbin,
    free_port,
    normalize_crlf,
    port_listening,
    postfix_accessible_dir,
)
from .sendmail_harness import SendmailHarness, SendmailInstall, ensure_sendmail
from .test_casethread import AGENT, CUSTOMER, SUPPORT, agent_mail, reply, token_of

REALM = "helpdesk.example"
LOGIN, PASSWORD = "dana", "s3cret-Pw"


def start_casethread(
    milter_factory: MilterFactory, milter_socket: MilterSocket, tmp_path: Path, *config: str
) -> str:
    """Start `casethread serve` with inbound.addresses and the given config lines; return the
    path of its log (read with Path.read_text)."""
    path = tmp_path / "casethread.yaml"
    path.write_text("\n".join(["inbound:", f"  addresses: [{SUPPORT}]", *config]) + "\n")
    argv = casethread_serve_argv(milter_socket, config=path, index=tmp_path / "index")
    proc = milter_factory(argv, None, milter_socket, cwd=tmp_path)
    return str(proc.log_path)


def log_of(log_path: str) -> str:
    return Path(log_path).read_text(errors="replace")


class MTA(Protocol):
    """What `send` needs of PostfixHarness and SendmailHarness."""

    inbound_port: int

    @property
    def received(self) -> list[ReceivedMessage]: ...

    def wait_for(self, count: int, timeout: float = ...) -> list[ReceivedMessage]: ...


def send(
    mta: MTA, raw: bytes, mail_from: str, rcpt: str, *, host: str = "127.0.0.1",
    port: int | None = None, login: tuple[str, str] | None = None,
) -> ReceivedMessage:
    """Send over SMTP to the plain (inbound) service at `host` (or `port`), with AUTH PLAIN
    first when `login` is given; return what the receiver got."""
    before = len(mta.received)
    with smtplib.SMTP(host, port or mta.inbound_port, local_hostname="client.casethread.test",
                      timeout=30) as smtp:
        smtp.ehlo()
        if login is not None:
            assert "PLAIN" in smtp.esmtp_features.get("auth", "").split(), smtp.esmtp_features
            user, password = login
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            code, resp = smtp.docmd("AUTH", f"PLAIN {token}")
            assert code == 235, (code, resp)
        smtp.sendmail(mail_from, [rcpt], normalize_crlf(raw))
    return mta.wait_for(before + 1)[before]


# --------------------------------------------------------------------------- SASL


@pytest.fixture
def sasl_postfix(
    postfix_factory: PostfixFactory, milter_socket: MilterSocket
) -> Iterator[PostfixHarness]:
    """A private Postfix whose smtpds offer AUTH PLAIN (Cyrus SASL, a private sasldb holding
    dana@helpdesk.example), without TLS on loopback."""
    saslpasswd2 = sasl_tools()
    db_dir = postfix_accessible_dir("casethread-sasl-")
    try:
        sasldb = db_dir / "sasldb2"
        make_sasldb(saslpasswd2, sasldb)
        # smtpd runs as user postfix and reads the sasldb for every login.
        os.chown(sasldb, 0, pwd.getpwnam("postfix").pw_gid)
        sasldb.chmod(0o640)
        smtpd_conf = ("pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                      f"mech_list: PLAIN\nsasldb_path: {sasldb}\n")
        yield postfix_factory(
            milter_socket,
            extra_main={
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "cyrus",
                "smtpd_sasl_local_domain": REALM,
                "smtpd_tls_auth_only": "no",
            },
            # Debian's Postfix reads smtpd.conf from $config_directory/sasl/ only: it ignores
            # cyrus_sasl_config_path (debian/patches/07_sasl_config.diff).
            config_files={"sasl/smtpd.conf": smtpd_conf},
        )
    finally:
        shutil.rmtree(db_dir, ignore_errors=True)


def sasl_tools() -> str:
    """saslpasswd2, once the Cyrus SASL modules a PLAIN login against a sasldb needs are
    there too (fails the test otherwise)."""
    saslpasswd2 = find_sbin("saslpasswd2")
    if saslpasswd2 is None:
        pytest.fail("saslpasswd2 is missing: apt-get install sasl2-bin libsasl2-modules "
                    "(make test installs them)", pytrace=False)
    for module, package in (("libplain", "libsasl2-modules"), ("libsasldb", "libsasl2-modules-db")):
        if not [*Path("/usr/lib").glob(f"*/sasl2/{module}.so*"),
                *Path("/usr/lib/sasl2").glob(f"{module}.so*")]:
            pytest.fail(f"Cyrus SASL's {module} module is missing: apt-get install {package}",
                        pytrace=False)
    return saslpasswd2


def make_sasldb(saslpasswd2: str, sasldb: Path) -> None:
    """A sasldb holding LOGIN@REALM with PASSWORD."""
    subprocess.run([saslpasswd2, "-f", str(sasldb), "-c", "-p", "-u", REALM, LOGIN],
                   input=PASSWORD.encode(), capture_output=True, timeout=30, check=True)


def test_postfix_sends_auth_authen_by_default_and_contrib_keeps_it() -> None:
    """contrib/postfix/main.cf's milter_mail_macros is Postfix's default plus {daemon_name}:
    {auth_authen} needs nothing more."""
    postconf = find_sbin("postconf")
    assert postconf is not None, "postconf is missing: apt-get install postfix"
    default = subprocess.run([postconf, "-dh", "milter_mail_macros"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
    assert "{auth_authen}" in default
    contrib = contrib_main_settings(None)["milter_mail_macros"].split()
    assert set(default) <= set(contrib), (default, contrib)


def test_a_sasl_login_makes_mail_outbound_on_the_plain_smtpd(
    sasl_postfix: PostfixHarness, milter_factory: MilterFactory, milter_socket: MilterSocket,
    tmp_path: Path,
) -> None:
    log = start_casethread(milter_factory, milter_socket, tmp_path,
                           "outbound:", "  authenticated: true")
    out = send(sasl_postfix, agent_mail(), AGENT, CUSTOMER, login=(LOGIN, PASSWORD))
    assert out.header("X-Case-ID") == "C-000001", log_of(log)
    assert (out.header("Subject") or "").startswith("Your printer [ref:")
    assert "direction=outbound case=C-000001" in log_of(log)
    assert f"sasl_username={LOGIN}@{REALM}" in sasl_postfix.maillog()
    # The customer's reply threads to that case.
    token = token_of(out)
    got = send(sasl_postfix, reply([], subject=f"Re: Your printer [ref:{token}]"),
               CUSTOMER, SUPPORT)
    assert got.get_all("X-Case-ID") == ["C-000001"], log_of(log)
    # The same agent mail without a login (mynetworks lets it relay) is not ours: unstamped,
    # and its X-Case-ID, here forged, removed.
    forged = agent_mail().replace(b"X-Mailer:", b"X-Case-ID: C-000001\r\nX-Mailer:")
    plain = send(sasl_postfix, forged, AGENT, CUSTOMER)
    assert plain.header("X-Case-ID") is None, log_of(log)
    assert plain.header("Subject") == "Your printer"
    assert log_of(log).count("direction=outbound") == 1
    assert "direction=other case=- match=none edits=1 notes=case-fields-removed" in log_of(log)


def test_a_sasl_login_alone_is_not_outbound_with_authenticated_off(
    sasl_postfix: PostfixHarness, milter_factory: MilterFactory, milter_socket: MilterSocket,
    tmp_path: Path,
) -> None:
    log = start_casethread(milter_factory, milter_socket, tmp_path,
                           "outbound:", "  authenticated: false")
    out = send(sasl_postfix, agent_mail(), AGENT, CUSTOMER, login=(LOGIN, PASSWORD))
    assert out.header("X-Case-ID") is None, log_of(log)
    assert out.header("Subject") == "Your printer"
    assert "direction=other" in log_of(log)
    assert "direction=outbound" not in log_of(log)
    assert f"sasl_username={LOGIN}@{REALM}" in sasl_postfix.maillog()


# --------------------------------------------------------------------------- IPv6


@pytest.mark.parametrize(
    ("networks", "bracketed", "outbound_host", "other_host"),
    [
        # An IPv6 network: the ::1 client is outbound, 127.0.0.1 is not.
        ("::1/128", False, "::1", "127.0.0.1"),
        # IPv4-mapped: matches the IPv4 client, not the IPv6 one.
        ("::ffff:127.0.0.1/128", True, "127.0.0.1", "::1"),
        # An IPv4 network never matches an IPv6 client.
        ("127.0.0.0/8", False, "127.0.0.1", "::1"),
    ],
    ids=["ipv6-network", "ipv4-mapped-network", "ipv4-network"],
)
def test_ipv6_milter_socket_and_clients(
    postfix_factory: PostfixFactory, milter_factory: MilterFactory, tmp_path: Path,
    networks: str, bracketed: bool, outbound_host: str, other_host: str,
) -> None:
    """casethread on inet6:PORT@::1 (or @[::1]); Postfix (smtpd_milters = inet:[::1]:PORT)
    listens on 127.0.0.1 and ::1; outbound.client_networks decides by the client's address."""
    sock = MilterSocket.inet6(bracketed=bracketed)
    log = start_casethread(milter_factory, sock, tmp_path,
                           "outbound:", f"  client_networks: ['{networks}']")
    postfix = postfix_factory(sock, listen_hosts=("127.0.0.1", "::1"),
                              rewrite_local_headers=False)
    assert postfix.postconf("smtpd_milters") == f"inet:[::1]:{sock.port}"
    out = send(postfix, agent_mail(), AGENT, CUSTOMER, host=outbound_host)
    assert out.header("X-Case-ID") == "C-000001", log_of(log)
    other = send(postfix, agent_mail(subject="Not ours"), AGENT, CUSTOMER, host=other_host)
    assert other.header("X-Case-ID") is None, log_of(log)
    assert other.header("Subject") == "Not ours"
    # The customer replies from the address that is not in client_networks: inbound.
    token = token_of(out)
    got = send(postfix, reply([], subject=f"Re: Your printer [ref:{token}]"), CUSTOMER,
               SUPPORT, host=other_host)
    assert got.get_all("X-Case-ID") == ["C-000001"], log_of(log)
    lines = [line for line in log_of(log).splitlines() if "direction=" in line]
    assert [line.split("direction=")[1].split()[0] for line in lines] == [
        "outbound", "other", "inbound"], log_of(log)
    # Postfix saw the IPv6 client as such (named as /etc/hosts names ::1, or "unknown").
    assert re.search(r"connect from [\w.-]+\[::1\]", postfix.maillog()), postfix.maillog_tail()


# --------------------------------------------------------------------------- Sendmail


@pytest.fixture(scope="session")
def sendmail_install() -> SendmailInstall:
    """Debian's Sendmail unpacked by contrib/sendmail/unpack-sendmail.sh (fails, never
    skips, when that cannot be done)."""
    return ensure_sendmail()


def test_sendmail_sasl_login_makes_mail_outbound_on_the_mta_daemon(
    sendmail_install: SendmailInstall, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    """contrib/sendmail/casethread.mc's macro lists pass {auth_authen}: an AUTH PLAIN login on
    the plain daemon (Name=MTA) makes the agent's mail outbound, the same mail without it not."""
    saslpasswd2 = sasl_tools()
    sasl_dir = tmp_path / "sasl"
    sasl_dir.mkdir(mode=0o755)
    sasl_dir.chmod(0o755)
    make_sasldb(saslpasswd2, sasl_dir / "sasldb2")
    (sasl_dir / "sasldb2").chmod(0o600)
    (sasl_dir / "Sendmail.conf").write_text(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN\n"
        "sasldb_path: /usr/lib/sasl2/sasldb2\n")
    sock = MilterSocket.inet()
    log = start_casethread(milter_factory, sock, tmp_path, "outbound:", "  authenticated: true")
    mc = "define(`confAUTH_MECHANISMS', `PLAIN')dnl\n"
    with SendmailHarness(sock, sendmail_install, mc_before=mc, sasl_dir=sasl_dir) as sendmail:
        out = send(sendmail, agent_mail(), AGENT, CUSTOMER, login=(f"{LOGIN}@{REALM}", PASSWORD))
        assert out.header("X-Case-ID") == "C-000001", (log_of(log), sendmail.diagnostics())
        assert (out.header("Subject") or "").startswith("Your printer [ref:")
        plain = send(sendmail, agent_mail(), AGENT, CUSTOMER)
        assert plain.header("X-Case-ID") is None, log_of(log)
        assert plain.header("Subject") == "Your printer"
        assert f"authid={LOGIN}@{REALM}, mech=PLAIN" in sendmail.maillog()
    directions = [line.split("direction=")[1].split()[0]
                  for line in log_of(log).splitlines() if "direction=" in line]
    assert directions == ["outbound", "other"], log_of(log)


def test_sendmail_ipv6_daemon_and_milter_socket(
    sendmail_install: SendmailInstall, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    """casethread on inet6:PORT@::1 (Sendmail's S= takes libmilter's spelling), a daemon on
    ::1 beside the IPv4 one: outbound.client_networks [::1/128] makes the IPv6 client's mail
    outbound, the IPv4 client's not."""
    sock = MilterSocket.inet6()
    log = start_casethread(milter_factory, sock, tmp_path,
                           "outbound:", "  client_networks: ['::1/128']")
    port6 = free_port()
    mc = f"DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Port={port6}, Addr=::1')dnl\n"
    with SendmailHarness(sock, sendmail_install, mc_before=mc) as sendmail:
        wait_listening(port6)
        out = send(sendmail, agent_mail(), AGENT, CUSTOMER, host="::1", port=port6)
        assert out.header("X-Case-ID") == "C-000001", (log_of(log), sendmail.diagnostics())
        other = send(sendmail, agent_mail(subject="Not ours"), AGENT, CUSTOMER)
        assert other.header("X-Case-ID") is None, log_of(log)
        token = token_of(out)
        got = send(sendmail, reply([], subject=f"Re: Your printer [ref:{token}]"), CUSTOMER,
                   SUPPORT)
        assert got.get_all("X-Case-ID") == ["C-000001"], log_of(log)
        assert "daemon=MTA-v6, relay=[IPv6:0:0:0:0:0:0:0:1]" in sendmail.maillog()
    directions = [line.split("direction=")[1].split()[0]
                  for line in log_of(log).splitlines() if "direction=" in line]
    assert directions == ["outbound", "other", "inbound"], log_of(log)


def test_sendmail_cannot_reach_a_bracketed_inet6_milter_socket(
    sendmail_install: SendmailInstall, milter_factory: MilterFactory, tmp_path: Path,
) -> None:
    """What contrib/sendmail/casethread.mc warns of: casethread listens on inet6:PORT@[::1],
    but Sendmail 8.17 given S=inet6:PORT@[::1] cannot connect, and with F=T refuses mail."""
    sock = MilterSocket.inet6(bracketed=True)
    log = start_casethread(milter_factory, sock, tmp_path)
    with SendmailHarness(sock, sendmail_install) as sendmail:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            send(sendmail, agent_mail(), AGENT, CUSTOMER)
        assert refused.value.smtp_code == 451
        assert "error connecting to filter: Invalid argument" in sendmail.maillog()
    assert "direction=" not in log_of(log)


def wait_listening(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_listening(port):
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        time.sleep(0.01)
