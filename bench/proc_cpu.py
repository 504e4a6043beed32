"""CPU by process kind over a measurement (`bench/run.py --cpu-by-process`).

Postfix runs a message through several processes (smtpd, cleanup, qmgr, smtp,
trivial-rewrite), some of which end during a measurement (a daemon leaves after `max_use`
connections) and are replaced: /proc alone would lose what an ended process used since the
last look. So the kernel's BSD process accounting (acct(2)) is switched on for the run: it
writes a record with the CPU time of every process that ends. A process's CPU over a window is
then its /proc total at the end (or its accounting record, if it ended) minus its /proc total at
the start (nothing if it started later).

A process of one thread (Postfix's, the sink, the load) is read in nanoseconds from
/proc/PID/schedstat (its scheduler run time); one of several (the milter) from /proc/PID/stat's
utime + stime, which holds its ended threads too, in clock ticks (1/100 s: a milter uses
hundreds of them in a measurement). An accounting record is in 1/100 s, rounded down. Time spent in
interrupts and softirqs is charged to the process they interrupted (this kernel has no
IRQ_TIME_ACCOUNTING), so loopback TCP's receive work mostly lands on the sender.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ACCT_HZ = 100  # the kernel's AHZ: the unit of acct_v3's times
# struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid, btime,
# etime (float), utime, stime, mem, io, rw, minflt, majflt, swaps (comp_t), comm[16].
ACCT_V3 = struct.Struct("<BBHIIIIIIf8H16s")
KTHREADD = 2


def comp_t(value: int) -> int:
    """acct's 16-bit float: a 13-bit mantissa times 8 to the power of the top 3 bits."""
    return (value & 0x1FFF) << (3 * (value >> 13))


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    cpu_s: float
    started: int = 0  # clock ticks after boot (/proc); 0 from an accounting record


def parse_acct(data: bytes) -> list[Proc]:
    """The processes in acct_v3 records (others, and a torn tail, are skipped)."""
    found = []
    for offset in range(0, len(data) - ACCT_V3.size + 1, ACCT_V3.size):
        fields = ACCT_V3.unpack_from(data, offset)
        if fields[1] != 3:
            continue
        pid, ppid, utime, stime = fields[6], fields[7], fields[10], fields[11]
        comm = fields[18].split(b"\0", 1)[0].decode(errors="replace")
        found.append(Proc(pid, ppid, comm, (comp_t(utime) + comp_t(stime)) / ACCT_HZ))
    return found


def parse_stat(pid: int, text: str, schedstat: str | None = None) -> Proc:
    """A process from /proc/PID/stat (the comm may hold spaces and parentheses) and, for a
    process of one thread, its /proc/PID/schedstat (run time in ns, first)."""
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()  # state is fields[0]
    ticks = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    one_thread = int(fields[17]) == 1
    cpu_s = int(schedstat.split()[0]) / 1e9 if schedstat and one_thread else ticks
    return Proc(pid, int(fields[1]), comm, cpu_s, int(fields[19]))


def snapshot() -> dict[int, Proc]:
    """Every process now, by pid (one that ends while read is left out)."""
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(entry.path, "stat").read_text()
                sched = Path(entry.path, "schedstat").read_text()
                procs[int(entry.name)] = parse_stat(int(entry.name), text, sched)
    return procs


def used(before: Mapping[int, Proc], after: Mapping[int, Proc],
         ended: list[Proc]) -> list[tuple[Proc, float]]:
    """Each process's CPU seconds between the two snapshots; `ended` (accounting records of
    the window) wins over `after` for the same pid, which /proc may still show as a zombie."""
    last = {**after, **{p.pid: p for p in ended}}
    out = []
    for pid, proc in last.items():
        start = before.get(pid)
        # A pid reused within the window: the new process started at 0. (Not the comm: a
        # kernel worker's names its work, and a Postfix daemon's changes at its exec.)
        reused = start is None or proc.started not in (0, start.started)
        base = 0.0 if reused or start is None else start.cpu_s
        out.append((proc, max(0.0, proc.cpu_s - base)))
    return out


@dataclasses.dataclass(frozen=True)
class Owners:
    """Which processes are whose: Postfix's (children of its master), ours, the kernel's."""

    postfix_master: int
    named: Mapping[int, str]  # pid -> kind (the milter measured, smtp-sink, ...)
    bench: int  # this script: its children (smtp-source, perf) are named by their comm


def kind(proc: Proc, owners: Owners) -> str:
    if proc.pid in owners.named:
        return owners.named[proc.pid]
    if proc.pid == owners.postfix_master:
        return "postfix:master"
    if proc.ppid == owners.postfix_master:
        return f"postfix:{proc.comm}"
    if proc.pid == owners.bench:
        return "bench"
    if proc.ppid == owners.bench:
        return proc.comm  # smtp-source, perf
    if proc.pid == KTHREADD or proc.ppid == KTHREADD:
        return "kernel threads"
    return "other"


def by_kind(rows: list[tuple[Proc, float]], owners: Owners) -> dict[str, float]:
    totals: dict[str, float] = {}
    for proc, seconds in rows:
        name = kind(proc, owners)
        totals[name] = totals.get(name, 0.0) + seconds
    return totals


class Accounting:
    """acct(2) switched on into a file of its own for the `with` block, then off again."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="casethread-acct-")
        os.close(fd)
        self.path = Path(name)
        self._libc = ctypes.CDLL(None, use_errno=True)

    def __enter__(self) -> Accounting:
        if self._libc.acct(str(self.path).encode()) != 0:
            err = ctypes.get_errno()
            self.path.unlink(missing_ok=True)
            raise OSError(err, f"acct({self.path}): {os.strerror(err)}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._libc.acct(None)
        self.path.unlink(missing_ok=True)

    def offset(self) -> int:
        return self.path.stat().st_size

    def ended_since(self, offset: int) -> list[Proc]:
        with self.path.open("rb") as f:
            f.seek(offset)
            return parse_acct(f.read())


class Window:
    """The CPU each kind of process used from `start()` to `stop()`."""

    def __init__(self, accounting: Accounting) -> None:
        self._acct = accounting
        self._offset = 0
        self._before: dict[int, Proc] = {}

    def start(self) -> None:
        self._offset = self._acct.offset()
        self._before = snapshot()

    def stop(self, owners: Owners) -> dict[str, float]:
        after = snapshot()
        return by_kind(used(self._before, after, self._acct.ended_since(self._offset)), owners)


@contextlib.contextmanager
def accounting(enabled: bool) -> Iterator[Accounting | None]:
    if not enabled:
        yield None
        return
    with Accounting() as acct:
        yield acct
