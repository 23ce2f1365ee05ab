"""The scheduler's part in watches: when a sweep finishes (``finished``, not ``failed``:
a failed sweep's gaps would read as services gone), evaluate every watch on it
(:func:`storage.watcheval.evaluate_sweep`) once its results have reached the store, and keep
delivering what is due (:class:`scheduler.notify.Deliverer`: first tries and retries).

A sweep ends when its shards' results are confirmed by RabbitMQ, not when they are stored,
and evaluating before the store holds all of them would report the missing ones ``gone``.
So the evaluation waits until the store holds as many results of the sweep as its shards
published (:func:`results_expected`: the statuses the shards counted, less the connect
failures that are not written unless ``emit_failures``; the store's count is its rollup,
which moves with exactly the results inserted), looking every :data:`SETTLE_SECONDS`. A
sweep whose stored count stops growing short of that for :data:`SETTLE_LIMIT` seconds is
not evaluated (logged; ``brokerscan watch evaluate`` does it by hand). A caller that knows
no count (``expected=None``) gets the older rule: the stream's raw and enriched queues
empty on two readings :data:`SETTLE_SECONDS` apart. Nothing here may stop the dispatch
loop: a failure is logged, the
evaluation of that sweep is tried again on the next finish or by ``brokerscan watch
evaluate`` (events are kept once per (watch, sweep, service, kind), so a sweep evaluated
twice delivers nothing twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Final

from brokerscan.model import CLOSED_STATUSES
from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.status import stream_status
from scheduler.notify import Deliverer
from scheduler.records import SweepRow
from scheduler.state import shard_counts
from storage.db import Conn
from storage.searcher import Searcher
from storage.store import Store, open_store, store_url
from storage.watches import list_watches
from storage.watcheval import evaluate_sweep, sweep_stored

__all__ = ["SETTLE_LIMIT", "SETTLE_SECONDS", "WatchLoop", "published", "results_expected"]

log = logging.getLogger(__name__)

SETTLE_SECONDS: Final = 2.0
SETTLE_LIMIT: Final = 600.0
_ROUND_EVERY: Final = 1.0  # seconds between looks for due deliveries


def published(statuses: Mapping[str, int], emit_failures: bool) -> int:
    """How many results shards that counted *statuses* published: all of them, less the
    connect failures a scan does not write unless *emit_failures*."""
    closed = {s.value for s in CLOSED_STATUSES}
    return sum(n for status, n in statuses.items() if emit_failures or status not in closed)


async def results_expected(conn: Conn, sweep: SweepRow) -> int:
    """How many results finished *sweep* published (from its shards' counts)."""
    counts = await shard_counts(conn, sweep.id)
    return published(counts.statuses, bool(sweep.spec.get("emit_failures")))


class WatchLoop:
    """Evaluations after sweeps, and the delivery rounds, for one scheduler process."""

    def __init__(self, settings: Settings, *, settle: float = SETTLE_SECONDS) -> None:
        self.settings = settings
        self.settle = settle
        self._store: Searcher | None = None
        self._opened: Store | None = None
        self._deliverer: Deliverer | None = None
        self._evaluations: dict[str, asyncio.Task[int]] = {}
        self._next_round = 0.0
        #: sweeps waiting for their results to be stored: the count stored at last look
        self.waiting: dict[str, int] = {}

    async def _open(self) -> tuple[Searcher, Deliverer]:
        if self._store is None or self._deliverer is None:
            self._opened = store = await open_store(store_url(self.settings))
            self._store, self._deliverer = store, Deliverer(store, self.settings)
        return self._store, self._deliverer

    def sweep_finished(self, sweep_id: str, expected: int | None = None) -> asyncio.Task[int]:
        """Evaluate the watches on *sweep_id* in the background (once per process), once
        the store holds the *expected* results of it (see the module's docstring)."""
        task = self._evaluations.get(sweep_id)
        if task is None:
            task = self._evaluations[sweep_id] = asyncio.create_task(
                self._evaluate(sweep_id, expected))
        return task

    async def _stream_empty(self) -> bool:
        status = await stream_status(self.settings.results_url, self.settings.names(),
                                     peek=0)
        return not (status.raw.messages or status.enriched.messages)

    async def _settled(self) -> None:
        deadline = time.monotonic() + SETTLE_LIMIT
        empty_before = False
        while time.monotonic() < deadline:
            empty = await self._stream_empty()
            if empty and empty_before:
                return
            empty_before = empty
            await asyncio.sleep(self.settle)

    async def _stored(self, store: Searcher, sweep_id: str, expected: int) -> bool:
        """Wait until the store holds *expected* results of *sweep_id*; False if the count
        stood still for :data:`SETTLE_LIMIT` seconds short of it."""
        last, since = -1, time.monotonic()
        try:
            while True:
                stored = self.waiting[sweep_id] = await sweep_stored(store, sweep_id)
                if stored >= expected:
                    return True
                if stored != last:
                    last, since = stored, time.monotonic()
                elif time.monotonic() - since > SETTLE_LIMIT:
                    log.warning("watches: sweep %s: %d of its %d results stored, none more "
                                "for %.0f s: not evaluated (brokerscan watch evaluate does "
                                "it by hand)", sweep_id, stored, expected, SETTLE_LIMIT)
                    return False
                await asyncio.sleep(self.settle)
        finally:
            self.waiting.pop(sweep_id, None)

    async def _evaluate(self, sweep_id: str, expected: int | None) -> int:
        try:
            store, deliverer = await self._open()
            if not await list_watches(store):
                return 0  # nothing to wait for
            if expected is None:
                await self._settled()
            elif not await self._stored(store, sweep_id, expected):
                return 0
            events = await evaluate_sweep(store, sweep_id)
            if events:
                log.info("watches: sweep %s: %d events", sweep_id, len(events))
            await deliverer.round()
            return len(events)
        except Exception as exc:  # never the dispatch loop's end
            log.warning("watches: evaluating sweep %s failed: %s", sweep_id, describe(exc))
            self._evaluations.pop(sweep_id, None)
            return 0

    async def tick(self) -> None:
        """Start the deliveries that are due (at most once a second; never waits for
        them)."""
        if time.monotonic() < self._next_round:
            return
        self._next_round = time.monotonic() + _ROUND_EVERY
        try:
            _, deliverer = await self._open()
            await deliverer.round()
        except Exception as exc:
            log.warning("watches: delivery round failed: %s", describe(exc))

    async def close(self) -> None:
        for task in self._evaluations.values():
            task.cancel()
        await asyncio.gather(*self._evaluations.values(), return_exceptions=True)
        if self._deliverer is not None:
            await self._deliverer.close()
        if self._opened is not None:
            await self._opened.close()
