"""Dead letters after a fix: send them back where they failed, or drop them.

A dead letter records the stage it failed in (``x-brokerscan-stage``) and its original
routing key. Replaying publishes it, with those headers and the reason removed, to the
exchange that stage consumes (``enrich``: the raw results exchange; ``store``: the enriched
one), with publisher confirms, and only then acks it in the dead-letter queue: at least
once, never lost. Dropping acks it without publishing.

Letters are taken with ``basic.get`` and held unacked while the queue is walked, so that
letters that do not match the selection are not seen twice; closing the channel returns
every one not acked to the queue, in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final, Literal

import aio_pika
import aio_pika.abc

from brokerscan.names import Names
from brokerscan.oneline import describe, redact
from brokerscan.stream.connection import CONNECTION_ERRORS, StreamError
from brokerscan.stream.deadletters import ERROR_HEADER, ROUTING_KEY_HEADER, STAGE_HEADER

__all__ = ["REPLAYED_HEADER", "Outcome", "handle_dead_letters"]

#: How many times a letter was replayed (a letter that keeps failing is visible as such).
REPLAYED_HEADER: Final = "x-brokerscan-replayed"
_SCAN_MAX: Final = 100_000
_TIME_LIMIT: Final = 300.0  # seconds for one command: a stuck broker ends it


@dataclass(slots=True)
class Outcome:
    """What a replay or a drop did: letters handled, and letters left (with why)."""

    handled: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    scanned: int = 0


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _target(names: Names, stage: str) -> str | None:
    return {"enrich": names.results_exchange, "store": names.enriched_exchange}.get(stage)


async def handle_dead_letters(
    url: str, names: Names, action: Literal["replay", "drop"], *,
    message_ids: frozenset[str] = frozenset(), limit: int | None = None,
) -> Outcome:
    """Replay or drop the dead letters whose message id is in *message_ids* (every letter
    when it is empty), at most *limit* of them.

    :raises StreamError: the broker cannot be reached
    """
    outcome = Outcome()
    try:
        async with asyncio.timeout(_TIME_LIMIT):
            connection = await aio_pika.connect(url, timeout=10)
            async with connection:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
                try:
                    queue = await channel.declare_queue(names.dead_letter_queue, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    return outcome  # nothing was ever dead-lettered
                await _walk(channel, queue, names, action, message_ids, limit, outcome)
    except CONNECTION_ERRORS as exc:
        raise StreamError(f"cannot reach the results broker at {redact(url)}: "
                          f"{describe(exc)}") from None
    return outcome


async def _walk(channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue,
                names: Names, action: str, message_ids: frozenset[str], limit: int | None,
                outcome: Outcome) -> None:
    held: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        while outcome.scanned < _SCAN_MAX and (limit is None or len(outcome.handled) < limit):
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                return
            outcome.scanned += 1
            ident = message.message_id or ""
            if message_ids and ident not in message_ids:
                held.append(message)
                continue
            if action == "drop":
                await message.ack()
                outcome.handled.append(ident)
                continue
            headers = dict(message.headers or {})
            stage = _text(headers.get(STAGE_HEADER))
            exchange_name = _target(names, stage)
            if exchange_name is None:
                held.append(message)
                outcome.left.append((ident, f"unknown stage {stage!r}"))
                continue
            routing_key = _text(headers.pop(ROUTING_KEY_HEADER, None)) or \
                message.routing_key or "result.none.unknown-error"
            for name in (ERROR_HEADER, STAGE_HEADER):
                headers.pop(name, None)
            headers[REPLAYED_HEADER] = int(_text(headers.get(REPLAYED_HEADER)) or 0) + 1
            exchange = await channel.get_exchange(exchange_name, ensure=False)
            await exchange.publish(
                aio_pika.Message(message.body, content_type=message.content_type,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 message_id=message.message_id, headers=headers,
                                 app_id="brokerscan"),
                routing_key, mandatory=True)
            await message.ack()  # only once the broker confirmed the copy
            outcome.handled.append(ident)
    finally:
        for message in held:  # back to the queue, in place, for the next operator
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.nack(requeue=True)
