"""The fault proxy of tests/faultproxy.py against a real echo server: forward, cut, stall,
refuse, stop; from sync tests (blocking sockets) and from an async test (its own loop)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest

from tests import servers
from tests.faultproxy import FaultProxy
from tests.waiting import HANG, wait_for

pytestmark = pytest.mark.integration


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@pytest.fixture
def echo() -> Iterator[servers.DecoyServer]:
    host, port = servers.allocate("scratch", 0)
    server = servers.DecoyServer(_echo, host, port)
    yield server
    server.stop()


@pytest.fixture
def proxy(echo: servers.DecoyServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.host, echo.port) as p:
        yield p


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5)
    sock.settimeout(5)
    return sock


def _roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _eventually(check: Callable[[], bool], timeout: float = HANG) -> None:
    wait_for(check, timeout, "the proxy's connection count")


def test_forwards_both_ways_and_counts(proxy: FaultProxy, echo: servers.DecoyServer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one chunk and socket buffer
    with _connect(proxy) as a, _connect(proxy) as b:
        assert _roundtrip(a, payload) == payload
        assert _roundtrip(b, b"hello") == b"hello"
        _eventually(lambda: proxy.active == 2)
    _eventually(lambda: proxy.active == 0)
    assert proxy.accepted == 2
    assert echo.accepted == 2
    assert proxy.address[0].startswith("127.54.")


def test_cut_resets_every_open_connection(proxy: FaultProxy) -> None:
    socks = [_connect(proxy) for _ in range(3)]
    try:
        for s in socks:
            assert _roundtrip(s, b"ping") == b"ping"
        assert proxy.cut() == 3
        assert proxy.cut_count == 3 and proxy.active == 0
        for s in socks:
            with pytest.raises(ConnectionResetError):
                s.sendall(b"x")
                s.recv(1)
        with _connect(proxy) as fresh:  # the listener is untouched
            assert _roundtrip(fresh, b"again") == b"again"
        assert proxy.accepted == 4
    finally:
        for s in socks:
            s.close()


def test_stall_holds_bytes_keeps_connections_and_resume_delivers(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        assert _roundtrip(s, b"before") == b"before"
        proxy.stall()
        s.sendall(b"held")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(10)
        with _connect(proxy) as late:  # new connections are taken, and stall too
            late.sendall(b"late")
            late.settimeout(0.3)
            with pytest.raises(TimeoutError):
                late.recv(10)
            assert proxy.active == 2
            proxy.resume()
            late.settimeout(5)
            assert late.recv(10) == b"late"
        s.settimeout(5)
        assert s.recv(10) == b"held"
        assert _roundtrip(s, b"after") == b"after"


def test_refuse_new_refuses_but_keeps_existing(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        proxy.refuse_new(True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=2)
        assert _roundtrip(s, b"still here") == b"still here"
        proxy.refuse_new(False)
        with _connect(proxy) as t:
            assert _roundtrip(t, b"back") == b"back"
    assert proxy.accepted == 2


def test_server_down_resets_the_client() -> None:
    host, port = servers.allocate("scratch", 0)  # nothing listens there
    with FaultProxy(host, port) as p:
        with pytest.raises(ConnectionResetError):  # at connect() or at the first recv()
            with _connect(p) as s:
                s.recv(1)
        _eventually(lambda: p.active == 0)
        assert p.accepted == 1


def test_stop_closes_everything(echo: servers.DecoyServer) -> None:
    p = FaultProxy(echo.host, echo.port)
    s = _connect(p)
    try:
        assert _roundtrip(s, b"x") == b"x"
        p.stop()
        with pytest.raises(ConnectionResetError):
            s.recv(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(p.address, timeout=2)
        p.stop()  # idempotent
    finally:
        s.close()


def test_rejects_non_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 5672)


async def test_usable_from_an_async_test(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(b"async")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"async"
        await asyncio.to_thread(proxy.cut)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
    finally:
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()
