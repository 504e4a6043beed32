"""set_listen_nodelay: finds this process's listening TCP sockets and gives them TCP_NODELAY,
which Linux passes on to every accepted connection (the point of the exercise)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from casethread import sockopts


def _nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        yield sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_sets_nodelay_on_the_listener_and_accepted_sockets_inherit_it(
    listener: socket.socket,
) -> None:
    assert not _nodelay(listener)
    assert sockopts.set_listen_nodelay(_port(listener)) == 1
    assert _nodelay(listener)
    with socket.create_connection(listener.getsockname(), timeout=5) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert _nodelay(accepted)
            # The descriptor we worked through was a duplicate: the listener still works.
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"


def test_without_the_call_accepted_sockets_have_nagle_on(listener: socket.socket) -> None:
    # The baseline the fix changes: libmilter's accepted sockets would not have TCP_NODELAY.
    with socket.create_connection(listener.getsockname(), timeout=5):
        accepted, _ = listener.accept()
        with accepted:
            assert not _nodelay(accepted)


def test_port_filter_leaves_other_listeners_alone(listener: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        assert sockopts.set_listen_nodelay(_port(listener)) == 1
        assert _nodelay(listener)
        assert not _nodelay(other)


def test_without_port_every_listening_tcp_socket_is_changed(listener: socket.socket) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
        try:
            v6.bind(("::1", 0))
        except OSError:
            pytest.fail("IPv6 loopback is not available on this machine", pytrace=False)
        v6.listen(1)
        changed = sockopts.set_listen_nodelay()
        assert changed >= 2  # other code in this process may listen too
        assert _nodelay(listener)
        assert _nodelay(v6)
        states = sockopts.listen_nodelay_state()
        assert states[listener.fileno()] is True
        assert states[v6.fileno()] is True


def test_connected_udp_and_unix_sockets_are_not_listeners(listener: socket.socket) -> None:
    with (
        socket.create_connection(listener.getsockname(), timeout=5) as client,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        tempfile.TemporaryDirectory() as tmp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix,
    ):
        udp.bind(("127.0.0.1", 0))
        unix.bind(str(Path(tmp) / "s"))
        unix.listen(1)
        accepted, _ = listener.accept()
        with accepted:
            assert sockopts.set_listen_nodelay(_port(client)) == 0  # client's own port
            assert sockopts.set_listen_nodelay(_port(udp)) == 0
            assert not _nodelay(client)
            assert not _nodelay(accepted)
            assert set(sockopts.listen_nodelay_state()) >= {listener.fileno()}
            assert client.fileno() not in sockopts.listen_nodelay_state()
            assert unix.fileno() not in sockopts.listen_nodelay_state()


def test_no_matching_port_changes_nothing(listener: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        unused = _port(probe)  # bound but not listening
    assert sockopts.set_listen_nodelay(unused) == 0
    assert not _nodelay(listener)


def test_never_raises_without_proc(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sockopts, "_FD_DIR", "/nonexistent/fd")
    assert sockopts.set_listen_nodelay(_port(listener)) == 0
    assert "cannot set TCP_NODELAY" in caplog.text
    assert not _nodelay(listener)


def test_a_failing_socket_is_logged_and_skipped(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_socket = socket.socket

    class Refusing(real_socket):
        def setsockopt(self, *args: object) -> None:  # type: ignore[override]
            raise OSError(95, "Operation not supported")

    monkeypatch.setattr(sockopts.socket, "socket", Refusing)
    assert sockopts.set_listen_nodelay(_port(listener)) == 0
    assert f"fd {listener.fileno()}" in caplog.text
    monkeypatch.setattr(sockopts.socket, "socket", real_socket)
    assert not _nodelay(listener)
    # Every duplicate was closed again: no descriptor leaked by the failures.
    fds = set(os.listdir("/proc/self/fd"))
    sockopts.set_listen_nodelay(_port(listener))
    assert set(os.listdir("/proc/self/fd")) == fds
