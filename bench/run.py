#!/usr/bin/env python3
"""`make bench`: delivered throughput and per-message latency of a real Postfix with and
without milters (issue 5, item 1).

    .venv/bin/python bench/run.py            # full run: 3 rounds, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke run, ~1 minute, 1 round, few messages

Set-up (all on loopback, all stopped at the end, also on errors and Ctrl-C):
- one private Postfix (tests/e2e/harness.py, milter settings from contrib/postfix/main.cf) with
  one smtpd service per configuration and direction: `-o smtpd_milters=...` picks the milter,
  the outbound services are contrib's submission service (milter_macro_daemon_name=ORIGINATING);
- Postfix relays everything to Postfix's own `smtp-sink`, whose running counter (`-c`) says
  when each message has been DELIVERED; throughput is messages delivered per second from the
  start of the load until the last one reached the sink;
- the load is Postfix's `smtp-source` (one message per SMTP session, as most senders do),
  20 parallel sessions for throughput and 1 session for latency (the sender's wait per message:
  smtp-source's run time / messages);
- the milters: none, a no-op pymilter milter (bench/noop_milter.py, unix socket), the same
  with casethread's no-reply steps, casethread on a unix socket (index.sync full, and async;
  `ct-unix-cpu`, not run by default: its threads held on one CPU by `taskset`), casethread
  on TCP with TCP_NODELAY on its listening socket, and (at 1 session) casethread on TCP
  without it; with `--baseline DIR`, casethread on a unix socket running DIR's code
  (`ct-unix-base`), to alternate a change with its parent in one run; with `--cpu-by-process`,
  the CPU each kind of process used (Postfix's daemons, the load, the sink, the milter, other
  work: bench/proc_cpu.py) as a second table.

Within every round each workload runs once per configuration, the configurations rotated from
round to round; the table shows medians with min-max over rounds. Results are appended to
bench/results.jsonl (one line per configuration and workload, plus one line of targets).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# tests/e2e/harness.py is imported, not copied: the repo root makes `tests.e2e.harness`
# importable (a namespace package; `milter/` has no __init__.py, so pymilter still wins).
sys.path.insert(0, str(REPO))

import messages  # noqa: E402  (bench/, the script's own directory)
import proc_cpu  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    MILTER_STOP_TIMEOUT,
    MilterProcess,
    MilterSocket,
    PostfixHarness,
    casethread_serve_argv,
    contrib_submission_service,
    find_sbin,
    free_port,
    port_listening,
    postfix_accessible_dir,
)

from casethread.core.token import Keyring  # noqa: E402
from casethread.index import LmdbIndex  # noqa: E402
from casethread.keyfile import load_keyring, write_key_file  # noqa: E402

RESULTS = BENCH / "results.jsonl"
CT_SERVE = BENCH / "ct_serve.py"
HELO = "client.bench.test"
SINK_BACKLOG = "512"
SETTLE_S = 0.3


class BenchError(RuntimeError):
    """The benchmark cannot produce honest figures; the message says why."""


# --------------------------------------------------------------------------- configurations


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    title: str
    socket_kind: str | None  # None: no milter; "unix" or "inet"
    casethread: bool = False
    nodelay: bool = True
    latency_only: bool = False  # run at 1 session only
    index_sync: str = "full"  # casethread's index.sync
    noop_args: tuple[str, ...] = ()  # bench/noop_milter.py's options
    baseline: bool = False  # the code of --baseline DIR, not this checkout's
    one_cpu: bool = False  # started under `taskset -c LAST_CPU` (README, Operations)


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("none", "no milter", None),
        Config("noop", "no-op pymilter, unix", "unix"),
        Config("noop-nr", "no-op, no-reply steps, unix", "unix", noop_args=("--no-reply",)),
        Config("ct-unix", "casethread, unix", "unix", casethread=True),
        Config("ct-unix-base", "casethread, unix, baseline", "unix", casethread=True,
               baseline=True),
        Config("ct-unix-async", "casethread, unix, index.sync async", "unix", casethread=True,
               index_sync="async"),
        Config("ct-unix-cpu", "casethread, unix, one CPU", "unix", casethread=True,
               one_cpu=True),
        Config("ct-tcp", "casethread, TCP + NODELAY", "inet", casethread=True),
        Config("ct-tcp-nagle", "casethread, TCP, Nagle", "inet", casethread=True,
               nodelay=False, latency_only=True),
        Config("noop-tcp", "no-op pymilter, TCP", "inet"),
        # What casethread asks of the MTA for an agent's outbound mail, without its work: the
        # body sent back unchanged, casethread's header edits, both (bench/noop_milter.py).
        Config("noop-nr-body", "no-op/nr, body replaced", "unix",
               noop_args=("--no-reply", "--replace-body")),
        Config("noop-nr-edits", "no-op/nr, header edits", "unix",
               noop_args=("--no-reply", "--edits")),
        Config("noop-nr-both", "no-op/nr, edits + body", "unix",
               noop_args=("--no-reply", "--edits", "--replace-body")),
    )
}
DEFAULT_CONFIGS = ("none", "noop", "noop-nr", "ct-unix", "ct-unix-async", "ct-tcp",
                   "ct-tcp-nagle")


@dataclasses.dataclass(frozen=True)
class Workload:
    direction: str
    size: str
    sessions: int
    count: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.direction, self.size, self.sessions)


@dataclasses.dataclass(frozen=True)
class Plan:
    rounds: int
    workloads: tuple[Workload, ...]
    warmup: int


def make_plan(quick: bool, rounds: int | None) -> Plan:
    # Counts sized for ~10 minutes in all on 2 cores (--quick: ~1 minute).
    if quick:
        counts = {("5k", 20): 200, ("60k", 20): 120, ("5k", 1): 20, ("60k", 1): 20}
        default_rounds, warmup = 1, 10
    else:
        counts = {("5k", 20): 1000, ("60k", 20): 600, ("5k", 1): 150, ("60k", 1): 150}
        default_rounds, warmup = 3, 40
    workloads = tuple(
        Workload(direction, size, sessions, counts[(size, sessions)])
        for sessions in (20, 1)
        for direction in messages.DIRECTIONS
        for size in messages.SIZES
    )
    return Plan(rounds or default_rounds, workloads, warmup)


# --------------------------------------------------------------------------- smtp-sink


class Sink:
    """smtp-sink with its running counter read live: the time each message arrived."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._times: list[float] = []  # arrival time of message k+1 at index k
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: list[bytes] = []

    def start(self) -> None:
        binary = find_sbin("smtp-sink")
        if binary is None:
            raise BenchError("no smtp-sink: it comes with Postfix (apt-get install postfix)")
        # -u: it refuses to run as root; -c: counters on stdout, flushed at every ".".
        self._proc = subprocess.Popen(
            [binary, "-u", "postfix", "-c", f"127.0.0.1:{self.port}", SINK_BACKLOG],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, name="sink-reader", daemon=True).start()
        deadline = time.monotonic() + 10
        while not port_listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"smtp-sink did not start: {self.output()}")
            time.sleep(0.02)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        pending = b""
        while chunk := os.read(fd, 65536):
            now = time.monotonic()
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            for record in records:
                match = re.search(rb"mesg=(\d+)", record)
                if match is None:
                    if record.strip():
                        self._output.append(record)
                    continue
                with self._cond:
                    total = int(match.group(1))
                    while self.count < total:
                        self.count += 1
                        self._times.append(now)
                    self._cond.notify_all()

    def wait_for(self, total: int, timeout: float) -> float:
        """The monotonic time the sink had `total` messages; BenchError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"the sink got {self.count} of {total} messages in {timeout}s")
                self._cond.wait(min(left, 0.5))
            return self._times[total - 1]

    def output(self) -> str:
        return b"\n".join(self._output).decode(errors="replace")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


# --------------------------------------------------------------------------- Postfix


class BenchPostfix(PostfixHarness):
    """The e2e harness's Postfix (no milter in main.cf) plus one smtpd per configuration and
    direction, each naming its milter with -o smtpd_milters, relaying to smtp-sink."""

    def __init__(self, sink_port: int, milters: dict[str, MilterSocket | None]) -> None:
        super().__init__(
            None,
            extra_main={"relayhost": f"[127.0.0.1]:{sink_port}"},
        )
        self.milters = milters
        self.ports: dict[tuple[str, str], int] = {}

    def master_cf(self) -> str:
        if not self.ports:
            used: set[int] = {self.inbound_port, self.submission_port, self.sink_port}
            for name in self.milters:
                for direction in messages.DIRECTIONS:
                    port = free_port()
                    while port in used:
                        port = free_port()
                    used.add(port)
                    self.ports[(name, direction)] = port
        submission = contrib_submission_service(self.contrib_dir)
        lines = [super().master_cf()]
        for (name, direction), port in self.ports.items():
            milter = self.milters[name]
            spec = milter.postfix if milter is not None else ""
            if direction == "outbound":
                service = dataclasses.replace(
                    submission, options=(*submission.options, ("smtpd_milters", spec))
                )
                lines.append(service.render(f"127.0.0.1:{port}"))
            else:
                lines.append(f"127.0.0.1:{port} inet  n  -  n  -  -  smtpd\n"
                             f"  -o smtpd_milters={spec}\n")
        return "".join(lines)

    def start(self) -> None:
        super().start()
        try:
            deadline = time.monotonic() + 15
            for port in self.ports.values():
                while not port_listening(port):
                    if time.monotonic() > deadline:
                        raise BenchError(f"Postfix is not listening on {port}:\n"
                                         f"{self.maillog_tail()}")
                    time.sleep(0.02)
        except BaseException:
            self.stop()
            raise


# --------------------------------------------------------------------------- milters


BENCH_CONFIG_YAML = """\
# casethread configuration for the benchmark (written by bench/run.py).
milter:
  socket_group: postfix
  log_level: info
inbound:
  addresses:
    - {support}
  # smtp-source repeats one sender: without this every reply after the 20th would be a
  # "loop" (X-Case-Loop), which a real support mailbox with many senders does not see.
  flood:
    limit: 100000
    window: 60s
tokens:
  keys:
    - {key}
"""


@dataclasses.dataclass
class RunningMilter:
    config: Config
    socket: MilterSocket
    proc: MilterProcess
    index: Path | None = None
    log_offset: int = 0

    def rss_kb(self) -> int | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) if match else None

    def cpu_s(self) -> float | None:
        return process_cpu_s(self.proc.pid)

    def new_log(self) -> str:
        data = self.proc.log_path.read_bytes()
        text = data[self.log_offset :].decode(errors="replace")
        self.log_offset = len(data)
        return text


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class SwitchCounter:
    """The context switches of a process and all its threads, those started and ended
    meanwhile included (libmilter's), counted by `perf stat` from `start` to `stop`; None
    without perf. /proc counts them per thread, and loses a thread's when it ends."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._out = Path(tempfile.mkstemp(prefix="casethread-perf-", suffix=".csv")[1])
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SwitchCounter:
        perf = shutil.which("perf")
        if perf is not None:
            self._proc = subprocess.Popen(
                [perf, "stat", "-x", ",", "-e", "context-switches", "-p", str(self._pid),
                 "-o", str(self._out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)  # attached before the load starts
        return self

    def stop(self) -> int | None:
        try:
            if self._proc is None:
                return None
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(timeout=10)
            found = re.search(r"^(\d+),[^,]*,context-switches", self._out.read_text(), re.M)
            return int(found.group(1)) if found else None
        finally:
            self._out.unlink(missing_ok=True)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (not idle, not waiting for I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def service_sets_nodelay() -> bool:
    """Whether `casethread serve` itself calls sockopts.set_listen_nodelay (once wired in)."""
    source = (REPO / "milter" / "casethread" / "service.py").read_text()
    return "set_listen_nodelay" in source


def _last_cpu() -> int:
    """The highest-numbered CPU this process may run on: all of a milter's threads go there."""
    return max(os.sched_getaffinity(0))


def start_milters(
    names: Sequence[str], work: Path, key_path: Path, baseline: Path | None = None
) -> tuple[dict[str, RunningMilter], str]:
    """Start every milter configuration; returns them and the inbound mail's token."""
    config_path = work / "casethread.yaml"
    config_path.write_text(BENCH_CONFIG_YAML.format(support=messages.SUPPORT, key=key_path))
    async_config_path = work / "casethread-async.yaml"
    async_config_path.write_text(
        config_path.read_text() + "index:\n  sync: async\n"
    )
    keyring: Keyring = load_keyring([key_path])
    token = ""
    running: dict[str, RunningMilter] = {}
    try:
        for name in names:
            cfg = CONFIGS[name]
            if cfg.socket_kind is None:
                continue
            sock = (MilterSocket.unix(work / f"{name}.sock") if cfg.socket_kind == "unix"
                    else MilterSocket.inet())
            log_path = work / f"{name}.log"
            index = None
            if not cfg.casethread:
                argv = [sys.executable, str(BENCH / "noop_milter.py"), *cfg.noop_args,
                        sock.libmilter]
            else:
                index = work / f"{name}-index"
                token = keyring.make(_precreate_case(index))
                if cfg.socket_kind == "unix":
                    chosen = async_config_path if cfg.index_sync == "async" else config_path
                    argv = casethread_serve_argv(sock, config=chosen, index=index)
                else:
                    mode = "nodelay" if cfg.nodelay else "nagle"
                    argv = [sys.executable, str(CT_SERVE), mode, "serve",
                            "--config", str(config_path), "--socket", sock.libmilter,
                            "--index", str(index)]
            if cfg.one_cpu:
                argv = ["taskset", "--cpu-list", str(_last_cpu()), *argv]
            env = None
            if cfg.baseline and baseline is not None:
                env = {**os.environ, "PYTHONPATH": str(baseline.resolve() / "milter")}
            proc = MilterProcess(argv, env, sock, log_path=log_path, cwd=work)
            running[name] = RunningMilter(cfg, sock, proc, index)
            proc.start()
            if cfg.casethread and cfg.socket_kind == "inet":
                _check_nodelay(running[name])
    except BaseException:
        stop_milters(running)
        raise
    return running, token


def _precreate_case(index: Path) -> int:
    """The case the inbound replies belong to (every casethread index gets case number 1)."""
    idx = LmdbIndex(index, 1 << 30)
    try:
        return idx.create_case(int(time.time())).number
    finally:
        idx.close()


def _check_nodelay(milter: RunningMilter) -> None:
    """Fail unless the wrapper reports the TCP_NODELAY state this configuration is about."""
    want = "1" if milter.config.nodelay else "0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"bench: listening TCP sockets nodelay: (\S+)", milter.proc.output())
        if match:
            states = re.findall(r"fd\d+=(\d)", match.group(1))
            if not states or set(states) != {want}:
                raise BenchError(f"{milter.config.name}: listening socket TCP_NODELAY is "
                                 f"{match.group(1)}, expected {want}")
            return
        time.sleep(0.05)
    raise BenchError(f"{milter.config.name}: no TCP_NODELAY report:\n{milter.proc.output()}")


def stop_milters(running: dict[str, RunningMilter]) -> None:
    # pymilter needs seconds to leave after SIGTERM: signal all, then wait for each.
    for milter in running.values():
        milter.proc.terminate()
    for milter in running.values():
        milter.proc.stop(MILTER_STOP_TIMEOUT)


# --------------------------------------------------------------------------- one measurement


@dataclasses.dataclass
class Sample:
    config: str
    direction: str
    size: str
    sessions: int
    messages: int
    round: int
    seconds_delivered: float  # load start -> last message at the sink
    seconds_accepted: float  # load start -> smtp-source done (every message accepted)
    rss_kb: int | None
    milter_cpu_s: float | None  # the milter process's CPU over the measurement
    busy_cpu_s: float  # the whole machine's busy CPU over the measurement
    milter_switches: int | None = None  # the milter's context switches over the measurement
    # --cpu-by-process: CPU seconds over the measurement by kind of process (proc_cpu.kind)
    cpu_by_kind: dict[str, float] | None = None

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.seconds_delivered

    @property
    def latency_ms(self) -> float:
        """Mean time one SMTP session (connect ... QUIT) took, as one sender sees it."""
        return 1000 * self.seconds_accepted * self.sessions / self.messages


class Bench:
    def __init__(self, postfix: BenchPostfix, sink: Sink, milters: dict[str, RunningMilter],
                 files: dict[tuple[str, str], Path],
                 accounting: proc_cpu.Accounting | None = None) -> None:
        self.postfix = postfix
        self.accounting = accounting
        self.sink = sink
        self.milters = milters
        self.files = files
        self.delivered = 0
        self._maillog_offset = 0
        source = find_sbin("smtp-source")
        if source is None:
            raise BenchError("no smtp-source: it comes with Postfix (apt-get install postfix)")
        self.source = source

    def run(self, config: str, wl: Workload, round_no: int) -> Sample:
        port = self.postfix.ports[(config, wl.direction)]
        sender, rcpt = ((messages.SUPPORT, messages.CUSTOMER) if wl.direction == "outbound"
                        else (messages.CUSTOMER, messages.SUPPORT))
        milter = self.milters.get(config)
        if milter is not None:
            milter.new_log()  # skip what came before
        argv = [self.source, "-s", str(wl.sessions), "-m", str(wl.count),
                "-F", str(self.files[(wl.direction, wl.size)]), "-f", sender, "-t", rcpt,
                "-M", HELO, f"127.0.0.1:{port}"]
        target = self.delivered + wl.count
        milter_cpu = milter.cpu_s() if milter is not None else None
        switched = SwitchCounter(milter.proc.pid).start() if milter is not None else None
        window = proc_cpu.Window(self.accounting) if self.accounting is not None else None
        if window is not None:
            window.start()
        busy = machine_busy_s()
        start = time.monotonic()
        result = subprocess.run(argv, capture_output=True, timeout=60 + wl.count, check=False)
        accepted = time.monotonic() - start
        if result.returncode != 0:
            raise BenchError(
                f"smtp-source failed ({result.returncode}) for {config} {wl}: "
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\nmaillog:\n{self.postfix.maillog_tail()}"
            )
        try:
            done = self.sink.wait_for(target, timeout=60 + wl.count / 5)
        except BenchError as exc:
            raise BenchError(f"{exc}\nmaillog:\n{self.postfix.maillog_tail()}") from None
        busy = machine_busy_s() - busy
        by_kind = window.stop(self._owners(config)) if window is not None else None
        if milter is not None and milter_cpu is not None:
            after = milter.cpu_s()
            milter_cpu = after - milter_cpu if after is not None else None
        switches = switched.stop() if switched is not None else None
        self.delivered = target
        self._check_maillog(config)
        if milter is not None:
            self._check_milter_log(milter, wl)
        time.sleep(SETTLE_S)
        return Sample(config, wl.direction, wl.size, wl.sessions, wl.count, round_no,
                      done - start, accepted, milter.rss_kb() if milter else None,
                      milter_cpu, busy, switches, by_kind)

    def _owners(self, config: str) -> proc_cpu.Owners:
        """Whose each process is, for --cpu-by-process: the milter measured, the others
        (idle), the sink; Postfix's by its master."""
        named = {m.proc.pid: "milter" if name == config else "other milters"
                 for name, m in self.milters.items()}
        if self.sink.pid is not None:
            named[self.sink.pid] = "smtp-sink"
        return proc_cpu.Owners(self.postfix.master_pid or -1, named, os.getpid())

    def _check_maillog(self, config: str) -> None:
        """A milter that failed (Postfix then defers the mail with contrib's tempfail, or would
        pass it unfiltered with accept) or mail that did not go out would make the figures lie:
        stop instead."""
        text = self.postfix.maillog()
        new, self._maillog_offset = text[self._maillog_offset :], len(text)
        bad = [line for line in new.splitlines()
               if re.search(r"warning:.*milter|status=(deferred|bounced)|fatal:|panic:",
                            line, re.IGNORECASE)]
        if bad:
            raise BenchError(f"{config}: Postfix reported problems:\n" + "\n".join(bad[:10]))

    @staticmethod
    def _check_milter_log(milter: RunningMilter, wl: Workload) -> None:
        log = milter.new_log()
        if re.search(r"Traceback|ERROR|error in ", log):
            raise BenchError(f"{milter.config.name}: the milter logged errors:\n{log[-3000:]}")
        if not milter.config.casethread:
            return
        # One line per message: proof each one took the path being measured.
        if wl.direction == "outbound":
            pattern = r"direction=outbound case=\S+ match=new .*body=stamped"
        else:
            pattern = r"direction=inbound case=\S+ match=token "
        done = len(re.findall(pattern, log))
        if done != wl.count:
            raise BenchError(
                f"{milter.config.name}: {done} of {wl.count} {wl.direction} messages took the "
                f"expected path ({pattern}); log tail:\n{log[-3000:]}"
            )


# --------------------------------------------------------------------------- reporting


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise(samples: list[Sample], meta: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.config, s.direction, s.size, s.sessions), []).append(s)
    rows: list[dict[str, Any]] = []
    for (config, direction, size, sessions), group in groups.items():
        rate = [s.msgs_per_s for s in group]
        lat = [s.latency_ms for s in group]
        rss = [s.rss_kb for s in group if s.rss_kb is not None]
        milter_cpu = [1000 * s.milter_cpu_s / s.messages for s in group
                      if s.milter_cpu_s is not None]
        busy = [1000 * s.busy_cpu_s / s.messages for s in group]
        switches = [s.milter_switches / s.messages for s in group
                    if s.milter_switches is not None]
        rows.append({
            "kind": "result", **meta,
            "config": config, "config_title": CONFIGS[config].title,
            "direction": direction, "size": size, "sessions": sessions,
            "messages": group[0].messages, "rounds": len(group),
            "msgs_per_s": round(_median(rate), 1),
            "msgs_per_s_min": round(min(rate), 1), "msgs_per_s_max": round(max(rate), 1),
            "latency_ms": round(_median(lat), 2),
            "latency_ms_min": round(min(lat), 2), "latency_ms_max": round(max(lat), 2),
            "milter_rss_kb": max(rss) if rss else None,
            # CPU per message (median over rounds): the milter process, and the whole machine
            # (Postfix, smtp-source, smtp-sink, the milter) from the load's start to the last
            # delivery. On a saturated machine the second is what throughput pays.
            "milter_cpu_ms": round(_median(milter_cpu), 3) if milter_cpu else None,
            "busy_cpu_ms": round(_median(busy), 3),
            # Context switches of the milter's threads per message (median over rounds).
            "milter_switches": round(_median(switches), 1) if switches else None,
            "samples": [{"round": s.round, "msgs_per_s": round(s.msgs_per_s, 1),
                         "latency_ms": round(s.latency_ms, 2)} for s in group],
        })
        by_kind = cpu_by_kind_ms(group)
        if by_kind is not None:
            rows[-1]["cpu_by_process_ms"] = by_kind
            for sample, out in zip(group, rows[-1]["samples"], strict=True):
                out["cpu_by_process_ms"] = cpu_by_kind_ms([sample])
    index = {(r["config"], r["direction"], r["size"], r["sessions"]): r for r in rows}
    for r in rows:
        key = (r["direction"], r["size"], r["sessions"])
        for ref, field in (("none", "vs_none"), ("noop", "vs_noop"), ("noop-nr", "vs_noop_nr"),
                           ("ct-unix", "vs_ct_unix")):
            other = index.get((ref, *key))
            r[field] = round(r["msgs_per_s"] / other["msgs_per_s"], 3) if other else None
        base = index.get(("none", *key))
        r["added_latency_ms"] = round(r["latency_ms"] - base["latency_ms"], 2) if base else None
    order = {name: i for i, name in enumerate(CONFIGS)}
    rows.sort(key=lambda r: (-r["sessions"], r["direction"] != "outbound", r["size"],
                             order[r["config"]]))
    return rows


def cpu_by_kind_ms(group: Sequence[Sample]) -> dict[str, float] | None:
    """--cpu-by-process: CPU ms per message of each kind of process (median over rounds; a
    kind absent from a round used nothing in it), and `rest`: the machine's busy time that no
    process's account holds (the ticks of /proc/stat against the processes' exact run time)."""
    measured = [s for s in group if s.cpu_by_kind is not None]
    if not measured:
        return None
    kinds = sorted({k for s in measured for k in s.cpu_by_kind or {}})
    per_message = []
    for s in measured:
        used = s.cpu_by_kind or {}
        seconds = {k: used.get(k, 0.0) for k in kinds}
        seconds["rest"] = s.busy_cpu_s - sum(used.values())
        per_message.append({k: 1000 * v / s.messages for k, v in seconds.items()})
    return {k: round(_median([r[k] for r in per_message]), 3) for k in [*kinds, "rest"]}


# The columns of the --cpu-by-process table; every other kind is summed in its `other` column
# (Postfix's other daemons, this script and its perf, other work on the machine).
KIND_COLUMNS = ("milter", "postfix:smtpd", "postfix:cleanup", "postfix:qmgr", "postfix:smtp",
                "postfix:trivial-rewrite", "smtp-source", "smtp-sink", "kernel threads")


def print_cpu_by_process(rows: list[dict[str, Any]]) -> None:
    """The table of --cpu-by-process: CPU ms per message by kind of process."""
    rows = [r for r in rows if "cpu_by_process_ms" in r]
    if not rows:
        return
    short = [k.removeprefix("postfix:").replace("trivial-rewrite", "triv-rw")
             .replace("kernel threads", "kthreads") for k in KIND_COLUMNS]
    header = (f"{'direction':9} {'size':4} {'sess':>4}  {'configuration':26} "
              + " ".join(f"{k:>8}" for k in [*short, "pf-other", "bench", "others", "rest",
                                               "all"]))
    print()
    print("CPU ms per message by process (medians over rounds)")
    print(header)
    print("-" * len(header))
    for r in rows:
        ms = r["cpu_by_process_ms"]
        pf_other = sum(v for k, v in ms.items()
                       if k.startswith("postfix:") and k not in KIND_COLUMNS)
        bench = sum(v for k, v in ms.items() if k in ("bench", "perf"))
        others = sum(v for k, v in ms.items()
                     if k not in KIND_COLUMNS and not k.startswith("postfix:")
                     and k not in ("bench", "perf", "rest"))
        values = [*(ms.get(k, 0.0) for k in KIND_COLUMNS), pf_other, bench, others, ms["rest"],
                  r["busy_cpu_ms"]]
        print(f"{r['direction']:9} {r['size']:4} {r['sessions']:>4}  {r['config_title']:26} "
              + " ".join(f"{v:8.3f}" for v in values))
    print("others = other milters (idle), other processes on the machine; rest = busy ticks of "
          "/proc/stat no process's run time holds; all = cpu:all")


def check_targets(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, from this run's medians."""
    index = {(r["config"], r["direction"], r["size"], r["sessions"]): r for r in rows}
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str, limit: float) -> None:
        if value is None:
            return
        ok = value >= limit if op == ">=" else value <= limit
        checks.append({"target": name, "value": value, "op": op, "limit": limit, "ok": ok})

    for direction in messages.DIRECTIONS:
        for size in messages.SIZES:
            unix = index.get(("ct-unix", direction, size, 20))
            tcp = index.get(("ct-tcp", direction, size, 20))
            where = f"{direction} {size} 20 sessions"
            if unix:
                add(f"ct-unix / noop, {where}", unix["vs_noop"], ">=", 0.90)
                # Not the target: the no-op with casethread's protocol shape.
                add(f"(ct-unix / noop-nr, {where})", unix["vs_noop_nr"], ">=", 0.90)
                add(f"ct-unix / none, {where}", unix["vs_none"], ">=", 0.75)
            if tcp:
                add(f"ct-tcp / ct-unix, {where}", tcp["vs_ct_unix"], ">=", 0.90)
            one = index.get(("ct-tcp", direction, size, 1))
            if one:
                add(f"ct-tcp added latency ms, {direction} {size} 1 session",
                    one["added_latency_ms"], "<=", 2.0)
    return {"kind": "targets", **meta, "checks": checks}


def print_table(rows: list[dict[str, Any]], targets: dict[str, Any], meta: dict[str, Any]) -> None:
    print()
    print(f"casethread bench {meta['date']}  commit {meta['commit']}  "
          f"{meta['machine']['cpus']} x {meta['machine']['cpu']}  rounds {meta['rounds']}"
          f"{'  (quick)' if meta['quick'] else ''}  Python {meta['machine']['python']} "
          f"({meta['machine']['interpreter']})")
    header = (f"{'direction':9} {'size':4} {'sess':>4}  {'configuration':26} "
              f"{'msg/s (min-max)':>22} {'ms/msg':>7} {'+ms':>6} {'/none':>6} {'/noop':>6} "
              f"{'/nr':>6} "
              f"{'/unix':>6} {'cpu:milter':>10} {'cpu:all':>7} {'cs:milter':>9}")
    print(header)
    print("-" * len(header))
    previous = None
    for r in rows:
        key = (r["direction"], r["size"], r["sessions"])
        if previous is not None and key != previous:
            print()
        previous = key
        rate = (f"{r['msgs_per_s']:.1f} ({r['msgs_per_s_min']:.0f}-{r['msgs_per_s_max']:.0f})")

        def two(v: float | None) -> str:
            return f"{v:.2f}" if v is not None else "-"

        added = f"{r['added_latency_ms']:+.1f}" if r["added_latency_ms"] is not None else "-"
        print(f"{r['direction']:9} {r['size']:4} {r['sessions']:>4}  {r['config_title']:26} "
              f"{rate:>22} {r['latency_ms']:7.1f} {added:>6} {two(r['vs_none']):>6} "
              f"{two(r['vs_noop']):>6} {two(r['vs_noop_nr']):>6} {two(r['vs_ct_unix']):>6} "
              f"{two(r['milter_cpu_ms']):>10} {two(r['busy_cpu_ms']):>7} "
              f"{r['milter_switches'] if r['milter_switches'] is not None else '-':>9}")
    print("/nr = against the no-op milter with casethread's no-reply steps; cpu:milter / cpu:all "
          "= CPU ms per message used by the milter process / by the whole machine; cs:milter = the "
          "milter's context switches per message (medians)")
    print()
    print("targets (medians of this run):")
    for c in targets["checks"]:
        mark = "ok  " if c["ok"] else "MISS"
        print(f"  {mark} {c['target']}: {c['value']} {c['op']} {c['limit']}")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    # -d: the compiled-in value; without it postconf needs /etc/postfix/main.cf, which a
    # "No configuration" install lacks.
    postfix = subprocess.run([find_sbin("postconf") or "postconf", "-d", "-h", "mail_version"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_mb": mem_kb // 1024,
            "kernel": platform.release(), "python": platform.python_version(),
            # Which build: a distribution's (PGO, LTO) or a plain one runs Python ~20 % apart.
            "interpreter": os.path.realpath(sys.executable), "postfix": postfix}


def commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: ~1 minute")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated subset of {','.join(CONFIGS)} "
                             f"(default {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--only", help="workload filter, e.g. 'outbound', '60k', '1' (sessions); "
                        "comma-separated terms must all match: 'outbound,60k,20'")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON lines appended here")
    parser.add_argument("--cpu-by-process", action="store_true",
                        help="also measure CPU per message by kind of process (Postfix's "
                             "smtpd, cleanup, qmgr, smtp, ..., the load, the sink, the milter; "
                             "BSD process accounting catches those that end): a second table "
                             "and a cpu_by_process_ms field per row")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of other code (git worktree add DIR COMMIT) that "
                             "ct-unix-base runs, to alternate with this one's in one run")
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    if ("ct-unix-base" in names) != (args.baseline is not None):
        parser.error("ct-unix-base and --baseline DIR go together")
    if args.baseline is not None and not (args.baseline / "milter" / "casethread").is_dir():
        parser.error(f"--baseline {args.baseline}: no milter/casethread in it")
    args.names = names
    return args


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py must run as root (it starts a private Postfix)", file=sys.stderr)
        return 2
    plan = make_plan(args.quick, args.rounds)
    terms = args.only.split(",") if args.only else []
    workloads = [wl for wl in plan.workloads
                 if all(term in (wl.direction, wl.size, str(wl.sessions)) for term in terms)]
    meta: dict[str, Any] = {
        "run": uuid.uuid4().hex[:12],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(), "machine": machine(), "rounds": plan.rounds, "quick": args.quick,
        "service_sets_nodelay": service_sets_nodelay(), "loadavg_start": loadavg(),
    }
    started = time.monotonic()
    with terminate_on_sigterm():
        samples = measure(args.names, plan, workloads, args.baseline, args.cpu_by_process)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = loadavg()
    rows = summarise(samples, meta)
    targets = check_targets(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        for row in [*rows, targets]:
            out.write(json.dumps(row) + "\n")
    print_table(rows, targets, meta)
    print_cpu_by_process(rows)
    print(f"\n{len(rows)} results appended to {args.out} (run {meta['run']}, "
          f"{meta['wall_s']} s, load average {meta['loadavg_start']} -> {meta['loadavg_end']})")
    return 0


@contextlib.contextmanager
def environment(names: Sequence[str], warmup: int, baseline: Path | None = None,
                accounting: proc_cpu.Accounting | None = None) -> Iterator[Bench]:
    """Milters, smtp-sink and Postfix, warmed up; all stopped on the way out, errors or not."""
    work = postfix_accessible_dir("casethread-bench-")
    sink = Sink(free_port())
    running: dict[str, RunningMilter] = {}
    postfix: BenchPostfix | None = None
    try:
        key_path = work / "bench.key"
        write_key_file(key_path)
        running, token = start_milters(names, work, key_path, baseline)
        files: dict[tuple[str, str], Path] = {}
        for direction in messages.DIRECTIONS:
            for size in messages.SIZES:
                path = work / f"{direction}-{size}.eml"
                path.write_bytes(messages.message(direction, size, token or "0" * 20))
                files[(direction, size)] = path
        sink.start()
        postfix = BenchPostfix(sink.port, {n: running[n].socket if n in running else None
                                           for n in names})
        postfix.start()
        bench = Bench(postfix, sink, running, files, accounting)
        print(f"warming up ({warmup} messages per configuration and direction) ...", flush=True)
        for name in names:
            for direction in messages.DIRECTIONS:
                bench.run(name, Workload(direction, "60k", 5, warmup), 0)
        yield bench
    finally:
        errors: list[BaseException] = []
        for stop in ((postfix.stop if postfix else None), lambda: stop_milters(running),
                     sink.stop):
            if stop is None:
                continue
            try:
                stop()
            except BaseException as exc:
                errors.append(exc)
        shutil.rmtree(work, ignore_errors=True)
        if errors and sys.exc_info()[0] is None:
            raise errors[0]


def measure(names: Sequence[str], plan: Plan, workloads: Sequence[Workload],
            baseline: Path | None = None, cpu_by_process: bool = False) -> list[Sample]:
    samples: list[Sample] = []
    with (proc_cpu.accounting(cpu_by_process) as accounting,
          environment(names, plan.warmup, baseline, accounting) as bench):
        for round_no in range(1, plan.rounds + 1):
            # Rotate the order each round, so no configuration always runs first or last.
            shift = (round_no - 1) % len(names)
            order = [*names[shift:], *names[:shift]]
            for wl in workloads:
                for name in order:
                    if CONFIGS[name].latency_only and wl.sessions != 1:
                        continue
                    sample = bench.run(name, wl, round_no)
                    samples.append(sample)
                    print(f"round {round_no} {name:13} {wl.direction:8} {wl.size:3} "
                          f"x{wl.sessions:<2} {wl.count:5} msgs: "
                          f"{sample.msgs_per_s:7.1f} msg/s  {sample.latency_ms:6.1f} ms/msg  "
                          f"cpu {1000 * sample.busy_cpu_s / sample.messages:5.2f} ms/msg",
                          flush=True)
    return samples


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        sys.exit(130)
