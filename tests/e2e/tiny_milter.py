"""A tiny pymilter milter that proves the e2e harness: it reports what Postfix told it.

Usage: python tiny_milter.py SOCKET   (libmilter spelling: inet:PORT@HOST or unix:/path)

At end of message it adds
  X-Seen-Daemon: the {daemon_name} macro at MAIL FROM (milter_mail_macros)
  X-Seen-Auth: the {auth_authen} macro at MAIL FROM, or "none"
  X-Seen-Client: the {client_addr} macro at connect (milter_connect_macros)
  X-Seen-Message-ID: "yes" if a Message-ID header reached the milter, else "no"
"""

from __future__ import annotations

import os
import sys

import Milter

# pymilter has no type hints.
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT


class TinyMilter(Milter.Base):  # type: ignore[misc]
    def __init__(self) -> None:
        self.client = "-"
        self.daemon = "-"
        self.auth = "none"
        self.saw_message_id = False

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        self.client = self.getsymval("{client_addr}") or "-"
        return CONTINUE

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.daemon = self.getsymval("{daemon_name}") or "-"
        self.auth = self.getsymval("{auth_authen}") or "none"
        self.saw_message_id = False
        return CONTINUE

    def header(self, name: str, value: str) -> int:
        if name.lower() == "message-id":
            self.saw_message_id = True
        return CONTINUE

    # Defined so pymilter does not negotiate "no DATA callback" (a ~40 ms TCP stall).
    def data(self) -> int:
        return CONTINUE

    def eom(self) -> int:
        self.addheader("X-Seen-Daemon", self.daemon)
        self.addheader("X-Seen-Auth", self.auth)
        self.addheader("X-Seen-Client", self.client)
        self.addheader("X-Seen-Message-ID", "yes" if self.saw_message_id else "no")
        return ACCEPT


def main() -> None:
    socket_spec = sys.argv[1]
    # A unix socket must be writable by user postfix; its directory limits who reaches it.
    os.umask(0o111)
    Milter.factory = TinyMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("tiny_milter", socket_spec, timeout=30)


if __name__ == "__main__":
    main()
