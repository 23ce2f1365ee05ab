"""Benchmark: MQTT and AMQP handshakes/s of the engine against naive clients, same run.

    .venv/bin/python bench/handshakes.py [--handshakes N] [--brokers B] [--rounds R]

MQTT: one real Mosquitto started here with B listeners on 127.89.0.1..B:1883 (the
machine's own mosquitto binary); AMQP: the RabbitMQ on 127.0.0.1:5672. Contenders, each
with 100 connections in flight:

* ``engine``: brokerscan's Engine probing N targets spread over the brokers (MQTT: CONNECT
  5.0, CONNACK, DISCONNECT; AMQP: protocol header, Connection.Start, close);
* ``aiomqtt``: ``async with aiomqtt.Client(...)`` per target (connect, then disconnect);
* ``aio-pika``: ``aio_pika.connect(...)`` then ``close()`` per target (it logs in as guest:
  more work than our probe, which never logs in, but it is what a naive scanner would do).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
import aiomqtt

from brokerscan.model import ScanResult
from scheduler.ports import PortSpec
from workers.engine import Engine, ScanConfig
from workers.transport import Scope

CONCURRENCY = 100
MQTT_NET = "127.89.0."


def start_mosquitto(brokers: int, tmp: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    lines = ["per_listener_settings false", "persistence false", "allow_anonymous true",
             "max_connections -1", "log_type none"]
    lines += [f"listener 1883 {MQTT_NET}{i}" for i in range(1, brokers + 1)]
    (tmp / "m.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(tmp / "m.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((f"{MQTT_NET}{brokers}", 1883), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def mqtt_targets(n: int, brokers: int) -> list[tuple[int, PortSpec]]:
    spec = PortSpec(port=1883, tls=False, probes=("mqtt",), name="1883")
    base = int.from_bytes(socket.inet_aton(MQTT_NET + "0"), "big")
    return [(base + 1 + i % brokers, spec) for i in range(n)]


def amqp_targets(n: int) -> list[tuple[int, PortSpec]]:
    spec = PortSpec(port=5672, tls=False, probes=("amqp",), name="5672")
    return [(int.from_bytes(socket.inet_aton("127.0.0.1"), "big"), spec)] * n


def run_engine(targets: list[tuple[int, PortSpec]], protocol: str) -> float:
    config = ScanConfig(rate=0, concurrency=CONCURRENCY, io_timeout=10, total_timeout=30)
    seen: list[int] = [0]

    def sink(result: ScanResult) -> None:
        assert result.protocol is not None and result.protocol.value == protocol, result
        seen[0] += 1

    async def go() -> float:
        engine = Engine(config, Scope(["127.0.0.0/8"]))
        began = time.perf_counter()
        await engine.run(iter(targets), sink)
        return len(targets) / (time.perf_counter() - began)

    rate = asyncio.run(go())
    assert seen[0] == len(targets), f"{seen[0]} of {len(targets)} answered"
    return rate


async def _bounded(n: int, one: object) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def guarded(i: int) -> None:
        async with sem:
            await one(i)  # type: ignore[operator]

    began = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    return n / (time.perf_counter() - began)


def run_aiomqtt(n: int, brokers: int) -> float:
    async def one(i: int) -> None:
        async with aiomqtt.Client(f"{MQTT_NET}{1 + i % brokers}", 1883,
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=10):
            pass

    return asyncio.run(_bounded(n, one))


def run_aio_pika(n: int) -> float:
    async def one(_i: int) -> None:
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/", timeout=10)
        await connection.close()

    return asyncio.run(_bounded(n, one))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--brokers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, brokers = args.handshakes, args.brokers
    with tempfile.TemporaryDirectory() as tmp:
        mosquitto = start_mosquitto(brokers, Path(tmp))
        try:
            contenders: dict[tuple[str, str], Callable[[], float]] = {
                ("mqtt", "engine"): lambda: run_engine(mqtt_targets(n, brokers), "mqtt"),
                ("mqtt", "aiomqtt"): lambda: run_aiomqtt(n, brokers),
                ("amqp", "engine"): lambda: run_engine(amqp_targets(n // 4), "amqp"),
                ("amqp", "aio-pika"): lambda: run_aio_pika(n // 4),
            }
            best: dict[tuple[str, str], float] = {}
            for _ in range(args.rounds):
                for key, fn in contenders.items():
                    best[key] = max(best.get(key, 0.0), fn())
        finally:
            mosquitto.terminate()
            mosquitto.wait()
    print(f"handshakes, {n} MQTT over {brokers} Mosquitto listeners, {n // 4} AMQP on "
          f"RabbitMQ, {CONCURRENCY} in flight, best of {args.rounds}")
    print(f"{'protocol':<10}{'contender':<12}{'handshakes/s':>14}{'x naive':>10}")
    for proto, naive in (("mqtt", "aiomqtt"), ("amqp", "aio-pika")):
        base = best[(proto, naive)]
        for who in ("engine", naive):
            rate = best[(proto, who)]
            print(f"{proto:<10}{who:<12}{rate:>14.0f}{rate / base:>10.2f}")


if __name__ == "__main__":
    main()
