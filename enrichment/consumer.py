"""The enrichment worker: raw results in, results with ASN and geolocation out.

Consumes ``Names.results_queue`` with a prefetch, and for each batch of deliveries (batch
messages and single-result messages alike, :mod:`brokerscan.stream.wire`):

1. validates every result as a :class:`~brokerscan.model.ScanResult` (one that fails, or
   comes under a schema version we do not know, becomes a dead letter of its own with the
   reason, :func:`brokerscan.stream.deadletters.dead_letter_line`);
2. enriches the valid ones (an :class:`~enrichment.lookup.EnrichmentError` for one result
   also makes a dead letter: that result cannot be enriched, the rest of the stream can);
3. publishes the enriched results to ``Names.enriched_exchange`` as batch messages
   (persistent; grouped by the routing key and headers they came with, at most
   ``per_message`` results each, message id :func:`brokerscan.stream.wire.batch_id`) and the dead
   letters to ``Names.dead_letter_exchange``, all at once, and awaits the publisher
   confirms together;
4. acks the whole batch when every publish was confirmed; if any was refused, nacks the
   whole batch back to the queue (what was confirmed arrives again downstream, which the
   idempotent store ignores), so nothing is acked before it is safe downstream.

A lost connection drops the batch in hand (RabbitMQ redelivers it) and reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import aio_pika
import aio_pika.abc

from brokerscan.model import ScanResult
from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.connection import CONNECTION_ERRORS
from brokerscan.stream.consumer import StreamConsumer
from brokerscan.stream.deadletters import BadLine, dead_letter_line, parse_results
from brokerscan.stream.wire import COUNT_HEADER, batch_id, batch_message

__all__ = ["EnrichmentWorker", "ResultEnricher"]

log = logging.getLogger(__name__)


class ResultEnricher(Protocol):
    """What the worker needs of :class:`enrichment.lookup.Enricher`."""

    def enrich(self, result: ScanResult) -> ScanResult: ...


class EnrichmentWorker(StreamConsumer):
    """Enrich the raw results stream, at least once, acking only after confirms.

    Counters: ``consumed`` (results), ``enriched`` (results confirmed downstream),
    ``dead_lettered``, ``requeued`` (messages nacked back after a refused publish),
    ``reconnects``.

    :param settings: deployment settings (``results_url``, ``namespace``).
    :param enricher: fills ``asn`` and ``geo`` of a result.
    :param prefetch: unacked raw messages in hand at once.
    :param batch_size: most results handled (and published) together.
    :param batch_window: seconds a batch waits for more deliveries after its first one.
    :param per_message: most results in one enriched message.
    """

    def __init__(self, settings: Settings, enricher: ResultEnricher, *, prefetch: int = 64,
                 batch_size: int = 1000, batch_window: float = 0.02,
                 per_message: int = 500) -> None:
        names = settings.names()
        if batch_size < 1 or per_message < 1:
            raise ValueError("batch_size and per_message must be at least 1")
        super().__init__(settings.results_url, names, names.results_queue, prefetch=prefetch,
                         batch_size=batch_size, stage="enrich")
        self.enricher = enricher
        self.batch_window = batch_window
        self.per_message = per_message
        self.enriched = self.requeued = 0
        self._error_type: tuple[type[Exception], ...] = _enrichment_errors()

    def collect_window(self) -> float:
        return self.batch_window

    async def handle(self, batch: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> None:
        """Enrich, publish, await the confirms together, then ack (see the module doc)."""
        topology = self.topology
        assert topology is not None
        dead: list[tuple[aio_pika.abc.AbstractExchange, aio_pika.Message, str]] = []
        reasons: list[str] = []
        groups: dict[tuple[str, str], _Group] = {}
        oldest = None
        for message in batch:
            key = message.routing_key or ""
            good, bad = await parse_results(message)
            for index, line, parsed in good:
                if oldest is None or parsed.observed_at < oldest:
                    oldest = parsed.observed_at
                try:
                    result = self.enricher.enrich(parsed)
                except self._error_type as exc:
                    reason = f"enrichment failed: {describe(exc)}"
                    bad.append(BadLine(index, line, reason))
                    continue
                headers = {k: v for k, v in (message.headers or {}).items()
                           if k != COUNT_HEADER}
                group = groups.setdefault((key, repr(sorted(headers.items()))),
                                          _Group(key, headers))
                group.results.append(result)
            dead += [(topology.dead, dead_letter_line(message, b, "enrich"), key)
                     for b in bad]
            reasons += [b.reason for b in bad]
        outgoing = list(dead)
        counts = [0] * len(dead)
        for group in groups.values():
            for start in range(0, len(group.results), self.per_message):
                chunk = group.results[start:start + self.per_message]
                outgoing.append((topology.enriched, batch_message(
                    [r.model_dump_json().encode() for r in chunk],
                    message_id=batch_id(r.key for r in chunk), headers=group.headers),
                    group.routing_key))
                counts.append(len(chunk))
        outcomes = await self.publish_all(outgoing)
        if self.channel_lost():
            raise self.connection_lost("channel closed while awaiting confirms")
        failed = [o for o in outcomes if o is not None]
        try:
            if not failed:
                await batch[-1].ack(multiple=True)  # one frame: the batch is all of it
            else:
                await batch[-1].nack(multiple=True, requeue=True)
        except CONNECTION_ERRORS as exc:
            raise self.connection_lost(f"ack failed: {describe(exc)}") from None
        if failed:
            self.requeued += len(batch)
            log.warning("enrich: %d of %d publish(es) refused (%s); the batch is requeued",
                        len(failed), len(outgoing), describe(failed[0]))
            return
        self.dead_lettered += len(dead)
        self.note_dead(reasons)
        self.note_lag(oldest)
        self.enriched += sum(counts)


class _Group:
    """Enriched results that leave under one routing key and one set of headers."""

    __slots__ = ("headers", "results", "routing_key")

    def __init__(self, routing_key: str, headers: dict[str, aio_pika.abc.FieldValue]) -> None:
        self.routing_key = routing_key
        self.headers = headers
        self.results: list[ScanResult] = []


def _enrichment_errors() -> tuple[type[Exception], ...]:
    """:class:`enrichment.lookup.EnrichmentError`, once that module exists."""
    try:
        from enrichment.lookup import EnrichmentError
    except ImportError:  # pragma: no cover - the lookup module lands separately
        return ()
    return (EnrichmentError,)
