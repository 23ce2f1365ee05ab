"""Running one shard of a sweep inside a worker process (the async half of the task).
One piece: every step below shares one run's state (engine, watcher, publisher, hand-back).

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
worker killed outright records nothing more: the message comes again and runs from its
last checkpoint (about a second of work probed twice, none lost).

Checkpoints (issue 17): every ``checkpoint_every`` seconds the run waits until every
result so far is confirmed and records in PostgreSQL where the shard would resume and
what it counted since the previous checkpoint (one UPDATE, only while this run holds the
shard); the live counts in Redis are what it counted since then, replaced at each write.
A run that finds another holding the shard stops. While PostgreSQL is away (restarting,
out of disk) the run probes on and its next good checkpoint records everything since the
last one; only after ``CHECKPOINT_PATIENCE`` seconds of failing checkpoints does it fail
(and replay from its last good one).

Why one piece: the run's start, its engine, its watcher, its checkpoints and its end all
read and write the same state (the start's resume point, the engine's counters, the
counts at the last checkpoint, the stop reason); split apart, the rule that every target
is counted once would be checked across files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

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
from storage.db import SERVER_AWAY, Pool, create_pool
from workers.discovery import Walk, ZmapFailed, discover_shard
from workers.engine import Engine, ScanConfig, ScanStats
from workers.probes.base import ProbeOptions
from workers.ratebudget import FleetRateLimiter, RateLimiter
from workers.transport import Scope

__all__ = ["CHECKPOINT_EVERY", "DRAIN_GRACE", "MAX_ATTEMPTS", "MAX_SHARD_SECONDS", "ShardBusy",
           "ShardReport", "TransientError", "WorkerContext", "fail_shard", "note_failure",
           "run_shard", "spend_attempt"]

log = logging.getLogger(__name__)

#: A shard runs at most this long, then hands the rest of its work back (Celery's time
#: limits in :mod:`workers.celery_app` are set above it).
MAX_SHARD_SECONDS = 900.0

#: Seconds the probes in flight get to finish once a run is told to stop; the rest are
#: abandoned and handed back. Most probes end within a second; the ones still waiting
#: after this are waiting for a timeout.
DRAIN_GRACE = 3.0

MAX_ATTEMPTS = 5  # lost runs of one shard before it is marked failed
_CHECK_EVERY = 0.5  # seconds between looks at the control state (and counter flushes)
#: Seconds between a running shard's checkpoints: a fault replays at most about this much
#: of a run (each is one confirm wait and one UPDATE of the shard's row).
CHECKPOINT_EVERY = 1.0
#: Seconds a run keeps probing while its checkpoints fail because PostgreSQL is away
#: (restarting, out of disk): back within them, the next checkpoint records everything
#: since the last good one and nothing is probed again; past them the run fails and is
#: retried from its last good checkpoint.
CHECKPOINT_PATIENCE = 30.0
#: A dependency away (PostgreSQL, Redis, RabbitMQ, a ZMap run): the run retries later.
_AWAY: tuple[type[BaseException], ...] = (*SERVER_AWAY, RedisError, PublisherError, ZmapFailed)


class ShardReport(NamedTuple):
    """How a shard run ended: ``outcome`` (``done``, ``skipped``, ``handed-back``,
    ``paused``, ``cancelled``) and a one-line account."""

    outcome: str
    text: str


class TransientError(Exception):
    """A dependency is away: retry the shard later.

    :ivar run_id: the run that failed (the retry says it ended, so it costs no attempt)
    """

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class ShardBusy(Exception):
    """A live run of another worker holds the shard (this message is a duplicate, or came
    back after a lost connection): try it again later; it is not an attempt."""


class WorkerContext:
    """What one worker process keeps across shards, opened lazily in its event loop."""

    def __init__(self, settings: Settings, worker_id: str,
                 max_seconds: float = MAX_SHARD_SECONDS, *, queues: list[str] | None = None,
                 connections: int | None = None,
                 draining: Callable[[], bool] = lambda: False, metrics: bool = False,
                 drain_grace: float = DRAIN_GRACE,
                 checkpoint_every: float = CHECKPOINT_EVERY) -> None:
        """:param queues: the queues this worker consumes (its heartbeat says so).
        :param connections: the most connections in flight in this process, whatever a
            sweep asks for (what its file descriptors allow).
        :param draining: true once the worker is shutting down: hand the shard back.
        :param metrics: feed :mod:`workers.metrics` (off: not a single extra call).
        :param drain_grace: seconds the probes in flight get once a run must stop.
        :param checkpoint_every: seconds between a running shard's checkpoints."""
        self.settings = settings
        self.names = settings.names()
        self.worker_id = worker_id
        self.max_seconds = max_seconds
        self.drain_grace = drain_grace
        self.checkpoint_every = checkpoint_every
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
        emit_failures=spec.emit_failures, discovered_by=spec.discovery,
        probe=ProbeOptions(client_id_prefix=spec.client_id_prefix,
                           mqtt_levels=spec.mqtt_levels, sys_version=spec.sys_version,
                           amqp_versions=spec.amqp_versions, ws_paths=spec.ws_paths))


class _Tally:
    """A run's counts at its last checkpoint, and the live view of the rest.

    The engine's counters grow over the whole run; the checkpoints add to PostgreSQL what
    was counted since the previous one, and the live entry in Redis is what was counted
    since the last one (replaced at every write, see :mod:`scheduler.live`)."""

    def __init__(self, redis: Redis, ctx: WorkerContext, sweep_id: str, shard_id: int,
                 run_id: str, checkpoint: int) -> None:
        self.redis, self.ctx, self.sweep_id, self.shard_id = redis, ctx, sweep_id, shard_id
        self.run_id, self.checkpoint = run_id, checkpoint
        self.base = _Counts(0, 0, Counter(), Counter())  # at the last checkpoint
        self.sent_done = 0  # probes in the rate samples so far

    def since(self, now: _Counts) -> _Counts:
        """What was counted between the last checkpoint and *now*."""
        return now.minus(self.base)

    def checkpointed(self, at: _Counts) -> None:
        self.base = at
        self.checkpoint += 1

    async def flush(self, stats: ScanStats) -> None:
        """Write the live part; a Redis that is away skips it (Redis is a cache: the next
        write replaces it all, and the durable counts are in PostgreSQL)."""
        now = _Counts.of(stats)
        part = self.since(now)
        try:
            await live.put_run(self.redis, self.ctx.names, self.sweep_id, self.shard_id,
                               live.RunCounts(self.run_id, self.checkpoint, part.done,
                                              part.open, dict(part.hits),
                                              dict(part.statuses)),
                               new_probes=max(0, now.done - self.sent_done))
        except (RedisError, OSError) as exc:
            log.debug("shard %s/%s: live counts not written (%s)", self.sweep_id,
                      self.shard_id, describe(exc))
            return
        self.sent_done = now.done


class _Patient:
    """The fleet rate budget, waited for while Redis is away (up to ``patience``
    seconds): probing on without the budget would break the sweep's rate, and failing
    the run at once would throw away its work since the last checkpoint for a Redis that
    restarts in a second."""

    def __init__(self, inner: RateLimiter, patience: float = 10.0) -> None:
        self.inner, self.patience = inner, patience

    async def acquire(self, wanted: int) -> int:
        give_up: float | None = None
        while True:
            try:
                return await self.inner.acquire(wanted)
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.patience
                    log.warning("rate budget unreachable (%s); waiting up to %.0f s",
                                describe(exc), self.patience)
                if now >= give_up:
                    raise
                await asyncio.sleep(0.5)


class _Outage:
    """When a run's checkpoints began failing for PostgreSQL being away (None: they work)."""

    def __init__(self) -> None:
        self.since: float | None = None


async def _wait_database(pool: Pool, until: float) -> None:
    """Return once PostgreSQL answers, or at *until* (monotonic) whatever it does."""
    while time.monotonic() < until:
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            return
        except SERVER_AWAY:
            await asyncio.sleep(0.5)


class _Counts(NamedTuple):
    done: int
    open: int
    hits: Counter[str]
    statuses: Counter[str]

    @classmethod
    def of(cls, stats: ScanStats) -> _Counts:
        return cls(stats.done, stats.open, Counter(stats.hits), Counter(stats.statuses))

    def minus(self, other: _Counts) -> _Counts:
        hits, statuses = Counter(self.hits), Counter(self.statuses)
        hits.subtract(other.hits)
        statuses.subtract(other.statuses)
        return _Counts(self.done - other.done, self.open - other.open, +hits, +statuses)


async def run_shard(ctx: WorkerContext, sweep_id: str, shard_id: int, spec: dict[str, Any],
                    shard_data: dict[str, Any], *, released: str | None = None,
                    optout: list[str] | None = None) -> ShardReport:
    """Run (or skip) one shard; return what happened.

    :param released: the run that sent this message again after a transient failure (it
        costs no attempt)
    :param optout: networks opted out since the sweep was planned (approved requests, as
        the dispatcher knew them when it sent the shard): refused before any packet and
        recorded as ``blocklisted-target`` ("opted out")
    :raises TransientError: PostgreSQL, Redis or RabbitMQ is away; retry later (its
        ``run_id`` names this run).
    :raises ShardBusy: a live run of another worker holds the shard; try again later.
    """
    run_id = uuid.uuid4().hex
    took: list[str] = []  # the run id once the shard is ours
    try:
        return await _run(ctx, sweep_id, shard_id, spec, shard_data, run_id, released, took,
                          optout or [])
    except _AWAY as exc:
        # a run that never took the shard leaves it as it was: the one released before
        raise TransientError(describe(exc), took[0] if took else released) from exc
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


async def spend_attempt(ctx: WorkerContext, sweep_id: str, shard_id: int, error: str,
                        run_id: str | None = None) -> None:
    """Count a failed run as an attempt (the outage outlasted its grace): the fifth gives
    the shard up, and the sweep can end. Best effort, like :func:`note_failure`."""
    try:
        pool = await ctx.pool()
        async with pool.acquire() as conn:
            await state.note_shard_error(conn, sweep_id, shard_id, error, run_id)
            if await state.spend_attempt(conn, sweep_id, shard_id, error, MAX_ATTEMPTS):
                log.error("shard %s/%s: gave up after %d attempts (%s)", sweep_id, shard_id,
                          MAX_ATTEMPTS, error)
                await state.maybe_finish_sweep(conn, sweep_id)
    except Exception as exc:  # the database may be what failed: the log has it then
        log.warning("shard %s/%s: could not count its attempt (%s)", sweep_id, shard_id,
                    describe(exc))


async def note_failure(ctx: WorkerContext, sweep_id: str, shard_id: int, error: str,
                       run_id: str | None = None) -> None:
    """Record why a run of the shard failed (``last_error``) and that *run_id* holds it no
    more, if PostgreSQL answers; the retry goes ahead either way."""
    try:
        pool = await ctx.pool()
        async with pool.acquire() as conn:
            await state.note_shard_error(conn, sweep_id, shard_id, error, run_id)
    except Exception as exc:  # the database may be what failed: the log has it then
        log.warning("shard %s/%s: could not record its error (%s)", sweep_id, shard_id,
                    describe(exc))


async def _run(ctx: WorkerContext, sweep_id: str, shard_id: int, spec_data: dict[str, Any],
               shard_data: dict[str, Any], run_id: str, released: str | None,
               took: list[str], optout: list[str]) -> ShardReport:
    pool = await ctx.pool()
    redis = ctx.redis()
    await redis.ping()  # every dependency answers before the shard is taken
    publisher = await ctx.publisher()
    heartbeat = ctx.heartbeat()

    async def holder_alive(worker: str, run: str) -> bool:
        beat = await live.worker_heartbeat(redis, ctx.names, worker)
        return beat is not None and beat.get("run") == run

    async with pool.acquire() as conn:
        start = await state.start_shard(conn, sweep_id, shard_id, ctx.worker_id, MAX_ATTEMPTS,
                                        run_id=run_id, released=released,
                                        holder_alive=holder_alive)
    if start.busy:
        raise ShardBusy(start.reason)
    if start.run:
        took.append(run_id)
    if not start.run:
        return ShardReport("skipped", f"shard {sweep_id}/{shard_id} skipped: {start.reason}")
    spec = SweepSpec.model_validate(spec_data)
    plan = ctx.plan(sweep_id, spec_data)
    group, shard = plan.locate(shard_id)
    if Shard.from_dict(shard_data) != shard:
        raise ValueError(f"shard {shard_id} of {sweep_id} does not match its plan")
    heartbeat.update(sweep_id=sweep_id, shard=shard_id, run=run_id, probes=0, state="busy")
    control = live.ControlWatch(redis, ctx.names, sweep_id)
    limiter: RateLimiter = _Patient(FleetRateLimiter(redis, ctx.names.sweep_rate(sweep_id),
                                                     spec.rate))
    meter = None
    if ctx.metrics:
        from workers.metrics import RateWaitMeter, ShardMeter

        meter = ShardMeter(group.queue(ctx.names), RateWaitMeter(limiter), publisher.confirmed)
        limiter = meter.limiter
    tally = _Tally(redis, ctx, sweep_id, shard_id, run_id, start.checkpoints)
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
        still in flight after the grace, flush the live counts."""
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
                await tally.flush(engine.stats)
                if meter is not None:
                    meter.flush(engine.stats, engine.in_flight, publisher.confirmed)
                heartbeat.update(probes=engine.stats.done)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), pause)
        except Exception:
            engine.abort()  # the run is retried from its last checkpoint: nothing is lost
            raise

    async def checkpoints() -> None:
        """Every ``checkpoint_every`` seconds: once every result so far is confirmed,
        record in PostgreSQL where the shard would resume (after the last target started,
        those still in flight left unfinished) with the counts since the previous
        checkpoint, in one statement. A fault then replays only what followed. A
        checkpoint refused means another run holds the shard now: this one stops. While
        PostgreSQL is away the run goes on, for up to ``CHECKPOINT_PATIENCE`` seconds."""
        try:
            while not finished.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), ctx.checkpoint_every)
                if finished.is_set() or stop_reason:
                    return
                at = _Counts.of(engine.stats)  # one synchronous step: a consistent cut
                started = engine.stats.started
                flying = {plan.element_of(group, ip, port)
                          for ip, port in engine.in_flight_targets()}
                await publisher.flush()  # every result of the cut confirmed (and more)
                back = hand_back(shard, start.position, start.unfinished, started, flying)
                part = tally.since(at)
                try:
                    async with pool.acquire() as conn:
                        ok = await state.checkpoint_shard(
                            conn, sweep_id, shard_id, back.position,
                            unfinished=back.unfinished, probes=part.done, open=part.open,
                            hits=part.hits, statuses=part.statuses, run_id=run_id)
                except SERVER_AWAY as exc:
                    now = time.monotonic()
                    if outage.since is None:
                        outage.since = now
                        log.warning("shard %s/%s: checkpoint failed (%s); probing on for up "
                                    "to %.0f s", sweep_id, shard_id, describe(exc),
                                    CHECKPOINT_PATIENCE)
                    if now - outage.since >= CHECKPOINT_PATIENCE:
                        raise
                    continue  # the next one covers this one's part too
                if outage.since is not None:
                    log.info("shard %s/%s: checkpointing again after %.1f s", sweep_id,
                             shard_id, time.monotonic() - outage.since)
                    outage.since = None
                if not ok:
                    log.warning("shard %s/%s: another run holds it now; stopping this one",
                                sweep_id, shard_id)
                    stop_reason.append("superseded")
                    engine.abort()
                    return
                tally.checkpointed(at)
        except Exception:
            engine.abort()
            raise

    saw = None if meter is None else meter.saw

    def sink(result: ScanResult) -> None:
        if saw is not None:
            saw(result)
        publisher.add(result, shard_id)

    engine = Engine(_config(spec, sweep_id, ctx.connections), ctx.scope.without(optout),
                    ready=ready, limiter=limiter,
                    observe_connect=None if meter is None else meter.observe_connect)
    def walk() -> Walk:
        return itertools.chain(plan.targets_at(group, start.unfinished),
                               plan.targets_of(group, shard, start.position))
    outage = _Outage()
    helpers = [asyncio.create_task(watch()), asyncio.create_task(checkpoints())]
    try:
        try:
            targets = walk() if spec.discovery is None else await discover_shard(  # ZMap first
                walk, engine, spec, ctx, group.queue(ctx.names),
                stopped=lambda: bool(stop_reason))
            stats = await engine.run(targets, sink)
        except BaseException:
            finished.set()
            await asyncio.wait(helpers)
            for helper in helpers:
                if not helper.cancelled():
                    helper.exception()  # seen: the run's own failure is the one reported
            raise
        finished.set()
        for helper in helpers:
            await helper  # a helper's failure (Redis or RabbitMQ away) is the run's
        if stop_reason[:1] == ["superseded"]:
            return ShardReport("superseded", f"shard {sweep_id}/{shard_id}: another run "
                                             "holds it now; this one stopped")
        await publisher.flush()  # every result confirmed before the shard is recorded
        if outage.since is not None:  # its checkpoints were failing: give PostgreSQL the rest
            await _wait_database(pool, outage.since + CHECKPOINT_PATIENCE)  # of its time
        if meter is not None:
            meter.flush(stats, 0, publisher.confirmed)
        part = tally.since(_Counts.of(stats))
        counts: dict[str, Any] = {"probes": part.done, "open": part.open,
                                  "hits": dict(part.hits), "statuses": dict(part.statuses)}
        async with pool.acquire() as conn:
            if stop_reason:
                back = hand_back(shard, start.position, start.unfinished, stats.started,
                                 {plan.element_of(group, ip, port) for ip, port in abandoned})
                end_state: Literal["paused", "cancelled"] = \
                    "cancelled" if stop_reason[0] == "cancelled" else "paused"
                await state.finish_shard(conn, sweep_id, shard_id, state=end_state,
                                         position=back.position, unfinished=back.unfinished,
                                         worker=ctx.worker_id, run_id=run_id, **counts)
                outcome = "handed-back" if stop_reason[0] in ("shutdown", "time limit") \
                    else end_state
                report = ShardReport(outcome, f"shard {sweep_id}/{shard_id} stopped "
                                              f"({stop_reason[0]}) at {back.position}, "
                                              f"{len(back.unfinished)} unfinished before it")
            else:
                await state.finish_shard(conn, sweep_id, shard_id, state="done",
                                         position=shard.end_exponent, worker=ctx.worker_id,
                                         run_id=run_id, **counts)
                await state.maybe_finish_sweep(conn, sweep_id)
                report = ShardReport("done", f"shard {sweep_id}/{shard_id} done: "
                                             f"{stats.done} probes, {stats.open} open")
        with contextlib.suppress(RedisError, OSError):
            await live.drop_run(redis, ctx.names, sweep_id, shard_id)  # counted durably now
        return report
    finally:
        heartbeat.update(sweep_id="", shard="", run="", state="idle")
