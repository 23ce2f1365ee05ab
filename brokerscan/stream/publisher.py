"""Publish scan results to the RabbitMQ results exchange, at least once, with confirms.

A shard task hands every :class:`~brokerscan.model.ScanResult` to :meth:`ResultPublisher.add`
(synchronous: the engine's sink only buffers) and awaits :meth:`ResultPublisher.flush` before
its Celery message is acked: ``flush()`` returns only when the broker has confirmed every
result added so far. :meth:`ResultPublisher.wait_ready` is the engine's backpressure hook.

Messages (the batch format of :mod:`brokerscan.stream.wire`): persistent, ``content_type``
``application/x-ndjson``, body one ``result.model_dump_json()`` per line, header ``results``
= the number of lines, built by :func:`brokerscan.stream.wire.batch_message`. Results are grouped so
that every message is homogeneous: one routing key :func:`routing_key`
(``result.<protocol|none>.<status>``), one ``schema_version``, ``sweep_id`` and ``shard``
(headers; ``sweep_id`` and ``shard`` left out when unknown). A message carries at most
``results_per_message`` results (and never more than ``batch_size``); its ``message_id`` is
:func:`brokerscan.stream.wire.batch_id` of the ``(sweep, ip, port)`` keys it carries, so a message
published again has the same id. With ``results_per_message=1`` every message is a batch of
one (the same content type: one format for consumers to read, not two). A group goes out when
it is full, when it has waited ``flush_interval`` seconds, or when somebody flushes.

Delivery (why it is written by hand rather than left to ``connect_robust``): a background task
takes whole messages, up to ``batch_size`` results in all, issues all their publishes at once
and awaits the confirms together (one-at-a-time confirm waits cost a round trip and an fsync
batch each). Whatever was not acked in a round -- nacked, returned as unroutable, timed out,
or lost with the channel or connection -- is published again after a backoff, on a new
connection if the old one failed. A robust connection restores channels but never replays
failed publishes, so the retry loop has to be ours anyway. Duplicates are possible (a whole
message again, same ``message_id``); losses are not: if ``retry_budget`` seconds pass without
a single confirm, the publisher fails and :meth:`flush`, :meth:`wait_ready` and :meth:`add`
raise :class:`PublisherError`.

Why one piece: buffering, sealing, delivery rounds and the retry budget all work on the
same state (open groups, sealed messages, counters, the one connection); split apart, one
state machine would be read across files.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from brokerscan.model import ScanResult
from brokerscan.names import Names
from brokerscan.oneline import describe, redact
from brokerscan.stream.connection import backoff
from brokerscan.stream.topology import declare_results
from brokerscan.stream.wire import batch_id, batch_message

__all__ = ["PublisherError", "ResultPublisher", "message_key", "routing_key"]

log = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05  # seconds before the first retry; doubles up to _BACKOFF_MAX
_BACKOFF_MAX = 2.0


class PublisherError(RuntimeError):
    """Results could not be confirmed by the broker (or the publisher is not usable)."""


def message_key(result: ScanResult) -> str:
    """The deterministic key of a result: ``"sweep|ip|port"`` (empty sweep if none). What
    consumers and tests count results by; a message's id is
    :func:`brokerscan.stream.wire.batch_id` of the keys of the results it carries.

    :param result: the result to name.
    :returns: the key, identical for every publish of the same observation.
    """
    sweep, ip, port = result.key
    return f"{sweep or ''}|{ip}|{port}"


def routing_key(result: ScanResult) -> str:
    """The topic routing key of a result: ``result.<protocol or none>.<status>``.

    :param result: the result to route.
    :returns: e.g. ``result.mqtt.success`` or ``result.none.connection-refused``.
    """
    protocol = result.protocol.value if result.protocol is not None else "none"
    return f"result.{protocol}.{result.status.value}"


_GroupKey = tuple[str, int, str | None, int | None]  # routing key, schema, sweep, shard


@dataclass(slots=True)
class _Group:
    """Results that will share one message, still open for more."""

    routing_key: str
    headers: dict[str, aio_pika.abc.FieldValue]
    opened_at: float  # time.monotonic() of its first result
    lines: list[bytes] = field(default_factory=list)
    keys: list[tuple[str | None, str, int]] = field(default_factory=list)


@dataclass(slots=True)
class _Outgoing:
    """A sealed message: published (again) until confirmed."""

    message: aio_pika.Message
    routing_key: str
    results: int
    attempts: int = 0


class ResultPublisher:
    """Buffers results and publishes them, many to a message, confirmed, at least once.

    Use it from one event loop (the worker process's loop, created after fork); one
    publisher, and one connection, serves many shards.

    Counters (cumulative), in results: ``added``, ``published`` (retries included),
    ``republished`` (the retries), ``confirmed`` (acked by the broker; each result counts
    once). In messages: ``messages`` (publishes issued, retries included), ``nacked``,
    ``returned`` and ``timed_out`` (failed publishes by cause). And ``reconnects``.

    :param url: AMQP URL of the results broker (``Settings.results_url``).
    :param names: names of the deployment; the exchange is ``names.results_exchange``.
    :param batch_size: results per round: a round takes whole messages up to this many
        results, issues their publishes together and awaits their confirms together. A
        message never carries more than this many results either.
    :param results_per_message: the most results one message carries.
    :param max_pending: :meth:`wait_ready` blocks while this many results are unconfirmed.
    :param flush_interval: seconds a partial round (or a message not full) waits for more
        results before it goes.
    :param retry_budget: seconds of failed rounds and reconnects, without any confirm,
        after which the publisher gives up with :class:`PublisherError`.
    :param confirm_timeout: seconds a round waits for its confirms; after that the
        connection is treated as dead and the unconfirmed messages are published again.
    :param connect_timeout: seconds allowed to one connection attempt.
    :param declare_queue: also declare the durable raw results queue and bind it, so that
        nothing published is ever unroutable (off only to test returns).
    """

    def __init__(
        self,
        url: str,
        names: Names,
        *,
        batch_size: int = 500,
        results_per_message: int = 250,
        max_pending: int = 5000,
        flush_interval: float = 0.2,
        retry_budget: float = 60.0,
        confirm_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        declare_queue: bool = True,
    ) -> None:
        if min(batch_size, results_per_message, max_pending) < 1:
            raise ValueError("batch_size, results_per_message and max_pending must be at "
                             "least 1")
        self.url = url
        self.names = names
        self.exchange_name = names.results_exchange
        self.declare_queue = declare_queue
        self.batch_size = batch_size
        self.results_per_message = results_per_message
        self._seal_at = min(results_per_message, batch_size)
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self.retry_budget = retry_budget
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout

        self.added = self.published = self.confirmed = self.republished = 0
        self.messages = self.nacked = self.returned = self.timed_out = self.reconnects = 0

        self._groups: dict[_GroupKey, _Group] = {}  # open, oldest first
        self._ready: collections.deque[_Outgoing] = collections.deque()  # sealed
        self._ready_results = 0
        self._buffered = 0  # results in open groups and sealed messages
        self._inflight = 0
        self._urgent = 0  # callers waiting in flush()/wait_ready(): do not linger
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False
        self._error: PublisherError | None = None
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._runner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public API

    @property
    def pending(self) -> int:
        """Results added but not yet confirmed (buffered plus in flight)."""
        return self._buffered + self._inflight

    @property
    def error(self) -> PublisherError | None:
        """Why the publisher failed, if it did. A failed publisher stays failed (its
        unconfirmed results are dropped, and their shards must run again): close it and
        start a new one."""
        return self._error

    async def start(self) -> None:
        """Connect, open a channel with publisher confirms and declare the exchange.

        :raises PublisherError: the broker cannot be reached or refuses us (no retry here:
            a broker that is down at start-up is the operator's problem, said in one line).
        """
        if self._runner is not None:
            raise PublisherError("ResultPublisher.start() called twice")
        try:
            await self._connect()
        except Exception as exc:
            await self._disconnect()
            raise PublisherError(
                f"cannot open the results exchange {self.exchange_name!r} at "
                f"{redact(self.url)}: {describe(exc)}"
            ) from exc
        self._runner = asyncio.get_running_loop().create_task(
            self._run(), name=f"publish:{self.exchange_name}"
        )
        self._runner.add_done_callback(self._on_runner_done)

    def add(self, result: ScanResult, shard: int | None = None) -> None:
        """Buffer one result for publishing (never blocks; see :meth:`wait_ready`).

        :param result: the result to publish.
        :param shard: the index of the shard that produced it, sent as header ``shard``.
        :raises PublisherError: the publisher has failed or is closed.
        """
        if self._error is not None:
            raise self._error
        if self._closing or self._runner is None:
            raise PublisherError("ResultPublisher.add() outside start()..close()")
        rkey = routing_key(result)
        group_key = (rkey, result.schema_version, result.sweep_id, shard)
        group = self._groups.get(group_key)
        if group is None:
            headers: dict[str, aio_pika.abc.FieldValue] = {
                "schema_version": result.schema_version}
            if result.sweep_id is not None:
                headers["sweep_id"] = result.sweep_id
            if shard is not None:
                headers["shard"] = shard
            group = self._groups[group_key] = _Group(rkey, headers, time.monotonic())
        group.lines.append(result.model_dump_json().encode())
        group.keys.append(result.key)
        self._buffered += 1
        self.added += 1
        if len(group.lines) >= self._seal_at:
            self._seal(group_key)
        if self._buffered == 1 or self._ready_results >= self.batch_size:
            self._wake.set()

    async def wait_ready(self) -> None:
        """Return once fewer than ``max_pending`` results are unconfirmed.

        :raises PublisherError: the publisher failed while we waited.
        """
        if self.pending < self.max_pending:
            self._raise_if_failed()
            return
        self._urgent += 1
        self._wake.set()
        try:
            while self.pending >= self.max_pending:
                self._raise_if_failed()
                await self._wait_change()
        finally:
            self._urgent -= 1
        self._raise_if_failed()

    async def flush(self) -> None:
        """Return only when every result added so far is confirmed by the broker.

        :raises PublisherError: the retry budget ran out (nothing confirmed for
            ``retry_budget`` seconds) or the publisher is not started.
        """
        if self._runner is None:
            raise PublisherError("ResultPublisher.flush() before start()")
        target = self.added
        self._urgent += 1
        self._wake.set()
        try:
            while self.confirmed < target:
                self._raise_if_failed()
                await self._wait_change()
        finally:
            self._urgent -= 1

    async def close(self) -> None:
        """Flush what is pending (unless the publisher already failed), then disconnect.

        :raises PublisherError: pending results could not be confirmed.
        """
        try:
            if self._runner is not None and self._error is None and self.pending:
                await self.flush()
        finally:
            self._closing = True
            self._wake.set()
            if self._runner is not None and not self._runner.done():
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
            await self._disconnect()

    # ------------------------------------------------------------------ background task

    async def _run(self) -> None:
        while True:
            await self._wait_for_work()
            batch = self._take()
            if not batch:
                return  # closing
            count = sum(item.results for item in batch)
            self._buffered -= count
            self._inflight = count
            try:
                await self._deliver(batch)
            finally:
                self._inflight = 0
                self._notify()

    async def _wait_for_work(self) -> None:
        while not self._buffered and not self._closing:
            self._wake.clear()
            await self._wake.wait()
        # Let a partial round fill up for a moment, unless somebody is waiting on us.
        deadline = asyncio.get_running_loop().time() + self.flush_interval
        while self._ready_results < self.batch_size and not (self._urgent or self._closing):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    def _take(self) -> list[_Outgoing]:
        """The messages of the next round: whole messages, up to ``batch_size`` results.

        A full round of sealed messages leaves the open groups to fill, except those that
        have waited ``flush_interval`` already (they go first, so that a rare routing key
        is not held back by a busy one); a partial round (the wait is over, or somebody
        flushes) seals and takes every group.
        """
        if self._ready_results >= self.batch_size:
            too_old = time.monotonic() - self.flush_interval
            for key in [k for k, g in self._groups.items() if g.opened_at <= too_old]:
                self._seal(key, first=True)
        else:
            for key in list(self._groups):
                self._seal(key)
        batch: list[_Outgoing] = []
        count = 0
        while self._ready and count + self._ready[0].results <= self.batch_size:
            item = self._ready.popleft()
            batch.append(item)
            count += item.results
        self._ready_results -= count
        return batch

    def _seal(self, key: _GroupKey, *, first: bool = False) -> None:
        """Close the open group ``key`` into a message ready to publish (next, if
        ``first``)."""
        group = self._groups.pop(key)
        message = batch_message(group.lines, message_id=batch_id(group.keys),
                                headers=group.headers)
        outgoing = _Outgoing(message, group.routing_key, len(group.lines))
        if first:
            self._ready.appendleft(outgoing)
        else:
            self._ready.append(outgoing)
        self._ready_results += len(group.lines)

    async def _deliver(self, batch: list[_Outgoing]) -> None:
        """Publish ``batch`` until every message is confirmed, or fail the publisher."""
        loop = asyncio.get_running_loop()
        todo = batch
        failing_since: float | None = None
        attempt = 0
        last_error = "no error"
        while True:
            if self._connection is None or self._connection.is_closed:
                # Dropped (by us after a failed round, or by the broker while idle).
                await self._disconnect()
                last_error = await self._reconnect(failing_since, last_error)
            failed, last_error_now = await self._round(todo)
            unconfirmed = sum(item.results for item in failed)
            progress = sum(item.results for item in todo) - unconfirmed
            self.confirmed += progress
            self._inflight -= progress
            self._notify()
            if not failed:
                return
            last_error = last_error_now
            if progress or failing_since is None:
                failing_since, attempt = loop.time(), 0
            self._check_budget(failing_since, unconfirmed, last_error)
            await asyncio.sleep(backoff(attempt, first=_BACKOFF_FIRST, cap=_BACKOFF_MAX))
            attempt += 1
            todo = failed

    async def _round(self, todo: list[_Outgoing]) -> tuple[list[_Outgoing], str]:
        """Publish ``todo`` concurrently and await the confirms together.

        :returns: the messages not acked, and a description of the last failure.
        """
        exchange = self._exchange
        assert exchange is not None
        for item in todo:
            if item.attempts:
                self.republished += item.results
            item.attempts += 1
            self.published += item.results
        self.messages += len(todo)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(exchange.publish(item.message, item.routing_key, mandatory=True))
            for item in todo
        ]
        _, still_open = await asyncio.wait(tasks, timeout=self.confirm_timeout)
        for task in still_open:
            task.cancel()
        await asyncio.gather(*still_open, return_exceptions=True)
        failed: list[_Outgoing] = []
        last_error = ""
        broken = False
        for item, task in zip(todo, tasks, strict=True):
            exc = TimeoutError("no confirm") if task.cancelled() else task.exception()
            if exc is None:
                continue
            failed.append(item)
            if isinstance(exc, aio_pika.exceptions.PublishError):
                self.returned += 1  # unroutable: no queue bound for this routing key (yet)
                last_error = f"returned unroutable ({item.routing_key})"
            elif isinstance(exc, aio_pika.exceptions.DeliveryError):
                self.nacked += 1
                last_error = "nacked by the broker"
            elif isinstance(exc, TimeoutError):
                self.timed_out += 1
                last_error, broken = f"no confirm within {self.confirm_timeout:g} s", True
            else:  # the channel or connection is gone
                last_error, broken = describe(exc), True
        if broken:
            log.warning("results publisher: %d of %d unconfirmed (%s); reconnecting",
                        len(failed), len(todo), last_error)
            await self._disconnect()
        return failed, last_error

    async def _reconnect(self, failing_since: float | None, last_error: str) -> str:
        """Open a new connection, with backoff, within the retry budget."""
        loop = asyncio.get_running_loop()
        since = loop.time() if failing_since is None else failing_since
        attempt = 0
        while True:
            try:
                await self._connect()
            except Exception as exc:
                last_error = f"reconnect failed: {describe(exc)}"
                log.warning("results publisher: %s", last_error)
                await self._disconnect()
            else:
                self.reconnects += 1
                return last_error
            self._check_budget(since, self._inflight, last_error)
            await asyncio.sleep(backoff(attempt, first=_BACKOFF_FIRST, cap=_BACKOFF_MAX))
            attempt += 1

    def _check_budget(self, since: float, unconfirmed: int, last_error: str) -> None:
        waited = asyncio.get_running_loop().time() - since
        if waited > self.retry_budget:
            raise PublisherError(
                f"results exchange {self.exchange_name!r} at {redact(self.url)}: "
                f"{unconfirmed} result(s) still unconfirmed after retrying for "
                f"{waited:.1f} s (budget {self.retry_budget:g} s); last error: {last_error}"
            )

    # ------------------------------------------------------------------ plumbing

    async def _connect(self) -> None:
        timeout = self.connect_timeout
        connection = await asyncio.wait_for(aio_pika.connect(self.url, timeout=timeout),
                                            timeout)
        self._connection = connection
        async with asyncio.timeout(timeout):
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchange = await declare_results(channel, self.names,
                                                   with_queue=self.declare_queue)

    async def _disconnect(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is None or connection.is_closed:
            return
        # A stalled peer never answers Connection.Close: bound the wait and move on.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await connection.close()

    def _on_runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._error is None:
            if isinstance(exc, PublisherError):
                self._error = exc
            else:
                self._error = PublisherError(f"results publisher crashed: {exc!r}")
                self._error.__cause__ = exc
            log.error("%s", self._error)
        self._notify()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._runner is not None and self._runner.done() and self.pending:
            raise PublisherError("results publisher is closed with results unconfirmed")

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_change(self) -> None:
        self._changed.clear()  # no await since the caller's check: no wake-up is lost
        await self._changed.wait()
