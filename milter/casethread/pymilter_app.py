"""The thin pymilter adapter: collect the SMTP transaction, call the engine, apply its edits.

Everything that can fail goes through `_guarded`, the one error boundary (DESIGN §8): the
exception is logged with the queue id and the message passes unchanged (or is tempfailed, if
`milter.on_error: tempfail`).
"""

from __future__ import annotations

import enum
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import Milter

from .core.edits import AddHeader, ChangeHeader, Edit, as_written
from .core.message import Data, Envelope, Header, Message
from .core.model import Direction
from .core.resolve import Found
from .core.settings import OnError
from .core.stamp import Splice, iter_spliced
from .engine import Engine
from .index.errors import known_cause
from .metrics import Metrics
from .spool import BodySpool

log = logging.getLogger("casethread")
# What we ask the MTA to let us do. libmilter ignores set_flags() when a negotiate callback is
# registered (pymilter always registers one), so `negotiate` narrows the offer itself.
ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY
# The new body goes out in packets of this many bytes (the last one shorter): libmilter's
# MILTER_CHUNK_SIZE, the most it sends in one SMFIR_REPLBODY packet (it splits a longer
# replacebody() in two packets, 65,535 bytes and the rest). Each replacebody() call is a
# packet, a write and a hand-over of the GIL: one per 64 KiB, not one per splice and stretch
# between splices (five for a message whose text and HTML parts are stamped).
REPLACE_CHUNK = 65535
# Added fields go below every other field (smfi_insheader at an index past the last field:
# Postfix and Sendmail both append there). Sendmail's smfi_addheader instead puts a field
# above the first one of the same name, even one just deleted: our X-Case-* fields would take
# the places of the forged ones and repeated fields (a split case's X-Case-ID/X-Case-State)
# would arrive in reverse order.
# Not 0x7FFFFFFF: Postfix adds 1 to it as a ssize_t, which overflows where that is 32 bits.
APPEND_INDEX = 1 << 30
# Except Message-ID: Sendmail's smfi_addheader fills its own pending default Message-Id with
# our value; an inserted one would leave Sendmail to add its own as well (two Message-IDs).
PLAIN_ADD = frozenset({"message-id"})

F = TypeVar("F", bound=Callable[..., Any])
# The client as pymilter gives it to `connect`: (IP, port) for AF_INET, (IP, port, flow info,
# scope id) for AF_INET6, the socket name for AF_UNIX; None for another family or none.
HostAddr = tuple[str, int] | tuple[str, int, int, int] | str | None


class NotGranted(Exception):
    """An edit the MTA did not allow at negotiation (pymilter would refuse it): found before
    the first edit goes out, so the message is not left half edited."""


# The action each kind of edit needs the MTA to have granted, and its name in the milter API.
_GRANTS = {AddHeader: (int(Milter.ADDHDRS), "SMFIF_ADDHDRS", "add header fields"),
           ChangeHeader: (int(Milter.CHGHDRS), "SMFIF_CHGHDRS", "change header fields")}
_BODY_GRANT = (int(Milter.MODBODY), "SMFIF_CHGBODY", "replace the body")


def packets(pieces: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """`pieces` joined end to end and cut into packets of `size` bytes, the last one shorter;
    a byte of a view is copied once, into its packet."""
    batch: list[memoryview] = []
    held = 0
    for piece in pieces:
        view = memoryview(piece)
        while view:
            taken = view[: size - held]
            batch.append(taken)
            held += len(taken)
            view = view[len(taken):]
            if held == size:
                yield b"".join(batch)
                batch, held = [], 0
    if batch:
        yield b"".join(batch)


def _cause(exc: BaseException) -> str | None:
    """The one-line cause of an expected failure, else None (logged with its traceback)."""
    return str(exc) if isinstance(exc, NotGranted) else known_cause(exc)


def reply_for(policy: OnError) -> int:
    return int(Milter.TEMPFAIL if policy == "tempfail" else Milter.ACCEPT)


# Callbacks the MTA need not wait for (@Milter.noreply): a round trip less each. Their failures
# cannot be answered where they happen, so the answer is given at end of message (_guarded).
# Header fields are taken without a reply too (one round trip per field: 10-40 a message), by
# `header_bytes`, which only keeps the raw field. pymilter decodes a field's *name* as UTF-8 in
# C before any of our code runs; when that fails, its exception policy answers, and on a
# no-reply step libmilter drops that answer but still acts on it: anything but CONTINUE would
# end the message on our side while the MTA goes on, and the MTA would wait for our
# end-of-message reply until its timeout. So `serve` sets pymilter's policy to CONTINUE and logs
# the error (service.py): such a field is not seen, the message is handled without it. (Postfix
# never sends such a name: it starts the body there.) `data` keeps its reply: without one,
# Postfix's next write waits for a delayed ACK over TCP, ~40 ms on Linux (README, Performance).
no_reply: Callable[[F], F] = Milter.noreply


class _Sent(enum.Enum):
    """How much of a decision's modifications went out to the MTA."""

    NOTHING = "nothing"
    SOME = "some"
    ALL = "all"


# Steps before end of message. Their failure cannot be answered where it happens: only end of
# message may remove the forged X-Case-* fields (the fallback), and an ACCEPT there would
# deliver them. So it marks the message failed and lets it go on, its body unread (SKIP), and
# end of message answers by the policy. (Answering TEMPFAIL at once for `tempfail` would come to
# the same for the MTA, but not on the no-reply steps, where libmilter drops the answer.)
_BEFORE_EOM = frozenset({"connect", "envfrom", "envrcpt", "data", "eoh", "body"})


def _guarded(callback: F) -> F:
    """The error boundary: log with the queue id, then pass the message unchanged but for
    forged X-Case-* fields (or tempfail it, per `milter.on_error`) at end of message."""
    step = callback.__name__

    @functools.wraps(callback)
    def wrapper(self: CaseMilter, *args: Any) -> Any:
        try:
            return callback(self, *args)
        except Exception as exc:
            self._log_failure(step, _cause(exc))
            if step == "eom":
                return self._fallback()
            if step in _BEFORE_EOM:
                self._fail(connection=step == "connect")
                return self._skip_body() if step == "body" else int(Milter.CONTINUE)
            self._reset()  # abort, close: no message is left to answer for
            return int(Milter.CONTINUE)

    return wrapper  # type: ignore[return-value]


class InFlight:
    """Connections open and messages under way (MAIL FROM until end of message or abort), shared
    by every connection: a stop waits for the messages to finish, and names those it cuts
    (service.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # callbacks run on libmilter's worker threads
        self.connections = 0
        self._messages: set[CaseMilter] = set()  # each connection has one message at most

    @property
    def messages(self) -> int:
        return len(self._messages)

    def add(self, connections: int) -> None:
        with self._lock:
            self.connections += connections

    def begin(self, message: CaseMilter) -> None:
        with self._lock:
            self._messages.add(message)

    def end(self, message: CaseMilter) -> None:
        with self._lock:
            self._messages.discard(message)

    def queue_ids(self) -> list[str]:
        """The queue ids of the messages under way ("-" where the MTA has not sent one yet)."""
        with self._lock:
            return sorted(message.known_queue_id for message in self._messages)


class CaseMilter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (pymilter calls `Milter.factory` per connection)."""

    def __init__(
        self, engine: Engine, metrics: Metrics | None = None, inflight: InFlight | None = None,
        skip_data: bool = False,
    ) -> None:
        """`skip_data`: let the MTA skip the DATA step (over a unix socket, see `negotiate`)."""
        self.engine = engine
        self._skip_data = skip_data
        self.metrics = metrics
        self._inflight = inflight or InFlight()
        self._connected = False
        self._in_message = False
        self.known_queue_id = "-"  # of the message under way, for the log of a stop (InFlight)
        self._client: str | None = None
        # What a header field is answered: NOREPLY once the MTA agreed to skip those replies.
        self._header_reply = int(Milter.CONTINUE)
        self._body = BodySpool(engine.settings.stamp.spool_threshold)
        # A failed connect step (the client address unknown) fails each of its messages: a
        # wrong direction would stamp or thread them wrongly.
        self._connection_failed = False
        self._reset()

    def _reset(self) -> None:
        """Ends the message under way, if any: every path out of a message comes here."""
        if self._in_message:
            self._in_message = False
            self._inflight.end(self)
        self._sent = _Sent.NOTHING
        self._mail_from = ""
        self._rcpts: list[str] = []
        self._fields: list[tuple[str, bytes]] = []  # header fields as the MTA sent them
        self._decoded: tuple[Header, ...] | None = None  # the same, decoded once
        self._auth: str | None = None
        self._daemon: str | None = None
        self._body.close()  # empties it, and frees a spooled file
        self._body_room = 0
        self._found: Found | None = None  # the case its header fields found at their end
        self._direction: Direction | None = None  # classified at end of headers
        self._head: Message | None = None  # the message at end of headers: its fields
        self._skipping = False  # inbound mail its header fields resolve: its body is not read
        self._failed = self._connection_failed  # end of message answers by the failure policy

    def _envelope(self) -> Envelope:
        return Envelope(
            mail_from=self._mail_from,
            rcpts=tuple(self._rcpts),
            client_address=self._client,
            auth_user=self._auth,
            daemon_name=self._daemon,
            queue_id=self._learn_queue_id(),
        )

    def negotiate(self, opts: list[int]) -> int:
        offered = opts[1]
        reply = int(super().negotiate(opts))
        if reply == Milter.CONTINUE:
            opts[0] &= ACTIONS
            if self._skip_data:
                # A round trip less a message (the MTA waits for DATA's reply), a callback and
                # a reply packet less. Over TCP it would cost a stall instead (`data`); over a
                # unix socket the MTA's lone DATA macro packet is no small TCP segment.
                opts[1] |= offered & Milter.P_NODATA
                self._protocol = opts[1]
            if self._protocol & Milter.P_NR_HDR:
                self._header_reply = int(Milter.NOREPLY)
        return reply

    def queue_id(self) -> str:
        try:
            return str(self.getsymval("i") or "-")
        except Exception:  # no context (closed) or MTA without macros
            return "-"

    @no_reply
    @_guarded
    def connect(self, hostname: str, family: int, hostaddr: HostAddr) -> int:
        if not self._connected:
            self._connected = True
            self._inflight.add(connections=1)
        # Postfix presents mail from sendmail(1) as from localhost, 127.0.0.1 port 0, so
        # outbound.client_networks sees 127.0.0.1 for it. Other families (a unix socket, an
        # unknown one) carry no IP address: the client stays unknown.
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            self._client = str(hostaddr[0])
        return int(Milter.CONTINUE)

    @no_reply
    @_guarded
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._reset()
        self._in_message = True
        self.known_queue_id = self.queue_id()
        self._inflight.begin(self)
        self._mail_from = mail_from
        self._auth = self.getsymval("{auth_authen}") or None
        self._daemon = self.getsymval("{daemon_name}") or None
        return int(Milter.CONTINUE)

    @no_reply
    @_guarded
    def envrcpt(self, to: str, *params: str) -> int:
        self._rcpts.append(to)
        self._learn_queue_id()
        return int(Milter.CONTINUE)

    def _learn_queue_id(self) -> str:
        """The message's queue id, asked of the MTA until it has sent one. Postfix sends `i`
        at MAIL FROM only when the queue file is open by then; by default
        (`smtpd_delay_open_until_valid_rcpt`) from RCPT or DATA on, as Sendmail does."""
        if self.known_queue_id == "-":
            self.known_queue_id = self.queue_id()
        return self.known_queue_id

    # Defined (not left as pymilter's @nocallback default, which negotiates "no DATA step") so
    # Postfix does not send its DATA macros in a packet of their own that gets no reply, and
    # then wait for a delayed ACK over TCP, ~40 ms on Linux, before its next write. Over a unix
    # socket, which has no such stall, `negotiate` skips the step (`skip_data`).
    @_guarded
    def data(self) -> int:
        self._learn_queue_id()
        return int(Milter.CONTINUE)

    def header_bytes(self, name: str, value: bytes) -> int:
        """The header callback pymilter calls (service.py), once per field: the hot path, so it
        only keeps the field; the fields are decoded once, at end of headers. Nothing here can
        fail."""
        self._fields.append((name, value))
        self._decoded = None
        return self._header_reply

    @no_reply
    def header(self, name: str, value: str) -> int:
        """pymilter's decoded form of the callback: its @noreply mark is what negotiation
        reads."""
        self.header_bytes(name, value.encode("utf-8", "surrogateescape"))
        return int(Milter.CONTINUE)

    def _headers(self) -> tuple[Header, ...]:
        # As pymilter's own header_bytes decodes: 8-bit bytes survive as surrogates.
        if self._decoded is None:
            self._decoded = tuple(Header(name, value.decode("utf-8", "surrogateescape"))
                                  for name, value in self._fields)
        return self._decoded

    @no_reply
    @_guarded
    def eoh(self) -> int:
        # The direction, and how much of the body the engine will read: none for inbound mail
        # its header fields resolve, so that body() answers SKIP at once.
        msg = self._head = Message(self._envelope(), self._headers())
        self._direction = self.engine.classify(msg)
        plan = self.engine.body_wanted(msg, self._direction)
        self._body_room, self._found = plan.room, plan.found
        self._skipping = self._direction is Direction.INBOUND and not self._body_room
        return int(Milter.CONTINUE)

    @_guarded
    def body(self, chunk: bytes) -> int:
        if self._failed:
            return self._skip_body()
        if self._body_room > 0:
            taken = chunk[: self._body_room]
            if not self._body.write(taken):
                # One line, no traceback: a full TMPDIR is the machine's state, not a bug.
                self._log_failure("body", self._body.failure)
                self._fail()
                return self._skip_body()
            self._body_room -= len(taken)
        if self._body_room <= 0:  # nothing more is needed
            return self._skip_body()
        return int(Milter.CONTINUE)

    def _skip_body(self) -> int:
        """An MTA that understands SKIP stops sending the body; any other goes on."""
        return int(Milter.SKIP if getattr(self, "_protocol", 0) & Milter.P_SKIP
                   else Milter.CONTINUE)

    @_guarded
    def eom(self) -> int:
        started = time.monotonic()
        if self._failed:  # an earlier callback failed and logged it: answer now
            return self._fallback()
        body = self._body.data()
        # The fields of end of headers, with what was worked out of them then.
        head = self._head
        msg = (head.with_body(self._envelope(), body) if head is not None
               else Message(self._envelope(), self._headers(), body))
        decision = self.engine.process(msg, self._direction, self._found)
        # Logged before the edits go out: from the first body chunk to our final reply the
        # MTA holds a half-replaced body (lost by Postfix 3.7 if we die then with
        # milter_default_action = accept), so nothing else happens in between.
        if log.isEnabledFor(logging.INFO):  # the line's making, for a level that drops it
            log.info("queue_id=%s %s%s", msg.envelope.queue_id, decision.log_fields(),
                     " body=skipped" if self._skipping else "")
        if self.metrics is not None:
            self.metrics.observe(decision, time.monotonic() - started)
        if decision.refused:
            try:
                return self._refuse(decision.refused)
            finally:
                self._reset()
        self._send(decision.edits, body, decision.body_splices)
        self._reset()
        return int(Milter.CONTINUE)

    @_guarded
    def abort(self) -> int:
        self._reset()
        return int(Milter.CONTINUE)

    @_guarded
    def close(self) -> int:
        self._reset()  # also frees the body spool
        if self._connected:
            self._connected = False
            self._inflight.add(connections=-1)
        return int(Milter.CONTINUE)

    def _fail(self, connection: bool = False) -> None:
        """Mark the message failed: end of message answers with the fallback."""
        self._failed = True
        self._connection_failed |= connection

    def _log_failure(self, step: str, cause: str | None) -> None:
        """One ERROR line with the queue id: `cause` for a known condition, else the
        exception being handled with its traceback."""
        policy = self.engine.settings.milter.on_error
        outcome = (
            f"tempfailed, half edited (whatever on_error={policy} says)" if self._half_edited()
            else f"{'tempfailed' if policy == 'tempfail' else 'passed'} unchanged "
                 f"(on_error={policy})")
        if cause is None:
            log.exception("queue_id=%s error in %s; message %s", self.queue_id(), step, outcome)
        else:
            log.error("queue_id=%s error in %s: %s; message %s", self.queue_id(), step, cause,
                      outcome)
        if self.metrics is not None:
            self.metrics.error(step)

    def _fallback(self) -> int:
        """The answer at end of message after the engine failed. With on_error=accept, forged
        X-Case-* fields still go (DESIGN §6: downstream rules trust them), and nothing else is
        changed; a message with more of them than can be removed is refused, as always."""
        policy = self.engine.settings.milter.on_error
        try:
            if policy == "accept" and self._sent is _Sent.NOTHING:  # else the edits went out
                decision = self.engine.unchanged(Message(Envelope(), self._headers()))
                if decision.refused:
                    return self._refuse(decision.refused)
                self._send(decision.edits)
        except Exception as exc:
            cause = _cause(exc)
            (log.error if cause else log.exception)(
                "queue_id=%s could not remove forged fields%s%s", self.queue_id(),
                f": {cause}" if cause else "",
                "; message tempfailed, half edited" if self._half_edited() else "")
        finally:
            half = self._half_edited()
            self._reset()
        # Half edited: the MTA holds some of the edits and would deliver the message with half
        # its header edits, or a half-replaced body, on ACCEPT. TEMPFAIL drops them all; the
        # client sends the message again.
        return int(Milter.TEMPFAIL) if half else reply_for(policy)

    def _half_edited(self) -> bool:
        return self._sent is _Sent.SOME

    def _refuse(self, text: str) -> int:
        log.warning("queue_id=%s refused: %s", self.queue_id(), text)
        # pymilter refuses a lone '%' in a reply (libmilter would drop the reply): the text
        # names `headers.prefix`, which may hold one. The client sees it once: Sendmail reads
        # the reply as a format string, Postfix's milter client turns '%%' back into '%'.
        self.setreply("550", "5.7.1", text.replace("%", "%%"))
        return int(Milter.REJECT)

    def _send(self, edits: tuple[Edit, ...], body: Data = b"",
              splices: tuple[Splice, ...] = ()) -> None:
        """The header edits, then the body with its splices in chunks. From the first
        modification to the last the MTA holds half of them: an error in between must not be
        answered with ACCEPT (`_fallback`). An edit the MTA did not grant at negotiation
        raises NotGranted before any goes out."""
        edits = as_written(self._headers(), edits)
        self._check_granted(edits, bool(splices))
        for edit in edits:
            if isinstance(edit, AddHeader):
                if edit.name.lower() in PLAIN_ADD:
                    self.addheader(edit.name, edit.value)
                else:
                    self.addheader(edit.name, edit.value, APPEND_INDEX)
            else:
                self.chgheader(edit.name, edit.index, edit.value)
            self._sent = _Sent.SOME  # once one is out (a refused first one changed nothing)
        if splices:
            # A body in memory is cut by views; a spooled one by copies, as a view would keep
            # its map from closing (BodySpool.close) while an error's traceback holds it.
            whole = memoryview(body) if isinstance(body, bytes) else body
            for packet in packets(iter_spliced(whole, splices, REPLACE_CHUNK), REPLACE_CHUNK):
                self.replacebody(packet)
                self._sent = _Sent.SOME
        self._sent = _Sent.ALL

    def _check_granted(self, edits: tuple[Edit, ...], body: bool) -> None:
        """Raise NotGranted when the MTA did not offer an action these edits need (no MTA we
        know withholds one, but pymilter would refuse the edit half way through)."""
        needed = {_GRANTS[type(edit)] for edit in edits}
        if body:
            needed.add(_BODY_GRANT)
        granted = int(getattr(self, "_actions", Milter.CURR_ACTS))
        for flag, name, what in sorted(needed, key=lambda grant: grant[0]):
            if not granted & flag:
                raise NotGranted(f"the MTA did not grant the milter {name} ({what}) when the "
                                 "connection was negotiated")
