"""What an operator sees of the stream: queue depths, and the first dead letters with
their reasons (peeked, never taken away)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from brokerscan.names import Names
from brokerscan.oneline import describe, redact
from brokerscan.stream.connection import CONNECTION_ERRORS, StreamError
from brokerscan.stream.deadletters import ERROR_HEADER, ROUTING_KEY_HEADER, STAGE_HEADER

__all__ = ["DeadLetter", "QueueDepth", "StreamStatus", "stream_status"]


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
