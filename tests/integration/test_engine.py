"""The engine's own guarantees, against real sockets on loopback: scope before any packet,
the concurrency bound, the rate limit, the per-target deadline, one result per target, and
none for a target abandoned by ``abort``.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from brokerscan.model import ScanResult, Status
from scheduler.ports import PortSpec
from tests import servers
from tests.waiting import HANG, holds_for_async, wait_for_async
from workers.engine import Engine, ScanConfig
from workers.transport import Scope

pytestmark = pytest.mark.integration

SILENT = PortSpec(port=2883, tls=False, probes=("mqtt",), name="2883")


def ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class Counting:
    """A real server that counts connections (and the most at once), sending nothing."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.most = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            await reader.read()  # until the scanner hangs up
        finally:
            self.open -= 1
            writer.close()


async def scan(targets, config: ScanConfig, scope: str = "127.0.0.0/8"):
    results: list[ScanResult] = []
    engine = Engine(config, Scope([scope]))
    stats = await engine.run(targets, results.append, total=len(targets))
    return stats, results


async def test_out_of_scope_targets_are_recorded_and_never_dialled():
    counter = Counting()
    server = await asyncio.start_server(counter.handle, "127.61.0.1", SILENT.port)
    async with server:
        stats, results = await scan([(ip("127.61.0.1"), SILENT)], ScanConfig(),
                                    scope="127.60.0.0/24")
    assert counter.accepted == 0
    assert [r.status for r in results] == [Status.OUT_OF_SCOPE]
    assert stats.statuses == {"out-of-scope": 1}


async def test_concurrency_bound_holds_against_a_tarpit():
    counter = Counting()
    server = await asyncio.start_server(counter.handle, "127.61.0.2", SILENT.port)
    config = ScanConfig(concurrency=5, io_timeout=0.3, total_timeout=0.5, rate=0)
    async with server:
        stats, results = await scan([(ip("127.61.0.2"), SILENT)] * 20, config)
        # The server's handlers may still be starting on a busy machine.
        await wait_for_async(lambda: counter.accepted == 20, HANG, "20 connections accepted")
    assert counter.accepted == 20
    assert 1 <= counter.most <= 5
    assert len(results) == 20 and stats.done == 20
    assert {r.status for r in results} == {Status.IO_TIMEOUT}
    # the per-target deadline held: nothing took much longer than total_timeout (the bound
    # is a hang bound: a loaded machine may be slow)
    assert max(r.duration_ms for r in results) < 1000 * (config.total_timeout + HANG)


async def test_rate_limit_spaces_out_new_connections():
    n, rate = 300, 200.0
    targets = [(ip("127.61.1.0") + i, SILENT) for i in range(n)]  # closed ports
    began = time.monotonic()
    stats, results = await scan(targets, ScanConfig(rate=rate))
    elapsed = time.monotonic() - began
    assert stats.statuses == {"connection-refused": n}
    assert results == []  # failures are counted, not emitted, by default
    burst = rate / 50
    assert elapsed >= (n - burst) / rate * 0.9


async def test_failures_are_emitted_when_asked():
    targets = [(ip("127.61.2.0") + i, SILENT) for i in range(10)]
    stats, results = await scan(targets, ScanConfig(emit_failures=True, rate=0))
    assert len(results) == 10
    assert {r.status for r in results} == {Status.CONNECTION_REFUSED}
    assert sorted(r.ip for r in results) == [f"127.61.2.{i}" for i in range(10)]


async def test_connect_timeout_is_recorded(monkeypatch):
    # A listener whose accept queue is full drops further SYNs: a real connect timeout on
    # loopback, with no packet leaving the machine.
    listener = socket.socket()
    listener.bind(("127.61.3.1", SILENT.port))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.61.3.1", SILENT.port))
            fillers.append(s)
        # One filler's handshake completes and fills the queue (backlog 0); the rest wait.
        await wait_for_async(lambda: any(map(_connected, fillers)), HANG,
                             "the listener's accept queue to fill")
        config = ScanConfig(connect_timeout=0.5, emit_failures=True, rate=0)
        stats, results = await scan([(ip("127.61.3.1"), SILENT)], config)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert [r.status for r in results] == [Status.CONNECTION_TIMEOUT]


async def test_stop_finishes_in_flight_and_starts_nothing_new():
    targets = [(ip("127.61.4.0") + i, SILENT) for i in range(10_000)]
    engine = Engine(ScanConfig(rate=500), Scope(["127.0.0.0/8"]))
    run = asyncio.ensure_future(engine.run(targets, lambda r: None, total=len(targets)))
    await wait_for_async(lambda: engine.stats.done > 0, HANG, "the first probes done")
    engine.stop()
    stats = await asyncio.wait_for(run, 5)
    assert 0 < stats.done < len(targets)
    assert stats.done == stats.started


async def test_abort_abandons_in_flight_targets_without_a_result():
    # Three kinds of target on ops addresses: a listener that never accepts (the kernel
    # completes the handshake, then nothing answers: the probe waits for its timeout),
    # a listener whose accept queue is full (the SYN is dropped: the connect waits), and
    # closed ports (refused at once). Timeouts far beyond the test: only abort ends them.
    silent_host, _ = servers.allocate("ops", SILENT.port)
    full_host, _ = servers.allocate("ops", SILENT.port)
    silent = socket.create_server((silent_host, SILENT.port), backlog=64)
    full = socket.socket()
    full.bind((full_host, SILENT.port))
    full.listen(0)
    filler = socket.create_connection((full_host, SILENT.port))  # fills the queue
    try:
        targets = ([(ip(silent_host), SILENT)] * 3 + [(ip(full_host), SILENT)] * 2
                   + [(ip("127.62.48.0") + i, SILENT) for i in range(5)])
        results: list[ScanResult] = []
        engine = Engine(ScanConfig(connect_timeout=60, io_timeout=60, total_timeout=60,
                                   emit_failures=True, rate=0), Scope(["127.0.0.0/8"]))
        run = asyncio.ensure_future(engine.run(targets, results.append))
        await wait_for_async(lambda: engine.stats.done == 5, HANG, "the refused ports done")
        # both phases in flight: 3 probes waiting for a CONNACK, 2 connects for a SYN-ACK
        await wait_for_async(lambda: len(engine._probing) == 3, HANG, "3 probes waiting")
        assert engine.in_flight == 5
        began = time.monotonic()
        abandoned = engine.abort()
        stats = await asyncio.wait_for(run, 5)
        assert time.monotonic() - began < 1
    finally:
        filler.close()
        full.close()
        silent.close()
    assert sorted(abandoned) == sorted(targets[:5])
    assert engine.in_flight == 0
    assert [r.status for r in results] == [Status.CONNECTION_REFUSED] * 5
    assert (stats.started, stats.done, stats.abandoned, stats.open) == (10, 5, 5, 0)
    assert stats.statuses == {"connection-refused": 5}
    await holds_for_async(lambda: len(results) == 5, 0.5, "no result for the abandoned")
