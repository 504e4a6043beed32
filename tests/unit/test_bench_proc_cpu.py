"""bench/proc_cpu.py (`bench/run.py --cpu-by-process`): the accounting records it reads, and
how a process's CPU over a window is worked out from them and from /proc."""

from __future__ import annotations

import os
import struct

import pytest

from ..helpers.bench_scripts import load_bench_script

pc = load_bench_script("proc_cpu.py")
TICK = 1 / os.sysconf("SC_CLK_TCK")


def acct_record(pid: int, ppid: int, comm: bytes, utime: int, stime: int) -> bytes:
    """struct acct_v3 as linux/acct.h lays it out (times already comp_t encoded)."""
    return struct.pack("<BBHIIIIIIf8H16s", 0, 3, 0, 0, 0, 0, pid, ppid, 0, 1.0,
                       utime, stime, 0, 0, 0, 0, 0, 0, comm)


def test_comp_t_is_a_13_bit_mantissa_and_a_base_8_exponent() -> None:
    assert pc.comp_t(1234) == 1234
    assert pc.comp_t((2 << 13) | 100) == 100 * 64


def test_an_accounting_record_gives_pid_parent_name_and_cpu_seconds() -> None:
    data = acct_record(4321, 17, b"cleanup", 150, (1 << 13) | 10)
    # A torn record at the end (the kernel still writing it) is left for the next read.
    (proc,) = pc.parse_acct(data + data[:20])
    assert (proc.pid, proc.ppid, proc.comm) == (4321, 17, "cleanup")
    assert proc.cpu_s == pytest.approx((150 + 80) / 100)


def _stat(pid: int, comm: str, utime: int, stime: int, threads: int, started: int) -> str:
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime),
            "0", "0", "20", "0", str(threads), "0", str(started)]
    return f"{pid} ({comm}) " + " ".join(rest)


def test_one_thread_reads_nanoseconds_several_threads_read_ticks() -> None:
    one = pc.parse_stat(5, _stat(5, "smtp (x) d", 3, 4, 1, 99), "1500000000 7 8\n")
    assert (one.comm, one.cpu_s, one.started) == ("smtp (x) d", 1.5, 99)
    many = pc.parse_stat(6, _stat(6, "python3", 30, 20, 5, 99), "1500000000 7 8\n")
    assert many.cpu_s == pytest.approx(50 * TICK)


def test_cpu_over_the_window_for_lasting_ended_new_and_reused_processes() -> None:
    before = {1: pc.Proc(1, 0, "qmgr", 5.0, 10), 2: pc.Proc(2, 1, "smtpd", 3.0, 11),
              3: pc.Proc(3, 1, "smtp", 9.0, 12)}
    after = {1: pc.Proc(1, 0, "qmgr", 5.5, 10), 2: pc.Proc(2, 1, "smtpd", 3.0, 11),
             3: pc.Proc(3, 1, "cleanup", 0.25, 40), 4: pc.Proc(4, 1, "smtpd", 0.5, 41)}
    ended = [pc.Proc(2, 1, "smtpd", 3.75, 0), pc.Proc(5, 1, "smtp", 0.125, 0)]
    got = {proc.pid: seconds for proc, seconds in pc.used(before, after, ended)}
    # 1 lasted; 2 ended (its record wins over the zombie /proc still shows); 3 is a new
    # process under a reused pid (another start time); 4 and 5 started in the window.
    assert got == {1: 0.5, 2: 0.75, 3: 0.25, 4: 0.5, 5: 0.125}


def test_kinds_by_owner() -> None:
    owners = pc.Owners(postfix_master=10, named={20: "milter", 21: "smtp-sink"}, bench=30)

    def kind(pid: int, ppid: int, comm: str) -> str:
        return str(pc.kind(pc.Proc(pid, ppid, comm, 0.0), owners))

    assert kind(11, 10, "cleanup") == "postfix:cleanup"
    assert kind(10, 1, "master") == "postfix:master"
    assert kind(20, 30, "python3") == "milter"
    assert kind(21, 30, "smtp-sink") == "smtp-sink"
    assert kind(31, 30, "smtp-source") == "smtp-source"
    assert kind(30, 1, "python3") == "bench"
    assert kind(40, 2, "kworker/0:1-events") == "kernel threads"
    assert kind(41, 1, "cleanup") == "other"  # another Postfix on the machine
