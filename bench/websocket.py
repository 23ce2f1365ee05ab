"""Benchmark: MQTT-over-WebSocket handshakes/s against the plain MQTT probe, same brokers,
same run; and what the WebSocket try costs on ports that are not MQTT.

    .venv/bin/python bench/websocket.py [--handshakes N] [--rounds R]

One Mosquitto (plain listener and ``websockets`` listener) and one amqtt (tcp and ``ws``)
on 127.63.200.x; every contender probes the same broker N times through the engine, 200
in flight. Then HTTP servers (nginx-like 404s) and SSH-banner servers on 9001: the probes a
9001 port gets now (``mqtt-ws`` first, raw probes skipped after an HTTP answer) against
the probes it got before (``mqtt``, ``amqp``). Best of R rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from brokerscan.model import ScanResult  # noqa: E402
from scheduler.ports import PortSpec, parse_ports  # noqa: E402
from tests import protoservers  # noqa: E402
from tests.servers import DecoyServer, ssh_banner  # noqa: E402
from workers.engine import Engine, ScanConfig  # noqa: E402
from workers.transport import Scope  # noqa: E402

IN_FLIGHT = 200


def run(host: str, spec: PortSpec, n: int, want: str | None) -> float:
    ip = int(ipaddress.IPv4Address(host))
    seen: list[ScanResult] = []

    async def go() -> float:
        engine = Engine(ScanConfig(rate=0, concurrency=IN_FLIGHT, io_timeout=5,
                                   total_timeout=20), Scope(["127.0.0.0/8"]))
        began = time.perf_counter()
        await engine.run(((ip, spec) for _ in range(n)), seen.append, total=n)
        return n / (time.perf_counter() - began)

    rate = asyncio.run(go())
    protocols = {r.protocol.value if r.protocol else None for r in seen}
    assert protocols == {want}, (spec.name, protocols, seen[0].error)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.handshakes
    work = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    mosq = protoservers.start_mosquitto_ws(work / "mosquitto")
    amqtt = protoservers.start_amqtt_ws(work / "amqtt")
    decoys: list[DecoyServer] = []
    try:
        http = protoservers.start_decoy(protoservers.http_answer("404 Not Found"), 9001)
        ssh = protoservers.start_decoy(ssh_banner(), 9001)
        decoys += [http, ssh]
        old = PortSpec(9001, False, ("mqtt", "amqp"), "9001/tcp")
        new = parse_ports("9001")[0]
        contenders: dict[str, Callable[[], float]] = {
            "mosquitto mqtt": lambda: run(mosq.host, parse_ports(f"{mosq.port}/tcp",
                                                                 "mqtt")[0], n, "mqtt"),
            "mosquitto mqtt-ws": lambda: run(mosq.host, parse_ports(f"{mosq.ws_port}/ws")[0],
                                             n, "mqtt"),
            "amqtt mqtt": lambda: run(amqtt.host, parse_ports(f"{amqtt.port}/tcp",
                                                              "mqtt")[0], n // 4, "mqtt"),
            "amqtt mqtt-ws": lambda: run(amqtt.host, parse_ports(f"{amqtt.ws_port}/ws")[0],
                                         n // 4, "mqtt"),
            "http 9001 before": lambda: run(http.host, old, n, None),
            "http 9001 now": lambda: run(http.host, new, n, None),
            "ssh 9001 before": lambda: run(ssh.host, old, n, None),
            "ssh 9001 now": lambda: run(ssh.host, new, n, None),
        }
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                best[name] = max(best.get(name, 0.0), fn())
    finally:
        for server in decoys:
            server.stop()
        mosq.stop()
        amqtt.stop()
    print(f"probes/s, {n} per contender ({n // 4} for amqtt), {IN_FLIGHT} in flight, "
          f"best of {args.rounds}")
    for name, rate in best.items():
        print(f"{name:<22}{rate:>10.0f}")


if __name__ == "__main__":
    main()
