"""The exchanges and queues of the results stream, declared alike by every client.

Durable topic exchanges ``<ns>.results`` (raw), ``<ns>.enriched`` and ``<ns>.dead``; durable
queues ``<ns>.results.raw`` and ``<ns>.results.enriched`` bound with ``result.#``, and the
dead-letter queue ``<ns>.results.dead`` bound with ``#``, so every dead letter is kept until an
operator looks at it. Declaring is idempotent: publisher and consumers all declare what they
use, so whoever starts first, nothing published is ever unroutable.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
import aio_pika.abc

from brokerscan.names import Names

__all__ = ["StreamTopology", "declare_results", "declare_stream", "delete_stream"]


@dataclass(frozen=True, slots=True)
class StreamTopology:
    """The declared exchanges and queues of one channel."""

    results_queue: aio_pika.abc.AbstractQueue
    enriched: aio_pika.abc.AbstractExchange
    enriched_queue: aio_pika.abc.AbstractQueue
    dead: aio_pika.abc.AbstractExchange
    dead_queue: aio_pika.abc.AbstractQueue


async def _durable(channel: aio_pika.abc.AbstractChannel, exchange: str, queue: str | None,
                   binding: str) -> tuple[aio_pika.abc.AbstractExchange,
                                      aio_pika.abc.AbstractQueue | None]:
    """A durable topic exchange and, if *queue* is given, a durable queue bound to it."""
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC,
                                              durable=True)
    if queue is None:
        return declared, None
    bound = await channel.declare_queue(queue, durable=True)
    await bound.bind(declared, binding)
    return declared, bound


async def declare_results(channel: aio_pika.abc.AbstractChannel, names: Names, *,
                          with_queue: bool = True) -> aio_pika.abc.AbstractExchange:
    """The raw results exchange (what probe workers publish to) and, unless told not to,
    its durable queue: results wait there until enrichment takes them, even when no
    consumer runs yet (never unroutable, never dropped)."""
    exchange, _ = await _durable(channel, names.results_exchange,
                                 names.results_queue if with_queue else None, "result.#")
    return exchange


async def declare_stream(channel: aio_pika.abc.AbstractChannel, names: Names) -> StreamTopology:
    """Declare every exchange and queue of the results stream (idempotent): durable topic
    exchanges, durable queues; raw and enriched queues bound with ``result.#``, the dead
    letter queue with ``#``."""
    _, results_queue = await _durable(channel, names.results_exchange, names.results_queue,
                                      "result.#")
    enriched, enriched_queue = await _durable(channel, names.enriched_exchange,
                                              names.enriched_queue, "result.#")
    dead, dead_queue = await _durable(channel, names.dead_letter_exchange,
                                      names.dead_letter_queue, "#")
    assert results_queue is not None and enriched_queue is not None and dead_queue is not None
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
