"""The scheduler's part in watches: when a sweep finishes (``finished``, not ``failed``:
a failed sweep's gaps would read as services gone), evaluate every watch on it
(:func:`storage.watcheval.evaluate_sweep`) once its results have reached the store, and keep
delivering what is due (:class:`scheduler.notify.Deliverer`: first tries and retries).

A sweep ends when its shards' results are confirmed by RabbitMQ, not when they are stored:
the evaluation waits until the stream's raw and enriched queues have been empty on two
readings :data:`SETTLE_SECONDS` apart (at most :data:`SETTLE_LIMIT` seconds), so that the
store holds the sweep. Nothing here may stop the dispatch loop: a failure is logged, the
evaluation of that sweep is tried again on the next finish or by ``brokerscan watch
evaluate`` (events are kept once per (watch, sweep, service, kind), so a sweep evaluated
twice delivers nothing twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.status import stream_status
from scheduler.notify import Deliverer
from storage.searcher import Searcher
from storage.store import Store, open_store, store_url
from storage.watcheval import evaluate_sweep

__all__ = ["SETTLE_LIMIT", "SETTLE_SECONDS", "WatchLoop"]

log = logging.getLogger(__name__)

SETTLE_SECONDS: Final = 2.0
SETTLE_LIMIT: Final = 600.0
_ROUND_EVERY: Final = 1.0  # seconds between looks for due deliveries


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

    async def _open(self) -> tuple[Searcher, Deliverer]:
        if self._store is None or self._deliverer is None:
            self._opened = store = await open_store(store_url(self.settings))
            self._store, self._deliverer = store, Deliverer(store, self.settings)
        return self._store, self._deliverer

    def sweep_finished(self, sweep_id: str) -> asyncio.Task[int]:
        """Evaluate the watches on *sweep_id* in the background (once per process)."""
        task = self._evaluations.get(sweep_id)
        if task is None:
            task = self._evaluations[sweep_id] = asyncio.create_task(self._evaluate(sweep_id))
        return task

    async def _stream_empty(self) -> bool:
        status = await stream_status(self.settings.results_url, self.settings.names(),
                                     peek=0)
        return not (status.raw.messages or status.enriched.messages)

    async def _evaluate(self, sweep_id: str) -> int:
        try:
            deadline = time.monotonic() + SETTLE_LIMIT
            empty_before = False
            while time.monotonic() < deadline:
                empty = await self._stream_empty()
                if empty and empty_before:
                    break
                empty_before = empty
                await asyncio.sleep(self.settle)
            store, deliverer = await self._open()
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
