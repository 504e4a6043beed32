#!/usr/bin/env python3
"""Calls per message from the milter's Python into C, counted in the real adapter (issue 5).

    .venv/bin/python bench/calls.py                  # the four workloads, ~5 s
    .venv/bin/python bench/calls.py out60k hdr -v    # two of them, each call named
    .venv/bin/python bench/calls.py --step 1         # each message a second after the last

Drives `pymilter_app.CaseMilter`, `Engine` and `LmdbIndex` (`index.sync: full`, in a temporary
directory) as libmilter and Postfix would: one connection per message (as smtp-source sends
them), the steps and no-reply flags Postfix 3.7 negotiates (over a unix socket, as `serve`
negotiates them there; `--tcp` as over TCP, where the DATA step keeps its reply), the header
fields Postfix shows a milter (its Received, and the Message-ID its cleanup adds), the body in
65,535-byte chunks. The milter context is a stand-in for pymilter's `milterContext` and the
LMDB environment a counting proxy of the real one: each of their calls is a call into C in
the real milter.

Per message (the mean over `-n` messages after a warm-up):
- `lmdb`: py-lmdb calls; `lmdb-gil` those that release the GIL (py-lmdb 3.0's cpython.c:
  get, put, stat, info, a write transaction's begin, commit and abort; not a read
  transaction's begin and end);
- `pymilter`: calls into pymilter's context; `pymilter-gil` those that release the GIL
  (addheader, chgheader, replacebody; not getsymval, setreply);
- `callbacks`: libmilter's calls into Python, each taking the GIL (getpriv included);
- `log`: log lines at info, one write each to stderr or syslog, outside the GIL;
- `gil`: the sum of the GIL hand-overs: callbacks, `lmdb-gil`, `pymilter-gil` and `log`;
- `to-mta`: packets libmilter writes to the MTA: a reply to each step not negotiated
  without one, one per header edit, one per 65,535 bytes of new body.
One session: under load, a group commit holds several sessions' writes, in one transaction
and with one commit (`LmdbIndex._commit_batch`), so a message's share of the begin and the
commit is less than one each.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import math
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import core
import messages
import Milter

from casethread import logsetup
from casethread.core.message import parse_raw
from casethread.core.token import Keyring
from casethread.engine import Engine
from casethread.index import LmdbIndex
from casethread.pymilter_app import REPLACE_CHUNK, CaseMilter

WORKLOADS = {
    "out5k": "outbound 5k, a new case, stamped",
    "out60k": "outbound 60k, a new case, stamped",
    "hdr": "inbound 5k by the Subject's token (body skipped)",
    "body": "inbound 5k by a token quoted in the body",
}
# Postfix 3.7's offer (milter8.c): every action, and every protocol step it can skip or leave
# without a reply, SKIP among them.
MTA_ACTIONS = int(Milter.CURR_ACTS)
MTA_PROTOCOL = 0x1FFFFF
# Steps and the protocol bit that lets libmilter send no reply to them.
NO_REPLY_BIT = {"connect": Milter.P_NR_CONN, "envfrom": Milter.P_NR_MAIL,
                "envrcpt": Milter.P_NR_RCPT, "data": Milter.P_NR_DATA,
                "header": Milter.P_NR_HDR, "eoh": Milter.P_NR_EOH, "body": Milter.P_NR_BODY}
# py-lmdb 3.0 (cpython.c): these release the GIL around their LMDB call.
LMDB_RELEASING = frozenset({"get", "put", "delete", "stat", "info", "sync", "commit",
                            "reader_check", "begin-write", "abort-write"})
# pymilter 1.0.5 (miltermodule.c): these release the GIL around their libmilter call.
PYMILTER_RELEASING = frozenset({"addheader", "chgheader", "replacebody", "addrcpt", "delrcpt",
                                "chgfrom", "quarantine", "progress"})
QUEUE_ID = "4XyZ1B2c3D"


class Counts(collections.Counter[str]):
    """Calls by kind (`lmdb:get`, `pymilter:addheader`, `callback:eom`...)."""

    def total(self, prefix: str, releasing: frozenset[str] | None = None) -> int:
        return sum(n for key, n in self.items() if key.startswith(prefix + ":")
                   and (releasing is None or key.split(":", 1)[1] in releasing))


class TxnProxy:
    """A py-lmdb transaction whose calls are counted."""

    def __init__(self, txn: Any, counts: Counts, write: bool) -> None:
        self.real, self._counts, self._write = txn, counts, write

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.real, name)
        kind = f"{name}-write" if name == "abort" and self._write else name

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counts[f"lmdb:{kind}"] += 1
            return method(*args, **kwargs)

        return call


class EnvProxy:
    """A py-lmdb environment whose calls, and its transactions' calls, are counted."""

    def __init__(self, env: Any, counts: Counts) -> None:
        self.real, self._counts = env, counts

    def begin(self, write: bool = False, parent: TxnProxy | None = None, **kw: Any) -> TxnProxy:
        kind = "begin-nested" if parent is not None else "begin-write" if write else "begin"
        self._counts[f"lmdb:{kind}"] += 1
        txn = self.real.begin(write=write, parent=parent.real if parent else None, **kw)
        return TxnProxy(txn, self._counts, write)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counts[f"lmdb:{name}"] += 1
            return method(*args, **kwargs)

        return call


class MtaContext:
    """Stands for pymilter's `milterContext` of one connection: every call is counted, the
    packets an edit makes libmilter write too."""

    def __init__(self, counts: Counts, macros: dict[str, str]) -> None:
        self._counts = counts
        self.macros = macros
        self._priv: Any = None
        self.new_body: list[bytes] = []

    def getpriv(self) -> Any:
        return self._priv

    def setpriv(self, priv: Any) -> None:
        self._priv = priv

    def getsymval(self, name: str) -> str | None:
        self._counts["pymilter:getsymval"] += 1
        return self.macros.get(name)

    def setreply(self, *reply: Any) -> None:
        self._counts["pymilter:setreply"] += 1

    def addheader(self, name: str, value: str, idx: int = -1) -> None:
        self._edit("addheader")

    def chgheader(self, name: str, idx: int, value: str) -> None:
        self._edit("chgheader")

    def replacebody(self, chunk: bytes) -> None:
        self._edit("replacebody", math.ceil(len(chunk) / REPLACE_CHUNK))
        self.new_body.append(bytes(chunk))

    def _edit(self, name: str, packets: int = 1) -> None:
        self._counts[f"pymilter:{name}"] += 1
        self._counts["to-mta:edit"] += packets


@dataclasses.dataclass(frozen=True)
class Mail:
    raw: bytes
    sender: str
    rcpt: str
    client: str
    daemon: str


def _with_postfix_fields(raw: bytes, i: int) -> tuple[list[tuple[str, bytes]], bytes]:
    """The header fields as Postfix shows them to a milter (its Received on top, the
    Message-ID cleanup adds for a local client last) and the body with CRLF line ends."""
    headers, body = parse_raw(raw)
    fields = [("Received", b"from client.example (localhost [127.0.0.1])\r\n\tby "
                           b"mx.bench.example (Postfix) with ESMTP id " + QUEUE_ID.encode())]
    fields += [(h.name, h.value.encode()) for h in headers]
    fields.append(("Message-ID", f"<20260302101500.{i:08d}@mx.bench.example>".encode()))
    return fields, body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _step(counts: Counts, protocol: int, step: str, reply: int) -> int:
    """Count a callback and, unless negotiated away, the reply libmilter writes for it."""
    counts[f"callback:{step}"] += 1
    if not protocol & NO_REPLY_BIT.get(step, 0) and reply != Milter.NOREPLY:
        counts["to-mta:reply"] += 1
    return reply


def deliver(mail: Mail, i: int, counts: Counts) -> MtaContext:
    """One SMTP session's message through the milter, in the order libmilter calls it."""
    ctx = MtaContext(counts, {"{daemon_name}": mail.daemon})
    opts = [MTA_ACTIONS, MTA_PROTOCOL, 0, 0]
    _step(counts, 0, "negotiate", Milter.negotiate_callback(ctx, opts))
    protocol = opts[1]
    _step(counts, protocol, "connect", Milter.connect_callback(
        ctx, "localhost", socket.AF_INET, (mail.client, 40000 + i % 20000)))
    milter: CaseMilter = ctx.getpriv()
    _step(counts, protocol, "envfrom", milter.envfrom_bytes(f"<{mail.sender}>".encode()))
    ctx.macros["i"] = QUEUE_ID  # Postfix's default: the queue id from RCPT on
    _step(counts, protocol, "envrcpt", milter.envrcpt_bytes(f"<{mail.rcpt}>".encode()))
    if not protocol & Milter.P_NODATA:
        _step(counts, protocol, "data", milter.data())
    fields, body = _with_postfix_fields(mail.raw, i)
    for name, value in fields:
        _step(counts, protocol, "header", milter.header_bytes(name, value))
    _step(counts, protocol, "eoh", milter.eoh())
    for start in range(0, len(body), REPLACE_CHUNK):
        if _step(counts, protocol, "body", milter.body(body[start:start + REPLACE_CHUNK])) \
                != Milter.CONTINUE:
            break  # SKIP: the MTA sends no more of it
    reply = _step(counts, protocol, "eom", milter.eom())
    if reply != Milter.CONTINUE:
        raise RuntimeError(f"end of message answered {reply}")
    _step(counts, protocol, "close", Milter.close_callback(ctx))
    counts["to-mta:reply"] -= 1  # close gets none
    return ctx


class _LogCounter(logging.Handler):
    def __init__(self, counts: Counts) -> None:
        super().__init__(logging.INFO)
        self._counts = counts
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self._counts["log:line"] += 1
        self.last = record.getMessage()


@contextmanager
def _counted_log(counts: Counts) -> Iterator[_LogCounter]:
    """The casethread logger at info, as `serve` sets it up, to a counting handler."""
    logsetup.configure("info", "stderr")
    logger = logging.getLogger(logsetup.LOGGER)
    saved = logger.handlers[:]
    handler = _LogCounter(counts)
    logger.handlers[:] = [handler]
    try:
        yield handler
    finally:
        logger.handlers[:] = saved


class Rig:
    """The milter's engine over an LMDB index whose environment is counted."""

    def __init__(self, tmp: str, step: int, tcp: bool = False) -> None:
        self.counts = Counts()
        now = [float(core.NOW)]
        self._now, self._step = now, step
        settings = core._settings(str(Path(tmp) / "index"))
        self.index = LmdbIndex(settings.index.path, settings.index.map_size)
        shared = self.index._live()
        shared.env = EnvProxy(shared.env, self.counts)  # type: ignore[assignment]
        self.keyring = Keyring([(1, bytes(range(32)))])
        engine = Engine(settings, self.index, self.keyring, hostname=core.HOSTNAME,
                        clock=lambda: now[0])
        # As `serve` makes it for its socket (service.py).
        Milter.factory = lambda: CaseMilter(engine, skip_data=not tcp)

    def send(self, mail: Mail, i: int) -> MtaContext:
        self._now[0] += self._step
        return deliver(mail, i, self.counts)

    def close(self) -> None:
        self.index.close()


def _outbound(size: str) -> Mail:
    return Mail(messages.message("outbound", size), messages.SUPPORT, messages.CUSTOMER,
                "127.0.0.1", "ORIGINATING")


def _inbound(raw: bytes) -> Mail:
    return Mail(raw, messages.CUSTOMER, messages.SUPPORT, "192.0.2.7", "mx.bench.example")


def _quoted_reply(rig: Rig) -> bytes:
    """A reply whose Subject lost the token: the agent's stamped 5k mail quoted back."""
    sent = rig.send(_outbound("5k"), 10**7)
    headers, _ = parse_raw(messages.message("inbound", "5k", "0" * 20))
    kept = [f"{h.name}: {h.value}" for h in headers
            if h.name.lower() not in ("subject", "in-reply-to", "references")]
    text = b"".join(sent.new_body).replace(b"\r\n", b"\n")
    return ("\n".join([*kept, "Subject: Re: Your printer keeps jamming", ""]).encode()
            + b"\n" + b"".join(b"> " + line + b"\n" for line in text.splitlines()))


def _mail(rig: Rig, workload: str) -> tuple[Mail, str]:
    """The workload's message, and the start of the decision every one of them must get."""
    if workload.startswith("out"):
        return _outbound(workload[3:]), "direction=outbound case=C-"
    if workload == "hdr":
        token = rig.keyring.make(rig.index.create_case(core.NOW).number)
        mail = _inbound(messages.message("inbound", "5k", token))
    else:
        mail = _inbound(_quoted_reply(rig))
    return mail, "direction=inbound case=C-000001 match=token "


def count(workload: str, n: int, warmup: int, step: int, tcp: bool = False) -> Counts:
    """Calls per message of `workload`, over `n` messages after `warmup`."""
    with tempfile.TemporaryDirectory(prefix="casethread-calls-") as tmp:
        rig = Rig(tmp, step, tcp)
        try:
            with _counted_log(rig.counts) as log:
                mail, expect = _mail(rig, workload)
                for i in range(warmup):
                    rig.send(mail, i)
                rig.counts.clear()
                for i in range(warmup, warmup + n):
                    rig.send(mail, i)
                    if not log.last.startswith(expect, log.last.find("direction=")):
                        raise RuntimeError(f"{workload}: unexpected decision: {log.last}")
            return Counts(rig.counts)
        finally:
            rig.close()


def summary(counts: Counts) -> dict[str, int]:
    lmdb_gil = counts.total("lmdb", LMDB_RELEASING)
    pymilter_gil = counts.total("pymilter", PYMILTER_RELEASING)
    return {
        "lmdb": counts.total("lmdb"), "lmdb-gil": lmdb_gil,
        "pymilter": counts.total("pymilter"), "pymilter-gil": pymilter_gil,
        "callbacks": counts.total("callback"), "log": counts.total("log"),
        "gil": counts.total("callback") + lmdb_gil + pymilter_gil + counts.total("log"),
        "to-mta": counts.total("to-mta"),
    }


def _per_message(value: int, n: int) -> str:
    return f"{value / n:g}" if value % n else str(value // n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", metavar="workload",
                        help=f"{', '.join(WORKLOADS)} (default: all)")
    core.add_count_options(parser, n=20, warmup=5)
    parser.add_argument("--tcp", action="store_true",
                        help="as over a TCP socket (default: a unix socket)")
    parser.add_argument("-v", "--verbose", action="store_true", help="each kind of call")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown or args.n < 1:
        parser.error(f"unknown workload {unknown[0]!r}" if unknown else "-n must be at least 1")
    columns = list(summary(Counts()))
    print(f"{'':7}" + "".join(f"{c:>13}" for c in columns) + "   per message")
    for workload in args.workloads or WORKLOADS:
        counts = count(workload, args.n, args.warmup, args.step, args.tcp)
        row = summary(counts)
        print(f"{workload:7}" + "".join(f"{_per_message(row[c], args.n):>13}" for c in columns)
              + f"   {WORKLOADS[workload]}", flush=True)
        if args.verbose:
            for key, value in sorted(counts.items()):
                print(f"{'':9}{key:28} {_per_message(value, args.n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
