"""The loop both results-stream consumers run (:mod:`enrichment.consumer`,
:mod:`storage.consumer`).

:class:`StreamConsumer`: connect, declare the topology, consume with a prefetch, hand batches
to ``handle``; on connection loss drop the batch in hand (RabbitMQ redelivers every unacked
message) and reconnect with backoff, one log line per state change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import aio_pika
import aio_pika.abc

from brokerscan.names import Names
from brokerscan.oneline import describe, redact
from brokerscan.stream.connection import (
    CONNECTION_ERRORS,
    START_ERRORS,
    StreamError,
    backoff,
)
from brokerscan.stream.topology import StreamTopology, declare_stream
from brokerscan.stream.wire import result_count

__all__ = ["StreamConsumer", "tune_gc"]

log = logging.getLogger(__name__)


class _ConnectionLost(Exception):
    """The channel or connection closed under us: drop the batch, reconnect."""


_RECONNECT: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, _ConnectionLost)


class StreamConsumer(ABC):
    """Consume one queue of the stream in batches, reconnecting for ever.

    Subclasses implement :meth:`handle` (ack what they finished; raise or return without
    acking what they did not) and may override :meth:`collect_window`. A subclass whose
    ``handle`` leaves work running when it returns (the store writer's pipelined write)
    overrides :meth:`drain`, :meth:`abandon` and :meth:`raise_failed`, and calls
    :meth:`wake` when that work fails.

    :param url: AMQP URL of the results broker.
    :param names: the deployment's names.
    :param queue: the queue name to consume.
    :param prefetch: unacked messages RabbitMQ may hand us (1..65535).
    :param stage: ``enrich`` or ``store``, written into dead letters and log lines.
    """

    def __init__(self, url: str, names: Names, queue: str, *, prefetch: int,
                 batch_size: int, stage: str, connect_timeout: float = 10.0) -> None:
        if not 1 <= prefetch <= 65535:
            raise ValueError("prefetch must be in 1..65535 (an AMQP short)")
        self.url, self.names, self.queue_name, self.stage = url, names, queue, stage
        self.prefetch, self.batch_size, self.connect_timeout = prefetch, batch_size, connect_timeout
        self.consumed = self.dead_lettered = self.reconnects = 0
        #: dead letters sent, by kind of reason (:func:`brokerscan.stream.metrics.reason_kind`)
        self.dead_reasons: collections.Counter[str] = collections.Counter()
        #: age in seconds of the oldest result of the last batch handled (None before one)
        self.lag_seconds: float | None = None
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None] | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self.topology: StreamTopology | None = None

    @abstractmethod
    async def handle(self, batch: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> None:
        """Process one batch (delivery order, one channel) and ack it."""

    def collect_window(self) -> float:
        """Seconds to wait for more messages after the first of a batch."""
        return 0.0

    async def drain(self) -> None:
        """Finish work :meth:`handle` left running (called when the loop stops)."""
        return None

    def abandon(self) -> None:
        """Drop work :meth:`handle` left running (the session ended in an error)."""
        return None

    def raise_failed(self) -> None:
        """Raise the error of work :meth:`handle` left running, if it failed."""
        return None

    def note_dead(self, reasons: Iterable[str]) -> None:
        """Count dead letters that were confirmed, by kind of reason."""
        from brokerscan.stream.metrics import reason_kind

        for reason in reasons:
            self.dead_reasons[reason_kind(reason)] += 1

    def note_lag(self, oldest: datetime | None) -> None:
        """Record how old the oldest result of the batch just handled was."""
        if oldest is not None:
            self.lag_seconds = max(0.0, (datetime.now(UTC) - oldest).total_seconds())

    def wake(self) -> None:
        """Make the loop look up from waiting for messages (to call :meth:`raise_failed`)."""
        if self._inbox is not None:
            self._inbox.put_nowait(None)

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in hand and return (signal-handler safe)."""
        self._stopping.set()
        if self._inbox is not None:
            self._inbox.put_nowait(None)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def check(self) -> None:
        """Connect once and declare the topology, to fail fast at start-up.

        :raises StreamError: the broker is unreachable or refuses us.
        """
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
                async with connection:
                    await declare_stream(await connection.channel(), self.names)
        except START_ERRORS as exc:
            raise StreamError(f"cannot reach the results broker at {redact(self.url)}: "
                              f"{describe(exc)}") from None

    async def run(self) -> None:
        """Consume until :meth:`stop`; reconnect after any broker failure."""
        attempt = 0
        failing: str | None = None
        while not self.stopping:
            try:
                await self._session()
            except _RECONNECT as exc:
                self.connected.clear()
                state = describe(exc) if not isinstance(exc, _ConnectionLost) else str(exc)
                if failing is None:
                    log.warning("%s consumer: lost the broker (%s); reconnecting",
                                self.stage, state)
                failing = state
                self.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff(attempt))
                attempt += 1
                continue
            if failing is not None:
                failing = None
            attempt = 0
        self.connected.clear()

    async def _session(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None] = asyncio.Queue()
        try:
            channel = await connection.channel(publisher_confirms=True,
                                               on_return_raises=True)
            channel.close_callbacks.add(lambda *_: inbox.put_nowait(None))
            await channel.set_qos(prefetch_count=self.prefetch)
            self.topology = await declare_stream(channel, self.names)
            self._channel, self._inbox = channel, inbox
            queue = await channel.get_queue(self.queue_name, ensure=False)

            async def deliver(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                inbox.put_nowait(message)

            await queue.consume(deliver)
            self.connected.set()
            log.info("%s consumer: consuming %s (prefetch %d)", self.stage, self.queue_name,
                     self.prefetch)
            while not self.stopping:
                batch = await self._collect(inbox)
                self.raise_failed()
                if channel.is_closed:
                    raise _ConnectionLost("channel closed")
                if batch:
                    await self.handle(batch)
            await self.drain()
        finally:
            self.abandon()
            self._inbox = self._channel = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await connection.close()

    async def _collect(self, inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage | None],
                       ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        first = await inbox.get()
        if first is None:
            return []
        batch = [first]
        size = result_count(first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.collect_window()
        while size < self.batch_size:
            try:
                item = inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await inbox.get()
                except TimeoutError:
                    break
            if item is None:  # stop, or the channel closed: the caller checks which
                inbox.put_nowait(None)
                break
            batch.append(item)
            size += result_count(item)
        self.consumed += size
        return batch

    def channel_lost(self) -> bool:
        """True when the channel of the batch in hand is gone (its acks would fail)."""
        return self._channel is None or self._channel.is_closed

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on :meth:`stop`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def publish_all(
        self, items: Sequence[tuple[aio_pika.abc.AbstractExchange, aio_pika.Message, str]],
    ) -> list[BaseException | None]:
        """Publish concurrently, await every confirm together; one outcome per item."""
        outcomes = await asyncio.gather(
            *(exchange.publish(message, key, mandatory=True) for exchange, message, key in items),
            return_exceptions=True)
        return [o if isinstance(o, BaseException) else None for o in outcomes]

    def connection_lost(self, why: str) -> _ConnectionLost:
        """The exception :meth:`handle` raises to drop its batch and reconnect."""
        return _ConnectionLost(why)


def tune_gc() -> None:
    """Garbage collection for a stream worker, called once start-up is done.

    A worker allocates many small containers per result (models, rows, tuples), nearly all
    freed again without cycles, while start-up left a large heap of long-lived objects
    (modules, pydantic schemas, the enrichment tables). With the default thresholds the
    collector runs every 700 allocations and walks that heap over and over: about a third
    of the store writer's CPU (``bench/ingest.py``). So: freeze what start-up made (never
    traversed again) and collect the young generation every 50,000 allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
