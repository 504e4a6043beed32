"""The MTA side of a milter conversation, on top of PyPI `miltertest`.

`MtaSession` plays Postfix: option negotiation, connect macros and info, then per message MAIL,
RCPT, DATA, headers, EOH, body and EOM, honouring the steps the milter asked to skip (as a real
MTA does). Every socket read is bounded by a timeout. miltertest's body buffers are `str`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miltertest import constants as c
from miltertest.client import MilterConnection

Macros = Mapping[str, str]
CONTINUE: str = c.SMFIR_CONTINUE
# Steps the milter may ask the MTA not to wait a reply for: the MTA then assumes CONTINUE.
_NO_REPLY_BIT = {
    c.SMFIC_CONNECT: c.SMFIP_NR_CONN, c.SMFIC_HELO: c.SMFIP_NR_HELO,
    c.SMFIC_MAIL: c.SMFIP_NR_MAIL, c.SMFIC_RCPT: c.SMFIP_NR_RCPT, c.SMFIC_DATA: c.SMFIP_NR_DATA,
    c.SMFIC_EOH: c.SMFIP_NR_EOH, c.SMFIC_BODY: c.SMFIP_NR_BODY, c.SMFIC_HEADER: c.SMFIP_NR_HDR,
}


@dataclass(frozen=True)
class Endpoint:
    """Where the milter listens: `spec` as libmilter writes it, and how to reach it."""

    spec: str

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1") -> Endpoint:
        return cls(f"inet:{port}@{host}")

    @classmethod
    def unix(cls, path: str) -> Endpoint:
        return cls(f"unix:{path}")

    @property
    def unix_path(self) -> str | None:
        return self.spec[len("unix:") :] if self.spec.startswith("unix:") else None

    def connect(self, timeout: float) -> socket.socket:
        path = self.unix_path
        if path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return sock
        port, _, host = self.spec[len("inet:") :].partition("@")
        return socket.create_connection((host, int(port)), timeout=timeout)


@dataclass(frozen=True)
class Action:
    """One modification request at end of message: 'h' add, 'm' change, 'i' insert header."""

    kind: str
    name: str
    value: str
    index: int | None = None


@dataclass
class Transaction:
    """What the milter answered for one message."""

    replies: dict[str, str] = field(default_factory=dict)  # step -> reply code
    actions: list[Action] = field(default_factory=list)
    disposition: str | None = None  # EOM's final reply; None when the message ended early
    body_chunks: int = 0  # body chunks sent
    body_skipped: bool = False  # the milter answered SKIP to one

    def added(self, name: str) -> list[str]:
        """Values of the fields added as `name`: by add header ("h") or insert header ("i";
        casethread inserts its fields past the last one)."""
        return [a.value for a in self.actions
                if a.kind in ("h", "i") and a.name.lower() == name.lower()]

    def changes(self) -> list[tuple[str, int | None, str]]:
        return [(a.name, a.index, a.value) for a in self.actions if a.kind == "m"]

    def removals(self) -> list[tuple[str, int | None]]:
        return [(name, index) for name, index, value in self.changes() if not value]

    def result(self, sent: Iterable[tuple[str | bytes, str | bytes]]) -> list[tuple[str, str]]:
        """The header fields as the MTA leaves them after this transaction's actions."""
        return apply_actions([(_text(n), _text(v)) for n, v in sent], self.actions)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def apply_actions(headers: list[tuple[str, str]], actions: list[Action]) -> list[tuple[str, str]]:
    """Replay header actions in order, as Postfix does: add appends; a change's index counts
    the fields of that name (case-insensitive) present at that moment; an empty value deletes.
    An independent oracle: it shares no code with the milter under test."""
    result = [[name, value] for name, value in headers]
    for a in actions:
        if a.kind == c.SMFIR_ADDHEADER:
            result.append([a.name, a.value])
        elif a.kind == c.SMFIR_INSHEADER:
            result.insert(a.index or 0, [a.name, a.value])
        elif a.kind == c.SMFIR_CHGHEADER:
            same = [i for i, (n, _v) in enumerate(result) if n.lower() == a.name.lower()]
            idx = a.index or 0
            if 1 <= idx <= len(same):
                if a.value:
                    result[same[idx - 1]][1] = a.value
                else:
                    del result[same[idx - 1]]
            elif a.value:
                result.append([a.name, a.value])
    return [(n, v) for n, v in result]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


class MtaSession:
    """One milter connection, as the MTA sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = MilterConnection(sock)
        self.actions = 0
        self.protocol = 0

    @classmethod
    def open(cls, endpoint: Endpoint, timeout: float = 10.0) -> MtaSession:
        return cls(endpoint.connect(timeout))

    def __enter__(self) -> MtaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def negotiate(
        self, actions: int = c.SMFI_V6_ACTS, protocol: int = c.SMFI_V6_PROT
    ) -> tuple[int, int]:
        """`protocol` is what this MTA can skip; the reply is what the milter wants skipped."""
        self.actions, self.protocol = self.conn.optneg_mta(actions=actions, protocol=protocol)
        return self.actions, self.protocol

    def _no_reply(self, cmd: str) -> bool:
        return bool(self.protocol & _NO_REPLY_BIT.get(cmd, 0))

    def skips(self, bit: int) -> bool:
        return bool(self.protocol & bit)

    def _macro(self, stage: str, macros: Macros | None) -> None:
        if macros:
            self.conn.send_macro(stage, **dict(macros))

    def _step(self, cmd: str, **args: Any) -> str:
        if self._no_reply(cmd):
            self.conn._send(cmd, **args)
            return CONTINUE
        reply: str = self.conn.send_get(cmd, **args)[0]
        return reply

    def _raw_step(self, cmd: str, data: bytes) -> str:
        """A command packed by hand, for what miltertest's codec cannot say."""
        self.sock.sendall(struct.pack("!Lc", len(data) + 1, cmd.encode()) + data)
        if self._no_reply(cmd):
            return CONTINUE
        reply: str = self.conn.recv()[0]
        return reply

    def _body(self, body: str, t: Transaction) -> str:
        """Body chunks as an MTA sends them; SKIP from the milter ends the body early."""
        for start in range(0, len(body), c.MILTER_CHUNK_SIZE):
            t.body_chunks += 1
            reply = self._step(c.SMFIC_BODY, buf=body[start : start + c.MILTER_CHUNK_SIZE])
            if reply == c.SMFIR_SKIP:
                t.body_skipped = True
                return CONTINUE
            if reply != CONTINUE:
                return reply
        return CONTINUE

    def _header(self, name: str | bytes, value: str | bytes) -> str:
        if isinstance(name, str) and isinstance(value, str):
            return self._step(c.SMFIC_HEADER, name=name, value=value)
        # miltertest encodes str as UTF-8 only: raw (e.g. 8-bit) bytes go by hand.
        raw_name = name if isinstance(name, bytes) else name.encode()
        raw_value = value if isinstance(value, bytes) else value.encode()
        return self._raw_step(c.SMFIC_HEADER, raw_name + b"\0" + raw_value + b"\0")

    def connect(
        self,
        macros: Macros | None = None,
        hostname: str = "client.example.org",
        address: str = "198.51.100.7",
        port: int = 40000,
        family: str = c.SMFIA_INET,
        helo: str = "client.example.org",
    ) -> str:
        """Connect info, then HELO unless the milter asked to skip it; the first non-continue."""
        self._macro(c.SMFIC_CONNECT, macros)
        if not self.skips(c.SMFIP_NOCONNECT):
            if family == c.SMFIA_UNKNOWN:
                # No port or address at all; miltertest always encodes both.
                reply = self._raw_step(c.SMFIC_CONNECT, hostname.encode() + b"\0" + b"U")
            else:
                reply = self._step(
                    c.SMFIC_CONNECT, hostname=hostname, family=family, port=port, address=address
                )
            if reply != CONTINUE:
                return reply
        if not self.skips(c.SMFIP_NOHELO):
            return self._step(c.SMFIC_HELO, helo=helo)
        return CONTINUE

    def message(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        headers: Iterable[tuple[str | bytes, str | bytes]],
        body: str = "",
        *,
        mail_macros: Macros | None = None,
        rcpt_macros: Macros | None = None,
        data_macros: Macros | None = None,
        eom_macros: Macros | None = None,
        midway: Callable[[], None] | None = None,
        before_eom: Callable[[], None] | None = None,
    ) -> Transaction:
        """One message; stops at the first reply that is not CONTINUE, as the MTA would.

        `midway` is called after the headers, before EOH: with the message under way;
        `before_eom` after the body, before end of message.

        miltertest's `send_body` raises on a non-CONTINUE body reply rather than returning it.
        """
        t = Transaction()

        def ok(step: str, reply: str) -> bool:
            t.replies[step] = reply
            return reply == CONTINUE

        self._macro(c.SMFIC_MAIL, mail_macros)
        if not self.skips(c.SMFIP_NOMAIL) and not ok(
            "mail", self._step(c.SMFIC_MAIL, args=[f"<{mail_from}>"])
        ):
            return t
        for n, rcpt in enumerate(rcpts):
            self._macro(c.SMFIC_RCPT, rcpt_macros)
            if not self.skips(c.SMFIP_NORCPT) and not ok(
                f"rcpt{n}", self._step(c.SMFIC_RCPT, args=[f"<{rcpt}>"])
            ):
                return t
        self._macro(c.SMFIC_DATA, data_macros)
        if not self.skips(c.SMFIP_NODATA) and not ok("data", self._step(c.SMFIC_DATA)):
            return t
        if not self.skips(c.SMFIP_NOHDRS):
            for n, (name, value) in enumerate(headers):
                if not ok(f"header{n}", self._header(name, value)):
                    return t
        if midway is not None:
            midway()
        if not self.skips(c.SMFIP_NOEOH) and not ok("eoh", self._step(c.SMFIC_EOH)):
            return t
        if body and not self.skips(c.SMFIP_NOBODY) and not ok("body", self._body(body, t)):
            return t
        if before_eom is not None:
            before_eom()
        self._macro(c.SMFIC_BODYEOB, eom_macros)
        for cmd, args in self.conn.send_eom():
            if cmd in (c.SMFIR_ADDHEADER, c.SMFIR_CHGHEADER, c.SMFIR_INSHEADER):
                t.actions.append(Action(cmd, args["name"], args["value"], args.get("index")))
            elif cmd in (c.SMFIR_REPLBODY, c.SMFIR_CHGFROM, c.SMFIR_ADDRCPT, c.SMFIR_DELRCPT,
                         c.SMFIR_ADDRCPT_PAR, c.SMFIR_QUARANTINE):
                t.actions.append(Action(cmd, "", repr(args)))
            else:
                t.disposition = cmd
        return t

    def abort(self) -> None:
        """SMFIC_ABORT: the MTA ends the current message (RSET, or the next MAIL FROM)."""
        self.conn._send(c.SMFIC_ABORT)

    def quit(self) -> None:
        self.conn._send(c.SMFIC_QUIT)
        self.close()

    def close(self) -> None:
        self.sock.close()
