"""A DKIM signer of your own beside casethread: real OpenDKIM (Debian's opendkim, signing for
the agents' domain with a key made by opendkim-genkey), the real `casethread serve`, a real
Postfix (and the unpacked Sendmail), and the delivered message verified with dkimpy against
the generated public key (a fixed dnsfunc, no DNS).

Both MTAs hand a milter the message as the milters before it left it, so:
- casethread, then OpenDKIM (`smtpd_milters = <casethread> <opendkim>`; Sendmail: casethread's
  INPUT_MAIL_FILTER first): OpenDKIM signs the stamped mail; the signature verifies and covers
  the tagged Subject and the body with its token.
- OpenDKIM, then casethread: casethread sees a DKIM-Signature; with the default
  `stamp.dkim_signed: keep` it leaves Subject and body alone (the signature verifies, the mail
  goes out without tag and token); with `stamp` it stamps them and the signature breaks (the
  control that these checks can fail).
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from pathlib import Path
from types import ModuleType

import pytest

from .harness import (
    MilterFactory,
    MilterProcess,
    MilterSocket,
    PostfixFactory,
    ReceivedMessage,
    casethread_serve_argv,
    find_sbin,
)
from .sendmail_harness import SendmailHarness, SendmailInstall, ensure_sendmail

AGENT = "agent@helpdesk.example"
CUSTOMER = "pat@customer.example"
SUPPORT = "support@helpdesk.example"
DOMAIN = "helpdesk.example"
SELECTOR = "test"
KEY_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"


@pytest.fixture(scope="module")
def dkim() -> ModuleType:
    """PyPI's dkimpy (a `test` extra); fails, never skips, without it."""
    try:
        import dkim as module
    except ImportError:
        pytest.fail("dkimpy is not installed: pip install -e '.[test]'", pytrace=False)
    found: ModuleType = module
    return found


@dataclass(frozen=True)
class SigningKey:
    dir: Path
    private: Path
    txt_record: bytes

    def dnsfunc(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """The DNS TXT lookup dkimpy makes: our public key for our selector, nothing else."""
        text = name.decode() if isinstance(name, bytes) else name
        return self.txt_record if text.rstrip(".").lower() == KEY_NAME else None


@pytest.fixture(scope="module")
def signing_key() -> Iterator[SigningKey]:
    """A key pair from opendkim-genkey. It lives below /run: OpenDKIM refuses a config or key
    file below a directory others may write to, such as /tmp ("/tmp can be read or written by
    other users")."""
    genkey = find_sbin("opendkim-genkey")
    if genkey is None or find_sbin("opendkim") is None:
        pytest.fail(
            "OpenDKIM is not installed: `make test` installs it "
            "(or: apt-get install opendkim opendkim-tools)",
            pytrace=False,
        )
    key_dir = Path(tempfile.mkdtemp(prefix="casethread-dkim-", dir="/run"))
    try:
        subprocess.run(
            [genkey, "-b", "2048", "-d", DOMAIN, "-s", SELECTOR, "-D", str(key_dir)],
            capture_output=True, timeout=60, check=True,
        )
        # test.txt is a zone-file line: test._domainkey IN TXT ( "v=DKIM1; ..." "p=..." )
        zone = (key_dir / f"{SELECTOR}.txt").read_text()
        record = "".join(re.findall(r'"([^"]*)"', zone)).encode()
        assert record.startswith(b"v=DKIM1;") and b"p=" in record, zone
        yield SigningKey(key_dir, key_dir / f"{SELECTOR}.private", record)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


@pytest.fixture
def opendkim(milter_factory: MilterFactory, signing_key: SigningKey) -> MilterSocket:
    """OpenDKIM in the foreground, signing mail from DOMAIN (Debian's default canonicalization
    and oversigning; the client, 127.0.0.1, is one of its default InternalHosts)."""
    sock = MilterSocket.inet()
    conf = signing_key.dir / f"opendkim-{sock.port}.conf"
    conf.write_text(
        "Mode s\n"
        f"Domain {DOMAIN}\n"
        f"Selector {SELECTOR}\n"
        f"KeyFile {signing_key.private}\n"
        f"Socket {sock.libmilter}\n"
        "Canonicalization relaxed/simple\n"
        "OversignHeaders From\n"
        "Syslog no\n"
        "UserID root\n"
    )
    argv = [find_sbin("opendkim") or "opendkim", "-f", "-x", str(conf)]
    milter_factory(argv, None, sock, kill_at_teardown=True)
    return sock


CasethreadFactory = Callable[[str], tuple[MilterSocket, MilterProcess]]


@pytest.fixture
def casethread(milter_factory: MilterFactory, tmp_path: Path) -> CasethreadFactory:
    """start(dkim_signed) -> the socket and process of `casethread serve` with that
    stamp.dkim_signed setting."""

    def start(dkim_signed: str) -> tuple[MilterSocket, MilterProcess]:
        sock = MilterSocket.inet()
        config = tmp_path / "casethread.yaml"
        config.write_text(
            f"inbound:\n  addresses: [{SUPPORT}]\nstamp:\n  dkim_signed: {dkim_signed}\n")
        argv = casethread_serve_argv(sock, config=config, index=tmp_path / "index")
        return sock, milter_factory(argv, None, sock, cwd=tmp_path)

    return start


def plain_mail() -> bytes:
    return (
        f"From: Dana Agent <{AGENT}>\r\nTo: <{CUSTOMER}>\r\nSubject: Your printer\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hello Pat,\r\nplease try a restart.\r\n"
    ).encode()


def alternative_mail() -> bytes:
    return (
        f"From: Dana Agent <{AGENT}>\r\nTo: <{CUSTOMER}>\r\nSubject: Your invoice\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
        "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Pat\r\n"
        "--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<html><body><p>Hello Pat</p></body></html>\r\n"
        "--alt--\r\n"
    ).encode()


MAILS = {"Your printer": plain_mail, "Your invoice": alternative_mail}


def signature_tags(msg: ReceivedMessage) -> dict[str, str]:
    [sig] = msg.get_all("DKIM-Signature")
    tags = (part.split("=", 1) for part in sig.split(";") if "=" in part)
    return {k.strip(): re.sub(r"\s+", "", v) for k, v in tags}


def body_tokens(msg: ReceivedMessage) -> list[str]:
    """The case token in each text part, '' where there is none."""
    parsed = email.message_from_bytes(msg.raw, policy=policy.default)
    found = []
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            text = part.get_content()
            match = re.search(r"\[ref:(\w+)\]", text)
            found.append(match.group(1) if match else "")
    return found


def assert_signed_as_stamped(
    dkim: ModuleType, key: SigningKey, msg: ReceivedMessage, subject: str
) -> None:
    """Valid, over the whole body, and covering the tagged Subject and the body token."""
    assert dkim.verify(msg.raw, dnsfunc=key.dnsfunc), msg.raw.decode(errors="replace")
    tags = signature_tags(msg)
    assert (tags["d"], tags["s"]) == (DOMAIN, SELECTOR)
    assert "l" not in tags  # the body hash covers the whole body
    signed = [h.lower() for h in tags["h"].split(":")]
    assert "subject" in signed and "references" in signed, tags["h"]
    got_subject = msg.header("Subject") or ""
    match = re.fullmatch(re.escape(subject) + r" \[ref:(\w+)\]", got_subject)
    assert match, got_subject
    tokens = body_tokens(msg)
    assert tokens and set(tokens) == {match.group(1)}, tokens


def assert_broken_by_stamping(dkim: ModuleType, key: SigningKey, msg: ReceivedMessage) -> None:
    """Signed before casethread stamped it: the body hash no longer matches."""
    assert not dkim.verify(msg.raw, dnsfunc=key.dnsfunc)
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(msg.raw).verify(dnsfunc=key.dnsfunc)
    assert "[ref:" in (msg.header("Subject") or "") and all(body_tokens(msg))


# --------------------------------------------------------------------------- Postfix


def run_postfix(
    postfix_factory: PostfixFactory, first: MilterSocket, second: MilterSocket
) -> list[ReceivedMessage]:
    """Both mails through the submission service (ORIGINATING: outbound), with
    `smtpd_milters = first second`."""
    postfix = postfix_factory(first, extra_main={"smtpd_milters": f"{first.postfix} "
                                                                   f"{second.postfix}"})
    for make in MAILS.values():
        postfix.send(make(), AGENT, [CUSTOMER], port=postfix.submission_port)
    return postfix.wait_for(len(MAILS))


def by_subject(got: list[ReceivedMessage]) -> dict[str, ReceivedMessage]:
    return {next(s for s in MAILS if (m.header("Subject") or "").startswith(s)): m for m in got}


def test_postfix_opendkim_after_casethread_signs_the_stamped_mail(
    postfix_factory: PostfixFactory, casethread: CasethreadFactory, opendkim: MilterSocket,
    signing_key: SigningKey, dkim: ModuleType,
) -> None:
    ct_sock, ct = casethread("keep")
    got = by_subject(run_postfix(postfix_factory, ct_sock, opendkim))
    assert len(got) == 2
    for subject, msg in got.items():
        assert_signed_as_stamped(dkim, signing_key, msg, subject)
    assert ct.output().count("body=stamped") == 2, ct.output()


@pytest.mark.parametrize("dkim_signed", ["keep", "stamp"])
def test_postfix_opendkim_before_casethread(
    postfix_factory: PostfixFactory, casethread: CasethreadFactory, opendkim: MilterSocket,
    signing_key: SigningKey, dkim: ModuleType, dkim_signed: str,
) -> None:
    ct_sock, ct = casethread(dkim_signed)
    got = by_subject(run_postfix(postfix_factory, opendkim, ct_sock))
    assert len(got) == 2
    for subject, msg in got.items():
        if dkim_signed == "keep":
            # casethread saw OpenDKIM's signature: the mail stays valid but goes unstamped.
            assert dkim.verify(msg.raw, dnsfunc=signing_key.dnsfunc)
            assert msg.header("Subject") == subject
            assert not any(body_tokens(msg)), msg.raw
        else:
            assert_broken_by_stamping(dkim, signing_key, msg)
    if dkim_signed == "keep":
        assert ct.output().count("body-not-stamped:dkim-signed,subject-not-changed:dkim-signed") \
            == 2, ct.output()


# --------------------------------------------------------------------------- Sendmail


def filter_line(name: str, sock: MilterSocket) -> str:
    return f"INPUT_MAIL_FILTER(`{name}', `S={sock.libmilter}, T=C:10s;S:30s;R:60s;E:5m, F=T')dnl\n"


@pytest.fixture(scope="module")
def sendmail_install() -> SendmailInstall:
    return ensure_sendmail()


@pytest.mark.parametrize(
    ("order", "dkim_signed"), [("casethread-first", "keep"), ("opendkim-first", "stamp")])
def test_sendmail_filter_order(
    casethread: CasethreadFactory, opendkim: MilterSocket, signing_key: SigningKey,
    dkim: ModuleType, sendmail_install: SendmailInstall, order: str, dkim_signed: str,
) -> None:
    """Sendmail calls filters in INPUT_MAIL_FILTER order. OpenDKIM first with `stamp`: the
    broken signature (with `keep` the mail would go out unstamped, as with Postfix)."""
    ct_sock, _ = casethread(dkim_signed)
    dk_filter = filter_line("opendkim", opendkim)
    first = order == "casethread-first"
    sendmail = SendmailHarness(
        ct_sock, sendmail_install,
        mc_after=dk_filter if first else "", mc_before="" if first else dk_filter,
    ).start()
    try:
        expected = "casethread, opendkim" if first else "opendkim, casethread"
        assert f"O InputMailFilters={expected}\n" in sendmail.cf_path.read_text()
        sendmail.send(alternative_mail(), AGENT, [CUSTOMER], port=sendmail.submission_port)
        [msg] = sendmail.wait_for(1)
        if first:
            assert_signed_as_stamped(dkim, signing_key, msg, "Your invoice")
        else:
            assert_broken_by_stamping(dkim, signing_key, msg)
    finally:
        sendmail.stop()
