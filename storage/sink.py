"""Where a local scan's results go besides JSONL: enrichment, then a store, in batches.

``brokerscan scan`` runs in one process: the engine's sink is synchronous, the store is
asynchronous, so results are buffered and written in batches by a background task, with
the engine held back (``ready``) when the buffer is full. On one machine this is the
embedded SQLite store; ``--store postgresql://...`` writes to PostgreSQL through the very
same interface the distributed storage writer uses.
"""

from __future__ import annotations

import asyncio

from brokerscan.model import ScanResult
from storage.store import ResultWriter

__all__ = ["StoreSink"]


class StoreSink:
    """Buffers results and writes them to a store in batches."""

    def __init__(self, store: ResultWriter, *, batch_size: int = 1000, max_buffer: int = 20_000,
                 interval: float = 0.5) -> None:
        self.store = store
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.interval = interval
        self.added = 0
        self.written = 0
        self.new = 0
        self._buffer: list[ScanResult] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-sink")

    def add(self, result: ScanResult) -> None:
        self._buffer.append(result)
        self.added += 1
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    async def ready(self) -> None:
        """Hold the scan back while the store is behind."""
        while len(self._buffer) >= self.max_buffer:
            self._check()
            self._wake.set()
            self._drained.clear()
            await self._drained.wait()

    async def close(self) -> None:
        """Write everything buffered, then stop; a store error surfaces here."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _check(self) -> None:
        if self._task is not None and self._task.done() and self._task.exception():
            raise self._task.exception()  # type: ignore[misc]

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            while self._buffer:
                batch, self._buffer = self._buffer[:self.batch_size], \
                    self._buffer[self.batch_size:]
                self.new += await self.store.write(batch)
                self.written += len(batch)
            self._drained.set()
            if self._closing:
                return

