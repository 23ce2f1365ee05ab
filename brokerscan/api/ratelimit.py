"""Requests per second per token (and, in :class:`Slots`, exports at once per token and per
server): an in-process token bucket for each key (a token's id, or
a client address that keeps presenting bad tokens).

A bucket holds at most *burst* requests and refills at *rate* per second; a request takes
one, and a request that finds the bucket empty is refused with the seconds until one is
back (the ``Retry-After`` of a 429). One process, one set of buckets: a server behind a
load balancer with N processes allows N times the rate (documented in docs/api.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Lanes", "RateLimiter", "Slots"]

#: Buckets kept before idle (full) ones are forgotten.
_PRUNE_AT: Final = 10_000


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


@dataclass
class RateLimiter:
    """*rate* requests per second per key, bursts of up to *burst*; ``rate <= 0``: no
    limit."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float | None:
        """Take one request for *key*: None if allowed, else the seconds to wait."""
        if not self.enabled:
            return None
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.level = min(self.burst, bucket.level + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return None
        return (1.0 - bucket.level) / self.rate

    def charge(self, key: str, requests: float) -> None:
        """Take *requests* more from *key*'s bucket (it may go below empty: the key then
        waits until the refill has paid the debt)."""
        if not self.enabled or requests <= 0:
            return
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.level -= requests

    def _prune(self, now: float) -> None:
        full = [k for k, b in self._buckets.items()
                if b.level + (now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


@dataclass
class Slots:
    """At most *per_key* things at once per key, *total* in all (concurrent exports per
    token and per server); ``take`` and ``give`` never wait."""

    per_key: int
    total: int
    _held: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        return sum(self._held.values())

    def take(self, key: str) -> str | None:
        """Take a slot for *key*: None if taken, else why not."""
        if self._held.get(key, 0) >= self.per_key:
            return f"{self.per_key} at once per token"
        if self.busy >= self.total:
            return f"{self.total} at once on this server"
        self._held[key] = self._held.get(key, 0) + 1
        return None

    def give(self, key: str) -> None:
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


@dataclass
class Lanes:
    """At most *width* requests of one key answered at once; the rest of that key's wait
    their turn (not refused: a dashboard sends several at a time). One token's costly
    queries then queue behind each other instead of taking every read connection."""

    width: int
    _lanes: dict[str, tuple[asyncio.Semaphore, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def lane(self, key: str) -> AsyncIterator[None]:
        semaphore, users = self._lanes.get(key, (asyncio.Semaphore(self.width), 0))
        self._lanes[key] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._lanes[key]
            if users <= 1:
                del self._lanes[key]
            else:
                self._lanes[key] = (semaphore, users - 1)
