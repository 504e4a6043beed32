"""The signals that stop `casethread serve`: its main thread drains on each (service.py), as
libmilter's own signal thread would stop on it, and no other thread of ours takes them
(metrics.py)."""

from __future__ import annotations

import signal

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
