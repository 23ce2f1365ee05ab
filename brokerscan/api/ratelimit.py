"""Requests per second per token (and, in :class:`Slots`, exports at once per token and per
server; in :class:`Lanes`, requests at once per token; in :class:`Admission`, costly
requests at once per server): an in-process token bucket for each key (a token's id, or
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
from typing import ClassVar, Final, Literal

__all__ = ["Admission", "Lanes", "RateLimiter", "Slots", "Verdict"]

#: How :class:`Admission` judges a request before it runs.
Verdict = Literal["cheap", "unknown", "costly"]

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


@dataclass
class Admission:
    """Costly requests run at most *slots* at a time on the whole server; the rest wait
    their turn in the costly lane, so that cheap requests always find a core.

    Which requests are costly is judged before they run, from what the server measured:

    - a request's *shape* (its route and the parts of its query that decide its cost: the
      view read, how many facets, a search term or none) is costly while the moving
      average of its last run times is at least *threshold* seconds; a shape not measured
      yet runs at once, but at a low priority (:mod:`storage.priority`): it may be the
      costliest, and making a cheap one wait behind a costly one would cost a dashboard
      its first page after a start;
    - a token whose request took at least *threshold* seconds is *hot* for *memory*
      seconds after it: its requests go through the lane too (a token that varies its
      costly requests is caught), but for shapes known to be cheap (so that a dashboard
      whose report was slow keeps its quick pages quick).

    Time waiting in the lane is not counted as run time. Waiting longer than *patience*
    seconds is refused (:meth:`admit` returns why; the API answers 503 with
    ``Retry-After``). *slots* 0: no lane, every request runs at once.
    """

    slots: int
    threshold: float = 0.5
    memory: float = 10.0
    patience: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _average: dict[str, float] = field(default_factory=dict)
    _hot: dict[str, float] = field(default_factory=dict)
    _semaphore: asyncio.Semaphore | None = None
    admitted: int = 0
    refused: int = 0
    waiting: int = 0
    running: int = 0

    #: Weight of the newest run in a shape's moving average.
    SMOOTHING: ClassVar[float] = 0.3

    def judge(self, shape: str, key: str) -> Verdict:
        """How a request of *shape* by *key* runs: ``costly`` through the lane, ``unknown``
        (a shape not measured yet) at once but at a low priority, ``cheap`` at once."""
        if self.slots <= 0:
            return "cheap"
        average = self._average.get(shape)
        if average is None:
            return "unknown"
        if average >= self.threshold:
            return "costly"
        hot_until = self._hot.get(key)
        if hot_until is None:
            return "cheap"
        if hot_until <= self.clock():
            del self._hot[key]
            return "cheap"
        return "costly" if average >= self.threshold / 4 else "cheap"

    def ran(self, shape: str, key: str, seconds: float) -> None:
        """Record that a request of *shape* by *key* ran *seconds* (lane wait excluded)."""
        if self.slots <= 0:
            return
        before = self._average.get(shape)
        self._average[shape] = seconds if before is None else (
            before + self.SMOOTHING * (seconds - before))
        if seconds >= self.threshold:
            if len(self._hot) >= _PRUNE_AT:
                now = self.clock()
                for old in [k for k, until in self._hot.items() if until <= now]:
                    del self._hot[old]
            self._hot[key] = self.clock() + self.memory

    @asynccontextmanager
    async def admit(self, costly: bool) -> AsyncIterator[str | None]:
        """Run a request: at once if not *costly*, else once a lane slot is free. Yields
        None when admitted, else why not (waited *patience* seconds)."""
        if not costly or self.slots <= 0:
            yield None
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        semaphore = self._semaphore
        self.waiting += 1
        try:
            async with asyncio.timeout(self.patience):
                await semaphore.acquire()
            acquired = True
        except TimeoutError:
            acquired = False
        finally:
            self.waiting -= 1
        if not acquired:
            self.refused += 1
            yield (f"the server is busy with costly queries ({self.slots} at a time); "
                   f"waited {self.patience:g} s")
            return
        self.admitted += 1
        self.running += 1
        try:
            yield None
        finally:
            self.running -= 1
            semaphore.release()
