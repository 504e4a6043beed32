"""`make soak`: a real Postfix, the real `casethread serve`, a receiving sink, and mixed mail.

    .venv/bin/python bench/soak.py [--count 20000] [--sessions 50] [--kills 0] [--seed 1]

50 SMTP sessions (threads, each keeping its connection open for 1-10 messages, as real
clients do) push `--count` messages through a private Postfix (tests/e2e/harness.py, configured
from contrib/postfix/) into casethread and on to an aiosmtpd sink. The mix: agents' new mail
(plain, HTML with an attachment, with and without a Message-ID), their follow-ups, customers'
replies (threading by In-Reply-To, References, the Subject token, a token quoted in the body,
Outlook's Thread-Index), new questions (some with forged X-Case-* fields), auto-replies,
bounces (DSNs of our mail), large mail (1-4 MB) and malformed mail. With `--kills N` the milter
is killed with SIGKILL N times during the run and restarted.

Pass criteria, each printed with its figure (exit status 0 only when all pass):
  1. every message arrives exactly once (counted by a serial header and by Message-ID);
  2. no ERROR line in the milter's log;
  3. every message was filtered (contrib's milter_default_action = tempfail: mail that comes
     while the milter is down is refused with a 451 and sent again), and every case a
     delivered message names, and every stamped Message-ID, is in the index (mail that names
     no case and opens none, automatic or over the flood limit, records nothing: counted);
  4. no duplicate case ids: case numbers unique and dense, every new conversation its own case;
  5. replies, auto-replies, bounces and follow-ups thread to their conversation's case;
  6. the milter's RSS is flat: VmRSS (first, last, max) is reported; the judgement is on
     RssAnon (VmRSS also counts the LMDB map pages touched, which grow with the index): its
     median over the last fifth of the run is within 10 % (issue 5's target) of its median
     after warm-up, or 4 MiB (a 20,000 run ends while its ~28 MiB heap still settles: +3.5 MiB;
     a 100,000 run's stays within 3 %) (/proc/PID/status, sampled twice a second; not judged
     below 10 samples).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import random
import re
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AGENT = "agent@helpdesk.example"
SUPPORT = "support@helpdesk.example"
# Spread over many senders (x 50 domains), below the flood limit (20 an hour each), except
# the first conversations' customers: every reply picks among the conversations so far.
CUSTOMERS = 2000
MIB = 1 << 20


def load_harness() -> ModuleType:
    """tests/e2e/harness.py: the same private Postfix and sink the e2e tests use."""
    spec = importlib.util.spec_from_file_location("casethread_e2e_harness",
                                                  REPO / "tests" / "e2e" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


h = load_harness()


# --- the mail -------------------------------------------------------------------------------


@dataclass
class Conversation:
    """An agent's stamped mail as delivered: what replies to it carry."""

    seq: int
    case_id: str
    message_id: str
    token: str
    thread_index: str | None
    subject: str
    customer: str
    last_reply_id: str | None = None


@dataclass
class Mail:
    seq: int
    kind: str
    raw: bytes
    mail_from: str
    rcpt: str
    outbound: bool
    message_id: str | None
    expect_case_of: int | None = None  # the conversation (its seq) it must thread to
    expect_case: str | None = None  # or the case id itself (known when sent)
    new_case: bool = False  # must open a case of its own
    queue_id: str = ""  # Postfix's, once accepted


def _lines(*lines: str) -> str:
    return "\r\n".join(lines)


def _customer(rng: random.Random) -> str:
    return f"customer{rng.randrange(CUSTOMERS)}@customer{rng.randrange(50)}.example"


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 32 + b"\n%%EOF\n"


class Generator:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seq = 0
        self.conversations: list[Conversation] = []
        self.customer_replies: list[tuple[int, str]] = []  # (conversation seq, Message-ID)

    def next(self) -> Mail:
        with self._lock:
            self._seq += 1
            seq = self._seq
            rng = random.Random(self._rng.random())
            conv = rng.choice(self.conversations) if self.conversations else None
            reply = rng.choice(self.customer_replies) if self.customer_replies else None
        kinds = [("outbound-new", 28), ("reply", 30), ("question", 10), ("auto-reply", 8),
                 ("bounce", 5), ("follow-up", 7), ("malformed", 5), ("large", 1),
                 ("app-case-id", 6)]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if conv is None and kind in ("reply", "auto-reply", "bounce", "follow-up",
                                     "app-case-id"):
            kind = "outbound-new"
        if kind == "follow-up" and reply is None:
            kind = "reply"
        assert conv is not None or kind in ("outbound-new", "question", "malformed", "large")
        if kind == "outbound-new":
            return self._outbound_new(seq, rng)
        if kind == "reply":
            assert conv is not None
            return self._reply(seq, rng, conv)
        if kind == "question":
            return self._question(seq, rng)
        if kind == "auto-reply":
            assert conv is not None
            return self._auto_reply(seq, rng, conv)
        if kind == "bounce":
            assert conv is not None
            return self._bounce(seq, conv)
        if kind == "follow-up":
            assert reply is not None
            return self._follow_up(seq, reply)
        if kind == "app-case-id":
            assert conv is not None
            return self._app_case_id(seq, conv)
        if kind == "large":
            return self._large(seq, rng)
        return self._malformed(seq, rng)

    def _outbound_new(self, seq: int, rng: random.Random) -> Mail:
        customer = _customer(rng)
        mid = f"<agent-{seq}@helpdesk.example>" if rng.random() < 0.7 else None
        head = [f"From: Dana Agent <{AGENT}>", f"To: <{customer}>",
                f"Subject: Your request {seq}", f"X-Soak-Seq: {seq}", "MIME-Version: 1.0"]
        if mid:
            head.append(f"Message-ID: {mid}")
        if rng.random() < 0.3:
            pdf = base64.encodebytes(PDF).decode().replace("\n", "\r\n")
            head.append('Content-Type: multipart/mixed; boundary="mix"')
            body = _lines(
                "--mix", 'Content-Type: multipart/alternative; boundary="alt"', "",
                "--alt", "Content-Type: text/plain; charset=utf-8",
                "Content-Transfer-Encoding: quoted-printable", "",
                f"Hello, about your request {seq}. Gr=C3=BC=C3=9Fe", "--alt",
                "Content-Type: text/html; charset=utf-8", "",
                f"<html><body><p>Hello, about your request {seq}.</p></body></html>",
                "--alt--", "--mix", "Content-Type: application/pdf",
                'Content-Disposition: attachment; filename="x.pdf"',
                "Content-Transfer-Encoding: base64", "", pdf + "--mix--", "")
        else:
            head.append("Content-Type: text/plain; charset=utf-8")
            body = f"Hello,\r\nabout your request {seq}.\r\n"
        raw = (_lines(*head) + "\r\n\r\n" + body).encode()
        return Mail(seq, "outbound-new", raw, AGENT, customer, True, mid, new_case=True)

    def _reply(self, seq: int, rng: random.Random, conv: Conversation) -> Mail:
        how = rng.choice(["in-reply-to", "references", "token-subject", "token-body",
                          "thread-index"])
        mid = f"<reply-{seq}@{conv.customer.split('@')[1]}>"
        head = [f"From: <{conv.customer}>", f"To: <{SUPPORT}>", f"Message-ID: {mid}",
                f"X-Soak-Seq: {seq}"]
        subject = f"Re: {conv.subject}"
        body = "Thanks, that helped.\r\n"
        if how == "in-reply-to":
            head.append(f"In-Reply-To: {conv.message_id}")
        elif how == "references":
            head.append(f"References: <older-{seq}@x.example> {conv.message_id}")
        elif how == "token-subject":
            subject = f"Re: request [ref:{conv.token}]"
        elif how == "token-body":
            subject = "Re: request"
            body = f"Thanks.\r\n\r\n> Hello, about your request. [ref:\r\n> {conv.token}]\r\n"
        elif conv.thread_index:
            from casethread.core import thread_index

            raw_ti = thread_index.decode(conv.thread_index)
            assert raw_ti is not None
            head.append("Thread-Index: " + thread_index.encode(
                thread_index.child(raw_ti, 1_800_000_000 + seq)))
            subject = "RE: request"
        else:
            head.append(f"In-Reply-To: {conv.message_id}")
        head.append(f"Subject: {subject}")
        raw = (_lines(*head) + "\r\n\r\n" + body).encode()
        return Mail(seq, "reply", raw, conv.customer, SUPPORT, False, mid,
                    expect_case=conv.case_id, expect_case_of=conv.seq)

    def _question(self, seq: int, rng: random.Random) -> Mail:
        customer = _customer(rng)
        mid = f"<question-{seq}@customer.example>"
        head = [f"From: <{customer}>", f"To: <{SUPPORT}>", f"Subject: Help needed {seq}",
                f"Message-ID: {mid}", f"X-Soak-Seq: {seq}"]
        if rng.random() < 0.3:
            head += ["X-Case-ID: C-000001", "x-case-queue: vip", "X-CASE-STATE: closed"]
        raw = (_lines(*head) + "\r\n\r\nMy printer is on fire.\r\n").encode()
        return Mail(seq, "question", raw, customer, SUPPORT, False, mid, new_case=True)

    def _auto_reply(self, seq: int, rng: random.Random, conv: Conversation) -> Mail:
        mid = f"<ooo-{seq}@customer.example>"
        head = [f"From: <{conv.customer}>", f"To: <{SUPPORT}>",
                f"Subject: Automatic reply: {conv.subject}", f"Message-ID: {mid}",
                f"In-Reply-To: {conv.message_id}", f"X-Soak-Seq: {seq}",
                rng.choice(["Auto-Submitted: auto-replied", "X-Autoreply: yes",
                            "Precedence: auto_reply"])]
        raw = (_lines(*head) + "\r\n\r\nI am out of the office.\r\n").encode()
        return Mail(seq, "auto-reply", raw, conv.customer, SUPPORT, False, mid,
                    expect_case=conv.case_id, expect_case_of=conv.seq)

    def _bounce(self, seq: int, conv: Conversation) -> Mail:
        mid = f"<dsn-{seq}@relay.example>"
        raw = (_lines(
            "From: Mail Delivery System <MAILER-DAEMON@relay.example>", f"To: <{AGENT}>",
            "Subject: Undelivered Mail Returned to Sender", f"Message-ID: {mid}",
            f"X-Soak-Seq: {seq}", "Auto-Submitted: auto-replied", "MIME-Version: 1.0",
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"', "",
            "--B", "Content-Type: text/plain", "", "Your message could not be delivered.",
            "--B", "Content-Type: message/delivery-status", "", "Reporting-MTA: dns; relay",
            "", f"Final-Recipient: rfc822; {conv.customer}", "Action: failed",
            "Status: 5.1.1", "--B", "Content-Type: text/rfc822-headers", "",
            f"From: <{AGENT}>", f"To: <{conv.customer}>", f"Subject: {conv.subject}",
            f"Message-ID: {conv.message_id}", "--B--", "")).encode()
        return Mail(seq, "bounce", raw, "", AGENT, False, mid, expect_case=conv.case_id,
                    expect_case_of=conv.seq)

    def _follow_up(self, seq: int, reply: tuple[int, str]) -> Mail:
        conv_seq, reply_id = reply
        mid = f"<agent-followup-{seq}@helpdesk.example>"
        raw = (_lines(f"From: Dana Agent <{AGENT}>", "To: <someone@customer.example>",
                      "Subject: Re: your reply", f"Message-ID: {mid}",
                      f"In-Reply-To: {reply_id}", f"X-Soak-Seq: {seq}") +
               "\r\n\r\nWe are on it.\r\n").encode()
        return Mail(seq, "follow-up", raw, AGENT, "someone@customer.example", True, mid,
                    expect_case_of=conv_seq)

    def _app_case_id(self, seq: int, conv: Conversation) -> Mail:
        mid = f"<app-{seq}@helpdesk.example>"
        raw = (_lines(f"From: Dana Agent <{AGENT}>", f"To: <{conv.customer}>",
                      "Subject: Update on your case", f"Message-ID: {mid}",
                      f"X-Case-ID: {conv.case_id}", f"X-Soak-Seq: {seq}") +
               "\r\n\r\nAn update.\r\n").encode()
        return Mail(seq, "app-case-id", raw, AGENT, conv.customer, True, mid,
                    expect_case=conv.case_id)

    def _large(self, seq: int, rng: random.Random) -> Mail:
        size = rng.randint(1, 4) * MIB
        line = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 1)[:76]
        body = (line + "\r\n") * (size // 78)
        outbound = rng.random() < 0.5
        mid = f"<large-{seq}@example.org>"
        sender = AGENT if outbound else _customer(rng)
        rcpt = _customer(rng) if outbound else SUPPORT
        raw = (_lines(f"From: <{sender}>", f"To: <{rcpt}>", f"Subject: Large {seq}",
                      f"Message-ID: {mid}", f"X-Soak-Seq: {seq}",
                      "Content-Type: text/plain; charset=us-ascii") + "\r\n\r\n" + body
               ).encode()
        return Mail(seq, "large", raw, sender, rcpt, outbound, mid, new_case=outbound)

    def _malformed(self, seq: int, rng: random.Random) -> Mail:
        mid = f"<bad-{seq}@customer.example>"
        customer = _customer(rng)
        base = [f"From: <{customer}>", f"To: <{SUPPORT}>", f"Message-ID: {mid}",
                f"X-Soak-Seq: {seq}"]
        variant = rng.randrange(6)
        if variant == 0:  # a multipart whose boundary never comes
            raw = _lines(*base, "Subject: broken", "MIME-Version: 1.0",
                         'Content-Type: multipart/mixed; boundary="never"', "",
                         "--wrong", "Content-Type: text/plain", "", "text", "")
            data = raw.encode()
        elif variant == 1:  # 8-bit header bytes that are not UTF-8, and bare LFs
            data = (_lines(*base) + "\r\nSubject: caf\xe9 cr\xe8me\r\n\r\nline\nline\n"
                    ).encode("latin-1")
        elif variant == 2:  # garbage base64 and a charset no codec knows
            data = _lines(*base, "Subject: b64", "MIME-Version: 1.0",
                          "Content-Type: text/plain; charset=x-unknown-9",
                          "Content-Transfer-Encoding: base64", "", "!!!!not base64@@@@",
                          "").encode()
        elif variant == 3:  # no Subject, no Date, an empty From, an overlong line
            data = (_lines(f"To: <{SUPPORT}>", "From:", f"Message-ID: {mid}",
                           f"X-Soak-Seq: {seq}") + "\r\n\r\n" + "x" * 5000 + "\r\n").encode()
        elif variant == 4:  # deep nesting and a token-like forgery
            nested = "".join(f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n"
                             for i in range(80))
            data = (_lines(*base, "Subject: Re: [ref:11ZZZZZZZZZZZZZZZZZZ]",
                           "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=b0")
                    + "\r\n\r\n" + nested + "text\r\n").encode()
        else:  # folded forged fields, encoded words, References full of junk
            refs = " ".join(f"<junk{i}@{'x' * 30}.example>" for i in range(300))
            data = (_lines(*base, "Subject: =?utf-8?q?=E2=9C=89?= =?bogus?x?abc?=",
                           "x-CASE-id:", "\tC-000001", f"References: {refs}") +
                    "\r\n\r\nhi\r\n").encode()
        return Mail(seq, "malformed", data, customer, SUPPORT, False, mid)


# --- sending --------------------------------------------------------------------------------


class Session:
    """One SMTP client: a connection per port, kept for a few messages."""

    def __init__(self, postfix: Any, tally: Counter[str], lock: threading.Lock) -> None:
        self._postfix = postfix
        self._conns: dict[int, smtplib.SMTP] = {}
        self._uses: Counter[int] = Counter()
        self._tally = tally
        self._lock = lock
        self._rng = random.Random(id(self))

    def _conn(self, port: int) -> smtplib.SMTP:
        conn = self._conns.get(port)
        # 1 to 10 messages per connection. Postfix skips a milter that failed for the rest of
        # that SMTP session (milter_default_action), so long sessions hide a restart longer.
        if conn is None or self._uses[port] >= self._rng.randint(1, 10):
            self._close(port)
            conn = smtplib.SMTP("127.0.0.1", port, local_hostname="client.soak.test",
                                timeout=120)
            conn.ehlo()
            self._conns[port] = conn
            self._uses[port] = 0
        self._uses[port] += 1
        return conn

    def _close(self, port: int) -> None:
        conn = self._conns.pop(port, None)
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()

    def close(self) -> None:
        for port in list(self._conns):
            self._close(port)

    @staticmethod
    def _transaction(conn: smtplib.SMTP, mail: Mail, options: list[str]) -> str:
        """MAIL, RCPT, DATA; Postfix's queue id from the final reply. A refusal raises an
        SMTPResponseException (4xx: try again)."""
        code, reply = conn.mail(mail.mail_from, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, mail.mail_from)
        code, reply = conn.rcpt(mail.rcpt)
        if code not in (250, 251):
            conn.rset()
            raise smtplib.SMTPResponseException(code, reply)
        code, reply = conn.data(mail.raw)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        found = re.search(rb"queued as (\w+)", reply)
        return found.group(1).decode() if found else "?"

    def send(self, mail: Mail) -> None:
        port = self._postfix.submission_port if mail.outbound else self._postfix.inbound_port
        options = ["BODY=8BITMIME"] if any(b > 0x7F for b in mail.raw) else []
        for attempt in range(8):
            try:
                mail.queue_id = self._transaction(self._conn(port), mail, options)
                return
            except smtplib.SMTPResponseException as exc:
                if not 400 <= exc.smtp_code < 500:
                    raise
                reason = f"retried after {exc.smtp_code}"
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
                reason = f"retried after {type(exc).__name__}"
            with self._lock:
                self._tally[reason] += 1
            self._close(port)
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"message {mail.seq} not accepted after 8 attempts")


# --- the milter -----------------------------------------------------------------------------


class Milter:
    """`casethread serve`, restartable, with its RSS sampled once a second."""

    def __init__(self, sock: Any, config: Path, index: Path, workdir: Path) -> None:
        self._argv = h.casethread_serve_argv(sock, config=config, index=index)
        self._sock = sock
        self._workdir = workdir
        self.procs: list[Any] = []
        # (VmRSS, RssAnon) in KiB, per process. VmRSS includes the pages of the LMDB map
        # the milter has touched (RssFile), which grow with the index; a leak is anonymous.
        self.rss: list[list[tuple[int, int]]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        proc = h.MilterProcess(self._argv, None, self._sock, cwd=self._workdir,
                               log_path=self._workdir / f"milter-{len(self.procs)}.log")
        proc.start()
        self.procs.append(proc)
        self.rss.append([])
        if self._sampler.ident is None:
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            proc = self.procs[-1]
            # A killed process (a zombie) has no VmRSS line: skip that sample.
            with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                vm, anon = (int(re.search(rf"{k}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                            for k in ("VmRSS", "RssAnon"))
                self.rss[len(self.procs) - 1].append((vm, anon))

    def kill_and_restart(self, pause: float) -> int | None:
        status: int | None = self.procs[-1].kill()
        time.sleep(pause)
        self.start()
        return status

    def stop(self) -> int | None:
        self._stop.set()
        code: int | None = self.procs[-1].stop()
        for proc in self.procs:
            if proc.running():
                proc.kill()
        return code

    def decisions(self) -> int:
        """Messages the running milter has decided on (its log lines)."""
        return int(self.procs[-1].output().count(" direction="))

    def logs(self) -> str:
        return "".join(p.output() for p in self.procs)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: bool | None  # None: not judged (too little data)
    figure: str


@dataclass
class Run:
    args: argparse.Namespace
    sent: dict[int, Mail] = field(default_factory=dict)
    tally: Counter[str] = field(default_factory=Counter)
    errors: list[BaseException] = field(default_factory=list)


def harvest(postfix: Any, gen: Generator, run: Run, stop: threading.Event) -> None:
    """Turn delivered stamped mail into conversations later mail can reply to."""
    seen = 0
    while not stop.wait(0.2):
        received = postfix.received
        for msg in received[seen:]:
            seq = msg.header("X-Soak-Seq")
            mail = run.sent.get(int(seq)) if seq and seq.isdigit() else None
            case_id = msg.header("X-Case-ID")
            if mail is None or case_id is None:
                continue
            subject = msg.header("Subject") or ""
            if mail.kind == "outbound-new" and "[ref:" in subject:
                token = subject.rsplit("[ref:", 1)[1].rstrip("]").strip()
                conv = Conversation(mail.seq, case_id, msg.header("Message-ID") or "",
                                    token, msg.header("Thread-Index"),
                                    subject.split(" [ref:")[0], mail.rcpt)
                with gen._lock:
                    gen.conversations.append(conv)
            elif mail.kind == "reply" and mail.expect_case_of is not None \
                    and msg.header("X-Case-Match") not in (None, "new"):
                with gen._lock:
                    gen.customer_replies.append((mail.expect_case_of, mail.message_id or ""))
        seen = len(received)


def bare(message_id: str) -> str:
    return message_id.strip().strip("<>").lower()


def is_filtered(mail: Mail, msg: Any) -> bool:
    """Whether the milter handled it."""
    if mail.outbound:
        return "[ref:" in (msg.header("Subject") or "")
    return msg.header("X-Case-Match") is not None


def verify(run: Run, received: list[Any], milter: Milter, index: Path) -> list[Result]:
    results: list[Result] = []
    sent = run.sent
    by_seq: dict[int, Any] = {}
    dup_seq: Counter[int] = Counter()
    for msg in received:
        seq = msg.header("X-Soak-Seq")
        if seq and seq.isdigit():
            dup_seq[int(seq)] += 1
            by_seq[int(seq)] = msg
    lost = sorted(set(sent) - set(by_seq))
    for seq in lost[:10]:
        print(f"  lost: seq {seq} {sent[seq].kind} queue id {sent[seq].queue_id}")
    dups = [s for s, n in dup_seq.items() if n > 1]
    mids = Counter(bare(m.header("Message-ID") or "") for m in received
                   if m.header("Message-ID"))
    dup_mids = [k for k, n in mids.items() if n > 1]
    with_id = sum(1 for m in sent.values() if m.message_id)
    results.append(Result(
        "every message arrives exactly once",
        not lost and not dups and not dup_mids and len(received) == len(sent),
        f"sent {len(sent)}, delivered {len(received)}, lost {len(lost)}, duplicated "
        f"{len(dups)}; {len(mids)} distinct Message-IDs ({with_id} set by the sender, the "
        f"rest added), {len(dup_mids)} seen twice"))

    log = milter.logs()
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    results.append(Result("no ERROR line in the milter log", not errors,
                          f"{len(errors)} ERROR lines" + (f"; first: {errors[0][:300]}"
                                                          if errors else "")))

    dump = h.IndexExport.read(index)
    counter, cases, messages = dump.counter, dump.cases, dump.messages
    missing_cases: list[str] = []
    missing_mids: list[str] = []
    filtered = unfiltered = caseless = 0
    for seq, msg in by_seq.items():
        if not is_filtered(sent[seq], msg):
            unfiltered += 1
            continue
        filtered += 1
        ids = msg.get_all("X-Case-ID")
        missing_cases += [i for i in ids if i not in cases]
        mid = msg.header("Message-ID")
        if msg.header("X-Case-Match") == "none":
            # Automatic or looping mail that names no case opens none and records nothing
            # (an early conversation's customer passes the flood limit in a long run).
            caseless += 1
        elif mid and dump.case_of(mid) is None:
            ours = " ".join(f"{n}: {v}" for n, v in msg.headers() if n.lower().startswith("x-case"))
            missing_mids.append(f"{mid} ({sent[seq].kind}; {ours or 'no X-Case-* field'})")
    results.append(Result(
        "every message filtered, every case and stamped Message-ID in the index",
        not unfiltered and not missing_cases and not missing_mids,
        f"{filtered} messages filtered, {unfiltered} passed unfiltered, {caseless} with no "
        f"case (automatic or looping, nothing recorded); index holds {len(cases)} cases, "
        f"{len(messages)} Message-IDs; missing cases {len(missing_cases)}, missing "
        f"Message-IDs {len(missing_mids)}"
        + "".join(f"; {what}" for what in missing_mids[:3])))

    numbers = sorted(cases.values())
    new_ids = [by_seq[s].header("X-Case-ID") for s, m in sent.items()
               if m.new_case and s in by_seq and by_seq[s].header("X-Case-ID")
               and (m.outbound or by_seq[s].header("X-Case-Match") == "new")]
    dup_new = [k for k, n in Counter(new_ids).items() if n > 1]
    dense = numbers == list(range(1, len(numbers) + 1)) and counter == len(numbers)
    results.append(Result(
        "no duplicate case ids", dense and not dup_new,
        f"{len(numbers)} case numbers, unique and dense: {dense}; {len(new_ids)} new "
        f"conversations, {len(set(new_ids))} distinct cases"))

    wrong: list[str] = []
    checked: Counter[str] = Counter()
    conv_case = {s: by_seq[s].header("X-Case-ID") for s, m in sent.items()
                 if m.kind == "outbound-new" and s in by_seq}
    for seq, mail in sent.items():
        if mail.kind not in ("reply", "auto-reply", "bounce", "follow-up", "app-case-id"):
            continue
        msg = by_seq.get(seq)
        if msg is None or not is_filtered(mail, msg):
            continue
        want = mail.expect_case or (conv_case.get(mail.expect_case_of)
                                    if mail.expect_case_of else None)
        got = msg.get_all("X-Case-ID")
        checked[mail.kind] += 1
        if want not in got:
            wrong.append(f"{mail.kind} {seq}: {got} want {want} "
                         f"({msg.header('X-Case-Match')})")
    results.append(Result(
        "replies, auto-replies, bounces and follow-ups thread to their case", not wrong,
        f"{sum(checked.values())} checked ({dict(checked)}), {len(wrong)} wrong"
        + (f"; first: {wrong[0]}" if wrong else "")))

    longest = max(milter.rss, key=len)
    flat: bool | None = None
    figure = f"not judged: {len(longest)} samples, the run is too short"
    if len(longest) >= 10:
        vm = [v for v, _ in longest]
        anon = [a for _, a in longest]
        warm = anon[len(anon) // 10 : len(anon) // 5 + 1]
        tail = anon[-max(1, len(anon) // 5):]
        base, end = statistics.median(warm), statistics.median(tail)
        flat = end <= max(base * 1.10, base + 4 * 1024)
        tenths = [statistics.median(anon[i * len(anon) // 10 : (i + 1) * len(anon) // 10])
                  for i in range(10)]
        figure = (f"VmRSS first {vm[0] / 1024:.1f} MiB, last {vm[-1] / 1024:.1f} MiB, max "
                  f"{max(vm) / 1024:.1f} MiB; RssAnon after warm-up {base / 1024:.1f} MiB, "
                  f"median of the last fifth {end / 1024:.1f} MiB "
                  f"({(end - base) / base * 100:+.1f} %), max {max(anon) / 1024:.1f} "
                  f"MiB, by tenth of the run: "
                  + " ".join(f"{t / 1024:.0f}" for t in tenths) + f" MiB ({len(vm)} samples)")
    results.append(Result("milter RSS flat", flat, figure))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000, help="messages to send")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent SMTP sessions")
    parser.add_argument("--kills", type=int, default=0,
                        help="SIGKILL and restart the milter this many times during the run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--socket", choices=["inet", "unix"], default="inet")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after seconds")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="casethread-soak-"))
    sock_dir = None
    if args.socket == "unix":
        sock_dir = h.postfix_accessible_dir("casethread-soak-sock-")
        sock = h.MilterSocket.unix(sock_dir / "milter.sock")
    else:
        sock = h.MilterSocket.inet()
    config = workdir / "casethread.yaml"
    # Bounces come back to the agent's address: it is an inbound address too.
    lines = ["inbound:", f"  addresses: [{SUPPORT}, {AGENT}]"]
    if args.socket == "unix":
        lines += ["milter:", "  socket_group: postfix"]
    config.write_text("\n".join(lines) + "\n")
    index = workdir / "index"
    milter = Milter(sock, config, index, workdir)
    postfix = h.PostfixHarness(sock, rewrite_local_headers=False,
                               extra_main={"default_process_limit": "200"})
    run = Run(args)
    gen = Generator(args.seed)
    lock = threading.Lock()
    print(f"soak: {args.count} messages, {args.sessions} sessions, {args.kills} kills, "
          f"{args.socket} socket; work directory {workdir}", flush=True)
    started = time.monotonic()
    try:
        milter.start()
        postfix.start()
        stop_harvest = threading.Event()
        harvester = threading.Thread(target=harvest, args=(postfix, gen, run, stop_harvest),
                                     daemon=True)
        harvester.start()
        remaining = iter(range(args.count))
        take = threading.Lock()

        def worker() -> None:
            session = Session(postfix, run.tally, lock)
            try:
                while True:
                    with take:
                        if next(remaining, None) is None:
                            return
                        mail = gen.next()
                        run.sent[mail.seq] = mail
                    session.send(mail)
                    with lock:
                        run.tally[mail.kind] += 1
            except BaseException as exc:
                run.errors.append(exc)
            finally:
                session.close()

        workers = [threading.Thread(target=worker, daemon=True) for _ in range(args.sessions)]
        for w in workers:
            w.start()
        kills: list[int | None] = []
        if args.kills:
            # Each milter first filters its share of the mail, then is killed: spacing kills by
            # messages sent would put them at the senders' pace, not the milter's.
            share = args.count // (args.kills + 1)
            for k in range(args.kills):
                while milter.decisions() < share and any(w.is_alive() for w in workers):
                    time.sleep(0.1)
                kills.append(milter.kill_and_restart(random.Random(k).uniform(0, 0.5)))
        last_report = time.monotonic()
        for w in workers:
            while w.is_alive():
                w.join(5)
                if time.monotonic() - started > args.timeout:
                    raise RuntimeError("timeout: senders still running")
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    print(f"  {len(run.sent)} sent, {len(postfix.received)} delivered, "
                          f"{time.monotonic() - started:.0f} s", flush=True)
        if run.errors:
            raise RuntimeError(f"sender failed: {run.errors[0]!r}")
        sent_done = time.monotonic() - started
        # Wait while deliveries progress; a minute without one ends the wait (verify then
        # names what is missing).
        got, quiet_since = -1, time.monotonic()
        while len(postfix.received) < len(run.sent) and time.monotonic() - quiet_since < 60:
            if len(postfix.received) != got:
                got, quiet_since = len(postfix.received), time.monotonic()
            time.sleep(0.5)
        # Duplicates would arrive late: give them a moment.
        time.sleep(2)
        received = postfix.received
        (workdir / "maillog").write_text(postfix.maillog())
        delivered_done = time.monotonic() - started
        stop_harvest.set()
        stop_code = milter.stop()
        results = verify(run, received, milter, index)
        results.append(Result("milter exits 0 on SIGTERM", stop_code == 0,
                              f"exit status {stop_code}"))
        if args.kills:
            results.append(Result(f"{args.kills} kills survived",
                                  kills == [-9] * args.kills, f"exit statuses {kills}"))
        print(f"\nsoak: sent {len(run.sent)} in {sent_done:.1f} s, delivered {len(received)} "
              f"in {delivered_done:.1f} s ({len(received) / delivered_done:.0f} msg/s); mix "
              + ", ".join(f"{k} {v}" for k, v in sorted(run.tally.items())))
        for r in results:
            mark = "PASS" if r.ok else "n/a " if r.ok is None else "FAIL"
            print(f"  [{mark}] {r.name}: {r.figure}")
        ok = all(r.ok is not False for r in results)
        print(f"soak: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        with contextlib.suppress(Exception):
            postfix.stop()
        with contextlib.suppress(Exception):
            milter.stop()
        if sock_dir is not None:
            import shutil

            shutil.rmtree(sock_dir, ignore_errors=True)
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
