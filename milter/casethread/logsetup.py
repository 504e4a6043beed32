"""Logging set-up shared by `serve` and the other commands: one line per event on stderr."""

from __future__ import annotations

import logging
import sys


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s casethread %(levelname)s %(message)s"))
    root = logging.getLogger("casethread")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
