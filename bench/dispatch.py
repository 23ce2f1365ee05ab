"""Benchmark: dispatch sized to the fleet, against main's fixed cap in the same run.

    .venv/bin/python bench/dispatch.py [--workers 24] [--main /work/main] [--skip-fleet]

Two measurements, each with its baseline from the same run:

* ``fleet``: ``--workers`` real ``brokerscan worker --pool solo`` processes (real Celery,
  RabbitMQ, Redis, PostgreSQL), started once and idle before anything is timed; one sweep
  over refusing loopback space (127.66.0.0/16, one closed port, 4 shards per worker, so
  every shard is light) per contender, at a fleet rate of 5,000 probes/s (a shard lasts a
  few seconds, many dispatch rounds, so "busy at once" means held, not a passing
  overlap; the sweep's wall time is set by that rate, whatever the dispatch): the sized
  dispatcher (no ``--max-queued``) and the old fixed cap (``--max-queued 8``, main's
  default). Reported: the most worker processes busy at once (heartbeats sampled every
  50 ms, as ``sweep status`` counts them) and the sweep's wall time.
* ``rate``: a full ``0.0.0.0/0`` plan (four default ports, 59,238 shards) recorded as
  ``sweep start`` does in a database and namespace of the bench's own, then dispatched by a
  real ``brokerscan scheduler`` process to a probe queue that no worker consumes: timed
  from the scheduler's first round (its "dispatching" log line) until PostgreSQL has
  every shard queued and RabbitMQ holds every message. No worker exists in the
  namespace, so nothing dials; the sizing needs a capacity, so one synthetic heartbeat
  stands for a fleet of 60,000 processes. The baseline is main's scheduler (checkout given
  by ``--main``) with ``--max-queued 60000`` (its cap lifted, its send path as it is).
  The queues are purged and deleted, the database dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis  # noqa: E402
from kombu.connection import Connection  # noqa: E402

from brokerscan.names import Names  # noqa: E402
from scheduler import live, state  # noqa: E402
from scheduler.sweeps import SweepSpec, plan_sweep  # noqa: E402
from tests.integration.sweepfleet import Fleet  # noqa: E402
from tests.services import BROKER_URL, REDIS_URL  # noqa: E402

FULL_SHARDS = 59_238


def _heartbeats(client: redis.Redis, names: Names) -> tuple[int, int]:
    """(live, busy) worker processes, from their heartbeat hashes."""
    keys = list(client.scan_iter(match=names.workers_pattern(), count=1000))
    if not keys:
        return 0, 0
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "sweep_id")
        values = pipe.execute()
    return len(keys), sum(1 for v in values if v)


def _scheduler(fleet: Fleet, name: str, *args: str) -> subprocess.Popen[bytes]:
    return fleet.spawn(name, "scheduler", *args)


def _stop(fleet: Fleet, name: str) -> None:
    proc = fleet.processes.pop(name)
    proc.terminate()
    proc.wait(timeout=30)


def run_fleet(workers: int) -> dict[str, tuple[int, float, int]]:
    """{contender: (most busy at once, seconds, shards)}."""
    found: dict[str, tuple[int, float, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        fleet.setup()
        names = Names(fleet.namespace)
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for i in range(workers):
                fleet.start_worker(f"w{i}", "--queues", "probe")
            deadline = time.monotonic() + 600
            while _heartbeats(client, names)[0] < workers:
                if time.monotonic() > deadline:
                    raise SystemExit(f"workers did not start\n{fleet.logs()}")
                time.sleep(0.5)
            print(f"{workers} workers beating", flush=True)
            shards = 4 * workers
            for n, (contender, args) in enumerate((("fixed cap 8 (main)", ("--max-queued", "8")),
                                                   ("sized to the fleet", ()))):
                _scheduler(fleet, f"scheduler{n}", *args)
                sweep_id = fleet.start_sweep(
                    f"127.{66 + n}.0.0/16", "--ports", "1999", "--allow-reserved",
                    "--shards", str(shards), "--rate", "5000", "--seed", "5")
                began, most = time.monotonic(), 0
                while fleet.query("SELECT state FROM sweeps WHERE id = $1",
                                  sweep_id) == "running":
                    most = max(most, _heartbeats(client, names)[1])
                    time.sleep(0.05)
                seconds = time.monotonic() - began
                state = fleet.query("SELECT state FROM sweeps WHERE id = $1", sweep_id)
                assert state == "finished", state
                _stop(fleet, f"scheduler{n}")
                found[contender] = (most, seconds, shards)
                print(f"{contender}: {most} busy at most, {seconds:.1f} s", flush=True)
        finally:
            client.close()
            fleet.teardown()
    return found


async def _record_full_plan(url: str, names: Names, sweep_id: str) -> int:
    """Record a full 0.0.0.0/0 sweep as ``sweep start`` does (its spec's own scope is
    0.0.0.0/0: a plan only; every process of the bench runs with the 127.0.0.0/8 scope,
    and no worker consumes the namespace's queues)."""
    spec = SweepSpec(targets=["0.0.0.0/0"], scope=["0.0.0.0/0"], rate=1, name="bench-full",
                     started_at=datetime.now(UTC))
    plan = plan_sweep(spec)
    rows = [state.ShardRow(index=i, queue=group.queue(names),
                           first_exponent=shard.first_exponent,
                           end_exponent=shard.end_exponent)
            for group, shard, i in plan.shard_ids()]
    conn = await asyncpg.connect(url)
    try:
        await state.create_sweep(conn, sweep_id=sweep_id, name=spec.name,
                                 spec=spec.model_dump(mode="json"),
                                 target_count=plan.targets, shards=rows)
    finally:
        await conn.close()
    return len(rows)


async def _queued(url: str, sweep_id: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM sweep_shards WHERE sweep_id = $1"
                                       " AND state = 'queued'", sweep_id))
    finally:
        await conn.close()


def _depth(queue: str) -> int:
    with Connection(BROKER_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            _, ready, _ = channel.queue_declare(queue, passive=True)
            return int(ready)
        except Exception:
            return 0
        finally:
            channel.close()


def _purge(queues: list[str]) -> None:
    with Connection(BROKER_URL, connect_timeout=5) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
                channel.queue_delete(queue)
            except Exception:
                pass
            finally:
                channel.close()


def run_rate(contender: str, code: Path) -> float:
    """Shards/s for one scheduler (its code from *code*) dispatching a full plan."""
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(Path(tmp))
        fleet.env["PYTHONPATH"] = str(code)
        names = Names(fleet.namespace)
        fleet.setup()
        heartbeat = live.Heartbeat(REDIS_URL, names, "bench-synthetic-fleet",
                                   {"queues": [names.probe_queue, names.probe_tls_queue],
                                    "capacity": 60_000})
        heartbeat.start()
        try:
            sweep_id = "sw-benchfull"
            total = asyncio.run(_record_full_plan(fleet.database_url, names, sweep_id))
            assert total == FULL_SHARDS, total
            args = ("--max-queued", "60000") if contender.startswith("main") else ()
            _scheduler(fleet, "scheduler", *args)
            deadline = time.monotonic() + 120
            while "dispatching" not in fleet.log("scheduler"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no scheduler\n{fleet.logs()}")
                time.sleep(0.005)
            began = time.monotonic()
            deadline = began + 600
            while True:
                queued = asyncio.run(_queued(fleet.database_url, sweep_id))
                depth = _depth(names.probe_queue) + _depth(names.probe_tls_queue)
                if queued == total and depth == total:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{queued} queued, {depth} messages\n{fleet.logs()}")
                time.sleep(0.05)
            seconds = time.monotonic() - began
            fleet.cli("sweep", "cancel", sweep_id)
            _stop(fleet, "scheduler")
        finally:
            heartbeat.stop()
            _purge([names.probe_queue, names.probe_tls_queue])
            fleet.teardown()
    rate = total / seconds
    print(f"{contender}: {total:,} shards in {seconds:.2f} s = {rate:,.0f} shards/s",
          flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=24)
    parser.add_argument("--main", type=Path, default=Path("/work/main"),
                        help="a checkout of main for the baselines (default: %(default)s)")
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-rate", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("BROKERSCAN_SCOPE", "127.0.0.0/8")
    if not args.skip_rate:
        rates = {name: run_rate(name, code) for name, code in (
            ("main (--max-queued 60000)", args.main), ("sized", ROOT))}
        print("\nfull 0.0.0.0/0 plan dispatched from PostgreSQL")
        for name, rate in rates.items():
            print(f"  {name:<28}{rate:>10,.0f} shards/s")
    if not args.skip_fleet:
        busy = run_fleet(args.workers)
        print(f"\n{args.workers} solo workers, one sweep")
        for name, (most, seconds, shards) in busy.items():
            print(f"  {name:<22}{most:>4} busy at most   {seconds:6.1f} s for {shards} shards")


if __name__ == "__main__":
    main()
