"""A milter that dies like a `kill -9` at the worst moment: at end of message it adds a
header, replaces the body, and exits before its final reply. The MTA has then applied (or
begun to apply) an edit that the milter never confirmed: it cannot tell whether more body
chunks were coming. Used by test_faults.py (Postfix) and test_sendmail.py (Sendmail).

Usage: python dying_milter.py SOCKET   (libmilter spelling: inet:PORT@HOST or unix:/path)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import Milter

if TYPE_CHECKING:  # run as a script by the tests: no package around it then
    from .harness import MilterSocket

EXIT_STATUS = 9
ADDED_HEADER = ("X-Case-ID", "C-000999")
REPLACED_BODY = b"replaced\r\n"


class DyingMilter(Milter.Base):  # type: ignore[misc]  # pymilter has no type hints
    def eom(self) -> int:
        self.addheader(*ADDED_HEADER)
        self.replacebody(REPLACED_BODY)
        os._exit(EXIT_STATUS)


def dying_milter_argv(milter: MilterSocket) -> list[str]:
    """The command line that runs this milter on `milter` (for a MilterFactory)."""
    return [sys.executable, str(Path(__file__).resolve()), milter.libmilter]


def main() -> None:
    Milter.factory = DyingMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.MODBODY)
    Milter.runmilter("dying", sys.argv[1], timeout=30)


if __name__ == "__main__":
    main()
