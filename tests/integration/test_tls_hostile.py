"""Hostile TLS servers (issue 8) probed beside a normal broker, by one process, at once.

The hostile servers are real ``openssl s_server`` processes on 127.66.x.y (the
``hostile-tls`` pool) sending the chains of tests/certs.py the way issue 8 did
(``-cert leaf.pem -key key.pem -cert_chain chain.pem``); the normal broker is a real
Mosquitto TLS listener (``mosquitto_tls``). The engine, the scan path of the CLI and of the
workers, probes them all together while a ticker task on the same event loop records the
longest gap between its wake-ups. Before the fix one duplicated chain held the loop for
more than 100 s; the bound here, :data:`STALL_BOUND`, is over four times the 13-58 ms
measured on a loaded 2-vCPU machine (see docs/benchmarks.md), so that only a step that
holds the loop for long fails.

What is left on the loop is OpenSSL's own handshake step (``SSLObject.do_handshake``
parses every certificate sent: up to ~20 ms for the 100-copy chain, bounded by OpenSSL's
100 KiB limit on the certificate message). Handshakes that finish in the same loop
iteration add up, so connects are spread at 20 a second (the probes still overlap: each
lasts a second or more); all at once, the hostile handshakes made gaps of 40-130 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerscan.model import Protocol, ScanResult, Status
from scheduler.ports import PortSpec
from tests import certs, servers
from tests.certs import Hostile
from workers.engine import Engine, ScanConfig
from workers.transport import Scope

pytestmark = pytest.mark.integration

STALL_BOUND = 0.25  # seconds: the longest the event loop may be held during the scan
CONFIG = ScanConfig(connect_timeout=2.0, io_timeout=1.0, total_timeout=6.0,
                    tls_handshake_timeout=4.0, rate=20)

# chain -> the verdict it must end with
HOSTILE = {
    "duplicated-ca-20": "self-signed",  # issue 8's server: `openssl req -x509` makes a CA
    "duplicated-ca-100": "self-signed",
    "duplicated-100": "self-signed",
    "long-50": "path-too-long",
    "loop": "unknown-issuer",
    "mesh-16": "budget-exceeded",
    "sans-5000": "self-signed",
}


def _chains() -> dict[str, Hostile]:
    made = [certs.duplicated_ca(20), certs.duplicated_ca(100), certs.duplicated_leaf(100),
            certs.long_chain(50),
            certs.loop_chain(), certs.mesh_chain(16), certs.many_sans(5000)]
    return {chain.name: chain for chain in made}


@contextlib.contextmanager
def _s_server(chain: Hostile, directory: Path) -> Iterator[tuple[str, int]]:
    """``openssl s_server`` on a fresh 127.66.x.y:8883, sending ``chain`` as given."""
    host, port = servers.allocate("hostile-tls", 8883)
    leaf, rest, key = chain.write(directory)
    args = ["openssl", "s_server", "-accept", f"{host}:{port}", "-quiet",
            "-cert", str(leaf), "-key", str(key)]
    if len(chain.certs) > 1:
        args += ["-cert_chain", str(rest)]
    # stdin stays open: s_server takes end of input as "quit"
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        servers.wait_for_port(host, port, 10, alive=lambda: proc.poll() is None)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


class StallMeter:
    """Wakes up every ``period`` s on the loop and keeps the longest delay past it."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.ticking = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            self.worst = max(self.worst, now - last - self.period)
            self.ticking.set()
            last = now


def _ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


@pytest.mark.serial  # the event loop never stalls: measured on the machine
async def test_hostile_servers_beside_a_normal_broker(
        tmp_path: Path, mosquitto_tls: servers.MosquittoServer) -> None:
    chains = _chains()
    with contextlib.ExitStack() as stack:
        where = {name: stack.enter_context(_s_server(chain, tmp_path)) for name, chain in
                 chains.items()}
        targets = [(_ip(mosquitto_tls.host), _spec(mosquitto_tls.port))]
        targets += [(_ip(host), _spec(port)) for host, port in where.values()]
        # made first: the start-up work (system roots, the TLS hook self-check) is once a
        # process, not a step of a probe
        engine = Engine(CONFIG, Scope(["127.0.0.0/8"]))
        meter = StallMeter()
        ticker = asyncio.create_task(meter.run())
        async with asyncio.timeout(5):
            await meter.ticking.wait()  # the meter runs before the first connect
        results: list[ScanResult] = []
        started = time.monotonic()
        try:
            await engine.run(targets, results.append, total=len(targets))
        finally:
            ticker.cancel()
        elapsed = time.monotonic() - started
    by_ip = {r.ip: r for r in results}
    assert len(results) == len(targets) == len(by_ip)
    broker = by_ip[mosquitto_tls.host]
    assert broker.status is Status.SUCCESS and broker.protocol is Protocol.MQTT
    assert broker.tls is not None and broker.tls.trust_error == "self-signed"
    for name, (host, _) in where.items():
        tls = by_ip[host].tls
        assert tls is not None and tls.handshake_completed, (name, by_ip[host])
        assert tls.chain_length == len(chains[name].certs), name  # the copies were sent
        assert (tls.trusted, tls.trust_error) == (False, HOSTILE[name]), name
        assert tls.certificate is not None, name
    many = by_ip[where["sans-5000"][0]].tls
    assert many is not None and many.certificate is not None
    assert len(many.certificate.sans) == 5000  # recorded whole
    assert max(r.duration_ms for r in results) < CONFIG.total_timeout * 1000 + 1000
    assert elapsed < CONFIG.total_timeout + 5
    assert meter.worst < STALL_BOUND, f"the event loop stalled {meter.worst * 1000:.0f} ms"


def _spec(port: int) -> PortSpec:
    return PortSpec(port=port, tls=True, probes=("mqtt",), name=str(port))


def test_issue_8_reproduction_through_the_cli(tmp_path: Path) -> None:
    """``brokerscan scan HOST --ports 8883 --allow-reserved`` against a server sending its
    self-signed CA certificate 20 times as its chain: >100 s of one core before, now done
    within the per-target timeout, the verdict recorded."""
    chain = certs.duplicated_ca(20)
    out = tmp_path / "scan.jsonl"
    with _s_server(chain, tmp_path) as (host, _port):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "brokerscan.cli", "scan", host, "--ports", "8883",
             "--allow-reserved", "-o", str(out), "--format", "json", "--timeout", "6",
             "--io-timeout", "1", "--progress", "off"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
        elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["tls"]["chain_length"] == 21
    assert record["tls"]["trusted"] is False and record["tls"]["trust_error"] == "self-signed"
    assert elapsed < 30
