"""The downstream filing examples in contrib/, run by the real tools on mail the milter
produced: contrib/sieve/casethread.sieve with sieve-test (Debian: dovecot-sieve),
contrib/procmail/casethread.procmailrc with procmail, and contrib/postfix/header_checks with
postmap.

The messages are made once per module by `casethread filter` (the engine the milter runs) on
one index, so replies thread and routing rules apply exactly as in production.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SIEVE_SCRIPT = REPO_ROOT / "contrib" / "sieve" / "casethread.sieve"
PROCMAILRC = REPO_ROOT / "contrib" / "procmail" / "casethread.procmailrc"
HEADER_CHECKS = REPO_ROOT / "contrib" / "postfix" / "header_checks"
CASETHREAD = Path(sys.executable).with_name("casethread")
TIMEOUT = 60

CONFIG = """\
inbound:
  addresses: [support@example.com, billing@example.com, escalation@example.com]
  flood: {limit: 2, window: 1h}
routing:
  rules:
    - rcpt: [billing@example.com]
      queue: billing
    - rcpt: [escalation@example.com]
      queue: emea/escalation
    - sender: ["@vip.example"]
      queue: vip
"""


def _mail(sender: str, rcpt: str, subject: str, msgid: str, *extra: str) -> bytes:
    lines = [f"From: {sender}", f"To: {rcpt}", f"Subject: {subject}",
             f"Message-ID: <{msgid}>", "Date: Sat, 28 Nov 2026 10:00:00 +0000", *extra]
    return ("\n".join(lines) + "\n\nHello,\nplease help.\n").encode()


# Sam's reply to our mail as a mailing list relays it.
LIST_REPLY = _mail("sam@customer.example", "support@example.com", "[team] Re: Printer",
                   "s1@customer.example", "In-Reply-To: <p1@customer.example>",
                   "Precedence: list", "List-Id: <team.lists.example>")

# (name, envelope sender, envelope recipient, message), run through the filter in this order.
INPUTS: list[tuple[str, str, str, bytes]] = [
    ("support", "pat@customer.example", "support@example.com",
     _mail("pat@customer.example", "support@example.com", "Printer", "p1@customer.example")),
    ("billing", "pat@customer.example", "billing@example.com",
     _mail("pat@customer.example", "billing@example.com", "Invoice", "p2@customer.example")),
    ("reply", "kim@customer.example", "support@example.com",
     _mail("kim@customer.example", "support@example.com", "Re: Printer", "k1@customer.example",
           "In-Reply-To: <p1@customer.example>")),
    ("auto", "ooo@customer.example", "support@example.com",
     _mail("ooo@customer.example", "support@example.com", "Out of office",
           "o1@customer.example", "Auto-Submitted: auto-replied",
           "In-Reply-To: <p1@customer.example>")),
    ("vip", "boss@vip.example", "support@example.com",
     _mail("boss@vip.example", "support@example.com", "Urgent", "b1@vip.example")),
    ("slashed", "lee@customer.example", "escalation@example.com",
     _mail("lee@customer.example", "escalation@example.com", "Escalate", "l1@customer.example")),
    # Sam's reply relayed by a mailing list we are on answers our mail: filed as Sam's reply.
    # The same list mail again (a duplicate: it changed nothing), bulk mail that names a case
    # only by its guessable number, and bulk mail that names none go to Auto.
    ("list-reply", "team-bounces@lists.example", "support@example.com", LIST_REPLY),
    ("list-copy", "team-bounces@lists.example", "support@example.com", LIST_REPLY),
    ("list-by-number", "team-bounces@lists.example", "support@example.com",
     _mail("lee@customer.example", "support@example.com", "[team] Re: [Case C-000004]",
           "l2@customer.example", "Precedence: list", "List-Id: <team.lists.example>")),
    ("newsletter", "news@shop.example", "support@example.com",
     _mail("news@shop.example", "support@example.com", "Sale!", "n1@shop.example",
           "Precedence: bulk")),
    # Not for an inbound address: casethread strips the forged headers, nothing is filed.
    ("other", "pat@customer.example", "friend@elsewhere.example",
     _mail("pat@customer.example", "friend@elsewhere.example", "Lunch", "p3@customer.example",
           "X-Case-ID: C-000001", "X-Case-Queue: billing")),
    ("bot-1", "bot@robot.example", "support@example.com",
     _mail("bot@robot.example", "support@example.com", "Alert", "r1@robot.example")),
    ("bot-2", "bot@robot.example", "support@example.com",
     _mail("bot@robot.example", "support@example.com", "Alert", "r2@robot.example")),
    ("loop", "bot@robot.example", "support@example.com",
     _mail("bot@robot.example", "support@example.com", "Alert", "r3@robot.example")),
    # The agent's answer to Pat, Cc support@: the copy delivered to the support mailbox is
    # outbound mail, with nothing but its X-Case-ID. Not filed away: a colleague's request
    # to support@ sent the same way looks just like it.
    ("agent-copy", "support@example.com", "support@example.com",
     _mail("dana@example.com", "pat@customer.example", "Re: Printer", "a1@example.com",
           "Cc: support@example.com", "In-Reply-To: <p1@customer.example>")),
]
# Sent through the outbound path (the submission service); the others arrive from outside.
OUTBOUND = {"agent-copy"}

# What the milter's headers say for each message (checked first, so a change in the engine
# shows up here and not as a puzzling filing failure below): (X-Case-ID, Queue, Auto, Loop).
HEADERS = {
    "support": ("C-000001", "support", "no", None),
    "billing": ("C-000002", "billing", "no", None),
    "reply": ("C-000001", "support", "no", None),
    "auto": ("C-000001", "support", "auto-replied", None),
    "vip": ("C-000003", "vip", "no", None),
    "slashed": ("C-000004", "emea/escalation", "no", None),
    "list-reply": ("C-000001", "support", "bulk", None),
    "list-copy": ("C-000001", "support", "bulk", None),
    "list-by-number": ("C-000004", "emea/escalation", "bulk", None),
    "newsletter": (None, None, "bulk", None),
    "other": (None, None, None, None),
    "bot-1": ("C-000005", "support", "no", None),
    "bot-2": ("C-000006", "support", "no", None),
    "loop": (None, None, "no", "yes"),
    "agent-copy": ("C-000001", None, None, None),
}

# Where each example files each message; None: not filed (INBOX / no Postfix action).
SIEVE_FOLDERS = {
    "support": "Cases/support", "billing": "Cases/billing", "reply": "Cases/support",
    "auto": "Cases/Auto", "vip": "Cases/vip", "slashed": "Cases/emea/escalation",
    "list-reply": "Cases/support", "list-copy": "Cases/Auto", "list-by-number": "Cases/Auto",
    "newsletter": "Cases/Auto",
    "other": "INBOX", "bot-1": "Cases/support", "bot-2": "Cases/support", "loop": "Cases/Auto",
    "agent-copy": "INBOX",
}
PROCMAIL_FOLDERS = {
    **{name: "." + folder.replace("/", ".") + "/" for name, folder in SIEVE_FOLDERS.items()},
    # A queue name with "/" must not escape the Maildir: filed into the Cases folder itself.
    "slashed": ".Cases/",
    "other": "",  # DEFAULT: the Maildir's own INBOX
    "agent-copy": ".Cases/",  # case mail without a queue
}
POSTFIX_ACTIONS = {
    "billing": "FILTER smtp:[billing-desk.example.com]:25",
    "vip": "REDIRECT vip-desk@example.com",
}


def _header(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\n\n", 1)[0].decode()
    return [v.strip() for n, v in re.findall(r"^([^:\s]+):(.*)$", head, re.M)
            if n.lower() == name.lower()]


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each input as `casethread filter` (inbound) leaves it, keyed by name."""
    work = tmp_path_factory.mktemp("filter")
    (work / "casethread.yaml").write_text(CONFIG)
    out: dict[str, bytes] = {}
    for name, sender, rcpt, raw in INPUTS:
        result = subprocess.run(
            [str(CASETHREAD), "filter", "--config", str(work / "casethread.yaml"),
             "--index", str(work / "index"),
             "--direction", "outbound" if name in OUTBOUND else "auto",
             "--mail-from", sender, "--rcpt", rcpt, "-"],
            input=raw, capture_output=True, cwd=work, timeout=TIMEOUT, check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        out[name] = result.stdout
    return out


def test_the_filtered_messages_carry_the_expected_headers(produced: dict[str, bytes]) -> None:
    for name, (case_id, queue, auto, loop) in HEADERS.items():
        raw = produced[name]
        got = tuple(next(iter(_header(raw, h)), None)
                    for h in ("X-Case-ID", "X-Case-Queue", "X-Case-Auto", "X-Case-Loop"))
        assert got == (case_id, queue, auto, loop), name


# --------------------------------------------------------------------------- Sieve


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory an unprivileged user can read and write. Dovecot's tools refuse to run
    as root, so as root sieve-test runs as nobody, who cannot enter pytest's 0700 tmp_path."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="casethread-sieve-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tool(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"`{name}` is missing: apt-get install {package} (make test installs it)",
                pytrace=False)


def sieve_result(sieve_test: str, script: Path, message: Path) -> tuple[list[str], list[str]]:
    """(folders stored into, IMAP flags added) from sieve-test's report of its actions."""
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        kwargs = {"user": "nobody", "group": "nogroup", "extra_groups": []}
    result = subprocess.run(
        [sieve_test, str(script), str(message)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(script.parent)},
        **kwargs,  # type: ignore[call-overload]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error" not in result.stderr, result.stderr
    folders = re.findall(r"store message in folder: (\S+)", result.stdout)
    flags = [f for line in re.findall(r"add IMAP flags: (.*)", result.stdout)
             for f in line.split()]
    return folders, flags


def test_sieve_files_by_queue_and_flags_by_case(
    produced: dict[str, bytes], shared_dir: Path
) -> None:
    sieve_test = _tool("sieve-test", "dovecot-sieve")
    # A copy: sieve-test writes the compiled script next to the source.
    script = shared_dir / "casethread.sieve"
    shutil.copyfile(SIEVE_SCRIPT, script)
    filed: dict[str, tuple[list[str], list[str]]] = {}
    for name, raw in produced.items():
        message = shared_dir / f"{name}.eml"
        message.write_bytes(raw)
        message.chmod(0o644)
        filed[name] = sieve_result(sieve_test, script, message)
    for name, folder in SIEVE_FOLDERS.items():
        folders, flags = filed[name]
        assert folders == [folder], name  # exactly one delivery, no implicit keep besides
        case_id = HEADERS[name][0]
        assert flags == ([case_id] if case_id else []), name


def test_sieve_ignores_case_headers_the_milter_did_not_write(shared_dir: Path) -> None:
    """Sanity of the guard: raw mail with only a forged X-Case-Queue stays in INBOX (in
    production the milter strips it anyway)."""
    sieve_test = _tool("sieve-test", "dovecot-sieve")
    script = shared_dir / "casethread.sieve"
    shutil.copyfile(SIEVE_SCRIPT, script)
    message = shared_dir / "forged.eml"
    message.write_bytes(_mail("x@y.example", "support@example.com", "Hi", "f@y.example",
                              "X-Case-Queue: billing"))
    message.chmod(0o644)
    assert sieve_result(sieve_test, script, message) == (["INBOX"], [])


# --------------------------------------------------------------------------- procmail


def test_procmail_files_by_queue(produced: dict[str, bytes], tmp_path: Path) -> None:
    procmail = _tool("procmail", "procmail")
    for name, raw in produced.items():
        maildir = tmp_path / name / "Maildir"
        maildir.mkdir(parents=True)
        # The way the recipe's header says to use it: from the user's own rcfile.
        rcfile = tmp_path / name / "procmailrc"
        rcfile.write_text(
            f"MAILDIR={maildir}/\nDEFAULT=$MAILDIR\nLOGFILE={tmp_path / name / 'log'}\n"
            f"INCLUDERC={PROCMAILRC}\n"
        )
        result = subprocess.run(
            [procmail, str(rcfile)], input=raw, capture_output=True, timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        delivered = [p for p in maildir.rglob("*") if p.is_file()]
        assert len(delivered) == 1, (name, delivered)
        [path] = delivered
        assert path.read_bytes() == raw, name
        folder = str(path.parent.parent.relative_to(maildir))
        expected = PROCMAIL_FOLDERS[name].rstrip("/") or "."
        assert (folder, path.parent.name) == (expected, "new"), name


# --------------------------------------------------------------------------- Postfix


def test_postfix_header_checks_route_by_queue(
    produced: dict[str, bytes], tmp_path: Path
) -> None:
    postmap = _tool("postmap", "postfix")
    # postmap reads main.cf; an empty one keeps the machine's /etc/postfix out of it.
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    actions: dict[str, list[str]] = {}
    for name, raw in produced.items():
        head = raw.split(b"\n\n", 1)[0].decode()
        # One logical line per header, unfolded, as Postfix hands them to the table.
        lines = [re.sub(r"\n[ \t]", " ", f) for f in re.split(r"\n(?![ \t])", head)]
        result = subprocess.run(
            [postmap, "-c", str(tmp_path), "-q", "-", f"regexp:{HEADER_CHECKS}"],
            input="".join(line + "\n" for line in lines),
            capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )
        # postmap -q - exits 0 when a line matched, 1 when none did.
        assert result.returncode in (0, 1), result.stderr
        assert result.stderr == "", result.stderr
        matched = [out.split("\t", 1) for out in result.stdout.splitlines()]
        assert all(key in lines for key, _ in matched), matched
        if matched:
            actions[name] = [action for _, action in matched]
    assert actions == {name: [action] for name, action in POSTFIX_ACTIONS.items()}
