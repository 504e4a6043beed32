"""TCP_NODELAY for libmilter's listening socket.

libmilter writes each reply (and the several end-of-message modification packets) with its own
write(2) and never sets TCP_NODELAY, so over TCP a small write can wait for the MTA's delayed
ACK (~40 ms on Linux). libmilter gives no handle to its socket, but it lives in this process:
after `milter.opensocket()` it can be found among our file descriptors. On Linux an accepted
socket inherits TCP_NODELAY from its listening socket, so setting it once on the listener
covers every MTA connection. Unix sockets have no Nagle algorithm and are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

log = logging.getLogger("casethread")

_FD_DIR = "/proc/self/fd"


@contextlib.contextmanager
def _dup_socket(fd: int) -> Iterator[socket.socket | None]:
    """A socket object on a duplicate of `fd` (closing it leaves `fd` open), or None when
    `fd` is not a socket. Options set through the duplicate apply to the one shared socket."""
    try:
        if not os.readlink(f"{_FD_DIR}/{fd}").startswith("socket:"):
            yield None
            return
        dup = os.dup(fd)
    except OSError:  # closed meanwhile, or not ours to read
        yield None
        return
    try:
        sock = socket.socket(fileno=dup)  # family and type are read from the descriptor
    except OSError:
        os.close(dup)
        yield None
        return
    with sock:
        yield sock


def _is_tcp_listener(sock: socket.socket, port: int | None) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return False
    return port is None or sock.getsockname()[1] == port


def _listener_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir(_FD_DIR) if name.isdigit())


def listen_nodelay_state(port: int | None = None) -> dict[int, bool]:
    """{fd: TCP_NODELAY is on} for each listening TCP socket of this process (on `port` if
    given). Empty where /proc is missing. For checks and benchmarks; raises OSError."""
    states: dict[int, bool] = {}
    for fd in _listener_fds():
        with _dup_socket(fd) as sock:
            if sock is not None and _is_tcp_listener(sock, port):
                states[fd] = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return states


def set_listen_nodelay(port: int | None = None) -> int:
    """Set TCP_NODELAY on this process's listening TCP socket(s) (only those on `port`, if
    given); returns how many were changed. Call it after `milter.opensocket()` and before
    `milter.main()`. Never raises: a failure is logged and that socket counts as unchanged,
    since the milter works without it, only slower over TCP."""
    changed = 0
    try:
        fds = _listener_fds()
    except Exception as exc:  # e.g. no /proc (not Linux): the milter runs regardless
        log.warning("cannot set TCP_NODELAY on the milter socket: %s", exc)
        return 0
    for fd in fds:
        try:
            with _dup_socket(fd) as sock:
                if sock is None or not _is_tcp_listener(sock, port):
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                changed += 1
        except Exception as exc:
            log.warning("cannot set TCP_NODELAY on listening socket fd %d: %s", fd, exc)
    if changed:
        log.debug("TCP_NODELAY set on %d listening socket(s)", changed)
    return changed
