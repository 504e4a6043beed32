"""Start-up wiring for `casethread serve`: index, engine, pymilter flags and the main loop.

We run libmilter's loop ourselves instead of `Milter.runmilter` because the listening socket
needs attention between `opensocket` and `main`, which runmilter does not allow: a unix socket
its permissions, a TCP socket TCP_NODELAY (see sockopts.py). And in a thread of its own, so the
main thread can take the signals: SIGUSR1 reloads, a stop signal drains before libmilter stops.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from types import TracebackType

import Milter
import milter

from . import heap, logsetup
from .config import group_id, unix_socket_path
from .config import warnings as config_warnings
from .core.settings import Settings
from .core.token import Keyring
from .engine import Engine
from .index import LmdbIndex, open_index
from .keyfile import describe_keys, keyring_for
from .metrics import Metrics
from .pymilter_app import CaseMilter, InFlight
from .signals import STOP_SIGNALS
from .sockopts import Listener, find_listener, set_listen_nodelay, stop_listening
from .spool import spool_dir_problem

log = logging.getLogger("casethread")

MILTER_NAME = "casethread"
_PROBE_TIMEOUT = 2.0  # seconds a milter on our unix socket path gets to accept a probe


def _inet_address(spec: str) -> tuple[socket.AddressFamily, str, int] | None:
    """Family, host and port of an `inet:PORT@HOST` / `inet6:PORT@[HOST]` spec, else None."""
    kind, _, rest = spec.partition(":")
    if kind not in ("inet", "inet6"):
        return None
    port, _, host = rest.partition("@")
    family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    return family, host.strip("[]") or wildcard, int(port) if port.isdigit() else 0


def _inet_port(spec: str) -> int | None:
    address = _inet_address(spec)
    return address[2] if address is not None and address[2] else None


def _no_directory(path: str) -> str | None:
    """Why a unix socket cannot be made at `path` when its directory is missing."""
    directory = os.path.dirname(path) or "."
    return None if os.path.isdir(directory) else f"no directory {directory}"


def _socket_problem(spec: str) -> str:
    """Why libmilter could not listen on `spec`, found again with a plain socket."""
    path = unix_socket_path(spec)
    try:
        if path:
            missing = _no_directory(path)
            if missing:
                return missing
            directory = os.path.dirname(path) or "."
            if not os.access(directory, os.W_OK | os.X_OK):
                return f"directory {directory} is not writable by this user"
            return "the path exists and is not a socket, or another milter took it meanwhile"
        address = _inet_address(spec)
        if address is not None:
            family, host, port = address
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return "libmilter refused it (see the lines above)"


def _claim_unix_socket(spec: str, path: str) -> None:
    """Refuse a unix socket another process listens on, or one in a missing directory; remove
    one nobody listens on.

    libmilter's own `rmsocket` unlinks whatever is there: a second `serve` (an admin's test
    run) would silently take the running milter's socket, and that one, still running, is
    unreachable once the second stops (Postfix then applies milter_default_action to all
    mail). A path we cannot probe (no permission, a listener that does not answer in time) is
    refused too: the safe side is not to take it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except FileNotFoundError:
            missing = _no_directory(path)
            if missing:  # refused before the index is opened, as a live socket is
                raise OSError(f"cannot listen on {spec}: {missing}") from None
            return
        except ConnectionRefusedError:  # a stale socket (its milter died), or not a socket
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
                log.info("removed the stale socket %s: nothing listened on it", path)
            return  # anything else is left to bind(), whose failure _socket_problem explains
        except OSError as exc:
            raise OSError(f"cannot listen on {spec}: cannot tell whether another milter "
                          f"listens on {path}: {exc.strerror or exc}") from None
    raise OSError(f"cannot listen on {spec}: another milter listens on {path}; stop it first "
                  "or give this one another milter.socket")


def _claim_inet_port(spec: str) -> None:
    """Refuse a TCP port another process listens on (a second `serve` on the running milter's
    socket) before the index is opened, as for a unix socket: a refused start then leaves no
    new index or key behind. The probe binds as libmilter does (SO_REUSEADDR), so only a live
    listener fails it; any other failure is left to libmilter's bind, which _socket_problem
    explains."""
    address = _inet_address(spec)
    if address is None or not address[2]:
        return
    family, host, port = address
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(f"cannot listen on {spec}: {exc.strerror}") from None


@contextlib.contextmanager
def _socket_file_removed_at_exit(path: str | None) -> Iterator[None]:
    """Remove our unix socket's file when the milter stops (libmilter leaves it when it runs
    as root), unless it is no longer ours (same device and inode)."""
    ours = _file_identity(path) if path else None
    try:
        yield
    finally:
        if path and ours is not None and _file_identity(path) == ours:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _open_socket(spec: str, mode: int) -> None:
    """libmilter's listening socket; a unix one born with `mode`.

    Whoever connects to the socket speaks for the MTA (README, *Who can attach mail to a
    case*), and a connection made while the socket is open to others stays in the listen
    backlog after the mode is corrected. So the mode comes from the umask at bind() (a socket
    file takes 0777 less the umask), not from a chmod after listen(), which also followed a
    symlink put in the socket's place."""
    previous = os.umask(0o777 & ~mode) if unix_socket_path(spec) else None
    try:
        milter.opensocket(False)
    finally:
        if previous is not None:
            os.umask(previous)


def _set_socket_group(path: str, group: str) -> None:
    """The socket's group, never through a symlink put in its place. Until then its group
    bits are the milter's own group's."""
    os.chown(path, -1, group_id(group), follow_symlinks=False)


def _log_untrapped(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """pymilter prints an exception that escaped a callback through sys.excepthook: it came
    before our code ran (e.g. a header field name that is not UTF-8), so that step is skipped
    and the message goes on without it. It cannot be tied to its message (to apply on_error
    there): Debian's libmilter serves one connection's steps from a pool of threads."""
    if threading.current_thread() is threading.main_thread():
        sys.__excepthook__(kind, exc, tb)
        return
    log.error("error inside pymilter, before casethread's code: %s: %s; that step is skipped "
              "(a header field is then not seen) and the message goes on", kind.__name__, exc)


def _register_callbacks() -> None:
    """The same bindings as `Milter.runmilter` (pymilter 1.0.5), Python 3 byte-decoding included."""
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.register(
        MILTER_NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


class _Current:
    """The engine new connections get. A reload swaps it; connections in flight keep theirs,
    so none is dropped."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine


def _engine(settings: Settings, index: LmdbIndex) -> Engine:
    """The engine for `settings` on the open index, at start and on reload. Its key is the
    configured files, else INDEX/token.key, generated only while the index holds no case."""
    return Engine(settings, index, keyring_for(settings, held_cases=index.case_count))


def _log_keys(settings: Settings, keyring: Keyring, before: Keyring | None = None) -> None:
    """The key ids in use, at start and after a reload; a reload that drops a key id says
    what that does to the mail already sent."""
    log.info("%s", describe_keys(settings, keyring))
    kept = set(keyring.key_ids)
    dropped = [key_id for key_id in before.key_ids if key_id not in kept] if before else []
    if dropped:
        log.warning("reload: token key id(s) %s no longer configured: tokens signed with them "
                    "now fail (X-Case-Token: invalid, notes=token-invalid:unknown-key)",
                    ", ".join(map(str, dropped)))


def _log_warnings(settings: Settings) -> None:
    """At start and after each reload: what a valid configuration does that no other line
    would show (no support address: every reply passes as direction=other)."""
    for problem in config_warnings(settings):
        log.warning("%s", problem)


def _reload(current: _Current, load: Callable[[], Settings], index: LmdbIndex) -> None:
    old = current.engine.settings
    try:
        new = load()
        # The sockets and the index are bound at start-up: they change only with a restart. So
        # is libmilter's I/O timeout: smfi_main hands it to its loop once, by value.
        bound = ("socket", "socket_mode", "socket_group", "timeout", "metrics_listen")
        kept = {name: getattr(old.milter, name) for name in bound}
        waiting = [f"index.{f.name}" for f in fields(old.index)
                   if getattr(new.index, f.name) != getattr(old.index, f.name)]
        waiting += [f"milter.{name}" for name, value in kept.items()
                    if getattr(new.milter, name) != value]
        if waiting:
            log.warning("reload: %s change(s) only with a restart; running with the value(s) "
                        "it started with", ", ".join(waiting))
        new = replace(new, index=old.index, milter=replace(new.milter, **kept))
        engine = _engine(new, index)
    except Exception as exc:  # a bad edit must not take the running milter down
        log.error("reload refused, running configuration kept: %s", exc)
        return
    logsetup.configure(new.milter.log_level, new.milter.log_target)
    before = current.engine.keyring
    current.engine = engine
    log.info("reloaded configuration")
    _log_keys(new, engine.keyring, before)
    _log_warnings(new)


_MILTER_ENDED = 0  # not a signal number: the milter thread sends it when libmilter returns
_DRAIN_POLL = 0.1  # seconds between looks at the messages in flight while draining


class _Wakeups:
    """What the main thread waits for: signals, and the end of the milter thread.

    Python runs signal handlers only in the main thread; the C part of a handler writes the
    signal number to Python's wakeup fd from whichever thread the kernel chose, so a wait on
    that fd misses none. The handlers themselves do nothing."""

    def __init__(self, signals: frozenset[int]) -> None:
        self._receiver, self._sender = socket.socketpair()
        self._sender.setblocking(False)
        for signum in signals:
            signal.signal(signum, lambda _sig, _frame: None)
        signal.set_wakeup_fd(self._sender.fileno(), warn_on_full_buffer=False)

    def milter_ended(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full buffer already wakes the reader
            self._sender.send(bytes([_MILTER_ENDED]))

    def wait(self, timeout: float | None = None) -> bytes:
        """What arrived (signal numbers, _MILTER_ENDED); empty after `timeout` seconds."""
        ready, _, _ = select.select([self._receiver], [], [], timeout)
        return self._receiver.recv(64) if ready else b""

    def close(self) -> None:
        """Detach from the wakeup fd before closing it (its number could be reused); the
        handlers stay, so a late signal is ignored rather than ending the clean-up."""
        signal.set_wakeup_fd(-1)
        self._receiver.close()
        self._sender.close()


def _drain(wakeups: _Wakeups, inflight: InFlight, listener: Listener | None,
           timeout: float) -> None:
    """Refuse new connections, then wait until no message is under way, `timeout` seconds or
    another stop signal, whichever comes first."""
    refused = listener is not None and stop_listening(listener)
    started = time.monotonic()
    log.info(
        "stopping: %s; waiting up to %g s for %d message(s) in flight on %d connection(s)",
        "new connections refused" if refused else "listening socket not found, still accepting",
        timeout, inflight.messages, inflight.connections,
    )
    while inflight.messages > 0:
        left = started + timeout - time.monotonic()
        if left <= 0:
            log.warning("drain timed out after %g s: %s", timeout, _cut(inflight))
            return
        if STOP_SIGNALS.intersection(wakeups.wait(min(left, _DRAIN_POLL))):
            log.warning("second stop signal: stopping now: %s", _cut(inflight))
            return
    log.info("drained in %.1f s", time.monotonic() - started)


def _cut(inflight: InFlight) -> str:
    """The messages a stop cuts, by queue id: the MTA applies milter_default_action to them,
    and the operator can follow each in the MTA's log."""
    ids = inflight.queue_ids()
    return f"{len(ids)} message(s) still in flight are cut, queue_id={','.join(ids)}"


def _run(current: _Current, load: Callable[[], Settings] | None, index: LmdbIndex,
         inflight: InFlight, listener: Listener | None, wakeups: _Wakeups) -> None:
    """Serve until a stop signal, then drain and stop; SIGUSR1 reloads (`load`).

    libmilter runs in a thread of its own, so the main thread stays free for Python's signal
    handlers. libmilter blocks SIGHUP, SIGTERM and SIGINT in that thread (and so in every thread
    it starts) and sigwait()s for them in its signal thread, which on any of them would stop
    libmilter at once (smfi_stop), cutting the sessions in flight. Linux hands a signal sent
    to the process to its main thread whenever that thread does not block it and has no other
    signal pending, so the signal comes here instead. Two signals in quick succession may still
    reach libmilter's thread: that stops at once, which is what a second signal asks anyway."""
    failure: list[BaseException] = []

    def run_milter() -> None:
        try:
            milter.main()
        except BaseException as exc:  # re-raised in the main thread
            failure.append(exc)
        finally:
            wakeups.milter_ended()

    runner = threading.Thread(target=run_milter, name="casethread-milter")
    runner.start()
    try:
        while _MILTER_ENDED not in (got := wakeups.wait()):
            if STOP_SIGNALS.intersection(got):
                if signal.SIGHUP in got:  # other daemons' reload: say what reloads this one
                    log.warning("SIGHUP stops casethread, as it stops every libmilter milter; "
                                "to re-read the configuration send SIGUSR1 (systemctl reload "
                                "casethread)")
                _drain(wakeups, inflight, listener, current.engine.settings.milter.drain_timeout)
                break
            if load is not None and signal.SIGUSR1 in got:
                _reload(current, load, index)
    finally:
        if runner.is_alive():
            milter.stop()  # returns once libmilter's listener sees it (up to ~5 s)
        runner.join()
    if failure:
        raise failure[0]


def serve(settings: Settings, load: Callable[[], Settings] | None = None) -> int:
    """Run the milter until SIGTERM, SIGINT or SIGHUP: new connections are then refused and
    the messages under way finish (up to `milter.drain_timeout`) before it stops.

    `load` re-reads the configuration on SIGUSR1 (`systemctl reload`).
    """
    # First of all: from here on a stop or reload signal is ours, waiting for the loop in `_run`
    # if it comes early, never its default action, which would kill the process unclean.
    signals = (STOP_SIGNALS | {signal.SIGUSR1}) if load is not None else STOP_SIGNALS
    wakeups = _Wakeups(signals)
    heap.limit_arenas()  # before any thread of ours or libmilter's allocates
    try:
        return _serve(settings, load, wakeups)
    finally:
        wakeups.close()


def _serve(settings: Settings, load: Callable[[], Settings] | None, wakeups: _Wakeups) -> int:
    spec = settings.milter.socket
    path = unix_socket_path(spec)
    # Before the index: a second serve refused here leaves no new index or key behind.
    if path:
        _claim_unix_socket(spec, path)
    else:
        _claim_inet_port(spec)
    index = open_index(settings)
    metrics: Metrics | None = None
    inflight = InFlight()
    try:
        current = _Current(_engine(settings, index))
        _log_keys(settings, current.engine.keyring)
        _log_warnings(settings)
        spool_problem = spool_dir_problem()
        if spool_problem:
            log.warning("%s", spool_problem)
        listen = settings.milter.metrics_listen
        if listen is not None:
            metrics = Metrics(index)
            metrics.start(listen)
            log.info("metrics on http://%s/metrics", listen)
        # Over a unix socket the DATA step is skipped (a round trip a message); over TCP it
        # keeps its reply, without which the MTA's next write waits for a delayed ACK.
        Milter.factory = lambda: CaseMilter(current.engine, metrics, inflight,
                                            skip_data=path is not None)
        # Exceptions outside our own boundary (pymilter's C layer, before our code runs) answer
        # CONTINUE: the only answer that keeps a no-reply step in step (pymilter_app.py).
        milter.set_exception_policy(int(Milter.CONTINUE))
        sys.excepthook = _log_untrapped
        _register_callbacks()
        milter.setconn(spec)
        milter.settimeout(settings.milter.timeout)
        try:
            # Not libmilter's rmsocket: _claim_unix_socket removed a stale file, and a file
            # that appeared since is someone else's.
            _open_socket(spec, settings.milter.socket_mode)
        except milter.error:
            # libmilter says only "cannot opensocket": name the socket and the likely cause.
            raise OSError(f"cannot listen on {spec}: {_socket_problem(spec)}") from None
        with _socket_file_removed_at_exit(path):
            port = _inet_port(spec)
            if port is not None:
                set_listen_nodelay(port)
            if path and settings.milter.socket_group is not None:
                _set_socket_group(path, settings.milter.socket_group)
            listener = find_listener(port, path)
            log.info(
                "listening on %s, index %s, on_error=%s, pid %d",
                spec, settings.index.path, settings.milter.on_error, os.getpid(),
            )
            sys.stderr.flush()
            _run(current, load, index, inflight, listener, wakeups)
        log.info("stopped")
        return 0
    finally:
        if metrics is not None:
            metrics.stop()
        # After a drain that timed out, callbacks may still be inside the index: leave it to
        # the exit (LMDB stays consistent without a close) rather than close it under them.
        if inflight.messages == 0:
            index.close()
