"""libmilter's listening socket, found among our file descriptors: TCP_NODELAY, and the stop.

libmilter gives no handle to its socket, but it lives in this process: after
`milter.opensocket()` it can be found among our file descriptors.

TCP_NODELAY: libmilter writes each reply (and the several end-of-message modification packets)
with its own write(2) and never sets TCP_NODELAY, so over TCP a small write can wait for the
MTA's delayed ACK (~40 ms on Linux). On Linux an accepted socket inherits TCP_NODELAY from its
listening socket, so setting it once on the listener covers every MTA connection. Unix sockets
have no Nagle algorithm and are left alone.

The stop: `stop_listening` makes the socket refuse new connections while libmilter keeps
serving the ones it has (see there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

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


def _is_unix_listener(sock: socket.socket, path: str) -> bool:
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        return False
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) and \
        sock.getsockname() == path


def _listener_fds() -> list[int]:
    return sorted(int(name) for name in os.listdir(_FD_DIR) if name.isdigit())


def listen_nodelay_state() -> dict[int, bool]:
    """{fd: TCP_NODELAY is on} for each listening TCP socket of this process. Empty where
    /proc is missing. For tests and bench/ct_serve.py; raises OSError."""
    states: dict[int, bool] = {}
    for fd in _listener_fds():
        with _dup_socket(fd) as sock:
            if sock is not None and _is_tcp_listener(sock, None):
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


@dataclass(frozen=True)
class Listener:
    """libmilter's listening socket: its descriptor, and the inode that tells it is still there."""

    fd: int
    inode: int


def find_listener(port: int | None = None, path: str | None = None) -> Listener | None:
    """libmilter's listening socket: TCP on `port`, or unix at `path` (as bound). Call it after
    `milter.opensocket()`. None when there is not exactly one, or /proc cannot be read."""
    found: list[Listener] = []
    try:
        for fd in _listener_fds():
            with _dup_socket(fd) as sock:
                if sock is None:
                    continue
                if (port is not None and _is_tcp_listener(sock, port)) or (
                    path is not None and _is_unix_listener(sock, path)
                ):
                    found.append(Listener(fd, os.fstat(sock.fileno()).st_ino))
    except OSError as exc:
        log.warning("cannot find the milter's listening socket: %s", exc)
        return None
    return found[0] if len(found) == 1 else None


def stop_listening(listener: Listener) -> bool:
    """Refuse new connections from now on, while libmilter goes on serving those it has.

    smfi_stop would end those too: libmilter's worker pool quits at once, cutting the sessions
    in flight. So libmilter is left running and its descriptor is pointed (dup2, atomic) at an
    idle listener of ours on an address nobody knows: libmilter's loop goes on polling it and
    finds nothing; an accept() already under way gets EAGAIN, which libmilter retries silently.
    The real socket is then shut down: connecting is refused at once (the MTA applies its
    milter default action) and connections not yet accepted are reset. Returns False, changing
    nothing, when `listener.fd` no longer names that socket."""
    with _dup_socket(listener.fd) as real:
        if real is None or os.fstat(real.fileno()).st_ino != listener.inode:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.bind("")  # Linux autobind: an abstract address of the kernel's choosing
            idle.listen(1)
            idle.setblocking(False)
            os.dup2(idle.fileno(), listener.fd, inheritable=False)
        real.shutdown(socket.SHUT_RDWR)
    return True
