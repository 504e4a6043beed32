"""Start-up wiring for `casethread serve`: index, engine, pymilter flags and the main loop.

We run libmilter's loop ourselves instead of `Milter.runmilter` for one reason: the listening
socket must get its permissions between `opensocket` and `main`, which runmilter does not allow.
"""

from __future__ import annotations

import grp
import logging
import os
import sys

import Milter
import milter

from .config import ConfigError
from .core.settings import Settings
from .engine import Engine
from .index import open_index
from .keyfile import keyring_for
from .pymilter_app import CaseMilter, reply_for

log = logging.getLogger("casethread")

MILTER_NAME = "casethread"


def _unix_socket_path(spec: str) -> str | None:
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return spec[len(prefix) :]
    return spec if spec.startswith("/") else None


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


def serve(settings: Settings) -> int:
    """Run the milter until SIGTERM/SIGINT (libmilter's signal thread stops the loop)."""
    index = open_index(settings)
    try:
        engine = Engine(settings, index, keyring_for(settings))
        Milter.factory = lambda: CaseMilter(engine)
        Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY)
        # Exceptions that escape our own boundary (e.g. inside pymilter) follow the same policy.
        milter.set_exception_policy(reply_for(settings.milter.on_error))
        _register_callbacks()
        spec = settings.milter.socket
        milter.setconn(spec)
        milter.settimeout(settings.milter.timeout)
        milter.opensocket(True)
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
        index.close()
