"""glibc's malloc arenas, limited for the milter's many threads.

libmilter runs every MTA connection in a thread of its own, and glibc gives threads that
allocate at the same time arenas of their own (up to eight per core). Memory freed in one arena
is not reused by another, so the milter's heap grew with how many sessions happened to allocate
at once, not with the work done: a 100,000-message soak at 50 sessions held 75 MiB of heap
after warm-up and wandered by up to 12 % from run to run. With two arenas it holds ~30 MiB and
stays within 3 % (README, Performance). Python allocates under its GIL anyway, so more arenas
buy no parallelism here.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("casethread")

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas() -> bool:
    """Cap glibc's arenas before the milter starts its threads; whether it was done. The
    environment's `MALLOC_ARENA_MAX` (glibc reads it at start) is left to win. A C library
    without `mallopt` (musl has a stub, others none) is left alone."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_ARENA_MAX, ARENAS))
    if not done:
        log.debug("mallopt(M_ARENA_MAX, %d) refused: malloc arenas left as they are", ARENAS)
    return done
