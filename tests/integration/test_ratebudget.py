"""The fleet rate budget against a real Redis: several real processes share one bucket and
together stay within ``rate * time + burst``; one process alone is not held back; a rate
change reaches every worker; grants are always 1..wanted. Bounds, not benchmarks.

Time is Redis's clock (``TIME``), the one the bucket uses, so the upper bound is exact.
The lower bounds (:data:`NOT_STARVED` of the rate) only catch a limiter that starves its
callers: on a loaded machine a late wake-up loses tokens, so how close to the whole rate a
limiter gets is a speed figure, measured by bench/ratebudget.py against the in-process
limiter.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import pytest
from redis.asyncio import Redis

from tests.services import REDIS_URL
from workers.ratebudget import FleetRateLimiter, LocalRateLimiter, RateLimiter

pytestmark = pytest.mark.integration

BURST = 0.05
#: The share of the rate below which a limiter starves its callers (not a speed claim).
NOT_STARVED = 0.5


async def redis_now(client: Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


async def drain(limiter: RateLimiter, seconds: float, wanted: int, tasks: int = 2) -> int:
    """Acquire from ``tasks`` concurrent tasks until ``seconds`` have passed; the total."""
    end = time.monotonic() + seconds
    granted = [0] * tasks

    async def one(i: int) -> None:
        while time.monotonic() < end:
            got = await limiter.acquire(wanted)
            assert 1 <= got <= wanted
            granted[i] += got

    await asyncio.gather(*(one(i) for i in range(tasks)))
    return sum(granted)


# -- several processes ------------------------------------------------------------------


def child(key: str, rate: float, seconds: float, ready, go, out) -> None:
    """One worker process: drains the bucket after ``go``; reports (granted, start, end)."""

    async def main() -> tuple[int, float, float]:
        client = Redis.from_url(REDIS_URL)
        try:
            limiter = FleetRateLimiter(client, key, rate, burst_seconds=BURST)
            await client.ping()
            ready.release()
            await asyncio.to_thread(go.wait, 60)
            start = await redis_now(client)
            granted = await drain(limiter, seconds, wanted=1000, tasks=3)
            return granted, start, await redis_now(client)
        finally:
            await client.aclose()

    out.put(asyncio.run(main()))


async def run_processes(key: str, rate: float, seconds: float,
                        count: int) -> tuple[int, float]:
    """Start ``count`` processes on one bucket; (total granted, Redis seconds elapsed).

    The elapsed time runs from the first process's start to the last one's end, in Redis
    time: the bucket's first ``tat`` is no earlier, and every grant was used by the end.
    """
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=child, args=(key, rate, seconds, ready, go, out))
             for _ in range(count)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            assert await asyncio.to_thread(ready.acquire, True, 60)
        go.set()
        reports = [await asyncio.to_thread(out.get, True, 60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    for p in procs:
        assert p.exitcode == 0
    elapsed = max(end for _, _, end in reports) - min(start for _, start, _ in reports)
    return sum(granted for granted, _, _ in reports), elapsed


async def test_processes_together_stay_within_rate_times_time_plus_burst(redis, names):
    rate = 2000.0
    granted, elapsed = await run_processes(names.sweep_rate("s1"), rate, 3.0, count=3)
    allowed = rate * elapsed + rate * BURST
    print(f"3 processes: granted {granted} in {elapsed:.3f} s, allowed {allowed:.0f}")  # noqa: T201
    assert granted <= allowed + 1
    assert granted >= NOT_STARVED * allowed


async def test_one_process_alone_gets_the_whole_rate(redis, names):
    rate = 2000.0
    granted, elapsed = await run_processes(names.sweep_rate("s1"), rate, 2.0, count=1)
    allowed = rate * elapsed + rate * BURST
    assert NOT_STARVED * allowed <= granted <= allowed + 1


# -- in one process -----------------------------------------------------------------------


async def test_grants_are_between_one_and_wanted(redis, names):
    rng = random.Random(3)
    fleet = FleetRateLimiter(redis, names.sweep_rate("s1"), 400)
    tiny = FleetRateLimiter(redis, names.sweep_rate("s2"), 5)  # burst below one token
    local = LocalRateLimiter(400)
    for limiter in (fleet, local):
        for _ in range(60):
            wanted = rng.choice([1, 2, 7, 50, 10_000])
            assert 1 <= await limiter.acquire(wanted) <= wanted
    assert await tiny.acquire(3) == 1
    for limiter in (fleet, local):
        with pytest.raises(ValueError):
            await limiter.acquire(0)
    with pytest.raises(ValueError):
        FleetRateLimiter(redis, names.sweep_rate("s3"), -1)
    with pytest.raises(ValueError):
        LocalRateLimiter(float("nan"))


async def test_idle_time_is_not_hoarded(redis, names):
    rate = 1000.0
    limiter = FleetRateLimiter(redis, names.sweep_rate("s1"), rate, burst_seconds=BURST)
    await limiter.acquire(1)
    await asyncio.sleep(1.0)  # the scenario: a second idle; at most the burst may go at once
    t0 = await redis_now(redis)
    granted = await drain(limiter, 0.3, wanted=1000)
    elapsed = await redis_now(redis) - t0
    assert granted <= rate * elapsed + rate * BURST + 1


async def test_a_rate_change_reaches_workers_built_with_another_rate(redis, names):
    key = names.sweep_rate("s1")
    first = FleetRateLimiter(redis, key, 1000)
    await first.acquire(1)
    await first.set_rate(500)
    stale = FleetRateLimiter(redis, key, 5000)  # e.g. a task queued before the change
    t0 = await redis_now(redis)
    granted = await drain(stale, 1.5, wanted=1000)
    elapsed = await redis_now(redis) - t0
    assert stale.rate == 500
    assert NOT_STARVED * 500 * elapsed <= granted <= 500 * (elapsed + BURST) + 1


async def test_a_rate_change_mid_sweep_is_followed_within_a_second(redis, names):
    key = names.sweep_rate("s1")
    workers = [FleetRateLimiter(redis, key, 3000) for _ in range(3)]
    control = FleetRateLimiter(redis, key, 3000)
    stamps: list[tuple[float, int]] = []
    end = time.monotonic() + 3.0

    async def worker(limiter: FleetRateLimiter) -> None:
        while time.monotonic() < end:
            got = await limiter.acquire(100)
            stamps.append((time.monotonic(), got))

    async def operator() -> None:
        await asyncio.sleep(1.0)  # the scenario: the operator changes the rate after a second
        await control.set_rate(600)

    start = time.monotonic()
    await asyncio.gather(operator(), *(worker(w) for w in workers))
    # From one second after the change (max_wait) to the end: the new rate, at most.
    window = [(t, n) for t, n in stamps if start + 2.0 <= t < end]
    span = end - (start + 2.0)
    assert sum(n for _, n in window) <= 600 * (span + BURST) + 100
    assert sum(n for _, n in window) >= NOT_STARVED * 600 * span
    assert all(w.rate == 600 for w in workers)


async def test_unlimited_rate_grants_everything_and_a_limit_applies_later(redis, names):
    key = names.sweep_rate("s1")
    limiter = FleetRateLimiter(redis, key, 0)
    assert await limiter.acquire(12345) == 12345
    await FleetRateLimiter(redis, key, 0).set_rate(100)
    await asyncio.sleep(0.6)  # the scenario: past the 0.5 s an unlimited answer is trusted
    assert await limiter.acquire(12345) <= 100
    assert limiter.rate == 100


# -- the local limiter ---------------------------------------------------------------------


async def test_local_limiter_keeps_the_same_bound():
    rate = 2000.0
    limiter = LocalRateLimiter(rate, burst_seconds=BURST)
    t0 = time.monotonic()
    granted = await drain(limiter, 1.5, wanted=1000, tasks=3)
    elapsed = time.monotonic() - t0
    assert NOT_STARVED * rate * elapsed <= granted <= rate * (elapsed + BURST) + 1


async def test_local_limiter_rate_zero_is_unlimited():
    limiter = LocalRateLimiter(0)
    assert await limiter.acquire(10**6) == 10**6
    assert isinstance(limiter, RateLimiter)
