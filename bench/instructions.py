#!/usr/bin/env python3
"""Engine instructions per message, counted by valgrind's callgrind (issue 5, item 2).

    .venv/bin/python bench/instructions.py               # the three paths, ~1.5 minutes
    .venv/bin/python bench/instructions.py hdr           # one path
    .venv/bin/python bench/instructions.py hdr --step 1  # each message a second after the last

The paths are `bench/core.py`'s engine cases over the in-memory index: `out` (outbound
stamping of the 60 KB html+plain mail), `hdr` (inbound resolution by the Subject's token),
`body` (inbound resolution by a token quoted in the body). Each path runs twice under
`valgrind --tool=callgrind` (both at once): the warm-up and then N messages, and the warm-up
alone; instructions per message = (total of the first - total of the second) / N. Python's
start, the imports, making the messages (as many in both) and the warm-up cancel out, and what
the process holds before the messages is frozen (`gc.freeze`: a full collection would walk this
script's modules and messages, no work of the engine's). The count is the same from run to run
within a few instructions (`PYTHONHASHSEED=0`, and the engine reads a clock of this script's),
where time on a shared machine moves by 10 %: a change worth 0.5 % shows. Needs valgrind.

`--step S` moves the clock S seconds from one message to the next. With 0 (the default) every
message comes in the second its case was last written, as `bench/core.py`'s messages mostly
do: a reply then leaves its case's record as it was. With 1, each reply finds its case
changed since, as in production, and the engine decodes, changes and encodes its record.
`--unique-boundaries` gives each message MIME boundaries of its own, as mail clients make them,
where the benchmark's messages all share two: what a cache of field values saves on mail that
repeats its fields, and not on other mail. `--milter` drives each message as the milter does
(`pymilter_app`): at end of headers its direction and what its header fields resolve (inbound
mail they resolve is decided without resolving them again), at end of message its decision,
where by default `Engine.process` does both at once as `bench/core.py` times it.
`--new-tokens` verifies each message's token as if it were the first time: the keyring's kept
tokens (`Keyring`, 4,096 at most) are forgotten before each message, as for a reply to a case
no reply named in a while. By default every reply carries one case's token, as a
conversation's replies do, and the kept answer is used.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import gc
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import core

import casethread
from casethread.core.decision import Decision
from casethread.core.message import Header, Message
from casethread.core.token import Keyring
from casethread.engine import Engine
from casethread.index import MemoryIndex

BENCH = Path(__file__).resolve().parent
PATHS = {"out": "outbound stamp 60k", "hdr": "inbound by headers 60k",
         "body": "inbound by body token 60k"}
# The benchmark's messages' boundaries (bench/messages.py).
BOUNDARIES = ("=_mixed_7f3a", "=_alt_91c2")
START = float(core.NOW)  # the clock's first reading: the second the benchmark's case opened


def _unique_boundaries(msg: Message, i: int) -> Message:
    headers, body = msg.headers, msg.body
    for boundary in BOUNDARIES:
        own = f"{boundary[:-4]}{i:08x}"
        headers = tuple(Header(h.name, h.value.replace(boundary, own)) for h in headers)
        body = body.replace(boundary.encode(), own.encode())
    return dataclasses.replace(msg, headers=headers, body=body)


def _as_the_milter(engine: Engine, msg: Message) -> Decision:
    """`msg` through the engine in the milter's two steps (`pymilter_app`): at end of headers
    its direction and what its header fields resolve, at end of message its decision."""
    head = Message(msg.envelope, msg.headers)
    direction = engine.classify(head)
    plan = engine.body_wanted(head, direction)
    return engine.process(head.with_body(msg.envelope, msg.body), direction, plan.found)


def run_messages(path: str, count: int, built: int, warmup: int, step: int,
                 unique: bool, milter: bool = False, new_tokens: bool = False) -> None:
    """What runs under valgrind: the warm-up, then `count` messages of `path`, of `built`
    made (as many in both runs: making them is no work of the engine's)."""
    now = [START]
    keyring = Keyring([(1, bytes(range(32)))])
    index = MemoryIndex()
    with tempfile.TemporaryDirectory(prefix="casethread-instructions-") as tmp:
        engine = Engine(core._settings(tmp), index, keyring, hostname=core.HOSTNAME,
                        clock=lambda: now[0])
        case = next(c for c in core.engine_cases(engine, index, keyring, warmup + built)
                    if c.name == PATHS[path])
        messages = case.messages
        if unique:
            messages = [_unique_boundaries(m, i) for i, m in enumerate(messages)]
        # What the process holds before the messages (this script's modules, the messages
        # themselves) is no work of the engine's: a full collection would walk it all.
        gc.collect()
        gc.freeze()
        for msg in messages[: warmup + count]:
            now[0] += step
            if new_tokens:
                keyring._verified.clear()  # a private of the keyring's: for this count only
            if milter:
                _check(case, _as_the_milter(engine, msg))
            else:
                core._process_checked(engine, case, msg)  # its decision is checked, as there


def _check(case: core.EngineCase, decision: Decision) -> None:
    if decision.match != case.expect_match or (case.check_body and not decision.body_splices):
        raise RuntimeError(f"{case.name}: unexpected decision {decision.log_fields()}")


def _callgrind_total(args: Sequence[str], out: Path) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, __file__, *args],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for line in out.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {out}")


def count_path(path: str, count: int, warmup: int, step: int, unique: bool,
               milter: bool = False, new_tokens: bool = False) -> int:
    """Instructions per message of `path`."""
    flags = ["--warmup", str(warmup), "--step", str(step)]
    flags += ["--unique-boundaries"] if unique else []
    flags += ["--milter"] if milter else []
    flags += ["--new-tokens"] if new_tokens else []
    with tempfile.TemporaryDirectory(prefix="casethread-callgrind-") as tmp:
        runs = [["--run", path, "-n", str(n), "--built", str(count), *flags]
                for n in (count, 0)]
        outs = [Path(tmp) / f"callgrind.{i}" for i in range(2)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            full, empty = pool.map(_callgrind_total, runs, outs)
    return round((full - empty) / count)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", metavar="path",
                        help="out, hdr or body (default: all three)")
    core.add_count_options(parser, n=200, warmup=30)
    parser.add_argument("--unique-boundaries", action="store_true",
                        help="each message its own MIME boundaries")
    parser.add_argument("--milter", action="store_true",
                        help="in the milter's two steps (end of headers, end of message)")
    parser.add_argument("--new-tokens", action="store_true",
                        help="verify each message's token as if first seen")
    parser.add_argument("--run", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--built", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        run_messages(args.run, args.n, args.built, args.warmup, args.step,
                     args.unique_boundaries, args.milter, args.new_tokens)
        return 0
    unknown = [p for p in args.paths if p not in PATHS]
    if unknown or args.n < 1:
        parser.error(f"unknown path {unknown[0]!r}" if unknown else "-n must be at least 1")
    shown = (", unique boundaries" if args.unique_boundaries else "") + (
        ", the milter's two steps" if args.milter else "") + (
        ", new tokens" if args.new_tokens else "")
    # Both runs find the bytecode written: where one compiled a changed module and the other
    # read what it wrote, the count held the compiling (~2,000 instructions a message).
    for source in (Path(casethread.__file__).parent, BENCH):
        compileall.compile_dir(source, quiet=1)
    for path in args.paths or PATHS:
        per_message = count_path(path, args.n, args.warmup, args.step, args.unique_boundaries,
                                 args.milter, args.new_tokens)
        print(f"{path:5} {per_message:>11,} instructions/message  ({PATHS[path]}, "
              f"n={args.n}, step {args.step}{shown})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
