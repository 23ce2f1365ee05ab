"""Benchmark: target generation speed of a shard, and the cost of planning a full sweep.

    .venv/bin/python bench/shards.py [--targets 3000000] [--repeat 3] [--plan-shards 65536]

Pure computation, no sockets. The target space is 0.0.0.0/0 minus the default blocklist,
times the four default ports (about 1.48e10 targets). Measured, each in one process:

* walk: target indices from :func:`scheduler.shards.iter_shard`;
* full: ``(ip, PortSpec)`` pairs from :func:`scheduler.shards.shard_targets`;
* full, many ranges: the same over sets with 2,000 and 10,000 random opt-out /24s, too
  many ranges for the ports x ranges table, so they take the ranges-only path (``divmod``
  plus bisect);
* plan: best time, then (in a separate, traced run) peak and retained memory of
  :func:`scheduler.shards.plan_shards`.

Rates are targets/s consumed by a plain ``for`` loop (what a worker does), and by a
C-level drain (``deque(maxlen=0)``) to show the generator's own ceiling. Best and median of
``--repeat`` runs are printed; the machine may be shared, so trust the best.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from itertools import islice

from scheduler.blocklist import IPSet, default_blocklist
from scheduler.ports import DEFAULT_PORTS, parse_ports
from scheduler.shards import expected_targets, iter_shard, plan_shards, shard_targets

SEED = 20240601


def loop_rate(make: Callable[[], Iterator[object]], count: int) -> float:
    it = islice(make(), count)
    began = time.perf_counter()
    seen = 0
    for _ in it:
        seen += 1
    elapsed = time.perf_counter() - began
    assert seen == count, (seen, count)
    return seen / elapsed


def drain_rate(make: Callable[[], Iterator[object]], count: int) -> float:
    it = islice(make(), count)
    began = time.perf_counter()
    deque(it, maxlen=0)
    return count / (time.perf_counter() - began)


def report(label: str, make: Callable[[], Iterator[object]], count: int, repeat: int) -> None:
    loops = [loop_rate(make, count) for _ in range(repeat)]
    drains = [drain_rate(make, count) for _ in range(repeat)]
    print(f"{label:<34} for-loop best {max(loops) / 1e6:5.2f} M/s "
          f"(median {statistics.median(loops) / 1e6:5.2f}), "
          f"drain best {max(drains) / 1e6:5.2f} M/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=3_000_000, help="targets per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plan-shards", type=int, default=65_536)
    args = parser.parse_args()

    ports = parse_ports(DEFAULT_PORTS)
    ips = IPSet.all() - default_blocklist()
    n = ips.size * len(ports)
    print(f"target space: {ips.size:,} addresses ({len(ips.ranges)} ranges) x {len(ports)} "
          f"ports = {n:,} targets")

    timings = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        plan = plan_shards(n, args.plan_shards, SEED)
        timings.append(time.perf_counter() - began)
        del plan
    elapsed = min(timings)
    tracemalloc.start()  # a separate run: tracing slows allocation several-fold
    plan = plan_shards(n, args.plan_shards, SEED)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    perm = plan[0].permutation
    message = json.dumps(plan[1].to_dict())
    print(f"plan {args.plan_shards:,} shards: {elapsed * 1e3:.0f} ms, traced peak "
          f"{peak / 2**20:.1f} MiB, retained {retained / 2**20:.1f} MiB; p={perm.prime}, "
          f"g={perm.generator}; ~{expected_targets(plan[1]):,.0f} targets/shard; "
          f"message {len(message)} bytes")

    # A coarser plan so that one shard holds more than --targets targets.
    big = plan_shards(n, 1024, SEED)
    shard = big[random.Random(SEED).randrange(len(big))]
    count = args.targets
    report("walk (iter_shard)", lambda: iter_shard(shard), count, args.repeat)
    report("full (shard_targets)", lambda: shard_targets(shard, None, ips, ports), count,
           args.repeat)

    rng = random.Random(SEED)
    for opt_outs in (2_000, 10_000):
        bases = {rng.randrange(1 << 24) for _ in range(opt_outs)}
        many = ips - IPSet([(base << 8, base << 8 | 255) for base in bases])
        many_shard = plan_shards(many.size * len(ports), 1024, SEED)[shard.index]
        report(f"full, {len(many.ranges)} ranges (by port)",
               partial(shard_targets, many_shard, None, many, ports), count, args.repeat)


if __name__ == "__main__":
    main()
