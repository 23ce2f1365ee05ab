"""Benchmark: the whole fleet against one local ``scan`` process on 4.2M refusing targets.

    .venv/bin/python bench/fleet_scale.py [--net 127.0.0.0/12] [--workers 2]

The same targets for both: ``--net`` (loopback; 127.0.0.0/12 is 1,048,576 addresses) x
the four default ports (1883, 8883, 5672, 5671), 4,194,304 targets, nearly every one a
refused connect (the machine's own brokers on 127.0.0.1 answer). No rate limit (``-r 0``
and ``--rate 0``), 1,000 connections in flight per process, no results written for closed
ports. Contenders, one run each, in this order:

* ``scan``: one ``brokerscan scan --no-store`` process, wall time from its start to its
  exit (Python's start-up included, about a second);
* ``fleet``: a real sweep with every role: ``brokerscan scheduler``, ``--workers``
  ``brokerscan worker --pool solo`` processes (both queues), ``enrich-worker`` and
  ``store-worker`` (real RabbitMQ, Redis, PostgreSQL), started and idle before the clock
  starts; timed from the sweep's creation to its finish in PostgreSQL.

Also reported, to see where the fleet loses time: the CPU seconds of each role and of the
services (PostgreSQL, Redis, RabbitMQ) during the fleet's run, and the share of the
sweep's wall time each worker spent inside a shard (from the shards' start and finish
times): what is left is dispatch and per-shard overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from tests.integration.sweepfleet import Fleet  # noqa: E402

PORTS = "1883,8883,5672,5671"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _service_pids() -> dict[str, list[int]]:
    """The machine's PostgreSQL, Redis and RabbitMQ processes (read from /proc only)."""
    found: dict[str, list[int]] = {"postgresql": [], "redis": [], "rabbitmq": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("postgres"):
            found["postgresql"].append(int(entry.name))
        elif comm.startswith("redis-server"):
            found["redis"].append(int(entry.name))
        elif comm in ("beam.smp", "erl_child_setup"):
            found["rabbitmq"].append(int(entry.name))
    return found


def run_scan(net: str) -> tuple[float, float]:
    """(probes/s, CPU seconds) of one local scan process."""
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "scan", net, "--ports",
                           PORTS, "--allow-reserved", "--no-store", "-r", "0", "-c", "1000",
                           "--format", "json", "--progress", "off"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
    elapsed = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"scan failed: {proc.returncode}\n{proc.stderr[-2000:]}")
    usage = os.times()
    targets = ipaddress.ip_network(net).num_addresses * 4
    return targets / elapsed, usage.children_user + usage.children_system


async def _finished(url: str, sweep_id: str) -> float:
    conn = await asyncpg.connect(url)
    try:
        while True:
            row = await conn.fetchrow("SELECT state, started_at, finished_at FROM sweeps"
                                      " WHERE id = $1", sweep_id)
            if row is not None and row["state"] in ("finished", "failed"):
                assert row["state"] == "finished", row["state"]
                return float((row["finished_at"] - row["started_at"]).total_seconds())
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def _in_shards(url: str, sweep_id: str) -> dict[str, float]:
    """Seconds each worker spent inside shards (start to finish), and printed on stderr,
    each worker's shards as seconds from the sweep's creation: where the gaps are."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.worker, extract(epoch FROM s.started_at - w.created_at) AS a,"
            " extract(epoch FROM s.finished_at - w.created_at) AS b"
            " FROM sweep_shards s JOIN sweeps w ON w.id = s.sweep_id WHERE s.sweep_id = $1"
            " ORDER BY s.worker, s.started_at", sweep_id)
    finally:
        await conn.close()
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        spans.setdefault(r["worker"], []).append((float(r["a"]), float(r["b"])))
    for worker, shards in spans.items():
        print(f"{worker}: " + " ".join(f"{a:.1f}-{b:.1f}" for a, b in shards), file=sys.stderr)
    return {f"{w} ({len(v)} shards)": sum(b - a for a, b in v) for w, v in spans.items()}


def run_fleet(net: str, workers: int) -> tuple[float, dict[str, float], dict[str, float],
                                                 float, int]:
    """(probes/s, CPU s per role, seconds in shards per worker, wall s, shards)."""
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        fleet.env["BROKERSCAN_STORE_URL"] = fleet.database_url
        fleet.setup()
        try:
            fleet.spawn("scheduler", "scheduler")
            for i in range(workers):
                fleet.start_worker(f"worker{i}")
            fleet.spawn("enrich", "enrich-worker")
            fleet.spawn("store", "store-worker")
            deadline = time.monotonic() + 180
            while not all("ready." in fleet.log(f"worker{i}") for i in range(workers)):
                if time.monotonic() > deadline:
                    raise SystemExit(f"workers did not start\n{fleet.logs()}")
                time.sleep(0.2)
            time.sleep(2)  # the other roles' start-up off the clock
            services = _service_pids()
            before = {name: _cpu(p.pid) for name, p in fleet.processes.items()}
            before_services = {p: _cpu(p) for v in services.values() for p in v}
            sweep_id = fleet.start_sweep(net, "--ports", PORTS, "--allow-reserved",
                                         "--rate", "0", "--concurrency", "1000",
                                         "--seed", "11")
            elapsed = asyncio.run(_finished(fleet.database_url, sweep_id))
            cpu = {name: _cpu(p.pid) - before[name] for name, p in fleet.processes.items()}
            # processes that lived through the run (a backend that ended took its share)
            cpu |= {k: sum(max(0.0, _cpu(p) - before_services[p]) for p in v)
                    for k, v in services.items()}
            shards = fleet.shards(sweep_id)
            probes = sum(s["probes"] for s in shards)
            targets = ipaddress.ip_network(net).num_addresses * 4
            assert probes >= targets, f"{probes} probes for {targets} targets"
            busy = asyncio.run(_in_shards(fleet.database_url, sweep_id))
            return targets / elapsed, cpu, busy, elapsed, len(shards)
        finally:
            fleet.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="127.0.0.0/12")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    scan_rate, scan_cpu = run_scan(args.net)
    print(f"scan: {scan_rate:,.0f} probes/s ({scan_cpu:.1f} CPU s)", flush=True)
    rate, cpu, busy, elapsed, shards = run_fleet(args.net, args.workers)
    load = os.getloadavg()
    print(f"fleet ({args.workers} workers, {shards} shards): {rate:,.0f} probes/s in "
          f"{elapsed:.1f} s = {rate / scan_rate:.2f}x the scan")
    print("CPU seconds during the fleet's run:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<12}{seconds:8.1f}")
    print("time inside shards per worker:")
    for name, seconds in busy.items():
        print(f"  {name}: {seconds:.1f} s of {elapsed:.1f} s ({seconds / elapsed:.0%})")
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
