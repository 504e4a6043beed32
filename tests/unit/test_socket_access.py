"""Who can reach a unix milter socket as `serve` opens it: whoever connects speaks for the MTA
(README, *Who can attach mail to a case*), so the socket must never be open to more than its
`milter.socket_mode` says, not even between libmilter's bind() and our next step.

libmilter is stood in for by a plain AF_UNIX socket bound and listening at the path, as
libmilter's opensocket does (bind() makes the file with 0777 less the process umask).
"""

from __future__ import annotations

import grp
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from casethread import service


def fake_opensocket(path: Path, after_listen: Callable[[], None] = lambda: None,
                    ) -> tuple[Callable[[bool], None], list[int], list[socket.socket]]:
    """libmilter's opensocket for `path`; records the file's mode once it listens."""
    modes: list[int] = []
    held: list[socket.socket] = []

    def opensocket(rmsocket: bool) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind(str(path))
        sock.listen()
        modes.append(stat.S_IMODE(os.lstat(path).st_mode))
        after_listen()

    return opensocket, modes, held


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
def test_a_unix_socket_listens_with_its_mode_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None, mode: int
) -> None:
    path = tmp_path / "casethread.sock"
    opensocket, modes, held = fake_opensocket(path)
    monkeypatch.setattr(service.milter, "opensocket", opensocket)
    try:
        service._open_socket(f"unix:{path}", mode)
    finally:
        for sock in held:
            sock.close()
    # With umask 0 a socket made as it was (a chmod after listen) listened at 0777 first:
    # any local user could queue a connection that is served once the milter runs.
    assert modes == [mode]
    assert os.umask(0) == 0  # the process's own umask is back


def test_an_inet_socket_leaves_the_umask_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def opensocket(rmsocket: bool) -> None:
        mask = os.umask(0)
        os.umask(mask)
        seen.append(mask)

    monkeypatch.setattr(service.milter, "opensocket", opensocket)
    previous = os.umask(0o022)
    try:
        service._open_socket("inet:8894@127.0.0.1", 0o660)
    finally:
        os.umask(previous)
    assert seen == [0o022]


def _another_group(than: int) -> str:
    """A group this process may give a file: any as root, else one of its own."""
    gids = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    other = next((gid for gid in gids if gid != than), None)
    assert other is not None, "the test needs a second group to give the socket"
    return grp.getgrgid(other).gr_name


def test_the_group_is_never_given_through_a_symlink_in_the_sockets_place(
    tmp_path: Path,
) -> None:
    """Someone who may write the socket's directory swaps the socket for a symlink to a file
    of theirs choosing (a key file, /etc/shadow when the milter runs as root): the group goes
    to the link itself, never to that file."""
    victim = tmp_path / "token.key"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    before = os.stat(victim)
    path = tmp_path / "casethread.sock"
    path.symlink_to(victim)
    group = _another_group(before.st_gid)
    service._set_socket_group(str(path), group)
    after = os.stat(victim)
    assert (after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_gid, 0o600)
    assert os.lstat(path).st_gid == grp.getgrnam(group).gr_gid
