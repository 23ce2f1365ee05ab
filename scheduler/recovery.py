"""Shards that nothing would ever finish, put back by the dispatch loop.

Two ways a shard gets stuck, and what a round of :class:`Recovery` does about each:

* **Its run was lost**: the shard is ``running`` under a run whose worker no longer beats
  (killed with -9, its machine gone; its message may come back by itself, or not, if the
  broker lost it too). Once the worker's heartbeat has been missing for ``lapse`` seconds
  in a row, the shard goes back to ``pending`` (:func:`scheduler.state.put_back`: the lost
  run costs an attempt, the checkpoint stays) and the dispatch loop queues it again. A
  heartbeat missing for a moment (Redis restarted empty: every worker writes its own again
  within 2 s) is not a lapse.
* **Its message was lost**: the shard is ``queued`` but its queue no longer holds the
  message (the queue was deleted, the RabbitMQ node was recreated without its data). A
  shard queued for more than ``lost_after`` seconds is sent again when its queue holds
  fewer ready messages than such shards. A message sent twice is harmless: a run starts
  only on a shard that is not done and that no live run holds
  (:func:`scheduler.state.start_shard`).

Both are counted in the shard's ``requeues`` (``sweep status``: "put back N times") and
logged. A dependency that is away makes the round fail like any other dispatch round
(nothing is put back on a guess).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from kombu.connection import Connection
from redis.asyncio import Redis

from brokerscan.names import Names
from brokerscan.oneline import describe
from scheduler import state
from storage.db import Pool

__all__ = ["LAPSE", "LOST_AFTER", "Recovery"]

log = logging.getLogger(__name__)

LAPSE = 15.0  # seconds a run's worker heartbeat (10 s TTL) must stay missing
LOST_AFTER = 120.0  # seconds a shard stays queued before its message may be lost
_EVERY = 2.0  # seconds between recovery rounds

#: Sends a shard's message again: (sweep id, shard row) -> None.
Resend = Callable[[str, state.ShardRow], Awaitable[None]]


class Recovery:
    """The dispatch loop's look for lost runs and lost messages (see the module).

    :param broker_url: the Celery broker (ready messages per queue are asked from it).
    :param queues: the shard queues.
    """

    def __init__(self, names: Names, broker_url: str, queues: Sequence[str], *,
                 lapse: float = LAPSE, lost_after: float = LOST_AFTER,
                 every: float = _EVERY) -> None:
        self.names = names
        self.broker_url = broker_url
        self.queues = tuple(queues)
        self.lapse = lapse
        self.lost_after = lost_after
        self.every = every
        self.put_back = 0  # shards put back, in all
        self.resent = 0  # messages sent again, in all
        self._missing: dict[tuple[str, int, str], float] = {}
        self._next = 0.0

    async def round(self, pool: Pool, redis: Redis, sweep_ids: Sequence[str],
                    resend: Resend) -> None:
        """Look at the running sweeps' shards (at most every ``every`` seconds)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        await self._lost_runs(pool, redis, sweep_ids, now)
        await self._lost_messages(pool, resend)

    async def _lost_runs(self, pool: Pool, redis: Redis, sweep_ids: Sequence[str],
                         now: float) -> None:
        seen: set[tuple[str, int, str]] = set()
        for sweep_id in sweep_ids:
            async with pool.acquire() as conn:
                runs = await state.running_runs(conn, sweep_id)
            if not runs:
                continue
            workers = sorted({worker for worker, _, _ in runs.values()})
            async with redis.pipeline(transaction=False) as pipe:
                for worker in workers:
                    pipe.exists(self.names.worker(worker))
                alive = dict(zip(workers, await pipe.execute(), strict=True))
            for index, (worker, run_id, _) in runs.items():
                if alive.get(worker):
                    continue
                key = (sweep_id, index, run_id)
                seen.add(key)
                since = self._missing.setdefault(key, now)
                if now - since < self.lapse:
                    continue
                reason = (f"worker {worker or '?'} stopped beating for {now - since:.0f} s "
                          "mid-run; put back")
                async with pool.acquire() as conn:
                    if await state.put_back(conn, sweep_id, index, run_id, reason):
                        self.put_back += 1
                        log.warning("shard %s/%s: %s", sweep_id, index, reason)
        self._missing = {k: v for k, v in self._missing.items() if k in seen}

    async def _lost_messages(self, pool: Pool, resend: Resend) -> None:
        async with pool.acquire() as conn:
            stale = await state.stale_queued(conn, self.lost_after)
        if not stale:
            return
        ready = await asyncio.to_thread(self._ready_messages)
        by_queue = Counter(row.queue for _, row in stale)
        for sweep_id, row in stale:
            held = ready.get(row.queue)
            if held is None or held >= by_queue[row.queue]:
                continue  # the broker cannot say, or holds enough messages for them all
            async with pool.acquire() as conn:
                again = await state.requeue_queued(conn, sweep_id, row.index)
            if again is None:
                continue
            await resend(sweep_id, again)
            self.resent += 1
            log.warning("shard %s/%s: queued for over %.0f s and its queue %s holds %d "
                        "message(s) for %d such shard(s): its message was lost; sent again",
                        sweep_id, row.index, self.lost_after, row.queue, held,
                        by_queue[row.queue])

    def _ready_messages(self) -> dict[str, int]:
        """Ready messages per shard queue (0 for a queue that does not exist); a queue the
        broker could not be asked about is left out."""
        found: dict[str, int] = {}
        try:
            with Connection(self.broker_url, connect_timeout=3) as connection:
                for queue in self.queues:
                    channel = connection.channel()
                    try:
                        _, ready, _ = channel.queue_declare(queue, passive=True)
                        found[queue] = int(ready)
                    except Exception as exc:  # 404 NOT_FOUND closes the channel
                        if "NOT_FOUND" in str(exc) or "404" in str(exc):
                            found[queue] = 0
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
        except Exception as exc:
            log.debug("ready messages unavailable from the broker: %s", describe(exc))
        return found

