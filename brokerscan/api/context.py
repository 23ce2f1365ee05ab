"""What one API server holds while it runs: its settings, the store it answers from, the
rate limiter, and (made when first needed) a PostgreSQL pool and a Redis client for the
fleet's sweeps. The routes reach it through the dependencies of
:mod:`brokerscan.api.deps`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis

from brokerscan.api.ratelimit import Admission, Lanes, RateLimiter, Slots
from brokerscan.settings import Settings
from storage.db import Pool, create_pool
from storage.searcher import Searcher

__all__ = ["ApiContext"]


@dataclass
class ApiContext:
    """The server's state (one per app).

    :ivar auth: False only for ``serve --no-auth`` (one user, loopback)
    :ivar limiter: requests per second per token (and per client address for bad tokens)
    :ivar exports: exports streaming at once, per token and in all
    :ivar lanes: requests of one token answered at once (the others wait)
    :ivar admission: costly requests answered at once on the whole server (the others wait)
    """

    settings: Settings
    store_url: str
    auth: bool
    limiter: RateLimiter
    exports: Slots = field(default_factory=lambda: Slots(per_key=2, total=8))
    lanes: Lanes = field(default_factory=lambda: Lanes(2))
    admission: Admission = field(default_factory=lambda: Admission(1))
    store: Searcher | None = None
    _pool: Pool | None = None
    _redis: Redis | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def fleet(self) -> bool:
        """Whether the deployment has a fleet (PostgreSQL sweeps): ``database_url`` is set."""
        return self.settings.database_url is not None

    def searcher(self) -> Searcher:
        """The store the server answers from (opened at start-up)."""
        if self.store is None:
            raise RuntimeError("the store is opened at start-up")
        return self.store

    async def pool(self) -> Pool:
        """The pool for the fleet's sweep record, opened on first use.

        :raises DatabaseError: PostgreSQL cannot be reached (a 503)
        """
        async with self._lock:
            if self._pool is None:
                assert self.settings.database_url is not None
                self._pool = await create_pool(self.settings.database_url, min_size=1,
                                               max_size=2)
            return self._pool

    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis_url, socket_connect_timeout=3,
                                         socket_timeout=5)
        return self._redis

    async def close(self, *, store: bool) -> None:
        """Close the pool and Redis client; the store too if *store*."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if store and self.store is not None:
            await self.store.close()
            self.store = None
