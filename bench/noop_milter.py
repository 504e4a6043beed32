"""The no-op pymilter milter, the benchmark's anchor: what any pymilter milter costs.

Usage: python noop_milter.py [--no-reply] [--replace-body] [--edits] SOCKET   (libmilter
spelling: inet:PORT@HOST or unix:/path)

It asks for every callback, as casethread does (headers and body included), and answers
CONTINUE to each. It defines `data()`: without it pymilter negotiates "no DATA callback" and
Postfix's lone DATA macro packet costs a ~40 ms TCP delayed-ACK stall (FIELD-NOTES). It asks for
the same modification flags as casethread but never modifies anything.

With --no-reply it also lets the MTA skip waiting for the steps casethread answers no reply to
(connect, MAIL, RCPT, each header field, end of headers), and on a unix socket skip the DATA
step, as casethread does there: the same protocol shape as casethread, so that the difference
between the two is casethread's own work.

Two options make it ask the MTA for what casethread asks of it for an agent's outbound mail,
without casethread's work, to tell their cost to the MTA apart (bench/run.py's `noop-nr-body`,
`noop-nr-edits`, `noop-nr-both`): --replace-body keeps the body and sends it back unchanged at
end of message, in casethread's 65,535-byte `replacebody` packets; --edits makes casethread's
header edits of such mail: four fields inserted below the others (`smfi_insheader` at an index
past the last) and the Subject changed, with values of the same lengths.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

import Milter

CONTINUE: int = Milter.CONTINUE
# As casethread's adapter (milter/casethread/pymilter_app.py): its packet size and its index
# for a field inserted below every other.
REPLACE_CHUNK = 65535
APPEND_INDEX = 1 << 30
# casethread's edits of an agent's mail that opens a case (bench/calls.py out60k -v), values of
# the same lengths.
INSERTED = (("X-Case-ID", "C-000001"), ("References", "<111GHMKSFCR87DA7WR6.case@example.com>"),
            ("Thread-Index", "AQHcqiULV2bErHA9QkWFzdjIXE+fXw=="),
            ("Thread-Topic", "Your printer keeps jamming"))
SUBJECT = "Your printer keeps jamming [ref:111GHMKSFCR87DA7WR6]"


class NoopMilter(Milter.Base):  # type: ignore[misc]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return CONTINUE

    def hello(self, hostname: str) -> int:
        return CONTINUE

    def envfrom(self, mail_from: str, *params: str) -> int:
        return CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        return CONTINUE

    def data(self) -> int:
        return CONTINUE

    def header(self, name: str, value: str) -> int:
        return CONTINUE

    def eoh(self) -> int:
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        return CONTINUE

    def eom(self) -> int:
        return CONTINUE

    def abort(self) -> int:
        return CONTINUE

    def close(self) -> int:
        return CONTINUE


class NoReplyNoopMilter(NoopMilter):
    # The steps casethread's adapter marks @Milter.noreply (milter/casethread/pymilter_app.py).
    connect = Milter.noreply(NoopMilter.connect)
    envfrom = Milter.noreply(NoopMilter.envfrom)
    envrcpt = Milter.noreply(NoopMilter.envrcpt)
    header = Milter.noreply(NoopMilter.header)
    eoh = Milter.noreply(NoopMilter.eoh)


class NoReplyNoDataNoopMilter(NoReplyNoopMilter):
    # casethread's shape on a unix socket: no DATA step (milter/casethread/service.py).
    data = Milter.nocallback(NoopMilter.data)


class EditingMilter(Milter.Base):  # type: ignore[misc]
    """Mixed in before a no-op: at end of message, casethread's header edits (`edits`) and/or
    the body sent back unchanged (`replace_body`)."""

    edits: ClassVar[bool] = False
    replace_body: ClassVar[bool] = False

    def envfrom(self, mail_from: str, *params: str) -> int:
        self._chunks: list[bytes] = []
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        if self.replace_body:
            self._chunks.append(chunk)
        return CONTINUE

    def eom(self) -> int:
        if self.edits:
            for name, value in INSERTED:
                self.addheader(name, value, APPEND_INDEX)
            self.chgheader("Subject", 1, SUBJECT)
        if self.replace_body:
            whole = b"".join(self._chunks)
            for start in range(0, len(whole), REPLACE_CHUNK):
                self.replacebody(whole[start : start + REPLACE_CHUNK])
        return CONTINUE


def factory(no_reply: bool, unix: bool, edits: bool, replace_body: bool) -> type[Milter.Base]:
    base = (NoopMilter if not no_reply else NoReplyNoDataNoopMilter if unix
            else NoReplyNoopMilter)
    if not (edits or replace_body):
        return base
    # envfrom keeps the base's no-reply mark: negotiation reads it from the class's method.
    envfrom = Milter.noreply(EditingMilter.envfrom) if no_reply else EditingMilter.envfrom
    return type("EditingNoop", (EditingMilter, base),
                {"edits": edits, "replace_body": replace_body, "envfrom": envfrom})


def main() -> None:
    options = {"--no-reply", "--replace-body", "--edits"}
    args = [a for a in sys.argv[1:] if a not in options]
    chosen = set(sys.argv[1:]) & options
    if len(args) != 1:
        sys.exit("usage: noop_milter.py [--no-reply] [--replace-body] [--edits] SOCKET")
    # A unix socket must be writable by user postfix; its directory limits who reaches it.
    os.umask(0o111)
    unix = args[0].startswith(("unix:", "local:"))
    Milter.factory = factory("--no-reply" in chosen, unix, "--edits" in chosen,
                             "--replace-body" in chosen)
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY)
    print(f"noop milter pid {os.getpid()} on {args[0]}", file=sys.stderr, flush=True)
    Milter.runmilter("noop", args[0], timeout=60)


if __name__ == "__main__":
    main()
