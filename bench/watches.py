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

In order: the one pass (:func:`storage.watcheval.evaluate_sweep`) alone, then again (all
recorded already); the writer alone; the one pass beside the writer; then the baseline,
the per-watch path this replaced (:func:`per_watch_found`: ``diff_sweeps`` per watch,
finding only, no recording) over ``--baseline K`` of the watches in the same mix, scaled to
all of them (``--baseline 0``: all; at 10^6 that is several minutes).

The writer: batches of 2,000 results of a new sweep written by ``store.write`` in a process
of its own (as the storage worker is), alone, then the same again while evaluations run
back to back for as long as it writes (the first records the events, the next find them
recorded); the ratio of the two rates is the writer's slowdown. Every line
ends with the load average: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.readside_data import base_results, sweep_times
from storage.census import diff_sweeps
from storage.migrate import migrate
from storage.searcher import Searcher
from storage.store import open_store
from storage.watches import Watch, create_watch, effective_query, list_watches
from storage.watcheval import evaluate_sweep

_GLOBAL = ("protocol:mqtt anonymous:true", "protocol:amqp", "port:1883 tls:false",
           "cert.expired:true", "protocol:mqtt tls:true", "product:mosquitto",
           "amqp.mechanisms:ANONYMOUS", "protocol:mqtt country:DE", "port:8883",
           "protocol:mqtt anonymous:false")
_BATCH = 2000
_ROOT = Path(__file__).resolve().parents[1]


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


async def _child(url: str, sweep: str, batches: int) -> None:
    """The writer: make *batches* batches of a new sweep, say ``ready``, write them with
    ``store.write`` and print the results per second."""
    started = sweep_times(3)
    results = []
    for n, result in enumerate(base_results(batches * _BATCH, seed=int(sweep[-2:]) + 7)):
        results.append(result.model_copy(update={
            "sweep_id": sweep, "sweep_started_at": started,
            "observed_at": started + timedelta(seconds=n)}))
    store = await open_store(url)
    try:
        print("ready", flush=True)
        began = time.perf_counter()
        for low in range(0, len(results), _BATCH):
            await store.write(results[low:low + _BATCH])
        print(len(results) / (time.perf_counter() - began), flush=True)
    finally:
        await store.close()


async def _write_rate(url: str, sweep: str, batches: int, ready: asyncio.Event) -> float:
    """:func:`_write` in a process of its own (as the storage worker is): it signals
    *ready* once its results are made, just before it writes."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.watches", "--store", url, "--write-only", sweep,
        "--batches", str(batches), stdout=asyncio.subprocess.PIPE,
        cwd=_ROOT)
    assert proc.stdout is not None
    await proc.stdout.readline()  # "ready"
    ready.set()
    line = await proc.stdout.readline()
    if await proc.wait() != 0:
        raise RuntimeError("the writer process failed")
    return float(line)


async def per_watch_found(store: Searcher, watch: Watch, a: str,
                          b: str) -> set[tuple[str, str, str, int, str]]:
    """What the per-watch evaluation (before issue 20's one pass) found for *watch*:
    ``diff_sweeps`` under its effective query, and again with ``cert.expired:true`` for
    ``certificates``. The baseline of this benchmark and the reference of the tests."""
    node = effective_query(watch.query, watch.networks, watch.asns)
    diff = await diff_sweeps(store, a, b, node, limit=10**7)
    changes = {(c.ip, c.port): c.changes for c in diff.changed}
    found = [*(("new", k) for k in diff.new), *(("gone", k) for k in diff.gone),
             *(("now_matching", k) for k in diff.now_matching),
             *(("stopped_matching", k) for k in diff.stopped_matching)]
    if watch.certificates:
        node = effective_query(watch.query, watch.networks, watch.asns,
                               also="cert.expired:true")
        certs = await diff_sweeps(store, a, b, node, limit=10**7)
        found += [("certificate_expired", k) for k in (*certs.new, *certs.now_matching)]
    return {(watch.name, kind, ip, port, str(changes.get((ip, port), "")))
            for kind, (ip, port) in found}


async def _clear_events(store: Searcher) -> None:
    for table in ("watch_deliveries", "watch_events"):
        await store.fetch(f"DELETE FROM {table}", [])


async def _baseline(store: Searcher, sample: int) -> None:
    """The per-watch path's finding (no recording) over *sample* watches in the same mix
    as all of them (0: all), scaled to all."""
    watches = await list_watches(store)
    if 0 < sample < len(watches):
        step = len(watches) / sample
        chosen = [watches[int(i * step)] for i in range(sample)]
    else:
        chosen = watches
    began = time.perf_counter()
    found: set[tuple[str, str, str, int, str]] = set()
    for watch in chosen:
        found |= await per_watch_found(store, watch, "bench-00", "bench-01")
    seconds = time.perf_counter() - began
    names = {w.name for w in chosen}
    recorded = {(str(r["watch"]), str(r["kind"]), str(r["ip"]), int(r["port"]))
                for r in await store.fetch("SELECT watch, kind, ip, port FROM watch_events "
                                           "WHERE sweep_id = 'bench-01'", [])
                if r["watch"] in names}
    if recorded != {item[:4] for item in found}:
        raise SystemExit("the one pass and the per-watch path disagree")
    scale = len(watches) / len(chosen)
    print(f"baseline (per-watch diff_sweeps, finding only): {len(chosen)} of {len(watches)} "
          f"watches in {seconds:.1f} s ({len(found):,} events, the same as the one pass): "
          f"{seconds * scale:.1f} s for all {len(watches)}"
          f"{' (scaled)' if scale > 1 else ''}  [{_load()}]", flush=True)


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(url: str, count: int, batches: int, sample: int) -> None:
    await migrate(url)
    store = await open_store(url)
    try:
        await _watches(store, count)
        print(f"[{_load()}]", flush=True)
        began = time.perf_counter()
        events = await evaluate_sweep(store, "bench-01", previous="bench-00")
        print(f"one pass, alone: {count} watches in {time.perf_counter() - began:.1f} s "
              f"({len(events):,} events)  [{_load()}]", flush=True)
        began = time.perf_counter()
        again = await evaluate_sweep(store, "bench-01", previous="bench-00")
        print(f"one pass, evaluated again: {time.perf_counter() - began:.1f} s "
              f"({len(again)} events)  [{_load()}]", flush=True)
        await _clear_events(store)

        alone = await _write_rate(url, "bench-w10", batches, asyncio.Event())
        print(f"writer alone: {alone:,.0f} results/s  [{_load()}]", flush=True)
        ready = asyncio.Event()
        writer = asyncio.create_task(_write_rate(url, "bench-w11", batches, ready))
        await ready.wait()
        times, first = [], 0
        while not writer.done():  # back to back for as long as the writer writes
            began = time.perf_counter()
            events = await evaluate_sweep(store, "bench-01", previous="bench-00")
            times.append(time.perf_counter() - began)
            first = first or len(events)
        beside = await writer
        print(f"one pass beside the writer, back to back while it wrote: {len(times)} "
              f"evaluations, the first {times[0]:.1f} s ({first:,} events), mean "
              f"{sum(times) / len(times):.1f} s; writer beside them: {beside:,.0f} "
              f"results/s ({beside / alone:.2f}x alone)  [{_load()}]", flush=True)
        if sample >= 0:
            await _baseline(store, sample)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a database bench.readside_data built")
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument("--batches", type=int, default=40,
                        help=f"writer batches of {_BATCH} per measurement")
    parser.add_argument("--baseline", type=int, default=10, metavar="K",
                        help="time the per-watch path on K of the watches (same mix), "
                             "scaled; 0: all of them; -1: not at all")
    parser.add_argument("--write-only", metavar="SWEEP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_only:  # the writer's process (see _write_rate)
        asyncio.run(_child(args.store, args.write_only, args.batches))
        return
    asyncio.run(run(args.store, args.watches, args.batches, args.baseline))


if __name__ == "__main__":
    main()
