"""The real `CaseMilter` driven through pymilter's `Milter.testctx.TestCtx` (no sockets).

TestCtx applies header edits to an `email` message: its chgheader deletes *every* field of that
name and ignores the index, and its addheader appends. So the context below also records each
action call exactly as libmilter would send it, and the tests judge the message as an MTA would
leave it by replaying those calls on the headers as fed (`RecordingCtx.headers_after`).

The engine grows (tokens, Thread-Index, References ...); these tests pin the adapter's contract
(DESIGN §2, §6, §8), not every header the engine may add.
"""

from __future__ import annotations

import base64
import errno
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import Milter
import pytest
from hypothesis import given
from hypothesis import strategies as st
from Milter import testctx

from casethread.core.case_headers import MAX_OWN_FIELDS
from casethread.core.decision import Decision
from casethread.core.message import Message
from casethread.core.model import Direction
from casethread.core.settings import InboundSettings, MilterSettings, OnError, Settings
from casethread.core.stamp import apply_splices
from casethread.core.token import Keyring
from casethread.engine import BodyPlan, Engine
from casethread.index import CaseIndexError, MemoryIndex
from casethread.pymilter_app import APPEND_INDEX, REPLACE_CHUNK, CaseMilter, packets

SUPPORT = "support@example.com"
HOSTNAME = "mx.test.example.net"
NOW = 1_772_442_900.0
MSGID_RE = re.compile(r"<[0-9a-z]+\.[0-9a-z]+@support\.example\.com>")
KEYRING = Keyring([(1, bytes(range(32)))])

Action = tuple[str, str, int, str]  # ("add" | "change", field name, index, value)

AGENT_MAIL = (
    b"From: Dana Agent <dana@support.example.com>\n"
    b"To: Pat Customer <pat@customer.example.org>\n"
    b"Subject: Your printer question\n"
    b"Date: Mon, 02 Mar 2026 09:15:00 +0000\n"
    b"\n"
    b"Hello Pat, which model is it?\n"
)


def customer_mail(*extra: str, message_id: str = "<reply-1.pat@customer.example.org>") -> bytes:
    lines = [
        "From: Pat Customer <pat@customer.example.org>",
        f"To: Support <{SUPPORT}>",
        "Subject: Re: Your printer question",
        f"Message-ID: {message_id}",
        *extra,
    ]
    return ("\n".join(lines) + "\n\nIt is the LaserThing 3000.\n").encode()


def apply_actions(headers: list[tuple[str, str]], actions: list[Action]) -> list[tuple[str, str]]:
    """Replay milter header actions in order, as Postfix does: an add goes last, an insert
    (an index >= 0) goes before the field at that position, or last past them all; a change's
    index counts the fields of that name (case-insensitive) present at that moment, and the
    field takes the name the milter gave; an empty value deletes."""
    result = [list(h) for h in headers]
    for kind, name, idx, value in actions:
        if kind == "add":
            result.insert(len(result) if idx < 0 else min(idx, len(result)), [name, value])
            continue
        same = [i for i, (n, _v) in enumerate(result) if n.lower() == name.lower()]
        if idx > len(same):
            if value:
                result.append([name, value])
        elif value:
            result[same[idx - 1]] = [name, value]
        else:
            del result[same[idx - 1]]
    return [(n, v) for n, v in result]


ALL_NO_REPLY = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
                | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
                | Milter.P_NR_HDR)
# TestCtx also stops feeding at a SKIP reply instead of going on to end of message.
MTA_WITHOUT_NR = 0x1FFFFF & ~ALL_NO_REPLY & ~Milter.P_SKIP


class RecordingCtx(testctx.TestCtx):  # type: ignore[misc]
    def __init__(self, logfile: str) -> None:
        super().__init__(logfile=logfile)
        self.actions: list[Action] = []
        self.fed: list[tuple[str, str]] = []
        self.replaced: list[bytes] = []  # each replacebody() call's bytes

    def addheader(self, field: str, value: str, idx: int) -> None:
        self.actions.append(("add", field, idx, value))
        super().addheader(field, value, idx)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        self.actions.append(("change", field, idx, value))
        super().chgheader(field, idx, value)

    def replacebody(self, chunk: bytes) -> None:
        self.replaced.append(bytes(chunk))
        super().replacebody(chunk)

    def _header(self, fld: str, val: Any) -> int:
        self.fed.append((fld, str(val)))
        return int(super()._header(fld, val))

    def macros(self, **values: str | None) -> None:
        """Set or (None) drop macros by bare name: `macros(i="Q1", daemon_name="X")`."""
        for name, value in values.items():
            key = name if len(name) == 1 else "{" + name + "}"
            if value is None:
                self._macros.pop(key, None)
            else:
                self._setsymval(key, value)

    def feed(self, raw: bytes, sender: str, *rcpts: str) -> int:
        """MAIL, RCPT, DATA, headers, EOH, body, EOM for one message; the EOM reply."""
        self.actions.clear()
        self.fed.clear()
        self.replaced.clear()
        return int(self._feedFile(BytesIO(raw), sender, *rcpts))

    def headers_after(self) -> list[tuple[str, str]]:
        return apply_actions(self.fed, self.actions)

    def values(self, name: str) -> list[str]:
        """The values of `name` in the message as the MTA would leave it."""
        return [v for n, v in self.headers_after() if n.lower() == name.lower()]

    def added(self, name: str) -> list[str]:
        return [v for k, n, _i, v in self.actions if k == "add" and n.lower() == name.lower()]

    def removals(self) -> list[tuple[str, int]]:
        return [(n, i) for k, n, i, v in self.actions if k == "change" and not v]


class FlakyIndex:
    """A MemoryIndex behind a switch: while `broken`, every index call raises (but entering a
    snapshot, which touches no disk: its first read fails, as with LMDB)."""

    def __init__(self) -> None:
        self.inner = MemoryIndex()
        self.broken = False
        self.failed_calls: list[str] = []
        self.error: Exception | None = None  # what a broken call raises, if not the default

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "snapshot":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.broken:
                self.failed_calls.append(name)
                raise self.error or CaseIndexError(f"simulated failure in {name}")
            return attr(*args, **kwargs)

        return call


class Rig:
    """One engine over one index; `connection()` is a new SMTP connection (a new CaseMilter)."""

    def __init__(self, engine: Engine, index: FlakyIndex, logdir: Path) -> None:
        self.engine = engine
        self.index = index
        self.logdir = logdir
        self.count = 0

    def connection(self, ip: str = "192.0.2.10", **macros: str | None) -> RecordingCtx:
        self.count += 1
        ctx = RecordingCtx(logfile=str(self.logdir / f"testctx-{self.count}.log"))
        ctx.macros(**macros)
        rc = ctx._connect(host="client.example.org", helo="client.example.org", ip=ip)
        assert rc == Milter.CONTINUE
        assert isinstance(ctx.getpriv(), CaseMilter)
        return ctx


@pytest.fixture(autouse=True)
def _fresh_testctx_opts(monkeypatch: pytest.MonkeyPatch) -> None:
    # TestCtx negotiates by mutating its class-level default_opts list in place. It does not
    # model no-reply steps (it closes on a NOREPLY) or SKIP, so it plays an MTA without them.
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, MTA_WITHOUT_NR, 0, 0])


@pytest.fixture
def make_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Rig]:
    def make(on_error: OnError = "accept") -> Rig:
        settings = Settings(
            milter=MilterSettings(on_error=on_error),
            inbound=InboundSettings(addresses=(SUPPORT,)),
        )
        index = FlakyIndex()
        engine = Engine(settings, index, KEYRING, clock=lambda: NOW, hostname=HOSTNAME)
        # pymilter makes one instance per connection through this module global.
        monkeypatch.setattr(Milter, "factory", lambda: CaseMilter(engine))
        return Rig(engine, index, tmp_path)

    return make


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


@pytest.fixture
def milter_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the `casethread` logger, whatever an in-process CLI run configured earlier."""
    logger = logging.getLogger("casethread")
    saved = (logger.propagate, logger.handlers[:], logger.level)
    logger.propagate = False
    logger.handlers[:] = [caplog.handler]
    logger.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.propagate, logger.handlers[:], level = saved
        logger.setLevel(level)


def assert_outbound_stamp(ctx: RecordingCtx, case_id: str) -> str:
    """One Message-ID, exactly one X-Case-ID for the case, none of the inbound headers."""
    (message_id,) = ctx.values("Message-ID")
    assert ctx.values("X-Case-ID") == [case_id], ctx.actions
    assert ctx.values("X-Case-Match") == [], ctx.actions
    return message_id


def send_agent_mail(rig: Rig, queue_id: str = "QOUT1") -> str:
    """An agent's first mail through the submission service; returns its new Message-ID."""
    ctx = rig.connection(daemon_name="ORIGINATING")
    ctx.macros(i=queue_id)
    rc = ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org")
    assert rc == Milter.CONTINUE
    return assert_outbound_stamp(ctx, "C-000001")


# --------------------------------------------------------------------------- negotiation


def test_negotiation_keeps_the_data_callback_and_every_step_the_adapter_uses(rig: Rig) -> None:
    ctx = rig.connection()
    protocol = ctx._protocol
    assert ctx.getpriv()._protocol == protocol
    # DATA is not skipped: a skipped DATA makes Postfix send a lone macro packet (FIELD-NOTES).
    assert not protocol & Milter.P_NODATA
    # The envelope, the headers, EOH (where the body budget is set) and the body (token scan,
    # DESIGN §5) all reach the adapter.
    for needed in (Milter.P_NOCONNECT, Milter.P_NOMAIL, Milter.P_NORCPT, Milter.P_NOHDRS,
                   Milter.P_NOEOH, Milter.P_NOBODY):
        assert not protocol & needed, hex(needed)
    # What it ignores is skipped.
    for skipped in (Milter.P_NOHELO, Milter.P_NOUNKNOWN):
        assert protocol & skipped, hex(skipped)
    # Offered every no-reply step (as Postfix does), the adapter lets the MTA skip waiting for
    # the collecting steps, header fields included (a round trip less each); their errors are
    # answered at end of message. The body step answers: it may say SKIP.
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    milter = CaseMilter(rig.engine)
    assert milter.negotiate(opts) == Milter.CONTINUE
    for no_reply in (Milter.P_NR_CONN, Milter.P_NR_MAIL, Milter.P_NR_RCPT, Milter.P_NR_HDR,
                     Milter.P_NR_EOH):
        assert opts[1] & no_reply, hex(no_reply)
    # DATA answers too: a no-reply DATA costs ~40-60 ms per message on delayed ACK over TCP.
    assert not opts[1] & (Milter.P_NR_BODY | Milter.P_NR_DATA)
    # A header field is then answered NOREPLY (libmilter sends nothing), and one without the
    # MTA's consent CONTINUE.
    assert milter.header_bytes("Subject", b"hi") == Milter.NOREPLY
    assert CaseMilter(rig.engine).header_bytes("Subject", b"hi") == Milter.CONTINUE


def test_over_a_unix_socket_the_data_step_is_skipped(rig: Rig) -> None:
    # `serve` on a unix socket (service.py): the MTA sends no DATA step, a round trip less a
    # message; over TCP the step keeps its reply (a delayed-ACK stall otherwise).
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    milter = CaseMilter(rig.engine, skip_data=True)
    assert milter.negotiate(opts) == Milter.CONTINUE
    assert opts[1] & Milter.P_NODATA and milter._protocol == opts[1]
    for kept in (Milter.P_NOMAIL, Milter.P_NORCPT, Milter.P_NOHDRS, Milter.P_NOEOH,
                 Milter.P_NOBODY):
        assert not opts[1] & kept, hex(kept)
    assert opts[1] & Milter.P_NR_HDR
    # An MTA that cannot skip it is not told to.
    opts = [Milter.CURR_ACTS, 0x1FFFFF & ~Milter.P_NODATA, 0, 0]
    assert CaseMilter(rig.engine, skip_data=True).negotiate(opts) == Milter.CONTINUE
    assert not opts[1] & Milter.P_NODATA


# --------------------------------------------------------------------------- directions


def test_originating_mail_gets_a_message_id_and_one_case_id(rig: Rig) -> None:
    ctx = rig.connection(daemon_name="ORIGINATING")
    ctx.macros(i="QOUT1")
    rc = ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org")
    assert rc == Milter.CONTINUE
    assert ctx.added("Message-ID") == ctx.values("Message-ID")
    message_id = assert_outbound_stamp(ctx, "C-000001")
    assert MSGID_RE.fullmatch(message_id), message_id
    assert ctx.added("X-Case-ID") == ["C-000001"]
    assert rig.index.case_for_message(message_id.strip("<>")) == "C-000001"
    # TestCtx's own view of the message agrees.
    assert ctx._msg.get_all("X-Case-ID") == ["C-000001"]


def test_originating_mail_keeps_one_case_id_when_the_app_sent_several(rig: Rig) -> None:
    ctx = rig.connection(daemon_name="ORIGINATING")
    raw = AGENT_MAIL.replace(
        b"Subject:",
        b"X-Case-ID: T-42\nx-case-match: token\nMessage-ID: <app.1@helpdesk.test>\nSubject:",
    )
    assert ctx.feed(raw, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE
    )
    # The app's id is adopted; its fields under our prefix are consumed; one X-Case-ID stays.
    assert ctx.values("X-Case-ID") == ["T-42"]
    assert ctx.values("x-case-match") == []
    assert ctx.values("Message-ID") == ["<app.1@helpdesk.test>"]
    assert ctx.added("Message-ID") == []
    assert rig.index.case_for_message("app.1@helpdesk.test") == "T-42"


def test_inbound_reply_threads_by_in_reply_to_and_loses_the_forged_case_id(rig: Rig) -> None:
    sent_id = send_agent_mail(rig)
    ctx = rig.connection(ip="198.51.100.7")
    ctx.macros(i="QIN1")
    raw = customer_mail(f"In-Reply-To: {sent_id}", "X-Case-ID: C-999999")
    assert ctx.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    assert ctx.values("X-Case-ID") == ["C-000001"]
    assert ctx.values("X-Case-Match") == ["in-reply-to"]
    # The forged field is removed (an empty change), before any field of ours is added.
    removal = ("change", "X-Case-ID", 1, "")
    assert removal in ctx.actions
    first_add = min(i for i, a in enumerate(ctx.actions) if a[0] == "add")
    assert ctx.actions.index(removal) < first_add
    assert rig.index.case_for_message("reply-1.pat@customer.example.org") == "C-000001"


def test_added_fields_are_inserted_past_the_last_field_but_message_id(rig: Rig) -> None:
    """smfi_addheader lets Sendmail put a field above the first of its name, even a deleted
    forged one (and a split case's repeated fields in reverse order); smfi_insheader past the
    end appends on both MTAs. Message-ID stays a plain add: Sendmail fills its own pending
    default Message-Id with it instead of adding a second one."""
    ctx = rig.connection(daemon_name="ORIGINATING")
    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE
    )
    adds = {(n, i) for k, n, i, _v in ctx.actions if k == "add"}
    assert ("Message-ID", -1) in adds
    assert {i for n, i in adds if n != "Message-ID"} == {APPEND_INDEX}
    # Past any message's last field, and small enough for Postfix's ssize_t arithmetic on a
    # 32-bit machine (it adds 1).
    assert 100_000 < APPEND_INDEX < 0x7FFFFFFF
    ctx = rig.connection(ip="198.51.100.7")
    raw = customer_mail("X-Case-ID: C-999999")
    assert ctx.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    adds = [(n, i) for k, n, i, _v in ctx.actions if k == "add"]
    assert adds and {i for _n, i in adds} == {APPEND_INDEX}, adds
    assert ctx.headers_after()[-len(adds):] == [
        (n, v) for k, n, _i, v in ctx.actions if k == "add"]


def test_a_changed_field_keeps_the_senders_spelling_of_its_name(rig: Rig) -> None:
    """Postfix writes a changed field under the name the milter gives: the adapter gives the
    one the message has, so `SUBJECT:` stays `SUBJECT:` (Sendmail keeps it anyway), as
    `casethread filter` prints it."""
    ctx = rig.connection(daemon_name="ORIGINATING")
    raw = AGENT_MAIL.replace(b"Subject:", b"references: <earlier@customer.example.org>\nSUBJECT:")
    assert ctx.feed(raw, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE
    )
    changed = [(n, i) for k, n, i, v in ctx.actions if k == "change" and v]
    assert sorted(changed) == [("SUBJECT", 1), ("references", 1)], ctx.actions
    names = [n for n, _v in ctx.headers_after()]
    assert "SUBJECT" in names and "references" in names, names
    assert "Subject" not in names and "References" not in names, names


def test_authenticated_mail_is_outbound_even_to_the_support_address(rig: Rig) -> None:
    ctx = rig.connection()
    ctx.macros(auth_authen="dana", i="QAUTH")
    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", SUPPORT) == Milter.CONTINUE
    # Outbound stamping (a Message-ID, one X-Case-ID), not inbound classification.
    assert_outbound_stamp(ctx, "C-000001")
    assert ctx.added("Message-ID") != []


def test_mail_that_is_neither_passes_with_forged_case_headers_stripped(rig: Rig) -> None:
    ctx = rig.connection()
    ctx.macros(i="QOTHER")
    raw = customer_mail("X-Case-ID: C-1", "x-case-match: token", "X-CASE-ID: C-2")
    assert ctx.feed(raw, "pat@customer.example.org", "someone@elsewhere.test") == (
        Milter.CONTINUE
    )
    # Only removals (DESIGN §2 "other"), highest index first per name.
    assert sorted(ctx.actions) == sorted([
        ("change", "X-Case-ID", 2, ""),
        ("change", "X-Case-ID", 1, ""),
        ("change", "x-case-match", 1, ""),
    ])
    kept = [(n, v) for n, v in ctx.fed if not n.lower().startswith("x-case-")]
    assert ctx.headers_after() == kept
    assert rig.index.case_for_message("reply-1.pat@customer.example.org") is None


@pytest.mark.parametrize("broken", [False, True], ids=["engine-ok", "index-broken"])
def test_more_case_fields_than_can_be_removed_are_refused(rig: Rig, broken: bool) -> None:
    """Each forged field is one removal; thousands of them crashed Postfix's cleanup. Past
    MAX_OWN_FIELDS the message is refused with 550, nothing applied, also when the engine
    fails (on_error=accept would otherwise pass it with the fields the rules trust)."""
    rig.index.broken = broken
    ctx = rig.connection()
    ctx.macros(i="QMANY")
    forged = [f"X-Case-ID: C-{n}" for n in range(MAX_OWN_FIELDS + 1)]
    assert ctx.feed(customer_mail(*forged), "pat@customer.example.org", SUPPORT) == (
        Milter.REJECT)
    assert ctx._reply[:2] == ("550", "5.7.1")
    assert f"at most {MAX_OWN_FIELDS}" in ctx._reply[2]
    assert ctx.actions == []
    # At the limit every one is removed.
    rig.index.broken = False
    ctx = rig.connection()
    assert ctx.feed(customer_mail(*forged[:MAX_OWN_FIELDS]), "pat@customer.example.org",
                    SUPPORT) == Milter.CONTINUE
    assert ctx.values("X-Case-ID") == ["C-000001"]


def test_a_refusal_naming_a_prefix_with_a_percent_sign_is_still_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`headers.prefix` may hold a '%' (a field name allows it); the refusal text names the
    prefix, and pymilter's setreply raises on a lone '%'. The refusal then failed, its state
    was reset before the error boundary, and on_error=accept passed the message with every
    forged field."""
    from casethread.core.settings import HeaderSettings

    settings = Settings(inbound=InboundSettings(addresses=(SUPPORT,)),
                        headers=HeaderSettings(prefix="X%Case-"))
    engine = Engine(settings, FlakyIndex(), KEYRING, clock=lambda: NOW, hostname=HOSTNAME)
    monkeypatch.setattr(Milter, "factory", lambda: CaseMilter(engine))
    ctx = Rig(engine, engine.index, tmp_path).connection()  # type: ignore[arg-type]
    forged = [f"X%Case-ID: C-{n}" for n in range(MAX_OWN_FIELDS + 1)]
    assert ctx.feed(customer_mail(*forged), "pat@customer.example.org", SUPPORT) == (
        Milter.REJECT)
    assert ctx._reply[:2] == ("550", "5.7.1")
    assert "X%%Case-* header fields" in ctx._reply[2]
    assert ctx.actions == []


def test_mail_that_is_neither_and_clean_is_untouched(rig: Rig) -> None:
    ctx = rig.connection()
    assert ctx.feed(customer_mail(), "pat@customer.example.org", "x@elsewhere.test") == (
        Milter.CONTINUE
    )
    assert ctx.actions == []
    assert not ctx._headerschanged


def test_two_messages_on_one_connection_do_not_leak_state(rig: Rig) -> None:
    sent_id = send_agent_mail(rig)
    ctx = rig.connection()

    # 1: the agent's authenticated follow-up (outbound), threaded by In-Reply-To.
    ctx.macros(auth_authen="dana", i="Q1")
    first = customer_mail(f"In-Reply-To: {sent_id}", message_id="<m1@support.example.com>")
    assert ctx.feed(first, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE
    )
    assert_outbound_stamp(ctx, "C-000001")

    # 2: unauthenticated, to support, no In-Reply-To: inbound and a new case. A leaked
    # {auth_authen} would make it outbound; a leaked In-Reply-To would thread it to C-000001.
    ctx.macros(auth_authen=None, i="Q2")
    assert ctx.feed(customer_mail(), "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    assert ctx.values("X-Case-ID") == ["C-000002"]
    assert ctx.values("X-Case-Match") == ["new"]

    # 3: to nobody of ours: other. A leaked support recipient would make it inbound.
    ctx.macros(i="Q3")
    raw = customer_mail(message_id="<m3@customer.example.org>")
    assert ctx.feed(raw, "pat@customer.example.org", "friend@elsewhere.test") == Milter.CONTINUE
    assert ctx.actions == []
    assert rig.index.case_for_message("m3@customer.example.org") is None


def test_eight_bit_header_bytes_survive_into_the_index(rig: Rig) -> None:
    raw = (
        b"From: Pat <pat@customer.example.org>\n"
        b"To: support@example.com\n"
        b"Subject: caf\xe9 cr\xe8me\n"
        b"Message-ID: <caf\xe9.1@customer.example.org>\n"
        b"\n"
        b"body\n"
    )
    first = rig.connection()
    assert first.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    assert first.values("X-Case-ID") == ["C-000001"]
    assert first.values("X-Case-Match") == ["new"]
    # pymilter's surrogateescape decoding keeps the raw byte; the index key is that byte.
    assert rig.index.case_for_message("caf\udce9.1@customer.example.org") == "C-000001"

    again = rig.connection()
    assert again.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    assert again.values("X-Case-ID") == ["C-000001"]
    assert again.values("X-Case-Match") == ["duplicate"]
    assert again.values("X-Case-Duplicate") == ["yes"]


# --------------------------------------------------------------------------- error boundary


@pytest.mark.parametrize(
    ("on_error", "reply"), [("accept", Milter.ACCEPT), ("tempfail", Milter.TEMPFAIL)]
)
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_an_index_failure_passes_the_message_unchanged(
    make_rig: Callable[..., Rig],
    milter_log: pytest.LogCaptureFixture,
    on_error: OnError,
    reply: int,
    direction: str,
) -> None:
    rig = make_rig(on_error=on_error)
    rig.index.broken = True
    if direction == "outbound":
        ctx = rig.connection(daemon_name="ORIGINATING")
        raw, rcpt = AGENT_MAIL, "pat@customer.example.org"
    else:
        ctx = rig.connection()
        raw, rcpt = customer_mail("X-Case-ID: C-999999"), SUPPORT
    ctx.macros(i="QERR1")
    milter_log.clear()

    assert ctx.feed(raw, "sender@example.org", rcpt) == reply

    assert rig.index.failed_calls, "the index was never reached"
    if on_error == "accept" and direction == "inbound":
        # Passed on, unchanged but for the forged field: downstream rules trust X-Case-*.
        assert ctx.actions == [("change", "X-Case-ID", 1, "")]
    else:
        assert ctx.actions == []
        assert not ctx._headerschanged
    records = [r for r in milter_log.records if r.name == "casethread"]
    assert len(records) == 1, [r.getMessage() for r in records]
    (record,) = records
    line = record.getMessage()
    assert record.levelno == logging.ERROR
    assert "\n" not in line
    assert "queue_id=QERR1" in line
    assert f"on_error={on_error}" in line
    assert ("tempfailed" if on_error == "tempfail" else "passed") in line
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], CaseIndexError)


def test_a_connection_opened_before_a_reload_fails_by_its_own_on_error(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README Reload: connections in flight keep the configuration they started with. The
    service's reload gives new connections a new engine (`service._Current`); a connection
    opened before it answers a failure with the on_error of the engine it was made with."""
    rig = make_rig(on_error="tempfail")
    before = rig.connection()
    reloaded = Engine(replace(rig.engine.settings, milter=MilterSettings(on_error="accept")),
                      rig.index, KEYRING, clock=lambda: NOW, hostname=HOSTNAME)
    monkeypatch.setattr(Milter, "factory", lambda: CaseMilter(reloaded))
    after = rig.connection()
    rig.index.broken = True
    assert before.feed(customer_mail(), "sender@example.org", SUPPORT) == Milter.TEMPFAIL
    assert after.feed(customer_mail(), "sender@example.org", SUPPORT) == Milter.ACCEPT


def test_an_expected_condition_is_one_line_without_a_traceback(
    rig: Rig, milter_log: pytest.LogCaptureFixture
) -> None:
    """A read-only file system (or a full disk, a permission) is the machine's state: one line
    naming the cause and the path, not ~2 KB of traceback per message."""
    rig.index.broken = True
    rig.index.error = OSError(errno.EROFS, "Read-only file system", "/var/lib/casethread")
    ctx = rig.connection()
    ctx.macros(i="QRO1")
    assert ctx.feed(customer_mail("X-Case-ID: C-999999"), "pat@customer.example.org",
                    SUPPORT) == Milter.ACCEPT
    assert ctx.actions == [("change", "X-Case-ID", 1, "")]
    (record,) = [r for r in milter_log.records if r.name == "casethread"]
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage() == (
        "queue_id=QRO1 error in eom: /var/lib/casethread: Read-only file system; message "
        "passed unchanged (on_error=accept)")


@pytest.mark.parametrize("on_error", ["accept", "tempfail"])
@pytest.mark.parametrize("failing", ["addheader", "replacebody"])
def test_an_error_with_the_message_half_edited_tempfails_it(
    rig: Rig, make_rig: Callable[..., Rig], milter_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, on_error: OnError, failing: str,
) -> None:
    """An edit that fails after others went out (the second header field; the body after all
    header fields): the MTA holds half of them and would deliver the message so on ACCEPT."""
    rig = make_rig(on_error=on_error)
    ctx = rig.connection(daemon_name="ORIGINATING")
    ctx.macros(i="QHALF")
    sent: list[tuple[Any, ...]] = []
    original = getattr(ctx, failing)

    def fails_once_under_way(*args: Any) -> Any:
        sent.append(args)
        if failing == "replacebody" or len(sent) == 2:
            raise OSError(errno.EPIPE, "Broken pipe")
        return original(*args)

    monkeypatch.setattr(ctx, failing, fails_once_under_way)
    milter_log.clear()

    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.TEMPFAIL)

    assert ctx.actions, "no edit went out before the failure"
    lines = [r.getMessage() for r in milter_log.records if r.levelno >= logging.ERROR]
    assert lines == [f"queue_id=QHALF error in eom; message tempfailed, half edited "
                     f"(whatever on_error={on_error} says)"], lines


def test_an_error_before_any_edit_went_out_keeps_the_policy(
    rig: Rig, milter_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first modification failing: nothing is half done, on_error=accept passes it."""
    ctx = rig.connection(daemon_name="ORIGINATING")
    ctx.macros(i="QFIRST")

    def fails(*args: Any) -> Any:
        raise OSError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(ctx, "addheader", fails)
    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.ACCEPT)


def test_the_connection_recovers_after_an_error(
    rig: Rig, milter_log: pytest.LogCaptureFixture
) -> None:
    ctx = rig.connection()
    rig.index.broken = True
    ctx.macros(i="QBAD")
    raw = customer_mail("In-Reply-To: <whatever@example.org>")
    assert ctx.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.ACCEPT
    assert ctx.actions == []

    # The next message on the same connection starts clean and is processed normally.
    rig.index.broken = False
    ctx.macros(i="QGOOD")
    raw = customer_mail(message_id="<next@customer.example.org>")
    assert ctx.feed(raw, "pat@customer.example.org", "friend@elsewhere.test") == (
        Milter.CONTINUE
    )
    assert ctx.actions == []  # other: the failed message's support recipient did not leak
    lines = [r.getMessage() for r in milter_log.records]
    assert [line for line in lines if "QBAD" in line] == [lines[0]]
    assert any("queue_id=QGOOD direction=other" in line for line in lines), lines


def test_a_token_after_a_big_attachment_is_found_by_the_milter(rig: Rig) -> None:
    """A phone puts the photo above the quote: the quoted token comes after megabytes of
    attachment. The milter must read that far (it once stopped at twice the scan budget of raw
    bytes, and opened a new case where `casethread filter` threaded the mail)."""
    send_agent_mail(rig)
    token = KEYRING.make(1)
    photo = base64.encodebytes(bytes(range(256)) * (12 << 10))  # 3 MiB of base64
    body = (b"--b\nContent-Type: text/plain\n\nSee the photo.\n"
            b"--b\nContent-Type: image/jpeg; name=IMG_0001.jpg\n"
            b"Content-Disposition: inline; filename=IMG_0001.jpg\n"
            b"Content-Transfer-Encoding: base64\n\n" + photo +
            b"--b\nContent-Type: text/plain\n\nSent from my iPhone\n\n> Hello Pat,\n> [ref:"
            + token.encode() + b"]\n--b--\n")
    raw = ("From: Pat Customer <pat@customer.example.org>\n"
           f"To: Support <{SUPPORT}>\nSubject: Re: photo\n"
           "Message-ID: <photo.1@customer.example.org>\nMIME-Version: 1.0\n"
           'Content-Type: multipart/mixed; boundary="b"\n\n').encode() + body
    assert len(body) > 2 * rig.engine.settings.inbound.scan_budget
    ctx = rig.connection()
    assert ctx.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
    assert ctx.values("X-Case-ID") == ["C-000001"]
    assert ctx.values("X-Case-Match") == ["token"]


def agent_mail_with_both_parts(attachment: int) -> bytes:
    """An agent's reply whose text and HTML parts are both stamped (two splices), with an
    attachment of `attachment` bytes after them."""
    pdf = base64.encodebytes(bytes(range(256)) * (attachment // 256))
    return (b"From: Dana Agent <dana@support.example.com>\n"
            b"To: Pat Customer <pat@customer.example.org>\n"
            b"Subject: Your invoice\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/mixed; boundary="m"\n\n'
            b'--m\nContent-Type: multipart/alternative; boundary="a"\n\n'
            b"--a\nContent-Type: text/plain; charset=us-ascii\n\nHello Pat, the invoice.\n"
            b"--a\nContent-Type: text/html; charset=us-ascii\n\n"
            b"<html><body><p>Hello Pat, the invoice.</p></body></html>\n--a--\n"
            b"--m\nContent-Type: application/pdf; name=invoice.pdf\n"
            b"Content-Transfer-Encoding: base64\n\n" + pdf + b"--m--\n")


@pytest.mark.parametrize("attachment", [0, 3000, 200_000])
def test_the_new_body_goes_out_in_full_packets(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, attachment: int) -> None:
    """One replacebody() per libmilter body packet (65,535 bytes), the last one shorter: not
    one per splice and stretch between splices, each a packet, a write and a GIL hand-over."""
    decided: list[tuple[Message, Decision]] = []
    process = rig.engine.process

    def processed(msg: Message, *args: Any) -> Decision:
        decided.append((msg, process(msg, *args)))
        return decided[-1][1]

    monkeypatch.setattr(rig.engine, "process", processed)
    ctx = rig.connection(daemon_name="ORIGINATING")
    raw = agent_mail_with_both_parts(attachment)
    assert ctx.feed(raw, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE)
    ((msg, decision),) = decided
    assert len(decision.body_splices) == 2, decision.log_fields()
    new_body = apply_splices(msg.body, decision.body_splices)
    assert b"".join(ctx.replaced) == new_body
    assert [len(chunk) for chunk in ctx.replaced[:-1]] == [REPLACE_CHUNK] * (
        len(ctx.replaced) - 1)
    assert len(ctx.replaced) == -(-len(new_body) // REPLACE_CHUNK)


@given(st.lists(st.binary(max_size=40)), st.integers(min_value=1, max_value=16))
def test_packets_cut_the_pieces_into_full_packets(pieces: list[bytes], size: int) -> None:
    sent = list(packets(pieces, size))
    assert b"".join(sent) == b"".join(pieces)
    assert all(len(packet) == size for packet in sent[:-1])
    assert all(0 < len(packet) <= size for packet in sent)


def test_the_decision_is_logged_with_the_queue_id(
    rig: Rig, milter_log: pytest.LogCaptureFixture
) -> None:
    send_agent_mail(rig, queue_id="QLOG1")
    lines = [r.getMessage() for r in milter_log.records if r.levelno == logging.INFO]
    assert len(lines) == 1, lines
    assert lines[0].startswith("queue_id=QLOG1 direction=outbound case=C-000001 match=new")
    assert "message-id-added" in lines[0]


def test_the_queue_id_is_asked_of_the_mta_until_it_sent_one(rig: Rig) -> None:
    # Each getsymval is a call into pymilter's C layer: the queue id, once known, is kept.
    ctx = rig.connection(daemon_name="ORIGINATING")
    asked: list[str] = []
    getsymval = ctx.getsymval
    ctx.getsymval = lambda name: asked.append(name) or getsymval(name)  # type: ignore[method-assign]
    ctx.macros(i="QASK1")
    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org") \
        == Milter.CONTINUE
    assert asked.count("i") == 1, asked
    ctx.macros(i=None)  # an MTA that sends it later: asked at each step until then
    asked.clear()
    ctx.feed(customer_mail(), "pat@customer.example.org", SUPPORT)
    assert asked.count("i") >= 4, asked


def test_a_level_above_info_does_not_make_the_decision_line(
    rig: Rig, milter_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Decision] = []
    log_fields = Decision.log_fields

    def counted(decision: Decision) -> str:
        made.append(decision)
        return log_fields(decision)

    monkeypatch.setattr(Decision, "log_fields", counted)
    logging.getLogger("casethread").setLevel(logging.WARNING)
    send_agent_mail(rig, queue_id="QQUIET")
    assert made == [] and milter_log.records == []


@pytest.mark.parametrize("stamping", [True, False])
def test_outbound_body_token_threads_whether_or_not_bodies_are_stamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stamping: bool
) -> None:
    """With stamping off the milter still reads outbound mail's body (up to read_limit): the
    outbound `token` strategy finds a token quoted there."""
    from casethread.core.settings import StampSettings

    settings = Settings(inbound=InboundSettings(addresses=(SUPPORT,)),
                        stamp=StampSettings(html=stamping, text=stamping))
    engine = Engine(settings, FlakyIndex(), KEYRING, clock=lambda: NOW, hostname=HOSTNAME)
    monkeypatch.setattr(Milter, "factory", lambda: CaseMilter(engine))
    rig = Rig(engine, engine.index, tmp_path)  # type: ignore[arg-type]
    ctx = rig.connection(daemon_name="ORIGINATING")
    assert ctx.feed(AGENT_MAIL, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE)
    tag = re.search(r"\[ref:[0-9A-Z]+\]", dict(ctx.headers_after())["Subject"])
    assert tag
    reply = (b"From: dana@support.example.com\nTo: pat@customer.example.org\n"
             b"Subject: Re: printer\n\nMore.\n\n> " + tag.group(0).encode() + b"\n")
    ctx = rig.connection(daemon_name="ORIGINATING")
    assert ctx.feed(reply, "dana@support.example.com", "pat@customer.example.org") == (
        Milter.CONTINUE)
    assert ctx.values("X-Case-ID") == ["C-000001"]


def test_end_of_message_reads_the_fields_end_of_headers_read(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fields' index by name is worked out once a message (a few dozen fields' worth of
    # work), at end of headers, and the message at its end has the envelope of then.
    seen: dict[str, Message] = {}
    wanted, process = rig.engine.body_wanted, rig.engine.process

    def body_wanted(msg: Message, direction: Direction) -> BodyPlan:
        seen["head"] = msg
        return wanted(msg, direction)

    def processed(msg: Message, *args: Any) -> Decision:
        seen["end"] = msg
        return process(msg, *args)

    monkeypatch.setattr(rig.engine, "body_wanted", body_wanted)
    monkeypatch.setattr(rig.engine, "process", processed)
    sent_id = send_agent_mail(rig)
    for queue_id in ("QIN1", "QIN2"):  # the second message of the connection its own
        ctx = rig.connection(ip="198.51.100.7")
        ctx.macros(i=queue_id)
        raw = customer_mail(f"In-Reply-To: {sent_id}", message_id=f"<{queue_id}@customer.test>")
        assert ctx.feed(raw, "pat@customer.example.org", SUPPORT) == Milter.CONTINUE
        head, end = seen["head"], seen["end"]
        assert end.headers is head.headers and end.envelope.queue_id == queue_id
        assert end.__dict__["_by_name"] is head.__dict__["_by_name"]
        assert end.get("Message-ID") == f"<{queue_id}@customer.test>"
