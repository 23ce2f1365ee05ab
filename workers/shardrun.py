"""Running one shard of a sweep inside a worker process (the async half of the task).

The steps, each idempotent so that a redelivered or retried shard is harmless:

1. ``start_shard`` in PostgreSQL: should this message run (not done already, not over
   its attempt cap, sweep still running)? From which exponent (a paused shard resumes)?
2. Rebuild the sweep's plan from its spec (cached per sweep) and walk the shard.
3. Run the engine with the fleet's rate budget (Redis), publishing every result to the
   results exchange (``ResultPublisher``: persistent, confirmed, many results a message,
   each keyed by (sweep, ip, port), see :mod:`brokerscan.stream.wire`); every half second look
   at the sweep's control state and flush live counters to Redis; stop early when the
   sweep is paused or cancelled, or when the shard has run for ``max_seconds`` (the rest
   of it is handed back).
4. Wait until every result is confirmed, then ``finish_shard`` (done, or paused /
   pending with the exponent reached), and only then return: the Celery task acks after.

A dependency that is away (PostgreSQL, Redis, RabbitMQ) raises :class:`TransientError`:
the task retries later.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from typing import Any, Literal

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from brokerscan.settings import Settings
from brokerscan.stream.publisher import PublisherError, ResultPublisher
from scheduler import live, state
from scheduler.shards import Shard
from scheduler.sweeps import SweepPlan, SweepSpec, exponent_after, plan_sweep
from storage.db import DatabaseError, Pool, create_pool
from workers.engine import Engine, ScanConfig, ScanStats
from workers.probes.base import ProbeOptions
from workers.ratebudget import FleetRateLimiter
from workers.transport import Scope

__all__ = ["MAX_ATTEMPTS", "MAX_SHARD_SECONDS", "TransientError", "WorkerContext", "run_shard"]

#: A shard runs at most this long, then hands the rest of its work back (Celery's time
#: limits in :mod:`workers.celery_app` are set above it).
MAX_SHARD_SECONDS = 900.0

MAX_ATTEMPTS = 5  # deliveries of one shard before it is marked failed
_CHECK_EVERY = 0.5  # seconds between looks at the control state (and counter flushes)


class TransientError(Exception):
    """A dependency is away: retry the shard later."""


class WorkerContext:
    """What one worker process keeps across shards, opened lazily in its event loop."""

    def __init__(self, settings: Settings, worker_id: str,
                 max_seconds: float = MAX_SHARD_SECONDS) -> None:
        self.settings = settings
        self.names = settings.names()
        self.worker_id = worker_id
        self.max_seconds = max_seconds
        self.scope = Scope(settings.scope)
        self._pool: Pool | None = None
        self._redis: Redis | None = None
        self._publisher: ResultPublisher | None = None
        self._heartbeat: live.Heartbeat | None = None
        self._plans: OrderedDict[str, SweepPlan] = OrderedDict()

    async def pool(self) -> Pool:
        if self._pool is None:
            if not self.settings.database_url:
                raise TransientError("no database: set BROKERSCAN_DATABASE_URL")
            self._pool = await create_pool(self.settings.database_url, max_size=2)
        return self._pool

    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(self.settings.redis_url)
        return self._redis

    async def publisher(self) -> ResultPublisher:
        if self._publisher is not None and self._publisher.error is not None:
            failed, self._publisher = self._publisher, None  # a failed publisher stays failed
            try:
                await failed.close()
            except PublisherError:
                pass  # its unconfirmed results belong to shards that will run again
        if self._publisher is None:
            publisher = ResultPublisher(self.settings.results_url, self.names)
            await publisher.start()
            self._publisher = publisher
        return self._publisher

    def heartbeat(self) -> live.Heartbeat:
        if self._heartbeat is None:
            self._heartbeat = live.Heartbeat(
                self.settings.redis_url, self.names, self.worker_id,
                {"queues": [self.names.probe_queue, self.names.probe_tls_queue]}).start()
        return self._heartbeat

    def plan(self, sweep_id: str, spec: dict[str, Any]) -> SweepPlan:
        plan = self._plans.get(sweep_id)
        if plan is None:
            plan = plan_sweep(SweepSpec.model_validate(spec))
            self._plans[sweep_id] = plan
            while len(self._plans) > 8:
                self._plans.popitem(last=False)
        return plan

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
        if self._pool is not None:
            await self._pool.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._heartbeat is not None:
            self._heartbeat.stop()


def _config(spec: SweepSpec, sweep_id: str) -> ScanConfig:
    return ScanConfig(
        connect_timeout=spec.connect_timeout, io_timeout=spec.io_timeout,
        total_timeout=spec.total_timeout,
        tls_handshake_timeout=min(spec.io_timeout, spec.total_timeout),
        concurrency=spec.concurrency, rate=spec.rate, sweep_id=sweep_id,
        sweep_started_at=spec.started_at,
        emit_failures=spec.emit_failures,
        probe=ProbeOptions(client_id_prefix=spec.client_id_prefix,
                           mqtt_levels=spec.mqtt_levels, sys_version=spec.sys_version,
                           amqp_versions=spec.amqp_versions, ws_paths=spec.ws_paths))


class _Flusher:
    """Sends the engine's counters to Redis as deltas since the last flush."""

    def __init__(self, redis: Redis, ctx: WorkerContext, sweep_id: str) -> None:
        self.redis, self.ctx, self.sweep_id = redis, ctx, sweep_id
        self.sent_done = self.sent_open = 0
        self.sent_hits: Counter[str] = Counter()
        self.sent_statuses: Counter[str] = Counter()

    async def flush(self, stats: ScanStats) -> None:
        hits = Counter(stats.hits)
        hits.subtract(self.sent_hits)
        statuses = Counter(stats.statuses)
        statuses.subtract(self.sent_statuses)
        probes, opened = stats.done - self.sent_done, stats.open - self.sent_open
        if not probes and not opened:
            return
        await live.add_counts(self.redis, self.ctx.names, self.sweep_id, probes=probes,
                              open=opened, hits=+hits, statuses=+statuses)
        self.sent_done, self.sent_open = stats.done, stats.open
        self.sent_hits, self.sent_statuses = Counter(stats.hits), Counter(stats.statuses)


async def run_shard(ctx: WorkerContext, sweep_id: str, shard_id: int, spec: dict[str, Any],
                    shard_data: dict[str, Any]) -> str:
    """Run (or skip) one shard; return a one-line account of what happened.

    :raises TransientError: PostgreSQL, Redis or RabbitMQ is away; retry later.
    """
    try:
        return await _run(ctx, sweep_id, shard_id, spec, shard_data)
    except (DatabaseError, OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError, RedisError, PublisherError, TimeoutError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


async def _run(ctx: WorkerContext, sweep_id: str, shard_id: int, spec_data: dict[str, Any],
               shard_data: dict[str, Any]) -> str:
    pool = await ctx.pool()
    async with pool.acquire() as conn:
        start = await state.start_shard(conn, sweep_id, shard_id, ctx.worker_id, MAX_ATTEMPTS)
    if not start.run:
        return f"shard {sweep_id}/{shard_id} skipped: {start.reason}"
    spec = SweepSpec.model_validate(spec_data)
    plan = ctx.plan(sweep_id, spec_data)
    group, shard = plan.locate(shard_id)
    if Shard.from_dict(shard_data) != shard:
        raise ValueError(f"shard {shard_id} of {sweep_id} does not match its plan")
    redis = ctx.redis()
    publisher = await ctx.publisher()
    heartbeat = ctx.heartbeat()
    heartbeat.update(sweep_id=sweep_id, shard=shard_id, probes=0)
    control = live.ControlWatch(redis, ctx.names, sweep_id)
    limiter = FleetRateLimiter(redis, ctx.names.sweep_rate(sweep_id), spec.rate)
    flusher = _Flusher(redis, ctx, sweep_id)
    stop_reason: list[str] = []
    began = last = time.monotonic()

    async def ready() -> None:
        nonlocal last
        await publisher.wait_ready()
        now = time.monotonic()
        if now - last < _CHECK_EVERY:
            return
        last = now
        current = await control.state()
        if current != "running" and not stop_reason:
            stop_reason.append(current)
            engine.stop()
        elif now - began > ctx.max_seconds and not stop_reason:
            # Hand the rest back: a paused shard of a running sweep is queued again.
            stop_reason.append("time limit")
            engine.stop()
        await flusher.flush(engine.stats)
        heartbeat.update(probes=engine.stats.done)

    engine = Engine(_config(spec, sweep_id), ctx.scope, ready=ready, limiter=limiter)
    stats = await engine.run(plan.targets_of(group, shard, start.position),
                             lambda result: publisher.add(result, shard_id))
    await publisher.flush()  # every result confirmed before the shard is recorded
    await flusher.flush(stats)
    heartbeat.update(sweep_id="", shard="", probes=stats.done)
    hits, statuses = dict(stats.hits), dict(stats.statuses)
    async with pool.acquire() as conn:
        if stop_reason:
            reached = exponent_after(shard, start.position, stats.started)
            end_state: Literal["paused", "cancelled"] = \
                "cancelled" if stop_reason[0] == "cancelled" else "paused"
            await state.finish_shard(conn, sweep_id, shard_id, state=end_state,
                                     position=reached, worker=ctx.worker_id, probes=stats.done,
                                     open=stats.open, hits=hits, statuses=statuses)
            return f"shard {sweep_id}/{shard_id} stopped ({stop_reason[0]}) at {reached}"
        await state.finish_shard(conn, sweep_id, shard_id, state="done",
                                 position=shard.end_exponent, worker=ctx.worker_id,
                                 probes=stats.done, open=stats.open, hits=hits,
                                 statuses=statuses)
        await state.maybe_finish_sweep(conn, sweep_id)
    return f"shard {sweep_id}/{shard_id} done: {stats.done} probes, {stats.open} open"
