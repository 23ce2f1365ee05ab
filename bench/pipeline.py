"""Benchmark: probes/s through Celery (1 and 2 worker processes) against the local engine.

    .venv/bin/python bench/pipeline.py [--addresses 262144] [--shards 8] [--rounds 2]

The same targets each time: ``--addresses`` loopback addresses (127.58.0.0 up) on one
port nothing listens on, so every probe is a refused connect and the machine's two cores
go to brokerscan, not to a broker under test. Contenders, in one run:

* ``local``: the engine in this process (what ``brokerscan scan`` does), no rate limit;
* ``celery-1`` / ``celery-2``: a real sweep (``sweep start``), one scheduler and 1 or 2
  ``brokerscan worker --pool solo`` processes, started and idle before the clock starts;
  the clock runs from the sweep's creation in PostgreSQL to its finish, so it includes
  dispatch (the scheduler's ticks), shard start and finish records, the fleet rate
  budget in Redis (set far above what the machine can do) and live counters.

Also: ``sweep plan 0.0.0.0/0`` (four ports) wall time and peak memory, in a network
namespace with only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from brokerscan.model import ScanResult  # noqa: E402
from scheduler.ports import PortSpec  # noqa: E402
from tests.integration.sweepfleet import Fleet  # noqa: E402
from workers.engine import Engine, ScanConfig  # noqa: E402
from workers.transport import Scope  # noqa: E402

FIRST = "127.58.0.0"
PORT = 1999


def run_local(n: int) -> float:
    spec = PortSpec(port=PORT, tls=False, probes=("mqtt",), name=str(PORT))
    base = int.from_bytes(socket.inet_aton(FIRST), "big")

    def sink(_: ScanResult) -> None:
        raise AssertionError("a closed port produced a result")

    async def go() -> float:
        engine = Engine(ScanConfig(rate=0, concurrency=1000), Scope(["127.0.0.0/8"]))
        began = time.perf_counter()
        await engine.run(((ip, spec) for ip in range(base, base + n)), sink)
        return n / (time.perf_counter() - began)

    return asyncio.run(go())


def run_celery(n: int, workers: int, shards: int) -> float:
    last = int.from_bytes(socket.inet_aton(FIRST), "big") + n - 1
    target = f"{FIRST}-{socket.inet_ntoa(last.to_bytes(4, 'big'))}"
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        fleet.setup()
        try:
            fleet.start_scheduler()
            for i in range(workers):
                fleet.start_worker(f"w{i}")
            _wait_workers(fleet, workers)
            sweep_id = fleet.start_sweep(target, "--ports", str(PORT), "--allow-reserved",
                                         "--rate", "5000000", "--shards", str(shards),
                                         "--concurrency", "1000")
            elapsed = asyncio.run(_wait_finished(fleet.database_url, sweep_id))
            probes = sum(s["probes"] for s in fleet.shards(sweep_id))
            assert probes == n, f"{probes} probes for {n} targets"
            return n / elapsed
        finally:
            fleet.teardown()


def _wait_workers(fleet: Fleet, count: int) -> None:
    """Until every worker process has connected (its log says it is ready)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all("ready." in fleet.log(name) for name in fleet.processes if name != "scheduler"):
            return
        time.sleep(0.1)
    raise SystemExit("workers did not start")


async def _wait_finished(url: str, sweep_id: str) -> float:
    """Seconds from the sweep's creation (after planning) to its last shard's end."""
    conn = await asyncpg.connect(url)
    try:
        while True:
            row = await conn.fetchrow("SELECT state, started_at, finished_at FROM sweeps"
                                      " WHERE id = $1", sweep_id)
            if row is not None and row["state"] == "finished":
                return float((row["finished_at"] - row["started_at"]).total_seconds())
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def plan_full_ipv4() -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    subprocess.run(["unshare", "-n", sys.executable, "-m", "brokerscan.cli", "sweep", "plan",
                    "0.0.0.0/0", "--rate", "50000", "--format", "json"], check=True,
                   capture_output=True, cwd=ROOT)
    elapsed = time.perf_counter() - began
    peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return elapsed, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=262144)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    best: dict[str, float] = {}
    contenders: list[tuple[str, Callable[[], float]]] = [
        ("local", lambda: run_local(args.addresses)),
        ("celery-1", lambda: run_celery(args.addresses, 1, args.shards)),
        ("celery-2", lambda: run_celery(args.addresses, 2, args.shards)),
    ]
    for _ in range(args.rounds):
        for name, fn in contenders:
            best[name] = max(best.get(name, 0.0), fn())
    print(f"{args.addresses} closed-port targets, {args.shards} shards, best of {args.rounds}")
    print(f"{'contender':<12}{'probes/s':>12}{'x local':>10}")
    for name, rate in best.items():
        print(f"{name:<12}{rate:>12.0f}{rate / best['local']:>10.2f}")
    seconds, peak = plan_full_ipv4()
    print(f"sweep plan 0.0.0.0/0 x 4 ports: {seconds:.2f} s wall (process start included), "
          f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
