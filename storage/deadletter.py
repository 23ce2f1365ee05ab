"""Dead letters, and the plumbing both results-stream consumers share.

The stream is raw results -> enrichment -> enriched results -> storage. Both consumers
(:mod:`enrichment.consumer`, :mod:`storage.consumer`) declare the whole topology
(:func:`declare_stream`, idempotent), read bodies with :func:`parse_result`, and send what
they cannot use to the dead-letter exchange with :func:`dead_letter` instead of dropping it:

- a dead letter keeps the original body, message id, headers and routing key (also in the
  header ``x-brokerscan-routing-key``) and adds ``x-brokerscan-error`` (the one-line
  reason) and ``x-brokerscan-stage`` (``enrich`` or ``store``);
- the dead-letter exchange is a durable topic exchange; the durable dead-letter queue is
  bound with ``#``, so every dead letter is kept until an operator looks at it
  (:func:`stream_status` counts and peeks them without taking them away).

:class:`StreamConsumer` is the loop both consumers run: connect, declare, consume with a
prefetch, hand batches to ``handle``; on connection loss drop the batch in hand (RabbitMQ
redelivers every unacked message) and reconnect with backoff, one log line per state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions
import pydantic
import yarl

from brokerscan.model import SCHEMA_VERSION, ScanResult
from brokerscan.names import Names
from brokerscan.wire import (
    BATCH_CONTENT_TYPE,
    COUNT_HEADER,
    SINGLE_CONTENT_TYPE,
    message_lines,
    result_count,
)

__all__ = [
    "ERROR_HEADER",
    "ROUTING_KEY_HEADER",
    "STAGE_HEADER",
    "BadLine",
    "DeadLetter",
    "GoodLine",
    "InvalidResult",
    "QueueDepth",
    "StreamConsumer",
    "StreamError",
    "StreamStatus",
    "StreamTopology",
    "dead_letter",
    "dead_letter_line",
    "declare_stream",
    "delete_stream",
    "describe",
    "parse_line",
    "parse_result",
    "parse_results",
    "redact",
    "stream_status",
]

log = logging.getLogger(__name__)

ERROR_HEADER = "x-brokerscan-error"
ROUTING_KEY_HEADER = "x-brokerscan-routing-key"
STAGE_HEADER = "x-brokerscan-stage"
_REASON_MAX = 300  # characters of a reason kept in the header: one line, not an essay
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 5.0

#: What a lost or refused broker connection raises (caught by the reconnect loop).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)


class StreamError(RuntimeError):
    """The stream cannot run: broker unreachable at start-up, or a setting is wrong."""


class InvalidResult(ValueError):
    """A message body that is not a ScanResult this brokerscan understands; ``str()`` is the
    one-line reason that goes into the dead letter."""


class _ConnectionLost(Exception):
    """The channel or connection closed under us: drop the batch, reconnect."""


_RECONNECT: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, _ConnectionLost)
_START_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS,
                                                  aio_pika.exceptions.AMQPException)


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (just the type when the message is empty)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parsed = yarl.URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def parse_result(message: aio_pika.abc.AbstractMessage) -> ScanResult:
    """Validate a single-result message body as a :class:`ScanResult` we understand.

    :raises InvalidResult: with the one-line reason (unknown schema version, bad JSON, or
        the first validation error and how many there were).
    """
    _check_schema_header(message)
    return parse_line(message.body)


def parse_line(body: bytes) -> ScanResult:
    """Validate one JSON document as a :class:`ScanResult`.

    :raises InvalidResult: with the one-line reason.
    """
    try:
        return ScanResult.model_validate_json(body)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "literal_error" and first["loc"] == ("schema_version",):
            reason = f"unknown schema_version {first.get('input')!r}"
        else:
            reason = f"invalid result: {where}: {first['msg']}"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidResult(_one_line(reason) + more) from None


def _check_schema_header(message: aio_pika.abc.AbstractMessage) -> None:
    header = (message.headers or {}).get("schema_version")
    if header is not None and header != SCHEMA_VERSION:
        raise InvalidResult(f"unknown schema_version {header!r} (this brokerscan reads "
                            f"{SCHEMA_VERSION})")


@dataclass(frozen=True, slots=True)
class BadLine:
    """A result document of a message that failed validation: its index in the message,
    its bytes, and the one-line reason."""

    index: int
    line: bytes
    reason: str


#: A valid result of a message: its index in the message, its bytes, the result.
GoodLine = tuple[int, bytes, ScanResult]


async def parse_results(message: aio_pika.abc.AbstractMessage, *, every: int = 0,
                        ) -> tuple[list[GoodLine], list[BadLine]]:
    """Every result a message carries (:func:`brokerscan.wire.message_lines`), validated.

    :param every: if not 0, yield to the event loop every *every* results (so that other
        work of the loop, such as a database write in flight, keeps moving).
    :returns: the valid results in order, and the lines that failed with their reasons
        (a message whose ``schema_version`` header is unknown fails as a whole: every line;
        a message without any result is one bad line, its whole body).
    """
    lines = message_lines(message)
    if not lines:
        return [], [BadLine(0, message.body, "empty message: no result in it")]
    try:
        _check_schema_header(message)
    except InvalidResult as exc:
        return [], [BadLine(i, line, str(exc)) for i, line in enumerate(lines)]
    good: list[GoodLine] = []
    bad: list[BadLine] = []
    for index, line in enumerate(lines):
        if every and index and not index % every:
            await asyncio.sleep(0)
        try:
            good.append((index, line, parse_line(line)))
        except InvalidResult as exc:
            bad.append(BadLine(index, line, str(exc)))
    return good, bad


def dead_letter(message: aio_pika.abc.AbstractIncomingMessage, reason: str,
                stage: str) -> aio_pika.Message:
    """The dead letter of ``message``: same body, id and headers, plus the reason."""
    headers: dict[str, aio_pika.abc.FieldValue] = dict(message.headers or {})
    headers[ERROR_HEADER] = _one_line(reason)
    headers[STAGE_HEADER] = stage
    headers[ROUTING_KEY_HEADER] = message.routing_key or ""
    return aio_pika.Message(
        message.body, content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
        headers=headers, app_id="brokerscan")


def dead_letter_line(message: aio_pika.abc.AbstractIncomingMessage, bad: BadLine,
                     stage: str) -> aio_pika.Message:
    """The dead letter of one result of a message: that result's bytes alone (one
    ``application/json`` document), the message's headers and reason as in
    :func:`dead_letter`, message id ``<message id>#<index>`` when the message was a batch.
    """
    headers: dict[str, aio_pika.abc.FieldValue] = dict(message.headers or {})
    headers.pop(COUNT_HEADER, None)
    headers[ERROR_HEADER] = _one_line(bad.reason)
    headers[STAGE_HEADER] = stage
    headers[ROUTING_KEY_HEADER] = message.routing_key or ""
    single = message.content_type != BATCH_CONTENT_TYPE
    message_id = message.message_id
    if not single:
        message_id = f"{message_id or ''}#{bad.index}"
    return aio_pika.Message(
        bad.line, content_type=message.content_type if single else SINGLE_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id,
        headers=headers, app_id="brokerscan")


@dataclass(frozen=True, slots=True)
class StreamTopology:
    """The declared exchanges and queues of one channel."""

    results_queue: aio_pika.abc.AbstractQueue
    enriched: aio_pika.abc.AbstractExchange
    enriched_queue: aio_pika.abc.AbstractQueue
    dead: aio_pika.abc.AbstractExchange
    dead_queue: aio_pika.abc.AbstractQueue


async def declare_stream(channel: aio_pika.abc.AbstractChannel, names: Names) -> StreamTopology:
    """Declare every exchange and queue of the results stream (idempotent): durable topic
    exchanges, durable queues; raw and enriched queues bound with ``result.#``, the dead
    letter queue with ``#``. Same arguments as :class:`workers.publish.ResultPublisher`."""
    topic = aio_pika.ExchangeType.TOPIC
    results = await channel.declare_exchange(names.results_exchange, topic, durable=True)
    results_queue = await channel.declare_queue(names.results_queue, durable=True)
    await results_queue.bind(results, "result.#")
    enriched = await channel.declare_exchange(names.enriched_exchange, topic, durable=True)
    enriched_queue = await channel.declare_queue(names.enriched_queue, durable=True)
    await enriched_queue.bind(enriched, "result.#")
    dead = await channel.declare_exchange(names.dead_letter_exchange, topic, durable=True)
    dead_queue = await channel.declare_queue(names.dead_letter_queue, durable=True)
    await dead_queue.bind(dead, "#")
    return StreamTopology(results_queue, enriched, enriched_queue, dead, dead_queue)


async def delete_stream(url: str, names: Names) -> None:
    """Delete every queue and exchange of the results stream of *names* (their messages
    too): for throwaway namespaces (tests, benchmarks), never a deployment's own."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in (names.results_queue, names.enriched_queue, names.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (names.results_exchange, names.enriched_exchange,
                         names.dead_letter_exchange):
            await channel.exchange_delete(exchange)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Ready messages (``messages``; unacked ones are not counted) and consumers."""

    name: str
    messages: int | None  # None: the queue does not exist (nothing declared it yet)
    consumers: int | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, peeked (left in the queue)."""

    message_id: str | None
    routing_key: str | None
    stage: str | None
    reason: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Queue depths of the stream and the first dead letters."""

    raw: QueueDepth
    enriched: QueueDepth
    dead: QueueDepth
    dead_letters: list[DeadLetter] = field(default_factory=list)


async def stream_status(url: str, names: Names, *, peek: int = 5,
                        limit: float = 10.0) -> StreamStatus:
    """Depths of the raw, enriched and dead-letter queues (passive declares, so nothing is
    created) and the first ``peek`` dead letters with their reasons (fetched without ack,
    then returned to the queue when the channel closes); ``limit`` bounds the whole call.

    :raises StreamError: the broker cannot be reached.
    """
    try:
        async with asyncio.timeout(limit):
            connection = await aio_pika.connect(url, timeout=limit)
            async with connection:
                depths = [await _depth(connection, name) for name in
                          (names.results_queue, names.enriched_queue, names.dead_letter_queue)]
                letters: list[DeadLetter] = []
                if peek and depths[2].messages:
                    letters = await _peek(connection, names.dead_letter_queue, peek)
    except CONNECTION_ERRORS as exc:
        raise StreamError(f"cannot reach the results broker at {redact(url)}: "
                          f"{describe(exc)}") from None
    return StreamStatus(depths[0], depths[1], depths[2], letters)


async def _depth(connection: aio_pika.abc.AbstractConnection, name: str) -> QueueDepth:
    channel = await connection.channel()  # a failed passive declare closes its channel
    try:
        queue = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return QueueDepth(name, None, None)
    result = queue.declaration_result
    with contextlib.suppress(*CONNECTION_ERRORS):
        await channel.close()
    return QueueDepth(name, result.message_count, result.consumer_count)


async def _peek(connection: aio_pika.abc.AbstractConnection, name: str,
                count: int) -> list[DeadLetter]:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=count)
    queue = await channel.get_queue(name)
    letters: list[DeadLetter] = []
    for _ in range(count):
        message = await queue.get(no_ack=False, fail=False, timeout=5)
        if message is None:
            break
        headers = message.headers or {}
        letters.append(DeadLetter(
            message.message_id,
            _text(headers.get(ROUTING_KEY_HEADER)) or message.routing_key,
            _text(headers.get(STAGE_HEADER)), _text(headers.get(ERROR_HEADER)), message.body))
    await channel.close()  # unacked: every peeked letter goes back to the queue
    return letters


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- consumer loop


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0, 1, ...): doubling, capped, jittered."""
    delay: float = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt)
    return delay * random.uniform(0.5, 1.0)


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
        except _START_ERRORS as exc:
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
