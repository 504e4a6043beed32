"""Start-up wiring for `casethread serve`: index, engine, pymilter flags and the main loop.

We run libmilter's loop ourselves instead of `Milter.runmilter` because the listening socket
needs attention between `opensocket` and `main`, which runmilter does not allow: a unix socket
its permissions, a TCP socket TCP_NODELAY (see sockopts.py).
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

import Milter
import milter

from . import logsetup
from .config import ConfigError
from .core.settings import Settings
from .engine import Engine
from .index import open_index
from .keyfile import keyring_for
from .metrics import Metrics
from .pymilter_app import CaseMilter, reply_for
from .sockopts import set_listen_nodelay

log = logging.getLogger("casethread")

MILTER_NAME = "casethread"


def _unix_socket_path(spec: str) -> str | None:
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return spec if spec.startswith("/") else None


def _inet_port(spec: str) -> int | None:
    """The port of an `inet:PORT@HOST` / `inet6:PORT@HOST` spec, else None."""
    kind, _, rest = spec.partition(":")
    if kind not in ("inet", "inet6"):
        return None
    port = rest.partition("@")[0]
    return int(port) if port.isdigit() else None


def _set_socket_access(path: str, mode: int, group: str | None) -> None:
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError("configuration", None, "milter.socket_group",
                              f"no such group {group!r}") from None
        os.chown(path, -1, gid)
    os.chmod(path, mode)


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


def _reload(current: _Current, load: Callable[[], Settings]) -> None:
    old = current.engine.settings
    try:
        new = load()
        # The sockets and the index are bound at start-up: they change only with a restart.
        bound = ("socket", "socket_mode", "socket_group", "metrics_listen")
        kept = {name: getattr(old.milter, name) for name in bound}
        if new.index != old.index or any(getattr(new.milter, n) != v for n, v in kept.items()):
            log.warning("reload: index, socket and metrics settings change only with a restart")
        new = replace(new, index=old.index, milter=replace(new.milter, **kept))
        engine = Engine(new, current.engine.index, keyring_for(new))
    except Exception as exc:  # a bad edit must not take the running milter down
        log.error("reload refused, running configuration kept: %s", exc)
        return
    logsetup.configure(new.milter.log_level, new.milter.log_target)
    current.engine = engine
    log.info("reloaded configuration")


def _start_reloader(current: _Current, load: Callable[[], Settings]) -> None:
    """Reload on SIGUSR1, as OpenDKIM does: libmilter's own signal thread takes SIGHUP, SIGTERM
    and SIGINT to mean "stop". The main thread sits inside libmilter's C loop, where no Python
    signal handler runs, so the signal reaches us through Python's wakeup fd instead."""
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: None)
    signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)

    def wait_for_signals() -> None:
        with receiver, sender:  # the wakeup fd must stay open as long as the process runs
            while data := receiver.recv(64):
                if signal.SIGUSR1 in data:
                    _reload(current, load)

    # libmilter's signal thread sigwait()s for these; a thread of ours that left them unblocked
    # could be handed SIGTERM, whose default action kills the process without a clean stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    threading.Thread(target=wait_for_signals, name="casethread-reload", daemon=True).start()


def serve(settings: Settings, load: Callable[[], Settings] | None = None) -> int:
    """Run the milter until SIGTERM/SIGINT (libmilter's signal thread stops the loop).

    `load` re-reads the configuration on SIGUSR1 (`systemctl reload`).
    """
    index = open_index(settings)
    metrics: Metrics | None = None
    try:
        current = _Current(Engine(settings, index, keyring_for(settings)))
        if load is not None:
            _start_reloader(current, load)
        listen = settings.milter.metrics_listen
        if listen is not None:
            metrics = Metrics(index)
            metrics.start(listen)
            log.info("metrics on http://%s/metrics", listen)
        Milter.factory = lambda: CaseMilter(current.engine, metrics)
        # Exceptions that escape our own boundary (e.g. inside pymilter) follow the same policy.
        milter.set_exception_policy(reply_for(settings.milter.on_error))
        _register_callbacks()
        spec = settings.milter.socket
        milter.setconn(spec)
        milter.settimeout(settings.milter.timeout)
        milter.opensocket(True)
        port = _inet_port(spec)
        if port is not None:
            set_listen_nodelay(port)
        path = _unix_socket_path(spec)
        if path:
            _set_socket_access(path, settings.milter.socket_mode, settings.milter.socket_group)
        log.info(
            "listening on %s, index %s, on_error=%s, pid %d",
            spec, settings.index.path, settings.milter.on_error, os.getpid(),
        )
        sys.stderr.flush()
        milter.main()
        log.info("stopped")
        return 0
    finally:
        if metrics is not None:
            metrics.stop()
        index.close()
