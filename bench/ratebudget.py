"""Benchmark: how much of its rate the fleet rate budget hands out, against the in-process
limiter in the same run.

    .venv/bin/python bench/ratebudget.py [--rate 2000] [--seconds 2] [--rounds 2]

tests/integration/test_ratebudget.py checks the budget is never exceeded (``rate * time +
burst``) and that a limiter is not starved; how close to the whole rate it gets is a speed
figure, measured here. Contenders, each draining its limiter with 3 tasks asking for up to
1,000 tokens for ``--seconds``:

* ``local``: :class:`~workers.ratebudget.LocalRateLimiter`, no Redis (the baseline);
* ``fleet-1``: :class:`~workers.ratebudget.FleetRateLimiter` on the machine's Redis, one
  process;
* ``fleet-3``: three processes sharing one bucket (what a fleet does);
* ``changed``: one process whose limiter was built with 5x the rate after
  :meth:`~workers.ratebudget.FleetRateLimiter.set_rate` lowered the bucket's (a task queued
  before an operator's change).

Utilisation is granted / (rate x elapsed + burst); elapsed is Redis time for the fleet and
the monotonic clock for ``local``. Rounds alternate the contenders; the best round counts.
Every bucket lives under a throwaway namespace, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.asyncio import Redis

from tests.services import REDIS_URL, delete_redis_keys, new_names
from workers.ratebudget import FleetRateLimiter, LocalRateLimiter, RateLimiter

BURST = 0.05


async def drain(limiter: RateLimiter, seconds: float, tasks: int = 3) -> int:
    """Acquire from ``tasks`` concurrent tasks for ``seconds``; the tokens granted."""
    end = time.monotonic() + seconds
    granted = [0] * tasks

    async def one(i: int) -> None:
        while time.monotonic() < end:
            granted[i] += await limiter.acquire(1000)

    await asyncio.gather(*(one(i) for i in range(tasks)))
    return sum(granted)


async def redis_now(client: Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def fleet_drain(key: str, rate: float, seconds: float) -> tuple[int, float, float]:
    """(granted, Redis start, Redis end) of one process draining the bucket ``key``."""
    client = Redis.from_url(REDIS_URL)
    try:
        limiter = FleetRateLimiter(client, key, rate, burst_seconds=BURST)
        start = await redis_now(client)
        granted = await drain(limiter, seconds)
        return granted, start, await redis_now(client)
    finally:
        await client.aclose()


def child(key: str, rate: float, seconds: float, go: object, out: object) -> None:
    go.wait(60)  # type: ignore[attr-defined]
    out.put(asyncio.run(fleet_drain(key, rate, seconds)))  # type: ignore[attr-defined]


def fleet(key: str, rate: float, seconds: float, count: int) -> tuple[int, float]:
    """``count`` processes on one bucket: (granted, Redis seconds from first start to
    last end)."""
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=child, args=(key, rate, seconds, go, out))
             for _ in range(count)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let the interpreters start before the clock does
    go.set()
    reports = [out.get(True, 60) for _ in procs]
    for proc in procs:
        proc.join(10)
    elapsed = max(r[2] for r in reports) - min(r[1] for r in reports)
    return sum(r[0] for r in reports), elapsed


async def changed(key: str, rate: float, seconds: float) -> tuple[int, float]:
    client = Redis.from_url(REDIS_URL)
    try:
        first = FleetRateLimiter(client, key, rate * 5, burst_seconds=BURST)
        await first.acquire(1)
        await first.set_rate(rate)
        stale = FleetRateLimiter(client, key, rate * 5, burst_seconds=BURST)
        start = await redis_now(client)
        granted = await drain(stale, seconds)
        return granted, await redis_now(client) - start
    finally:
        await client.aclose()


async def local(rate: float, seconds: float) -> tuple[int, float]:
    limiter = LocalRateLimiter(rate, burst_seconds=BURST)
    start = time.monotonic()
    granted = await drain(limiter, seconds)
    return granted, time.monotonic() - start


def measure(name: str, key: str, rate: float, seconds: float) -> tuple[int, float]:
    """(granted, elapsed) of contender ``name`` on the bucket ``key``."""
    if name == "local":
        return asyncio.run(local(rate, seconds))
    if name == "changed":
        return asyncio.run(changed(key, rate, seconds))
    return fleet(key, rate, seconds, int(name.removeprefix("fleet-")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    names = new_names()
    best: dict[str, float] = {}
    try:
        for round_ in range(args.rounds):
            for name in ("local", "fleet-1", "fleet-3", "changed"):
                key = names.sweep_rate(f"{name}-{round_}")
                granted, elapsed = measure(name, key, args.rate, args.seconds)
                used = granted / (args.rate * (elapsed + BURST))
                best[name] = max(best.get(name, 0.0), used)
    finally:
        async def clean() -> None:
            client = Redis.from_url(REDIS_URL)
            await delete_redis_keys(client, names)
            await client.aclose()

        asyncio.run(clean())
    print(f"rate {args.rate:,.0f}/s for {args.seconds} s, best of {args.rounds} rounds")
    print(f"{'contender':<10}{'of the rate':>12}{'x local':>9}")
    for name, used in best.items():
        print(f"{name:<10}{used:>12.1%}{used / best['local']:>9.2f}")


if __name__ == "__main__":
    main()
