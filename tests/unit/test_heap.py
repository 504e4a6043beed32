"""`heap.limit_arenas`: the milter's threads share two glibc malloc arenas (its heap grew with
how many sessions allocated at once, not with the work done). Counted by glibc itself:
`malloc_stats()` prints one `Arena N:` block per arena."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import casethread

MILTER = Path(casethread.__path__[0]).parent

# Eight threads that each allocate once with C's malloc: glibc gives each new allocating
# thread an arena of its own until the limit (eight per core unless capped).
PROBE = """
import ctypes, sys, threading
from casethread import heap
print("limited" if sys.argv[1] == "limit" and heap.limit_arenas() else "as is", file=sys.stderr)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
held, barrier = [], threading.Barrier(8)
def work():
    barrier.wait()
    held.append(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_stats()
"""


def _arenas(mode: str, **env: str) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env, PYTHONPATH=str(MILTER))
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=environ, capture_output=True,
                          text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    return sum(line.startswith("Arena ") for line in lines), lines[0]


def test_the_milters_threads_share_two_arenas() -> None:
    assert _arenas("limit") == (2, "limited")


def test_without_the_limit_threads_take_arenas_of_their_own() -> None:
    # The control: the probe does make glibc open more arenas than the limit.
    arenas, said = _arenas("none")
    assert said == "as is" and arenas > 2


def test_the_environments_malloc_arena_max_wins() -> None:
    assert _arenas("limit", MALLOC_ARENA_MAX="3") == (3, "as is")
