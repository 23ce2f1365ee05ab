"""Rate budgets: how many connection starts a worker may make now.

SAFETY.md guard 4 asks for *one* packets-per-second budget for the whole fleet. Celery's
``rate_limit`` is per worker, so the budget lives in Redis instead: one bucket per sweep
(key ``Names.sweep_rate(sweep_id)``), shared by every worker process of the sweep.

The bucket is a GCRA (generic cell rate algorithm), the "virtual scheduling" form of a
token bucket, run as one Lua script so that each request is atomic and costs one round
trip. Its state is a hash:

``rate``
    tokens per second; ``0`` means unlimited. :meth:`FleetRateLimiter.set_rate` changes it
    mid-sweep and every worker follows on its next request.
``tat``
    the *theoretical arrival time* (microseconds, Redis clock) of the next free token.

A request for ``n`` tokens at Redis time ``now`` moves ``tat`` to
``max(tat, now) + n / rate`` and tells the caller to wait until ``tat - burst`` before it
uses them. Hence, between any two instants ``t0 < t1``, the tokens handed out are at most
``rate * (t1 - t0) + rate * burst`` whatever the number of workers; and because ``tat``
never lags ``now`` there is nothing to hoard: an idle worker holds no tokens, a bucket
left idle allows at most ``burst`` worth at once. The clock is Redis's ``TIME`` (allowed in
scripts since Redis 7 replicates effects, not scripts), so workers' clocks do not matter.
A grant is a reservation at most ``max_wait`` ahead; so after a rate change the old rate
runs out within ``max_wait``. Each worker asks for about 20 ms of the fleet rate at a time,
which bounds its Redis round trips to about 50 a second whatever the rate.

:class:`LocalRateLimiter` is the same algorithm in process (a local scan, or a test), and
:class:`RateLimiter` is the one interface the engine speaks.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol, runtime_checkable

from redis.asyncio import Redis

__all__ = ["CHUNK_SECONDS", "FleetRateLimiter", "LocalRateLimiter", "RateLimiter"]

#: A worker asks for this much of the fleet rate at a time (so ~50 round trips/s at most).
CHUNK_SECONDS = 0.02

# KEYS[1]: the bucket hash. ARGV: wanted, rate to use if the hash has none, burst (us),
# max_wait (us), idle TTL (ms). Returns {granted, wait_us, rate}: granted >= 1 means "use
# them after wait_us"; granted == 0 means "ask again after wait_us".
_BUCKET_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local wanted = tonumber(ARGV[1])
local rate_text = redis.call('HGET', key, 'rate')
if not rate_text then
  rate_text = ARGV[2]
  redis.call('HSET', key, 'rate', rate_text)
end
redis.call('PEXPIRE', key, ARGV[5])
local rate = tonumber(rate_text)
if rate <= 0 then
  return {wanted, 0, rate_text}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local burst = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local per = 1000000 / rate
local tat = tonumber(redis.call('HGET', key, 'tat') or now)
if tat < now or tat > now + burst + max_wait + 1000000 then
  -- idle (nothing to hoard), or Redis's clock stepped back: start from now
  tat = now
end
local room = math.floor((now + burst + max_wait - tat) / per)
if room < 1 then
  return {0, math.ceil(tat + per - burst - max_wait - now), rate_text}
end
local n = math.min(wanted, room)
local new_tat = tat + n * per
redis.call('HSET', key, 'tat', string.format('%.17g', new_tat))
local wait = new_tat - burst - now
if wait < 0 then wait = 0 end
return {n, math.ceil(wait), rate_text}
"""


@runtime_checkable
class RateLimiter(Protocol):
    """What the engine needs from a rate budget."""

    async def acquire(self, wanted: int) -> int:
        """Wait until some connection starts are allowed; return how many (1..wanted).

        :param wanted: how many the caller could start now (at least 1).
        """
        ...


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"rate must be a finite number >= 0 (0: unlimited), not {rate!r}")
    return rate


def _check_wanted(wanted: int) -> None:
    if wanted < 1:
        raise ValueError(f"acquire wants at least 1, not {wanted!r}")


def _chunk_for(rate: float, chunk: int | None) -> int:
    if chunk is not None:
        return chunk
    return max(1, int(rate * CHUNK_SECONDS))


class FleetRateLimiter:
    """One sweep's fleet-wide budget, shared through a Redis hash by every worker.

    Create one per worker process (inside its event loop) and call :meth:`acquire` before
    each batch of connection starts. Redis errors propagate to the caller.

    :param redis: an asyncio Redis client (``decode_responses`` either way).
    :param key: the bucket's key, ``Names.sweep_rate(sweep_id)``.
    :param rate: tokens per second for the whole fleet, ``0`` for unlimited. Used only when
        the bucket has no rate yet; once it has one (the first worker's, or
        :meth:`set_rate`'s) that rate wins.
    :param burst_seconds: how much of the rate may go at once after an idle spell.
    :param chunk: tokens to ask for at a time; default :data:`CHUNK_SECONDS` of the rate.
    :param max_wait: the furthest ahead (seconds) a grant may be reserved.
    :param idle_ttl: seconds after which an unused bucket (and its rate) expires.
    """

    def __init__(self, redis: Redis, key: str, rate: float, *,
                 burst_seconds: float = 0.05, chunk: int | None = None,
                 max_wait: float = 1.0, idle_ttl: float = 7 * 86400) -> None:
        if not (math.isfinite(burst_seconds) and burst_seconds >= 0):
            raise ValueError(f"burst_seconds must be >= 0, not {burst_seconds!r}")
        if not (math.isfinite(max_wait) and max_wait > 0):
            raise ValueError(f"max_wait must be > 0, not {max_wait!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1, not {chunk!r}")
        if not idle_ttl >= 1:
            raise ValueError(f"idle_ttl must be >= 1 s, not {idle_ttl!r}")
        self._redis = redis
        self._key = key
        self._default = repr(_check_rate(rate))
        self._rate = float(self._default)
        self._chunk = chunk
        self._args = (round(burst_seconds * 1e6), round(max_wait * 1e6), round(idle_ttl * 1000))
        self._script = redis.register_script(_BUCKET_LUA)
        self._unlimited_until = 0.0

    @property
    def key(self) -> str:
        """The bucket's Redis key."""
        return self._key

    @property
    def rate(self) -> float:
        """The fleet rate as last seen in the bucket (the constructor's before that)."""
        return self._rate

    async def acquire(self, wanted: int) -> int:
        """Wait until the fleet budget allows some connection starts; return how many.

        Sleeps (never spins) for as long as the bucket needs to refill the grant. An
        unlimited bucket (rate 0) is re-read at most every 0.5 s, so a limit set
        mid-sweep applies within a second.

        :param wanted: how many the caller could start now (at least 1).
        :returns: between 1 and ``wanted``.
        """
        _check_wanted(wanted)
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._unlimited_until:
                return wanted
            ask = min(wanted, _chunk_for(self._rate, self._chunk))
            reply = await self._script(keys=[self._key], args=[ask, self._default, *self._args])
            granted, wait_us, rate_text = int(reply[0]), int(reply[1]), reply[2]
            self._rate = float(rate_text)
            if self._rate <= 0:
                self._unlimited_until = loop.time() + 0.5
                return wanted
            if wait_us > 0:
                await asyncio.sleep(wait_us / 1e6)
            if granted >= 1:
                return min(granted, wanted)

    async def set_rate(self, rate: float) -> None:
        """Change the fleet rate (tokens per second, 0 unlimited); workers follow at once.

        :param rate: the new rate.
        """
        text = repr(_check_rate(rate))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, "rate", text)
            pipe.pexpire(self._key, self._args[2])
            await pipe.execute()
        self._rate = float(text)
        self._unlimited_until = 0.0

    async def delete(self) -> None:
        """Remove the bucket (at the end of a sweep)."""
        await self._redis.delete(self._key)


class LocalRateLimiter:
    """The same budget inside one process: a local scan, or one worker on its own.

    :param rate: tokens per second; ``0`` for unlimited.
    :param burst_seconds: how much of the rate may go at once after an idle spell.
    :param chunk: most tokens per grant; default :data:`CHUNK_SECONDS` of the rate.
    """

    def __init__(self, rate: float, *, burst_seconds: float = 0.05,
                 chunk: int | None = None) -> None:
        if not (math.isfinite(burst_seconds) and burst_seconds >= 0):
            raise ValueError(f"burst_seconds must be >= 0, not {burst_seconds!r}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1, not {chunk!r}")
        self.rate = _check_rate(rate)
        self._burst = burst_seconds
        self._chunk = _chunk_for(self.rate, chunk)
        self._tat = 0.0

    async def acquire(self, wanted: int) -> int:
        """Wait until the budget allows some connection starts; return how many.

        :param wanted: how many the caller could start now (at least 1).
        :returns: between 1 and ``wanted``.
        """
        _check_wanted(wanted)
        if self.rate <= 0:
            return wanted
        n = min(wanted, self._chunk)
        now = time.monotonic()
        # Reserve before the first await, so concurrent callers queue up in order.
        self._tat = max(self._tat, now) + n / self.rate
        wait = self._tat - self._burst - now
        if wait > 0:
            await asyncio.sleep(wait)
        return n
