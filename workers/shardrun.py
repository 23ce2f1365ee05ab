"""Running one shard of a sweep inside a worker process (the async half of the task).

The steps, each idempotent so that a redelivered or retried shard is harmless:

1. ``start_shard`` in PostgreSQL: should this message run (not done already, not over
   its attempt cap, sweep still running)? From where (a paused shard resumes: first the
   targets its last run left unfinished, then the walk from its position)?
2. Rebuild the sweep's plan from its spec (cached per sweep) and walk the shard.
3. Run the engine with the fleet's rate budget (Redis), publishing every result to the
   results exchange (``ResultPublisher``: persistent, confirmed, many results a message,
   each keyed by (sweep, ip, port), see :mod:`brokerscan.stream.wire`). Beside it, a
   watcher looks every half second at the sweep's control state and flushes live
   counters to Redis; it stops the run early when the sweep is paused or cancelled, when
   the worker shuts down, or when the shard has run for ``max_seconds``.
4. Wait until every result is confirmed, then ``finish_shard`` (done, or paused /
   cancelled with where to resume), and only then return: the Celery task acks after.

A dependency that is away (PostgreSQL, Redis, RabbitMQ) raises :class:`TransientError`:
the task retries later, and the error is recorded as the shard's ``last_error`` (when
PostgreSQL answers) so that a shard that finally fails says why.

Stopping early: when the worker is told to stop (SIGTERM to its main process), the
context's ``draining`` test turns true; within half a second the engine starts no new
target, the probes in flight get ``drain_grace`` seconds (3) to finish, and the rest are
abandoned with no result published for them (a cancelled probe is not a timeout). Every
result published is confirmed, and the rest of the shard is handed back (``paused``,
queued again by the scheduler) as a :class:`~scheduler.sweeps.HandBack`: the walk
resumes after the last target started, and the abandoned targets, kept with the shard
(``unfinished``), are probed first by the next run. So a hand-back takes under 5 s
whatever the sweep's ``--timeout``, and every target is probed exactly once. The time
limit, a pause and a cancel stop the same way. A hand-back is not a failed attempt. A
worker killed outright records nothing: the message comes again and runs from the last
hand-back (some targets probed twice, none lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from brokerscan.model import ScanResult
from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.publisher import PublisherError, ResultPublisher
from scheduler import live, state
from scheduler.ports import PortSpec
from scheduler.shards import Shard
from scheduler.sweeps import SweepPlan, SweepSpec, hand_back, plan_sweep
from storage.db import DatabaseError, Pool, create_pool
from workers.engine import Engine, ScanConfig, ScanStats
from workers.probes.base import ProbeOptions
from workers.ratebudget import FleetRateLimiter, RateLimiter
from workers.transport import Scope

__all__ = ["DRAIN_GRACE", "MAX_ATTEMPTS", "MAX_SHARD_SECONDS", "ShardReport", "TransientError",
           "WorkerContext", "fail_shard", "note_failure", "run_shard"]

log = logging.getLogger(__name__)

#: A shard runs at most this long, then hands the rest of its work back (Celery's time
#: limits in :mod:`workers.celery_app` are set above it).
MAX_SHARD_SECONDS = 900.0

#: Seconds the probes in flight get to finish once a run is told to stop; the rest are
#: abandoned and handed back. Most probes end within a second; the ones still waiting
#: after this are waiting for a timeout.
DRAIN_GRACE = 3.0

MAX_ATTEMPTS = 5  # deliveries of one shard before it is marked failed
_CHECK_EVERY = 0.5  # seconds between looks at the control state (and counter flushes)


class ShardReport(NamedTuple):
    """How a shard run ended: ``outcome`` (``done``, ``skipped``, ``handed-back``,
    ``paused``, ``cancelled``) and a one-line account."""

    outcome: str
    text: str


class TransientError(Exception):
    """A dependency is away: retry the shard later."""


class WorkerContext:
    """What one worker process keeps across shards, opened lazily in its event loop."""

    def __init__(self, settings: Settings, worker_id: str,
                 max_seconds: float = MAX_SHARD_SECONDS, *, queues: list[str] | None = None,
                 connections: int | None = None,
                 draining: Callable[[], bool] = lambda: False, metrics: bool = False,
                 drain_grace: float = DRAIN_GRACE) -> None:
        """:param queues: the queues this worker consumes (its heartbeat says so).
        :param connections: the most connections in flight in this process, whatever a
            sweep asks for (what its file descriptors allow).
        :param draining: true once the worker is shutting down: hand the shard back.
        :param metrics: feed :mod:`workers.metrics` (off: not a single extra call).
        :param drain_grace: seconds the probes in flight get once a run must stop."""
        self.settings = settings
        self.names = settings.names()
        self.worker_id = worker_id
        self.max_seconds = max_seconds
        self.drain_grace = drain_grace
        self.queues = queues or [self.names.probe_queue, self.names.probe_tls_queue]
        self.connections = connections
        self.draining = draining
        self.metrics = metrics
        #: monotonic time the running shard's loop last turned (None: idle)
        self.busy_tick: float | None = None
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
        """The process's heartbeat in Redis, beating from a thread (idle or not).

        A Redis that is away at the first beat is retried by the thread, not raised: an
        idle worker must not die of it."""
        if self._heartbeat is None:
            on_beat = None
            if self.metrics:
                from workers.metrics import heartbeat_now

                def on_beat() -> None:
                    tick = self.busy_tick
                    heartbeat_now(None if tick is None else
                                  time.time() - (time.monotonic() - tick))
            self._heartbeat = live.Heartbeat(
                self.settings.redis_url, self.names, self.worker_id,
                {"queues": self.queues, "capacity": 1, "state": "idle"}, on_beat=on_beat).start(
                    strict=False)
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


def _config(spec: SweepSpec, sweep_id: str, connections: int | None) -> ScanConfig:
    concurrency = spec.concurrency if connections is None else min(spec.concurrency,
                                                                   connections)
    return ScanConfig(
        connect_timeout=spec.connect_timeout, io_timeout=spec.io_timeout,
        total_timeout=spec.total_timeout,
        tls_handshake_timeout=min(spec.io_timeout, spec.total_timeout),
        concurrency=concurrency, rate=spec.rate, sweep_id=sweep_id,
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
                    shard_data: dict[str, Any]) -> ShardReport:
    """Run (or skip) one shard; return what happened.

    :raises TransientError: PostgreSQL, Redis or RabbitMQ is away; retry later.
    """
    try:
        return await _run(ctx, sweep_id, shard_id, spec, shard_data)
    except (DatabaseError, OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.InterfaceError, RedisError, PublisherError, TimeoutError) as exc:
        raise TransientError(describe(exc)) from exc
    finally:
        ctx.busy_tick = None


async def fail_shard(ctx: WorkerContext, sweep_id: str, shard_id: int, error: str) -> None:
    """Give the shard up at once with *error* (a failure a retry would not mend, such as a
    shard that does not match its plan): the sweep can then end, as ``failed``, and
    ``sweep retry`` runs it again after the fix. Best effort, like :func:`note_failure`."""
    try:
        pool = await ctx.pool()
        async with pool.acquire() as conn:
            await state.note_shard_error(conn, sweep_id, shard_id, error)
            await state.finish_shard(conn, sweep_id, shard_id, state="failed", position=0,
                                     probes=0, open=0, hits={}, statuses={}, error=error)
            await state.maybe_finish_sweep(conn, sweep_id)
    except Exception as exc:
        log.warning("shard %s/%s: could not record its failure (%s)", sweep_id, shard_id,
                    describe(exc))


async def note_failure(ctx: WorkerContext, sweep_id: str, shard_id: int, error: str) -> None:
    """Record why a run of the shard failed (``last_error``), if PostgreSQL answers; the
    retry goes ahead either way."""
    try:
        pool = await ctx.pool()
        async with pool.acquire() as conn:
            await state.note_shard_error(conn, sweep_id, shard_id, error)
    except Exception as exc:  # the database may be what failed: the log has it then
        log.warning("shard %s/%s: could not record its error (%s)", sweep_id, shard_id,
                    describe(exc))


async def _run(ctx: WorkerContext, sweep_id: str, shard_id: int, spec_data: dict[str, Any],
               shard_data: dict[str, Any]) -> ShardReport:
    pool = await ctx.pool()
    async with pool.acquire() as conn:
        start = await state.start_shard(conn, sweep_id, shard_id, ctx.worker_id, MAX_ATTEMPTS)
    if not start.run:
        return ShardReport("skipped", f"shard {sweep_id}/{shard_id} skipped: {start.reason}")
    spec = SweepSpec.model_validate(spec_data)
    plan = ctx.plan(sweep_id, spec_data)
    group, shard = plan.locate(shard_id)
    if Shard.from_dict(shard_data) != shard:
        raise ValueError(f"shard {shard_id} of {sweep_id} does not match its plan")
    redis = ctx.redis()
    publisher = await ctx.publisher()
    heartbeat = ctx.heartbeat()
    heartbeat.update(sweep_id=sweep_id, shard=shard_id, probes=0, state="busy")
    control = live.ControlWatch(redis, ctx.names, sweep_id)
    limiter: RateLimiter = FleetRateLimiter(redis, ctx.names.sweep_rate(sweep_id), spec.rate)
    meter = None
    if ctx.metrics:
        from workers.metrics import RateWaitMeter, ShardMeter

        meter = ShardMeter(group.queue(ctx.names), RateWaitMeter(limiter), publisher.confirmed)
        limiter = meter.limiter
    flusher = _Flusher(redis, ctx, sweep_id)
    stop_reason: list[str] = []
    abandoned: list[tuple[int, PortSpec]] = []
    began = ctx.busy_tick = time.monotonic()
    finished = asyncio.Event()

    async def ready() -> None:
        await publisher.wait_ready()
        ctx.busy_tick = time.monotonic()

    async def why_stop(now: float) -> str | None:
        current = await control.state()
        if current != "running":
            return current
        if ctx.draining():
            log.info("shard %s/%s: worker shutting down; handing the rest back",
                     sweep_id, shard_id)
            return "shutdown"
        if now - began > ctx.max_seconds:
            return "time limit"  # a paused shard of a running sweep is queued again
        return None

    async def watch() -> None:
        """Every half second (whether or not the engine's loop turns: probes waiting
        for their timeouts do not turn it): stop the run when it must, abandon what is
        still in flight after the grace, flush the counters."""
        stopped_at = 0.0
        try:
            while not finished.is_set():
                now = ctx.busy_tick = time.monotonic()
                pause = _CHECK_EVERY
                if not stop_reason:
                    reason = await why_stop(now)
                    if reason is not None:
                        stop_reason.append(reason)
                        stopped_at = now
                        engine.stop()
                if stop_reason and engine.in_flight:
                    left = stopped_at + ctx.drain_grace - now
                    if left <= 0:
                        abandoned.extend(engine.abort())
                    else:
                        pause = min(pause, left)
                await flusher.flush(engine.stats)
                if meter is not None:
                    meter.flush(engine.stats, engine.in_flight, publisher.confirmed)
                heartbeat.update(probes=engine.stats.done)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), pause)
        except Exception:
            engine.abort()  # the run is retried from its last hand-back: nothing is lost
            raise

    saw = None if meter is None else meter.saw

    def sink(result: ScanResult) -> None:
        if saw is not None:
            saw(result)
        publisher.add(result, shard_id)

    engine = Engine(_config(spec, sweep_id, ctx.connections), ctx.scope, ready=ready,
                    limiter=limiter,
                    observe_connect=None if meter is None else meter.observe_connect)
    targets = itertools.chain(plan.targets_at(group, start.unfinished),
                              plan.targets_of(group, shard, start.position))
    watcher = asyncio.create_task(watch())
    try:
        stats = await engine.run(targets, sink)
    except BaseException:
        finished.set()
        await asyncio.wait([watcher])
        if not watcher.cancelled():
            watcher.exception()  # seen: the run's own failure is the one reported
        raise
    finished.set()
    await watcher  # the watcher's failure (Redis away) is the run's
    await publisher.flush()  # every result confirmed before the shard is recorded
    await flusher.flush(stats)
    if meter is not None:
        meter.flush(stats, 0, publisher.confirmed)
    heartbeat.update(sweep_id="", shard="", probes=stats.done, state="idle")
    hits, statuses = dict(stats.hits), dict(stats.statuses)
    async with pool.acquire() as conn:
        if stop_reason:
            back = hand_back(shard, start.position, start.unfinished, stats.started,
                             {plan.element_of(group, ip, port) for ip, port in abandoned})
            end_state: Literal["paused", "cancelled"] = \
                "cancelled" if stop_reason[0] == "cancelled" else "paused"
            await state.finish_shard(conn, sweep_id, shard_id, state=end_state,
                                     position=back.position, unfinished=back.unfinished,
                                     worker=ctx.worker_id, probes=stats.done,
                                     open=stats.open, hits=hits, statuses=statuses)
            outcome = "handed-back" if stop_reason[0] in ("shutdown", "time limit") \
                else end_state
            return ShardReport(outcome, f"shard {sweep_id}/{shard_id} stopped "
                                        f"({stop_reason[0]}) at {back.position}, "
                                        f"{len(back.unfinished)} unfinished before it")
        await state.finish_shard(conn, sweep_id, shard_id, state="done",
                                 position=shard.end_exponent, worker=ctx.worker_id,
                                 probes=stats.done, open=stats.open, hits=hits,
                                 statuses=statuses)
        await state.maybe_finish_sweep(conn, sweep_id)
    return ShardReport("done", f"shard {sweep_id}/{shard_id} done: {stats.done} probes, "
                               f"{stats.open} open")
