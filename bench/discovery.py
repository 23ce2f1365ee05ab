"""Benchmark: ``scan --discovery zmap`` against connect-only, in the same simulated world.

    .venv/bin/python bench/discovery.py scan [--network 198.18.0.0/16] [--brokers 16]
        [--silent 0.94] [--rate 10000] [--concurrency 1000] [--connect-timeout 3]
        [--cooldown 8]

Builds a world (bench/world.py: two network namespaces, nothing else is ever a target)
where ``--silent`` of the addresses drop SYNs, the rest refuse, and ``--brokers``
Mosquitto brokers answer on 1883; then runs the real ``brokerscan scan`` on the whole
network, port 1883, once connect-only (the baseline) and once with ``--discovery zmap``,
with the same options (the CLI's defaults unless given), in the scanner namespace. Wall
time of each command (start-up included), probes/s, the brokers each found against the
world's truth, and the SYNs the world counted, are printed as one JSON object.

Needs root, zmap, nftables and Mosquitto. The issue's target: discovery >= 5x faster on a
94%-silent /16 with the same brokers found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.world import MQTT_PORT, World, WorldConfig  # noqa: E402
from brokerscan.model import ScanResult  # noqa: E402
from brokerscan.stream.wire import message_lines  # noqa: E402
from tests.integration.sweepfleet import Fleet  # noqa: E402
from tests.services import RABBIT_URL  # noqa: E402
from tests.waiting import wait_for  # noqa: E402


def _scan(world: World, args: argparse.Namespace, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["env", "BROKERSCAN_SCOPE=198.18.0.0/15", sys.executable, "-m", "brokerscan.cli",
            "scan", args.network, "-p", str(MQTT_PORT), "--allow-reserved", "--no-store",
            "-o", str(out), "--format", "json", "-r", str(args.rate),
            "-c", str(args.concurrency), "--connect-timeout", str(args.connect_timeout),
            "--progress", "off", *extra]
    world.reset_counts()
    began = time.monotonic()
    proc = world.run(argv, cwd=str(HERE.parent))
    seconds = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"bench/discovery.py: scan failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    report = json.loads(proc.stdout)
    found = sorted(json.loads(line)["ip"] for line in out.read_text().splitlines()
                   if json.loads(line)["protocol"] == "mqtt")
    scan = report["scan"]
    return {"seconds": round(seconds, 2), "targets": scan["targets"],
            "probes_per_s": round(scan["targets"] / seconds),
            "engine_seconds": scan["seconds"], "by_status": scan["by_status"],
            "brokers_found": found, "world_syns": world.syn_counts()}


def bench_scan(args: argparse.Namespace) -> dict[str, Any]:
    config = WorldConfig(network=args.network, silent=args.silent, mqtt=args.brokers,
                         amqp=0, seed=args.seed)
    with World(config) as world, tempfile.TemporaryDirectory() as tmp:
        connect = _scan(world, args, Path(tmp, "connect.jsonl"))
        zmap = _scan(world, args, Path(tmp, "zmap.jsonl"), "--discovery", "zmap",
                     "--discovery-cooldown", str(args.cooldown))
        truth = sorted(world.mqtt_hosts, key=lambda h: tuple(map(int, h.split("."))))
    same = connect["brokers_found"] == zmap["brokers_found"] == sorted(truth)
    return {"network": args.network, "silent": args.silent, "brokers": len(truth),
            "options": {"rate": args.rate, "concurrency": args.concurrency,
                        "connect_timeout": args.connect_timeout, "cooldown": args.cooldown},
            "connect": connect, "discovery": zmap,
            "speed_up": round(connect["seconds"] / zmap["seconds"], 2),
            "same_brokers_as_truth": same}


PORTS = "1883,8883,5672,5671"


def _sweep(world: World, fleet: Fleet, args: argparse.Namespace, *extra: str,
           window: float | None) -> dict[str, Any]:
    """One sweep of the network on the fleet: to the end, or for ``window`` seconds."""
    world.reset_counts()
    began = time.monotonic()
    sweep_id = fleet.start_sweep(
        args.network, "--ports", PORTS, "--allow-reserved", "--seed", "7",
        "--rate", str(args.rate), "--concurrency", str(args.concurrency),
        "--connect-timeout", str(args.connect_timeout), "--shard-size", str(args.shard_size),
        *extra)
    status: dict[str, Any] = {}
    while True:
        status = fleet.status(sweep_id)
        seconds = time.monotonic() - began
        if status["state"] in ("finished", "failed", "cancelled"):
            break
        if window is not None and seconds >= window:
            fleet.cli("sweep", "cancel", sweep_id)
            break
        time.sleep(1.0)  # a benchmark's sampling period, not a wait for a condition
    records = asyncio.run(_drain(fleet))
    seen = Counter(f"{r.ip}:{r.port}" for r in records)
    found = sorted({f"{r.ip}:{r.port}" for r in records if r.protocol is not None})
    return {"others": dict(Counter(f"{r.port}/{r.status.value}" for r in records
                                   if r.protocol is None)),
            "state": status["state"], "seconds": round(seconds, 1),
            "targets": status["targets"], "probes": status["probes"],
            "probes_per_s": round(status["probes"] / seconds),
            "hits": status.get("hits"), "brokers_found": found,
            "duplicates": sum(n - 1 for n in seen.values()),
            "world_syns": world.syn_counts()}


async def _drain(fleet: Fleet) -> list[ScanResult]:
    """Every result the sweep published (the fleet's results queue, emptied)."""
    records: list[ScanResult] = []
    connection = await aio_pika.connect(RABBIT_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(fleet.results_queue)
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            records += (ScanResult.model_validate_json(line) for line in message_lines(message))
    return records


def bench_sweep(args: argparse.Namespace) -> dict[str, Any]:
    config = WorldConfig(network=args.network, silent=args.silent, mqtt=args.brokers,
                         amqp=args.brokers, seed=args.seed)
    with World(config) as world, tempfile.TemporaryDirectory() as tmp:
        world.relay([5432, 6379, 5672])
        fleet = Fleet(Path(tmp))
        fleet.env["BROKERSCAN_SCOPE"] = "198.18.0.0/15"
        fleet.setup()
        try:
            fleet.spawn("scheduler", "scheduler")
            for i in range(args.workers):
                fleet.spawn(f"w{i}", "worker", "--pool", "solo",
                            prefix=tuple(world.command([])))
            # Every worker consuming before the sweep starts (else one takes every shard).
            wait_for(lambda: all(" ready." in fleet.log(f"w{i}") for i in range(args.workers)),
                     120, "the workers to be ready", detail=fleet.logs)
            zmap = _sweep(world, fleet, args, "--discovery", "zmap",
                          "--discovery-cooldown", str(args.cooldown), window=None)
            connect = _sweep(world, fleet, args, window=args.window)
        finally:
            fleet.teardown()
        truth = sorted(f"{ip}:{port}" for ip, port in world.brokers)
    return {"network": args.network, "ports": PORTS, "silent": args.silent,
            "workers": args.workers, "brokers": len(truth),
            "options": {"rate": args.rate, "concurrency": args.concurrency,
                        "connect_timeout": args.connect_timeout, "cooldown": args.cooldown,
                        "connect_window": args.window, "shard_size": args.shard_size},
            "connect": connect, "discovery": zmap,
            "probes_per_s_ratio": round(zmap["probes_per_s"] / max(1, connect["probes_per_s"]),
                                        2),
            "discovery_found_all": zmap["brokers_found"] == truth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    scan = sub.add_parser("scan", help="one scan of a network, port 1883")
    scan.add_argument("--network", default="198.18.0.0/16")
    scan.add_argument("--brokers", type=int, default=16)
    scan.add_argument("--silent", type=float, default=0.94)
    scan.add_argument("--seed", type=int, default=1)
    scan.add_argument("--rate", type=float, default=10_000)
    scan.add_argument("--concurrency", type=int, default=1000)
    scan.add_argument("--connect-timeout", type=float, default=3.0)
    scan.add_argument("--cooldown", type=float, default=8.0)
    sweep = sub.add_parser("sweep", help="a fleet sweep of a network x 4 ports")
    sweep.add_argument("--network", default="198.18.0.0/15")
    sweep.add_argument("--brokers", type=int, default=8, help="of each kind (MQTT, AMQP)")
    sweep.add_argument("--silent", type=float, default=0.94)
    sweep.add_argument("--seed", type=int, default=1)
    sweep.add_argument("--workers", type=int, default=2)
    sweep.add_argument("--rate", type=float, default=10_000)
    sweep.add_argument("--concurrency", type=int, default=1000)
    sweep.add_argument("--connect-timeout", type=float, default=3.0)
    sweep.add_argument("--cooldown", type=float, default=8.0)
    sweep.add_argument("--shard-size", type=int, default=250_000)
    sweep.add_argument("--window", type=float, default=90.0,
                       help="seconds the connect-only sweep runs before it is cancelled "
                            "(its rate is steady: slot-bound)")
    args = parser.parse_args()
    result = bench_scan(args) if args.what == "scan" else bench_sweep(args)
    for side in ("connect", "discovery"):
        result[side]["brokers_found"] = len(result[side]["brokers_found"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
