"""The scheduler's dispatch loop: keeps each probe queue's backlog sized to the live fleet.

PostgreSQL holds the truth (sweeps, shards, their states); this loop moves shards from
*pending* (or *paused*, once the sweep runs again) to *queued* and sends their Celery
messages (each with the approved opt-outs of its round), in one transaction (a failed send
leaves the shard pending). Each queue's backlog is kept at its consumers' live capacity
(heartbeats) plus a margin, shared fairly among running sweeps, plaintext and TLS side by
side (:mod:`scheduler.sizing`); ``max_queued`` caps each sweep's backlog on top. It also
mirrors sweep states into Redis (what workers obey within half a second), marks sweeps
finished (then evaluates the watches: :mod:`scheduler.watchloop`), starts recurring sweeps
that are due (:mod:`scheduler.schedules`), and beats a heartbeat. Stateless: a restarted
scheduler carries on from the database; two at once never queue a shard twice (``FOR UPDATE
SKIP LOCKED``) nor start a period twice (a row lock and a UNIQUE constraint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

from celery import Celery
from redis.asyncio import Redis
from redis.exceptions import RedisError

from brokerscan.oneline import describe
from brokerscan.settings import Settings
from scheduler import live, optoutfeed, schedules, sizing, state
from scheduler.recovery import Recovery
from scheduler.sweeps import SweepSpec, plan_sweep
from scheduler.watchloop import WatchLoop, results_expected
from storage.db import SERVER_AWAY, Conn, Pool, create_pool

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

#: What a round can fail with when a service is away: logged, counted, retried.
_OUTAGES: tuple[type[BaseException], ...] = (*SERVER_AWAY, RedisError)
_SUMMARY_EVERY = 10.0  # seconds between "shards sent" log lines
_GAUGES_EVERY = 5.0  # seconds between refreshes of the fleet gauges (metrics on)
_CAPACITY_EVERY = 1.0  # seconds a reading of the fleet's capacity is reused
_CHUNK = 100  # shards claimed (and sent) per transaction
_RETRY: dict[str, Any] = {"max_retries": 3, "interval_start": 0.5}  # a message's send


class Dispatcher:
    """One scheduler process.

    :param metrics: refresh :mod:`scheduler.metrics` (shards, progress, workers, queues).
    """

    def __init__(self, settings: Settings, app: Celery, *, max_queued: int | None = None,
                 interval: float = 0.2, metrics: bool = False) -> None:
        self.settings = settings
        self.names = settings.names()
        self.app = app
        self.max_queued = max_queued
        self.interval = interval
        self.metrics = metrics
        self.sent = 0
        #: monotonic time of the last round that completed (liveness)
        self.last_tick = time.monotonic()
        self._stopping = asyncio.Event()
        self._shard_dicts: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self._states: dict[str, str] = {}
        self._sent_by_queue: Counter[str] = Counter()
        #: lost runs and lost messages (issue 17): :mod:`scheduler.recovery`
        self.recovery = Recovery(self.names, settings.broker_url,
                                 [self.names.probe_queue, self.names.probe_tls_queue],
                                 lost_after=settings.shard_lost_seconds)
        self._capacity_cache: tuple[float, dict[str, int], int] | None = None
        self._turn = 0
        self.optouts = optoutfeed.OptOutFeed(settings)  # approved opt-outs, read every round
        self.watches = WatchLoop(settings)  # evaluated as sweeps finish, and delivered

    def stop(self) -> None:  # finish the round under way, then return (signal-handler safe)
        self._stopping.set()

    def alive(self) -> str | None:
        """Liveness: ``None`` while rounds keep completing or failing (the loop turns)."""
        age = time.monotonic() - self.last_tick
        return None if age < max(30.0, 50 * self.interval) else \
            f"no dispatch round for {age:.0f} s"

    def _messages(self, sweep: state.SweepRow) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The sweep's spec and every shard's dict (planned once per sweep, then cached)."""
        cached = self._shard_dicts.get(sweep.id)
        if cached is None:
            spec = SweepSpec.model_validate(sweep.spec)
            cached = (spec.model_dump(mode="json"),
                      [shard.to_dict() for _, shard, _ in plan_sweep(spec).shard_ids()])
            self._shard_dicts[sweep.id] = cached
        return cached

    async def tick(self, pool: Pool, redis: Redis) -> int:
        """One round: start the recurring sweeps' runs that are due
        (:mod:`scheduler.schedules`), then dispatch the unfinished sweeps; returns how many
        shards were sent."""
        sent, optout = 0, await self.optouts.refresh()
        async with pool.acquire() as conn:
            await schedules.start_due(conn, self.names, optout)
            sweeps = [s for s in await state.list_sweeps(conn, limit=1000)
                      if s.state in ("running", "paused", "cancelled")]
        for sweep in sweeps:
            await live.set_control(redis, self.names, sweep.id, sweep.state)
            if sweep.state != "running":
                self._note_state(sweep.id, sweep.state)
        running = [s for s in sweeps if s.state == "running"]
        if running:
            capacity, processes = await self._capacity(redis)
            async with pool.acquire() as conn:
                loads = await state.queue_loads(conn, [s.id for s in sweeps])
            sent = await self._send_round(pool, running,
                                          self._round(running, loads, capacity, processes))
            async with pool.acquire() as conn:
                for sweep in running:
                    if await state.maybe_finish_sweep(conn, sweep.id):
                        ended = await state.get_sweep(conn, sweep.id)
                        if ended is not None:
                            self._note_state(sweep.id, ended.state, ended.failed_shards)
                            if ended.state == "finished":
                                self.watches.sweep_finished(
                                    sweep.id, await results_expected(conn, ended))
                    else:
                        self._note_state(sweep.id, "running")
        await self.recovery.round(pool, redis, [s.id for s in running],
                                  lambda sweep_id, row: self._resend(pool, sweep_id, row))
        await live.beat_scheduler(redis, self.names, {
            "hostname": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
            "sweeps": [s.id for s in running]})
        self.sent += sent
        return sent

    async def _capacity(self, redis: Redis) -> tuple[dict[str, int], int]:
        """Shards the live fleet runs at once, per queue and in all (each process counted
        once), from the workers' heartbeats (read at most once a second: they beat every
        2 s)."""
        now = time.monotonic()
        if self._capacity_cache is None or now >= self._capacity_cache[0]:
            workers = await live.live_workers(redis, self.names)
            found = sizing.capacity_by_queue((w.queues, w.capacity) for w in workers)
            self._capacity_cache = (now + _CAPACITY_EVERY, found,
                                    sum(w.capacity for w in workers))
        return self._capacity_cache[1], self._capacity_cache[2]

    def _round(self, running: list[state.SweepRow],
               loads: dict[tuple[str, str], sizing.QueueLoad],
               capacity: dict[str, int], processes: int) -> list[tuple[str, str, int]]:
        """What to send this round: (sweep, queue, shards).

        Each queue is topped up to its capacity plus a margin, no more than the processes
        can take over both queues (:func:`scheduler.sizing.fleet_room`), the room shared
        among the running sweeps (the tie-breaking turn rotates every round);
        ``max_queued`` caps each sweep's backlog over both queues."""
        self._turn += 1
        ids = [s.id for s in running]
        turn = ids[self._turn % len(ids):] + ids[:self._turn % len(ids)]
        caps: dict[str, int] | None = None
        if self.max_queued is not None:
            caps = {}
            for sweep_id in ids:
                held = sum(load.backlog for (s, _), load in loads.items() if s == sweep_id)
                caps[sweep_id] = max(0, self.max_queued - held)
        backlog: dict[str, int] = {}
        wanted: dict[str, int] = {}
        for (sweep_id, queue), load in loads.items():
            backlog[queue] = backlog.get(queue, 0) + load.backlog
            if sweep_id in ids:
                wanted[queue] = wanted.get(queue, 0) + load.pending
        rooms = sizing.fleet_room(capacity, processes, backlog, wanted)
        plan: list[tuple[str, str, int]] = []
        for queue, room in sorted(rooms.items()):
            mine = {s: loads[(s, queue)] for s in ids if (s, queue) in loads}
            given = sizing.allocate(room, mine, turn, caps)
            for sweep_id, count in given.items():
                plan.append((sweep_id, queue, count))
                if caps is not None:
                    caps[sweep_id] -= count
        return plan

    async def _send_round(self, pool: Pool, running: list[state.SweepRow],
                          plan: list[tuple[str, str, int]]) -> int:
        """Send a round's shards, the queues side by side (a connection and a producer
        each: the plaintext and TLS pools get their first shards together, and RabbitMQ
        takes two queues' messages in parallel)."""
        by_id = {s.id: s for s in running}

        async def one_queue(queue: str) -> int:
            sent = 0
            async with pool.acquire() as conn:
                for sweep_id, q, count in plan:
                    if q == queue:
                        sent += await self._send(conn, by_id[sweep_id], count, queue)
            return sent

        queues = sorted({q for _, q, _ in plan})
        return sum(await asyncio.gather(*(one_queue(q) for q in queues)))

    def _note_state(self, sweep_id: str, new: str, failed: int = 0) -> None:
        old = self._states.get(sweep_id)
        if old == new:
            return
        self._states[sweep_id] = new
        if new == "failed":
            log.warning("sweep %s failed: %d shard(s) gave up (brokerscan sweep status %s; "
                        "brokerscan sweep retry %s)", sweep_id, failed, sweep_id, sweep_id)
        elif old is not None or new != "running":
            log.info("sweep %s is %s", sweep_id, new)
        else:
            log.info("sweep %s: dispatching", sweep_id)

    async def _send(self, conn: Conn, sweep: state.SweepRow, room: int, queue: str) -> int:
        """Claim up to *room* of the sweep's shards for *queue* and send their messages, a
        chunk per transaction (a failed send rolls its chunk's claim back)."""
        spec, shards = self._messages(sweep)
        sent = 0
        while sent < room:
            want = min(_CHUNK, room - sent)
            async with conn.transaction():
                rows = await state.claim_pending(conn, sweep.id, want, queue)
                if rows:
                    await asyncio.to_thread(self._publish, sweep.id, spec, shards, rows)
            sent += len(rows)
            self._sent_by_queue[queue] += len(rows)
            if self.metrics and rows:
                from scheduler.metrics import DISPATCHED

                DISPATCHED.labels(_short(queue, self.names.namespace)).inc(len(rows))
            if len(rows) < want:
                break
        return sent

    def _publish(self, sweep_id: str, spec: dict[str, Any], shards: list[dict[str, Any]],
                 rows: list[state.ShardRow]) -> None:
        """Send the claimed shards' task messages over one producer (one channel).

        ``argsrepr`` is given: Celery would otherwise build it with its ``saferepr`` of the
        whole spec and shard, which took two thirds of the scheduler's time per message."""
        with self.app.producer_or_acquire() as producer:
            for row in rows:
                self.app.send_task(self.names.run_shard_task,
                    args=[sweep_id, row.index, spec, shards[row.index]], queue=row.queue,
                    task_id=f"{sweep_id}:{row.index}:{row.attempts}", producer=producer,
                    argsrepr=f"({sweep_id!r}, {row.index}, ...)", kwargsrepr="{...}",
                    kwargs={"optout": self.optouts.current}, retry=True, retry_policy=_RETRY)

    async def _resend(self, pool: Pool, sweep_id: str, row: state.ShardRow) -> None:
        """Send a queued shard's message again (:mod:`scheduler.recovery`)."""
        sweep = await self._sweep(pool, sweep_id)
        spec, shards = self._messages(sweep)
        await asyncio.to_thread(
            self.app.send_task, self.names.run_shard_task,
            args=[sweep.id, row.index, spec, shards[row.index]], queue=row.queue,
            task_id=f"{sweep.id}:{row.index}:{row.attempts}:r{row.requeues}",
            kwargs={"optout": self.optouts.current}, retry=True, retry_policy=_RETRY)

    async def _sweep(self, pool: Pool, sweep_id: str) -> state.SweepRow:
        async with pool.acquire() as conn:
            sweep = await state.get_sweep(conn, sweep_id)
        if sweep is None:
            raise state.UnknownSweep(f"no sweep {sweep_id}")
        return sweep

    async def run(self, *, until_idle: bool = False) -> None:
        """Dispatch until :meth:`stop` (or, with ``until_idle``, until no sweep is
        unfinished). A round that fails because a service is away is logged once per
        kind of failure and retried with a growing pause; the loop never dies of it."""
        if not self.settings.database_url:
            raise RuntimeError("no database: set BROKERSCAN_DATABASE_URL")
        pool = await create_pool(self.settings.database_url, max_size=3)
        redis = Redis.from_url(self.settings.redis_url, socket_timeout=10,
                               socket_connect_timeout=5)
        log.info("scheduler: dispatching (backlog per queue: the live fleet's capacity plus "
                 "a margin%s)", "" if self.max_queued is None
                 else f"; at most {self.max_queued} shards queued or running per sweep")
        failing: str | None = None
        failures = 0
        next_summary = next_gauges = time.monotonic()
        try:
            while not self._stopping.is_set():
                pause = self.interval
                try:
                    await self.tick(pool, redis)
                    await self.watches.tick()
                    if self.metrics and time.monotonic() >= next_gauges:
                        next_gauges = time.monotonic() + _GAUGES_EVERY
                        await self._refresh_gauges(pool, redis)
                    if failing is not None:
                        log.info("scheduler: dispatching again after %d failed rounds",
                                 failures)
                    failing, failures = None, 0
                    if until_idle:
                        async with pool.acquire() as conn:
                            if not any(s.state in ("running", "paused")
                                       for s in await state.list_sweeps(conn, limit=1000)):
                                return
                except _OUTAGES as exc:
                    kind = type(exc).__name__
                    if self.metrics:
                        from scheduler.metrics import ERRORS

                        ERRORS.labels(kind).inc()
                    if failing != kind:
                        log.warning("scheduler: round failed (%s); retrying", describe(exc))
                    failing = kind
                    failures += 1
                    pause = min(10.0, self.interval * 2 ** min(failures, 6))
                self.last_tick = time.monotonic()
                if self.metrics:
                    from scheduler.metrics import TICKS

                    TICKS.inc()
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + _SUMMARY_EVERY
                    self._log_summary()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
        finally:
            self._log_summary()
            await self.watches.close()
            await self.optouts.close()
            await redis.aclose()
            await pool.close()
            log.info("scheduler: stopped (%d shards sent in all)", self.sent)

    def _log_summary(self) -> None:
        if not self._sent_by_queue:
            return
        log.info("scheduler: sent %d shard(s) (%s)", sum(self._sent_by_queue.values()),
                 ", ".join(f"{q}: {n}" for q, n in sorted(self._sent_by_queue.items())))
        self._sent_by_queue.clear()

    async def _refresh_gauges(self, pool: Pool, redis: Redis) -> None:
        from scheduler import metrics as m

        async with pool.acquire() as conn:
            sweeps = await state.list_sweeps(conn, limit=1000)
            by_state = Counter(s.state for s in sweeps)
            shards: Counter[str] = Counter()
            m.SWEEP_PROGRESS.clear()
            m.SWEEP_FAILED_SHARDS.clear()
            for sweep in sweeps:
                if sweep.state not in ("running", "paused"):
                    continue
                counts = await state.shard_counts(conn, sweep.id)
                shards.update(counts.states)
                m.SWEEP_PROGRESS.labels(sweep.id).set(
                    min(1.0, counts.probes / sweep.target_count) if sweep.target_count
                    else 1.0)
                m.SWEEP_FAILED_SHARDS.labels(sweep.id).set(counts.states.get("failed", 0))
        for name in ("running", "paused", "cancelled", "finished", "failed"):
            m.SWEEPS.labels(name).set(by_state.get(name, 0))
        for name in ("pending", "queued", "running", "done", "paused", "cancelled", "failed"):
            m.SHARDS.labels(name).set(shards.get(name, 0))
        workers = await live.live_workers(redis, self.names)
        alive: Counter[str] = Counter()
        for worker in workers:
            for queue in worker.queues:
                alive[_short(queue, self.names.namespace)] += 1
        for queue in ("probe", "probe-tls"):
            m.WORKERS_ALIVE.labels(queue).set(alive.get(queue, 0))
        depths = await asyncio.to_thread(self._queue_depths)
        for queue, (ready, consumers) in depths.items():
            m.QUEUE_MESSAGES.labels(queue).set(ready)
            m.QUEUE_CONSUMERS.labels(queue).set(consumers)

    def _queue_depths(self) -> dict[str, tuple[int, int]]:
        """Ready messages and consumers of the probe queues and the stream's queues."""
        from kombu.connection import Connection

        n = self.names
        found: dict[str, tuple[int, int]] = {}
        for url, queues in ((self.settings.broker_url, (n.probe_queue, n.probe_tls_queue)),
                            (self.settings.results_url, (n.results_queue, n.enriched_queue,
                                                         n.dead_letter_queue))):
            try:
                with Connection(url, connect_timeout=3) as connection:
                    for queue in queues:
                        channel = connection.channel()
                        try:
                            _, ready, consumers = channel.queue_declare(queue, passive=True)
                            found[_short(queue, n.namespace)] = (int(ready), int(consumers))
                        except Exception:  # not declared yet: nothing to show
                            pass
                        finally:
                            with contextlib.suppress(Exception):
                                channel.close()
            except Exception as exc:
                log.debug("queue depths from %s unavailable: %s", url, describe(exc))
        return found


def _short(queue: str, namespace: str) -> str:  # the queue's name without the namespace
    return queue.removeprefix(namespace + ".")
