"""The storage writer: enriched results from RabbitMQ into the store, acked after commit.

Consumes ``Names.enriched_queue`` with a prefetch of at least twice the batch size (so the
next batch is already arriving while one is written), and for each batch, bounded by
``batch_size`` messages and ``max_delay`` seconds after its first message:

1. validates every body; an invalid one becomes a dead letter (confirmed) with the reason;
2. ``await store.write(results)``: one idempotent, committed write of the batch;
3. acks the whole batch with one ``basic.ack(multiple=True)`` on its last delivery tag
   (one channel, batches handled in delivery order, so that covers exactly this batch).

When the write fails nothing is acked: the batch is kept and written again after a backoff
(1 s doubling to 30 s) until it succeeds, while the rest of the stream waits in RabbitMQ.
One log line per change of state (failing with a new kind of error, then recovered). A
failure that is not about reaching the database and that repeats is narrowed down by
halving the batch: a single result that fails while its sibling half was written is a
poison result, and becomes a dead letter instead of wedging the stream.

If the broker connection is lost, the batch in hand is dropped (RabbitMQ redelivers it;
a batch already committed is written again, adding nothing) and the writer reconnects.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Protocol

import aio_pika
import aio_pika.abc
import asyncpg

from brokerscan.model import ScanResult
from brokerscan.settings import Settings
from storage.db import DatabaseError
from storage.deadletter import (
    CONNECTION_ERRORS,
    InvalidResult,
    StreamConsumer,
    dead_letter,
    describe,
    parse_result,
)

__all__ = ["ResultStore", "StoreWriter", "is_unreachable"]

log = logging.getLogger(__name__)

_RETRY_FIRST = 1.0
_RETRY_MAX = 30.0
_BISECT_AFTER = 3  # failures of one batch, not about connectivity, before we narrow it down

Pending = list[tuple[aio_pika.abc.AbstractIncomingMessage, ScanResult]]


class ResultStore(Protocol):
    """What the writer needs of :class:`storage.store.Store`."""

    async def write(self, results: Sequence[ScanResult]) -> int: ...


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot be reached, as
    opposed to refusing this particular data."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError | ConnectionError | TimeoutError
                      | asyncpg.PostgresConnectionError | asyncpg.InterfaceError
                      | asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
            return True
        text = str(seen).lower()
        if isinstance(seen, DatabaseError) and ("cannot reach" in text
                                                or "cannot connect" in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StoreWriter(StreamConsumer):
    """Write the enriched stream into a store in batches; ack after commit.

    Counters: ``consumed``, ``written`` (results in committed writes), ``new_rows`` (what
    the store reported as new), ``batches``, ``dead_lettered``, ``write_failures``,
    ``reconnects``; ``failing`` is the current write error (None when healthy).

    :param settings: deployment settings (``results_url``, ``namespace``).
    :param store: the store; its ``write`` must be idempotent and committed on return.
    :param batch_size: most results per write.
    :param max_delay: seconds a batch waits to fill after its first message.
    :param prefetch: unacked deliveries in hand; default ``min(2 * batch_size, 65535)``.
    """

    def __init__(self, settings: Settings, store: ResultStore, *, batch_size: int = 2000,
                 max_delay: float = 0.5, prefetch: int | None = None) -> None:
        names = settings.names()
        prefetch = prefetch if prefetch is not None else min(2 * batch_size, 65535)
        if batch_size < 1 or prefetch < batch_size:
            raise ValueError("need 1 <= batch_size <= prefetch")
        super().__init__(settings.results_url, names, names.enriched_queue, prefetch=prefetch,
                         batch_size=batch_size, stage="store")
        self.store = store
        self.max_delay = max_delay
        self.written = self.new_rows = self.batches = self.write_failures = 0
        self.failing: str | None = None
        self._failing_since = 0.0

    def collect_window(self) -> float:
        return self.max_delay

    async def handle(self, batch: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> None:
        """Validate, write (retrying until it commits), then ack the batch."""
        pending: Pending = []
        dead: list[tuple[aio_pika.abc.AbstractIncomingMessage, str]] = []
        for message in batch:
            try:
                result = parse_result(message)
            except InvalidResult as exc:
                dead.append((message, str(exc)))
                continue
            if result.sweep_id is None or result.sweep_started_at is None:
                # The store keys observations on them: such a result can never be written.
                dead.append((message, "not storable: no sweep_id or sweep_started_at"))
                continue
            pending.append((message, result))
        if pending:
            dead += await self._write_until_done(pending)
        if self.stopping and self.failing is not None:
            return  # stopped while the store was failing: nothing acked, all redelivered
        await self._dead_letter(dead)
        try:
            await batch[-1].ack(multiple=True)
        except CONNECTION_ERRORS as exc:
            raise self.connection_lost(f"ack failed: {describe(exc)}") from None
        self.batches += 1

    async def _dead_letter(self, dead: list[tuple[aio_pika.abc.AbstractIncomingMessage,
                                                  str]]) -> None:
        if not dead:
            return
        assert self.topology is not None
        outcomes = await self.publish_all([
            (self.topology.dead, dead_letter(m, reason, "store"), m.routing_key or "")
            for m, reason in dead])
        failed = [o for o in outcomes if o is not None]
        if failed:  # not confirmed: ack nothing, let the whole batch come back
            raise self.connection_lost(f"dead letter not confirmed: {describe(failed[0])}")
        self.dead_lettered += len(dead)

    async def _write_until_done(self, pending: Pending) -> list[
            tuple[aio_pika.abc.AbstractIncomingMessage, str]]:
        """Write ``pending`` until it commits; returns poison results found on the way."""
        attempt = 0
        while True:
            try:
                await self._write(pending)
                self._recovered()
                return []
            except Exception as exc:
                self._failed(exc)
                # ValueError is the store's "this data is wrong": narrow it down at once.
                patience = 1 if isinstance(exc, ValueError) else _BISECT_AFTER
                if not is_unreachable(exc) and attempt + 1 >= patience:
                    poison: list[tuple[aio_pika.abc.AbstractIncomingMessage, str]] | None = None
                    if len(pending) > 1:
                        poison = await self._bisect(pending)
                    elif isinstance(exc, ValueError):
                        poison = [(pending[0][0], f"store refused the result: {describe(exc)}")]
                    if poison is not None:
                        self._recovered()
                        return poison
            if self.stopping:
                return []
            if self.channel_lost():
                raise self.connection_lost("channel closed while the store was failing")
            await self.sleep(min(_RETRY_MAX, _RETRY_FIRST * 2**attempt)
                             * random.uniform(0.75, 1.0))
            attempt += 1

    async def _write(self, pending: Pending) -> None:
        new = await self.store.write([result for _, result in pending])
        self.written += len(pending)
        self.new_rows += new

    async def _bisect(self, pending: Pending, proven: bool = False) -> list[
            tuple[aio_pika.abc.AbstractIncomingMessage, str]] | None:
        """Write halves to find the results the store refuses while it accepts others.

        :param proven: some other part of the batch was written, so the store works.
        :returns: the poison results with reasons (everything else is written), or None
            if the failure looks systemic (no part could be written, or it is unreachable).
        """
        if len(pending) == 1:
            try:
                await self._write(pending)
                return []
            except Exception as exc:
                if is_unreachable(exc) or not proven:
                    return None
                return [(pending[0][0], f"store refused the result: {describe(exc)}")]
        middle = len(pending) // 2
        failed: list[Pending] = []
        for half in (pending[:middle], pending[middle:]):
            try:
                await self._write(half)
            except Exception as exc:
                if is_unreachable(exc):
                    return None
                failed.append(half)
        if len(failed) == 2 and not proven:
            return None  # nothing went in: the store itself is failing, keep retrying
        poison: list[tuple[aio_pika.abc.AbstractIncomingMessage, str]] = []
        for half in failed:
            found = await self._bisect(half, proven=True)
            if found is None:
                return None
            poison += found
        return poison

    def _failed(self, exc: BaseException) -> None:
        self.write_failures += 1
        kind = ("database unreachable" if is_unreachable(exc) else "write failed") + \
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
