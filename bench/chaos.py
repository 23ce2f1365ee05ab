"""Benchmark: the chaos suite (issue 17): a sweep through each fault, against a sweep with none.

    .venv/bin/python bench/chaos.py [--addresses 8192] [--rate 1000] [--cases all]

Every case is a whole fleet of real processes (scheduler, two ``--pool solo`` probe
workers; the PostgreSQL cases add ``enrich-worker`` and ``store-worker``) on a namespace
and a database of its own, sweeping ``--addresses`` loopback addresses (127.59.0.0 up) on
ports 1883 and 5672, with one real Mosquitto among them (the one broker to find).
Services the case breaks are the case's own (tests/chaos.py): a Redis, a RabbitMQ node, a
PostgreSQL cluster, or a fault proxy in front of the machine's RabbitMQ. Cases:

* ``baseline``: no fault (the same run's reference);
* ``worker-kill``: a probe worker killed with -9 mid-sweep, a new one started;
* ``redis-restart``: the fleet's Redis restarted empty (no persistence) mid-sweep;
* ``rabbitmq-outage``: the RabbitMQ node (task broker and results) stopped for 8 s, then
  started again with its data;
* ``rabbitmq-recreated``: the task broker's node recreated without its data (every queued
  shard's message gone; results go to the machine's RabbitMQ);
* ``network-cut``: every connection to RabbitMQ cut once by the fault proxy;
* ``postgres-restart``: the fleet's PostgreSQL stopped (fast shutdown) for 8 s, then
  started again with its data;
* ``postgres-disk-full``: the PostgreSQL cluster's disk (data and WAL on one small tmpfs)
  filled to the last byte by a ballast file for 9 s, then the ballast removed; if
  PostgreSQL stopped for good on the full disk, it is started again (the runbook's step);
* ``postgres-data-disk-full``: the same with the WAL on another disk, so that the server
  stays up and every write that needs space fails (ERROR 53100) for the 9 s.

Per case: lost (targets with no result), duplicated (results published more than once:
rework), whether ``sweep status`` ever counted more probes than targets or more hits
than brokers, whether its final counts are exact (probes = targets, hits = 1 MQTT,
statuses add up), whether the sweep finished, the sweep's wall time, the outage and the
time from the service's return to the sweep's progress again. The PostgreSQL cases also
check what was stored (``stored once``): every target's observation stored exactly once,
counted once in the rollup, and the services stored with a protocol equal to the status's
hits; and that the outage cost no shard an attempt.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402
from tests.chaos import OwnPostgres, OwnRabbit, OwnRedis  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.integration.sweepfleet import Fleet  # noqa: E402

BASE = "127.59"
MOSQUITTO = ("127.59.0.10", 1883)
PORTS = (1883, 5672)
CASES = ("baseline", "worker-kill", "redis-restart", "rabbitmq-outage", "rabbitmq-recreated",
         "network-cut", "postgres-restart", "postgres-disk-full", "postgres-data-disk-full")
POSTGRES_DISK_MB = 160


@dataclass
class Outcome:
    case: str
    lost: int
    duplicated: int
    overcounted: bool
    exact: bool
    finished: bool
    wall: float
    outage: float | None
    recovery: float | None
    stored: bool | None = None  # None: no store-worker in this case
    note: str = ""


class Watcher(threading.Thread):
    """Reads ``sweep status`` over and over; remembers the largest counts it saw."""

    def __init__(self, fleet: Fleet, sweep_id: str, targets: int) -> None:
        super().__init__(daemon=True)
        self.fleet, self.sweep_id, self.targets = fleet, sweep_id, targets
        self.last: dict[str, Any] = {}
        self.overcounted = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            proc = self.fleet.cli("sweep", "status", self.sweep_id, "--format", "json",
                                  check=False)
            if proc.returncode == 0:
                import json

                status = json.loads(proc.stdout)
                self.last = status
                if status["probes"] > self.targets or status["hits"].get("mqtt", 0) > 1 \
                        or sum(status["statuses"].values()) > self.targets:
                    self.overcounted = True
                if status["state"] in ("finished", "failed", "cancelled"):
                    return
            self.done.wait(0.3)

    def probes(self) -> int:
        return int(self.last.get("probes", 0))


def wait(test: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if test():
            return True
        time.sleep(0.2)
    return False


def run_case(case: str, workdir: Path, addresses: int, rate: int) -> Outcome:
    targets = addresses * len(PORTS)
    redis = OwnRedis(workdir / "redis").start() if case == "redis-restart" else None
    rabbit = OwnRabbit(workdir / "rabbit").start() \
        if case in ("rabbitmq-outage", "rabbitmq-recreated") else None
    proxy = FaultProxy("127.0.0.1", 5672, host=servers.allocate("scratch", 0)[0]) \
        if case == "network-cut" else None
    postgres = None
    if case.startswith("postgres-"):
        disk = case.endswith("disk-full")
        postgres = OwnPostgres(workdir / "postgres",
                               disk_mb=POSTGRES_DISK_MB if disk else None,
                               wal_apart=case == "postgres-data-disk-full")
    urls: dict[str, str] = {}
    if redis is not None:
        urls["redis_url"] = redis.url
    if rabbit is not None:
        urls["broker_url"] = rabbit.broker_url
        if case == "rabbitmq-outage":
            urls["results_url"] = rabbit.results_url
    if proxy is not None:
        urls["broker_url"], urls["results_url"] = proxy.url(path="//"), proxy.url()
    if postgres is not None:
        urls["postgres_url"] = postgres.start().url
    fleet = Fleet(workdir / "fleet", **urls)
    (workdir / "fleet").mkdir(parents=True, exist_ok=True)
    fleet.env["BROKERSCAN_SHARD_LOST_SECONDS"] = "15"
    outage = recovery = None
    note: list[str] = []
    try:
        fleet.setup()
        fleet.start_scheduler()
        fleet.start_worker("w1")
        fleet.start_worker("w2")
        if postgres is not None:
            fleet.start_stream()
        wait(lambda: all("ready." in fleet.log(n) for n in ("w1", "w2")), 60)
        began = time.monotonic()
        net = f"{BASE}.0.0/{33 - addresses.bit_length()}"
        sweep_id = fleet.start_sweep(net, "--ports", ",".join(map(str, PORTS)),
                                     "--allow-reserved", "--all", "--rate", str(rate),
                                     "--shards", "8", "--seed", "13",
                                     "--connect-timeout", "1", "--io-timeout", "1",
                                     "--timeout", "3")
        watcher = Watcher(fleet, sweep_id, targets)
        watcher.start()
        wait(lambda: watcher.probes() > targets // 3, 300)
        fault = time.monotonic()
        if case == "worker-kill":
            fleet.kill("w1")
            fleet.start_worker("w3")
        elif case == "redis-restart":
            assert redis is not None
            redis.restart_empty()
        elif case == "rabbitmq-outage":
            assert rabbit is not None
            rabbit.restart(away=8.0)
        elif case == "rabbitmq-recreated":
            assert rabbit is not None
            rabbit.recreate()
        elif case == "network-cut":
            assert proxy is not None
            proxy.cut()
        elif case == "postgres-restart":
            assert postgres is not None
            postgres.restart(away=8.0)
        elif case in ("postgres-disk-full", "postgres-data-disk-full"):
            assert postgres is not None
            note += disk_full(postgres)
        if case != "baseline":
            back = time.monotonic()
            outage = back - fault
            at = watcher.probes()
            wait(lambda: watcher.probes() > at or watcher.last.get("state") == "finished",
                 600)
            recovery = time.monotonic() - back
        watcher.join(timeout=900)
        watcher.done.set()
        wall = time.monotonic() - began
        status = fleet.status(sweep_id)
        seen = fleet.results()
        expected = {f"{sweep_id}|{BASE}.{i >> 8}.{i & 255}|{port}"
                    for i in range(addresses) for port in PORTS}
        lost = len(expected - set(seen))
        duplicated = sum(seen.values()) - len(seen)
        exact = (status["probes"] == targets and status["hits"] == {"mqtt": 1}
                 and sum(status["statuses"].values()) == targets)
        requeued = status.get("requeued", 0)
        if requeued:
            note.append(f"requeued {requeued}")
        stored = None
        if postgres is not None:
            stored = stored_once(fleet, sweep_id, targets, status, note)
        dead = [name for name, proc in fleet.processes.items() if proc.poll() is not None]
        if dead:
            note.append(f"EXITED: {', '.join(dead)}")
        return Outcome(case, lost, duplicated, watcher.overcounted, exact,
                       status["state"] == "finished", wall, outage, recovery, stored,
                       "; ".join(note))
    finally:
        try:
            fleet.teardown()
        finally:
            for service in (redis, rabbit, proxy):
                if service is not None:
                    service.stop()
            if postgres is not None:
                postgres.remove()


def disk_full(postgres: OwnPostgres) -> list[str]:
    """Fill the cluster's disk for 9 s, free it, start PostgreSQL again if it stopped for
    good; what PostgreSQL did, for the note."""
    postgres.fill()
    time.sleep(9.0)  # the fault itself: nothing to wait for
    postgres.free()
    note = []
    log = postgres.log()
    if "PANIC" in log:
        note.append("PostgreSQL PANICked")
    if not postgres.alive():
        note.append("PostgreSQL stopped for good: started again")
        postgres.start()
    else:
        wait(postgres.ready, 120)
    return note


def stored_once(fleet: Fleet, sweep_id: str, targets: int, status: dict[str, Any],
                note: list[str]) -> bool:
    """Wait for the stream to store the sweep; whether it stored every target exactly once
    and the status's hits are the services stored, and no shard spent an attempt."""
    wait(lambda: fleet.stored(sweep_id)["rows"] >= targets, 300)
    stored = fleet.stored(sweep_id)
    attempts = sum(s["attempts"] for s in fleet.shards(sweep_id))
    if attempts:
        note.append(f"ATTEMPTS {attempts}")
    dead = fleet.query("SELECT count(*) FROM sweep_shards WHERE sweep_id = $1"
                       " AND state = 'failed'", sweep_id)
    if dead:
        note.append(f"FAILED SHARDS {dead}")
    return bool(stored["rows"] == stored["keys"] == stored["rollup"] == targets
                and stored["services"] == status["hits"] and attempts == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=8192)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--cases", default="all", help=f"comma-separated, of {CASES}")
    args = parser.parse_args()
    if not 256 <= args.addresses <= 65536 or args.addresses & (args.addresses - 1):
        parser.error("--addresses must be a power of two from 256 to 65536")
    cases = CASES if args.cases == "all" else tuple(c.strip() for c in args.cases.split(","))
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)} (of {', '.join(CASES)})")
    mosquitto_dir = Path(tempfile.mkdtemp(prefix="chaos-mq-"))
    mosquitto = servers.start_mosquitto(mosquitto_dir, *MOSQUITTO)
    targets = args.addresses * len(PORTS)
    print(f"{targets:,} targets ({args.addresses:,} addresses x {len(PORTS)} ports), "
          f"rate {args.rate}/s, 2 probe workers")
    print("| case | lost | duplicated (rework) | status overcounted | counts exact | finished "
          "| stored once | wall s | outage s | recovery s | note |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for case in cases:
            with tempfile.TemporaryDirectory(prefix=f"chaos-{case}-") as tmp:
                o = run_case(case, Path(tmp), args.addresses, args.rate)
            print(f"| {o.case} | {o.lost} | {o.duplicated} ({100 * o.duplicated / targets:.2f}%)"
                  f" | {'YES' if o.overcounted else 'no'} | {'yes' if o.exact else 'NO'}"
                  f" | {'yes' if o.finished else 'NO'}"
                  f" | {'-' if o.stored is None else 'yes' if o.stored else 'NO'}"
                  f" | {o.wall:.1f}"
                  f" | {'-' if o.outage is None else f'{o.outage:.1f}'}"
                  f" | {'-' if o.recovery is None else f'{o.recovery:.1f}'} | {o.note} |",
                  flush=True)
    finally:
        mosquitto.stop()
        shutil.rmtree(mosquitto_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
