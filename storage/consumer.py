"""The storage writer: enriched results from RabbitMQ into the store, acked after commit.

Consumes ``Names.enriched_queue`` (batch messages and single-result messages alike,
:mod:`brokerscan.stream.wire`) with a prefetch of messages, and for each batch, bounded by
``batch_size`` results and ``max_delay`` seconds after its first message:

1. validates every result; an invalid one becomes a dead letter of its own (confirmed)
   with the reason, the rest of its message goes on;
2. prepares the rows (``store.prepare``: the CPU work of a write) and then hands them to
   ``store.write_prepared``: one idempotent, committed write of the batch;
3. acks the whole batch with one ``basic.ack(multiple=True)`` on its last delivery tag
   (one channel, batches committed in delivery order, so that covers exactly this batch).

Writes are pipelined one deep: while the database works on batch *n*, batch *n + 1* is
collected, validated and prepared (the Python side of a write costs as much as the
database's side, so overlapping the two nearly doubles throughput). Batch *n + 1* is
written only after batch *n* committed and was acked, so acks stay in order.

When the write fails nothing is acked: the batch is kept and written again after a backoff
(1 s doubling to 30 s) until it succeeds, while the rest of the stream waits in RabbitMQ.
One log line per change of state (failing with a new kind of error, then recovered). A
failure that is not about reaching the database and that repeats is narrowed down by
halving the batch: a single result that fails while its sibling half was written is a
poison result, and becomes a dead letter instead of wedging the stream.

If the broker connection is lost, the batches in hand are dropped (RabbitMQ redelivers
them; a batch already committed is written again, adding nothing) and the writer
reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
import aio_pika.abc

from brokerscan.model import ScanResult
from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.connection import CONNECTION_ERRORS
from brokerscan.stream.consumer import StreamConsumer
from brokerscan.stream.deadletters import BadLine, dead_letter_line, parse_results
from storage.db import SERVER_AWAY
from storage.metrics import BATCH_SECONDS, ROWS, WRITE_FAILURES
from storage.store import ResultWriter

__all__ = ["StoreWriter", "database_away"]

log = logging.getLogger(__name__)

_RETRY_FIRST = 1.0
_RETRY_MAX = 30.0
_BISECT_AFTER = 3  # failures of one batch, not about connectivity, before we narrow it down

Incoming = aio_pika.abc.AbstractIncomingMessage
#: A result to write, with where it came from (its message, its index there, its bytes).
Item = tuple[Incoming, int, bytes, ScanResult]
Dead = list[tuple[Incoming, BadLine]]


@dataclass(slots=True)
class _Work:
    """One collected batch, validated and prepared, waiting for its write."""

    batch: Sequence[Incoming]
    items: list[Item]
    dead: Dead
    prepared: object | None  # None: store.prepare refused it; written result by result


def database_away(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot take writes for now
    (:data:`storage.db.SERVER_AWAY`: away, restarting, its disk full), as opposed to
    refusing this particular data: such a write is never narrowed down to poison."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, SERVER_AWAY):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StoreWriter(StreamConsumer):
    """Write the enriched stream into a store in batches; ack after commit.

    Counters: ``consumed`` (results), ``written`` (results in committed writes),
    ``new_rows`` (what the store reported as new), ``batches``, ``dead_lettered``,
    ``write_failures``, ``reconnects``; ``failing`` is the current write error (None when
    healthy).

    :param settings: deployment settings (``results_url``, ``namespace``).
    :param store: the store; its writes must be idempotent and committed on return.
    :param batch_size: most results per write.
    :param max_delay: seconds a batch waits to fill after its first message.
    :param prefetch: unacked messages in hand, each a batch of results (the enrichment
        worker sends up to 500 a message) or a single result; a batch never has more
        messages than this, so single-result producers need a prefetch of about twice
        ``batch_size`` to fill batches.
    """

    def __init__(self, settings: Settings, store: ResultWriter, *, batch_size: int = 2000,
                 max_delay: float = 0.5, prefetch: int = 64) -> None:
        names = settings.names()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        super().__init__(settings.results_url, names, names.enriched_queue, prefetch=prefetch,
                         batch_size=batch_size, stage="store")
        self.store = store
        self.max_delay = max_delay
        self.written = self.new_rows = self.batches = self.write_failures = 0
        self.failing: str | None = None
        self._failing_since = 0.0
        self._writing: asyncio.Task[None] | None = None

    def collect_window(self) -> float:
        return self.max_delay

    async def handle(self, batch: Sequence[Incoming]) -> None:
        """Validate and prepare this batch while the previous one is written, then start
        writing this one (see the module doc)."""
        work = await self._prepare(batch)
        await self.drain()
        self._writing = asyncio.get_running_loop().create_task(self._commit(work))
        self._writing.add_done_callback(self._on_written)

    async def drain(self) -> None:
        """Wait for the write in flight (its errors are raised here)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def abandon(self) -> None:
        """Drop the write in flight (the session is over; RabbitMQ redelivers)."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        if writing.done():
            if not writing.cancelled():
                writing.exception()  # retrieved: the session's own error says what happened
        else:
            writing.cancel()

    def raise_failed(self) -> None:
        """Raise the error of a write that ended in one (the loop calls this)."""
        writing = self._writing
        if writing is not None and writing.done() and not writing.cancelled():
            error = writing.exception()
            if error is not None:
                self._writing = None
                raise error

    def _on_written(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.wake()  # the loop must not sit in collect with a failed write behind it

    async def _prepare(self, batch: Sequence[Incoming]) -> _Work:
        items: list[Item] = []
        records: list[str] | None = []
        dead: Dead = []
        for message in batch:
            good, bad = await parse_results(message, every=16)
            dead += [(message, b) for b in bad]
            # brokerscan's own messages carry each result as ``to_json()`` made it: stored
            # as it came instead of serialised again.
            canonical = message.app_id == "brokerscan"
            for index, line, result in good:
                if result.sweep_id is None or result.sweep_started_at is None:
                    # The store keys observations on them: such a result can never be written.
                    dead.append((message, BadLine(
                        index, line, "not storable: no sweep_id or sweep_started_at")))
                    continue
                items.append((message, index, line, result))
                if records is not None:
                    if canonical:
                        records.append(line.decode())
                    else:
                        records = None
        prepared: object | None = None
        if items:
            try:
                prepared = await self.store.prepare([item[3] for item in items], records)
            except ValueError:
                prepared = None  # some result is refused: found by writing in halves
        return _Work(batch, items, dead, prepared)

    async def _commit(self, work: _Work) -> None:
        dead = work.dead
        if work.items:
            dead = dead + await self._write_until_done(work.items, work.prepared)
        if self.stopping and self.failing is not None:
            return  # stopped while the store was failing: nothing acked, all redelivered
        await self._dead_letter(dead)
        try:
            await work.batch[-1].ack(multiple=True)
        except CONNECTION_ERRORS as exc:
            raise self.connection_lost(f"ack failed: {describe(exc)}") from None
        self.batches += 1

    async def _dead_letter(self, dead: Dead) -> None:
        if not dead:
            return
        assert self.topology is not None
        outcomes = await self.publish_all([
            (self.topology.dead, dead_letter_line(m, bad, "store"), m.routing_key or "")
            for m, bad in dead])
        failed = [o for o in outcomes if o is not None]
        if failed:  # not confirmed: ack nothing, let the whole batch come back
            raise self.connection_lost(f"dead letter not confirmed: {describe(failed[0])}")
        self.dead_lettered += len(dead)
        self.note_dead(bad.reason for _, bad in dead)

    async def _write_until_done(self, items: list[Item], prepared: object | None) -> Dead:
        """Write ``items`` until they commit; returns poison results found on the way."""
        attempt = 0
        while True:
            try:
                await self._write(items, prepared)
                self._recovered()
                return []
            except Exception as exc:
                self._failed(exc)
                # ValueError is the store's "this data is wrong": narrow it down at once.
                patience = 1 if isinstance(exc, ValueError) else _BISECT_AFTER
                if not database_away(exc) and attempt + 1 >= patience:
                    poison: Dead | None = None
                    if len(items) > 1:
                        poison = await self._bisect(items)
                    elif isinstance(exc, ValueError):
                        poison = [_poison(items[0], exc)]
                    if poison is not None:
                        self._recovered()
                        return poison
                prepared = None  # from now on the store prepares each attempt itself
            if self.stopping:
                return []
            if self.channel_lost():
                raise self.connection_lost("channel closed while the store was failing")
            await self.sleep(min(_RETRY_MAX, _RETRY_FIRST * 2**attempt)
                             * random.uniform(0.75, 1.0))
            attempt += 1

    async def _write(self, items: list[Item], prepared: object | None = None) -> None:
        began = time.perf_counter()
        if prepared is None:
            new = await self.store.write([item[3] for item in items])
        else:
            new = await self.store.write_prepared(prepared)
        BATCH_SECONDS.observe(time.perf_counter() - began)
        ROWS.inc(new)
        self.written += len(items)
        self.new_rows += new
        self.note_lag(min(item[3].observed_at for item in items))

    async def _bisect(self, items: list[Item], proven: bool = False) -> Dead | None:
        """Write halves to find the results the store refuses while it accepts others.

        :param proven: some other part of the batch was written, so the store works.
        :returns: the poison results with reasons (everything else is written), or None
            if the failure looks systemic (no part could be written, or it is unreachable).
        """
        if len(items) == 1:
            try:
                await self._write(items)
                return []
            except Exception as exc:
                if database_away(exc) or not proven:
                    return None
                return [_poison(items[0], exc)]
        middle = len(items) // 2
        failed: list[list[Item]] = []
        for half in (items[:middle], items[middle:]):
            try:
                await self._write(half)
            except Exception as exc:
                if database_away(exc):
                    return None
                failed.append(half)
        if len(failed) == 2 and not proven:
            return None  # nothing went in: the store itself is failing, keep retrying
        poison: Dead = []
        for half in failed:
            found = await self._bisect(half, proven=True)
            if found is None:
                return None
            poison += found
        return poison

    def _failed(self, exc: BaseException) -> None:
        self.write_failures += 1
        WRITE_FAILURES.inc()
        kind = ("database unavailable" if database_away(exc) else "write failed") + \
            f": {describe(exc)}"
        state = kind.split(":", 2)[0] + ":" + type(exc).__name__
        if self.failing != state:
            if self.failing is None:
                self._failing_since = time.monotonic()
            log.warning("store writer: %s; holding the batch, nothing acked, retrying", kind)
            self.failing = state

    def _recovered(self) -> None:
        if self.failing is not None:
            log.warning("store writer: writing again after %.1f s (%d failed attempts so far)",
                        time.monotonic() - self._failing_since, self.write_failures)
            self.failing = None


def _poison(item: Item, exc: BaseException) -> tuple[Incoming, BadLine]:
    message, index, line, _ = item
    return message, BadLine(index, line, f"store refused the result: {describe(exc)}")
