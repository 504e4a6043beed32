#!/usr/bin/env python3
"""How many messages a second one `casethread serve` process takes, with no MTA beside it
(README Operations, *Sizing*).

    .venv/bin/python bench/ceiling.py                   # the four workloads, ~2.5 minutes
    .venv/bin/python bench/ceiling.py --only outbound,60k --seconds 20 --clients 6
    .venv/bin/python bench/ceiling.py --milter noop     # the no-op anchor (noop-nr: its
                                                        # no-reply steps), as in bench/run.py

The milter (the installed `casethread serve`, a real LMDB index, `index.sync: full`, a unix
socket) runs on one CPU, the highest this script may use, and the load on the others: client
processes that each play the MTA (`tests/wire/milterclient.py`: option negotiation, connect,
MAIL, RCPT, the header fields, the body, end of message, the steps the milter asks to skip
left out), one connection per message as Postfix opens one per SMTP session, the benchmark's
mail (`bench/messages.py`) with a Message-ID of its own each. Every end of message is checked:
outbound mail gets its X-Case-ID, inbound mail the case the replies belong to (a no-op
milter's, that it answered CONTINUE).

Printed per workload: messages a second, the milter's CPU a message (all its threads, from
/proc), and `busy`, the milter's CPU seconds a second. Its Python runs one thread at a time:
with `busy` near 1.0 the milter's one CPU is the limit; well below, the load was, and msg/s
is a floor of what the milter takes. Needs two CPUs or more.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import messages  # noqa: E402  (bench/, the script's own directory)
from tests.e2e.harness import MilterProcess, MilterSocket, casethread_serve_argv  # noqa: E402
from tests.wire.milterclient import CONTINUE, Endpoint, MtaSession, values  # noqa: E402

from casethread.index import LmdbIndex  # noqa: E402
from casethread.keyfile import load_keyring, write_key_file  # noqa: E402

CONFIG_YAML = """\
# casethread configuration for bench/ceiling.py
milter:
  log_level: info
inbound:
  addresses:
    - {support}
  flood:  # one customer sends every reply: no loop verdicts
    limit: 100000
    window: 1s
tokens:
  keys:
    - {key}
"""
WORKLOADS = tuple((d, s) for d in messages.DIRECTIONS for s in messages.SIZES)
# bench/noop_milter.py's options by name; None: casethread.
MILTERS: dict[str, tuple[str, ...] | None] = {
    "casethread": None, "noop": (), "noop-nr": ("--no-reply",)}
CONNECT_MACROS = {"j": "mx.bench.test", "_": "client.bench.test [192.0.2.7]"}


@dataclasses.dataclass(frozen=True)
class Load:
    endpoint: str
    direction: str
    size: str
    token: str | None
    expect_case: str | None  # inbound: the case every reply belongs to
    casethread: bool  # else a no-op milter: no X-Case-ID to check
    deadline: float  # time.time(): the clients are other processes
    cpus: frozenset[int]


def _message(direction: str, size: str, token: str | None) -> tuple[list[tuple[str, str]], str]:
    """The benchmark's mail as header fields and a CRLF body (what the MTA sends)."""
    raw = messages.message(direction, size, token).decode("ascii")
    head, _, body = raw.partition("\n\n")
    fields: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + "\r\n" + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value.lstrip(" ")))
    return fields, body.replace("\n", "\r\n")


def _client(load: Load, number: int) -> int:
    """Messages sent until the deadline, each checked; runs in a process of its own."""
    os.sched_setaffinity(0, load.cpus)
    fields, body = _message(load.direction, load.size, load.token)
    outbound = load.direction == "outbound"
    sender, rcpt = ((messages.SUPPORT, messages.CUSTOMER) if outbound
                    else (messages.CUSTOMER, messages.SUPPORT))
    daemon = "ORIGINATING" if outbound else "mx"
    # Message-IDs of this call's own: one seen before (the warm-up's) would take the
    # duplicate's shortcut.
    run = os.urandom(6).hex()
    sent = 0
    while time.time() < load.deadline:
        queue_id = f"C{number:02d}{sent:07d}"
        headers = [*fields, ("Message-ID", f"<{queue_id}.{run}@ceiling.bench.test>")]
        with MtaSession.open(Endpoint(load.endpoint)) as mta:
            mta.negotiate()
            if mta.connect({**CONNECT_MACROS, "{daemon_name}": daemon}) != CONTINUE:
                raise RuntimeError("the milter refused the connection")
            t = mta.message(sender, [rcpt], headers, body,
                            mail_macros={"{mail_addr}": sender},
                            rcpt_macros={"i": queue_id}, eom_macros={"i": queue_id})
            mta.quit()
        case = values(t.result(headers), "X-Case-ID")
        wrong_case = len(case) != 1 or (
            load.expect_case is not None and case[0] != load.expect_case)
        if t.disposition != CONTINUE or (load.casethread and wrong_case):
            raise RuntimeError(f"{load.direction} {load.size}: unexpected end of message "
                               f"{t.disposition!r}, X-Case-ID {case}")
        sent += 1
    return sent


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of every thread of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(work: Path, shared: Path, key: Path, direction: str, size: str, clients: int,
            seconds: float, milter_cpu: int, client_cpus: frozenset[int],
            noop_args: Sequence[str] | None = None) -> dict[str, float]:
    """One run of one workload: a fresh milter and index in `work`."""
    index = work / "index"
    # The case the inbound replies belong to.
    idx = LmdbIndex(index, 1 << 30)
    try:
        case = idx.create_case(int(time.time()))
    finally:
        idx.close()
    token = load_keyring([key]).make(case.number)
    sock = MilterSocket.unix(work / "milter.sock")
    milter_argv = (
        casethread_serve_argv(sock, config=shared / "casethread.yaml", index=index)
        if noop_args is None
        else [sys.executable, str(BENCH / "noop_milter.py"), *noop_args, sock.libmilter])
    argv = ["taskset", "--cpu-list", str(milter_cpu), *milter_argv]
    milter = MilterProcess(argv, None, sock, log_path=work / "milter.log", cwd=work)
    milter.start()
    try:
        expect = case.case_id if direction == "inbound" else None
        warm = Load(sock.libmilter, direction, size, token, expect, noop_args is None,
                    time.time() + 1.0, client_cpus)
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            pool.starmap(_client, [(warm, n) for n in range(clients)])
            load = dataclasses.replace(warm, deadline=time.time() + seconds)
            cpu_before, started = _cpu_seconds(milter.pid), time.monotonic()
            counts = pool.starmap(_client, [(load, n) for n in range(clients)])
            wall = time.monotonic() - started
            cpu = _cpu_seconds(milter.pid) - cpu_before
    finally:
        milter.stop()
    sent = sum(counts)
    return {"msgs_per_s": sent / wall, "milter_cpu_ms": 1000 * cpu / sent,
            "busy": cpu / wall, "messages": sent}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="",
                        help="workload filter: 'outbound', '60k' or 'inbound,5k'")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds a workload (default 10)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each workload, a fresh milter each (default 3)")
    parser.add_argument("--milter", choices=sorted(MILTERS), default="casethread",
                        help="casethread (default), or bench/noop_milter.py answering every "
                             "step (noop) or with casethread's no-reply steps (noop-nr)")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        parser.error("needs two CPUs or more: one for the milter, the rest for the load")
    terms = [t for t in args.only.split(",") if t]
    chosen = [w for w in WORKLOADS if all(t in w for t in terms)]
    if not chosen:
        parser.error(f"--only {args.only!r} matches no workload of {WORKLOADS}")
    milter_cpu, client_cpus = cpus[-1], frozenset(cpus[:-1])
    loaders = ",".join(map(str, sorted(client_cpus)))
    print(f"ceiling of {args.milter}: milter on CPU {milter_cpu}, {args.clients} client "
          f"processes on CPU {loaders}, {args.seconds:g} s x {args.rounds}", flush=True)
    with tempfile.TemporaryDirectory(prefix="casethread-ceiling-") as tmp:
        work = Path(tmp)
        key = work / "bench.key"
        write_key_file(key)
        (work / "casethread.yaml").write_text(
            CONFIG_YAML.format(support=messages.SUPPORT, key=key))
        for direction, size in chosen:
            runs = []
            for r in range(args.rounds):
                run_dir = work / f"{direction}-{size}-{r}"
                run_dir.mkdir()
                runs.append(measure(run_dir, work, key, direction, size, args.clients,
                                    args.seconds, milter_cpu, client_cpus,
                                    MILTERS[args.milter]))
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            low, high = (f(r["msgs_per_s"] for r in runs) for f in (min, max))
            print(f"{direction:8} {size:>3}  {med['msgs_per_s']:7.1f} msg/s ({low:.0f}-{high:.0f})"
                  f"  milter {med['milter_cpu_ms']:.3f} ms CPU a message"
                  f"  busy {med['busy']:.2f}  ({int(med['messages'])} messages a run)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
