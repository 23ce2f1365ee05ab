"""The scheduler's dispatch loop: keeps a bounded number of shards queued per sweep.

PostgreSQL holds the truth (sweeps, shards, their states); this loop only moves shards
from *pending* (or *paused*, once the sweep runs again) to *queued* and sends their Celery
messages, at most ``max_queued`` queued-or-running shards per sweep (backpressure: the
broker never holds a whole sweep). Claim and send happen in one transaction, so a send
that fails leaves the shard pending. It also mirrors each sweep's state into Redis (what
workers obey within half a second), marks sweeps finished, and beats a heartbeat.

Stateless: a restarted scheduler carries on from the database; two schedulers at once
never queue a shard twice (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from celery import Celery
from redis.asyncio import Redis

from brokerscan.settings import Settings
from scheduler import live, state
from scheduler.sweeps import SweepSpec, plan_sweep
from storage.db import Conn, Pool, create_pool

__all__ = ["Dispatcher"]


class Dispatcher:
    """One scheduler process."""

    def __init__(self, settings: Settings, app: Celery, *, max_queued: int = 8,
                 interval: float = 0.2) -> None:
        self.settings = settings
        self.names = settings.names()
        self.app = app
        self.max_queued = max_queued
        self.interval = interval
        self.sent = 0
        self._shard_dicts: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}

    def _messages(self, sweep: state.SweepRow) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The sweep's spec and every shard's dict (planned once per sweep, then cached)."""
        cached = self._shard_dicts.get(sweep.id)
        if cached is None:
            spec = SweepSpec.model_validate(sweep.spec)
            plan = plan_sweep(spec)
            shards = [shard.to_dict() for _, shard, _ in plan.shard_ids()]
            cached = (spec.model_dump(mode="json"), shards)
            self._shard_dicts[sweep.id] = cached
        return cached

    async def tick(self, pool: Pool, redis: Redis) -> int:
        """One round over the unfinished sweeps; returns how many shards were sent."""
        sent = 0
        async with pool.acquire() as conn:
            sweeps = [s for s in await state.list_sweeps(conn, limit=1000)
                      if s.state in ("running", "paused", "cancelled")]
        for sweep in sweeps:
            await live.set_control(redis, self.names, sweep.id, sweep.state)
            if sweep.state != "running":
                continue
            async with pool.acquire() as conn:
                busy = await state.queued_or_running(conn, sweep.id)
                if busy < self.max_queued:
                    sent += await self._send(conn, sweep, self.max_queued - busy)
                await state.maybe_finish_sweep(conn, sweep.id)
        await live.beat_scheduler(redis, self.names, {
            "hostname": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
            "sweeps": [s.id for s in sweeps if s.state == "running"]})
        self.sent += sent
        return sent

    async def _send(self, conn: Conn, sweep: state.SweepRow, room: int) -> int:
        spec, shards = self._messages(sweep)
        async with conn.transaction():  # a failed send rolls the claim back
            rows = await state.claim_pending(conn, sweep.id, room)
            for row in rows:
                await asyncio.to_thread(
                    self.app.send_task, self.names.run_shard_task,
                    args=[sweep.id, row.index, spec, shards[row.index]], queue=row.queue,
                    task_id=f"{sweep.id}:{row.index}:{row.attempts}",
                    retry=True, retry_policy={"max_retries": 3, "interval_start": 0.5})
        return len(rows)

    async def run(self, *, until_idle: bool = False) -> None:
        """Dispatch until cancelled (or, with ``until_idle``, until no sweep is unfinished)."""
        if not self.settings.database_url:
            raise RuntimeError("no database: set BROKERSCAN_DATABASE_URL")
        pool = await create_pool(self.settings.database_url, max_size=2)
        redis = Redis.from_url(self.settings.redis_url)
        try:
            while True:
                await self.tick(pool, redis)
                if until_idle:
                    async with pool.acquire() as conn:
                        if not any(s.state in ("running", "paused")
                                   for s in await state.list_sweeps(conn, limit=1000)):
                            return
                await asyncio.sleep(self.interval)
        finally:
            await redis.aclose()
            await pool.close()
