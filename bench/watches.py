"""Watches (issue 20): evaluating 100 watches after a sweep over a store of 10^6 services,
and what that evaluation costs the store writer running beside it.

    .venv/bin/python -m bench.readside_data \\
        --store postgresql://127.0.0.1/brokerscan_bench_watches \\
        --services 1000000 --sweeps 2
    .venv/bin/python -m bench.watches --store postgresql://127.0.0.1/brokerscan_bench_watches

The watches: 80 on a /16 each (the /16s of random anonymous MQTT brokers of the store: an
owner's networks), 10 on an AS number (the largest ones), 10 on the whole store (census
queries). Each is evaluated on sweep ``bench-01`` against ``bench-00`` (nine in ten services
seen by each, a different tenth: about a fifth of a watch's services are new or gone).
Nothing is delivered (the events and pending deliveries are recorded, as after a sweep).

The writer: batches of 2,000 results of a new sweep written by ``store.write`` alone, then
the same again while the evaluation runs (a new sweep each time); the ratio of the two
rates is the writer's slowdown.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.readside_data import base_results, sweep_times
from storage.migrate import migrate
from storage.searcher import Searcher
from storage.store import open_store
from storage.watches import create_watch, evaluate_sweep

_GLOBAL = ("protocol:mqtt anonymous:true", "protocol:amqp", "port:1883 tls:false",
           "cert.expired:true", "protocol:mqtt tls:true", "product:mosquitto",
           "amqp.mechanisms:ANONYMOUS", "protocol:mqtt country:DE", "port:8883",
           "protocol:mqtt anonymous:false")
_BATCH = 2000


async def _watches(store: Searcher, count: int) -> None:
    for table in ("watch_deliveries", "watch_events", "watches"):
        await store.fetch(f"DELETE FROM {table}", [])
    rng = random.Random(20)
    sample = await store.fetch(
        "SELECT host(ip) AS ip FROM services WHERE protocol = 'mqtt' AND anonymous "
        "ORDER BY ip LIMIT 20000", [])
    nets = sorted({str(ipaddress.IPv4Network(f"{r['ip']}/16", strict=False))
                   for r in rng.sample(sample, min(len(sample), 400))})
    asns = [int(r["asn"]) for r in await store.fetch(
        "SELECT asn, count(*) FROM services WHERE asn IS NOT NULL GROUP BY asn "
        "ORDER BY 2 DESC LIMIT 10", [])]
    ranges = count * 8 // 10
    by_asn = (count - ranges) // 2
    hook = "http://127.0.0.1:9/never"  # never dialled: nothing is delivered here
    for i, net in enumerate(nets[:ranges]):
        await create_watch(store, f"range-{i:03d}", "protocol:mqtt anonymous:true",
                           networks=[net], webhook_url=hook, secret="bench")
    for i, asn in enumerate(asns[:by_asn]):
        await create_watch(store, f"asn-{i:03d}", "protocol:mqtt anonymous:true",
                           asns=[asn], webhook_url=hook, secret="bench")
    for i in range(count - ranges - by_asn):
        await create_watch(store, f"census-{i:03d}", _GLOBAL[i % len(_GLOBAL)],
                           webhook_url=hook, secret="bench")


async def _write_rate(url: str, sweep: str, batches: int) -> float:
    """Results per second that ``store.write`` takes for *batches* batches."""
    store = await open_store(url)
    started = sweep_times(3)
    results = []
    for n, result in enumerate(base_results(batches * _BATCH, seed=int(sweep[-2:]) + 7)):
        results.append(result.model_copy(update={
            "sweep_id": sweep, "sweep_started_at": started,
            "observed_at": started + timedelta(seconds=n)}))
    try:
        began = time.perf_counter()
        for low in range(0, len(results), _BATCH):
            await store.write(results[low:low + _BATCH])
        return len(results) / (time.perf_counter() - began)
    finally:
        await store.close()


async def run(url: str, count: int, batches: int) -> None:
    await migrate(url)
    store = await open_store(url)
    try:
        await _watches(store, count)
        alone = await _write_rate(url, "bench-w10", batches)
        print(f"writer alone: {alone:,.0f} results/s", flush=True)

        async def evaluate() -> tuple[float, int]:
            began = time.perf_counter()
            events = await evaluate_sweep(store, "bench-01", previous="bench-00")
            return time.perf_counter() - began, len(events)
        (seconds, events), beside = await asyncio.gather(
            evaluate(), _write_rate(url, "bench-w11", batches))
        print(f"{count} watches evaluated in {seconds:.1f} s ({events:,} events); "
              f"writer beside it: {beside:,.0f} results/s ({beside / alone:.2f}x alone)")
        began = time.perf_counter()
        again = await evaluate_sweep(store, "bench-01", previous="bench-00")
        print(f"evaluated again: {time.perf_counter() - began:.1f} s, {len(again)} events")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a database bench.readside_data built")
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument("--batches", type=int, default=40,
                        help=f"writer batches of {_BATCH} per measurement")
    args = parser.parse_args()
    asyncio.run(run(args.store, args.watches, args.batches))


if __name__ == "__main__":
    main()
