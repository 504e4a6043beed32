"""The no-op pymilter milter, the benchmark's anchor: what any pymilter milter costs.

Usage: python noop_milter.py [--no-reply] SOCKET   (libmilter spelling: inet:PORT@HOST or
unix:/path)

It asks for every callback, as casethread does (headers and body included), and answers
CONTINUE to each. It defines `data()`: without it pymilter negotiates "no DATA callback" and
Postfix's lone DATA macro packet costs a ~40 ms TCP delayed-ACK stall (FIELD-NOTES). It asks for
the same modification flags as casethread but never modifies anything.

With --no-reply it also lets the MTA skip waiting for the steps casethread answers no reply to
(connect, MAIL, RCPT, each header field, end of headers), and on a unix socket skip the DATA
step, as casethread does there: the same protocol shape as casethread, so that the difference
between the two is casethread's own work.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import Milter

CONTINUE: int = Milter.CONTINUE


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


def main() -> None:
    args = sys.argv[1:]
    no_reply = args[:1] == ["--no-reply"]
    if no_reply:
        args = args[1:]
    if len(args) != 1:
        sys.exit("usage: noop_milter.py [--no-reply] SOCKET")
    # A unix socket must be writable by user postfix; its directory limits who reaches it.
    os.umask(0o111)
    unix = args[0].startswith(("unix:", "local:"))
    Milter.factory = (NoopMilter if not no_reply else NoReplyNoDataNoopMilter if unix
                      else NoReplyNoopMilter)
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY)
    print(f"noop milter pid {os.getpid()} on {args[0]}", file=sys.stderr, flush=True)
    Milter.runmilter("noop", args[0], timeout=60)


if __name__ == "__main__":
    main()
