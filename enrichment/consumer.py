"""The enrichment worker: raw results in, results with ASN and geolocation out.

Consumes ``Names.results_queue`` with a prefetch, and for each batch of deliveries:

1. validates every body as a :class:`~brokerscan.model.ScanResult` (a body that fails, or
   carries a schema version we do not know, becomes a dead letter with the reason);
2. enriches the valid ones (an :class:`~enrichment.lookup.EnrichmentError` for one result
   also makes a dead letter: that result cannot be enriched, the rest of the stream can);
3. publishes every enriched result to ``Names.enriched_exchange`` (persistent, same message
   id, headers and routing key) and every dead letter to ``Names.dead_letter_exchange``,
   all at once, and awaits the publisher confirms together;
4. acks each raw message whose outgoing message was confirmed, and nacks (requeue) any
   whose publish was refused, so nothing is acked before it is safe downstream.

A lost connection drops the batch in hand (RabbitMQ redelivers it) and reconnects;
duplicates downstream are harmless (same message id, idempotent store).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import aio_pika
import aio_pika.abc

from brokerscan.model import ScanResult
from brokerscan.settings import Settings
from storage.deadletter import (
    CONNECTION_ERRORS,
    InvalidResult,
    StreamConsumer,
    dead_letter,
    describe,
    parse_result,
)

__all__ = ["EnrichmentWorker", "ResultEnricher"]

log = logging.getLogger(__name__)


class ResultEnricher(Protocol):
    """What the worker needs of :class:`enrichment.lookup.Enricher`."""

    def enrich(self, result: ScanResult) -> ScanResult: ...


class EnrichmentWorker(StreamConsumer):
    """Enrich the raw results stream, at least once, acking only after confirms.

    Counters: ``consumed``, ``enriched`` (confirmed downstream), ``dead_lettered``,
    ``requeued`` (publishes refused by the broker; the raw message is nacked back),
    ``reconnects``.

    :param settings: deployment settings (``results_url``, ``namespace``).
    :param enricher: fills ``asn`` and ``geo`` of a result.
    :param prefetch: unacked raw messages in hand at once; also the largest batch.
    :param batch_window: seconds a batch waits for more deliveries after its first one.
    """

    def __init__(self, settings: Settings, enricher: ResultEnricher, *, prefetch: int = 500,
                 batch_window: float = 0.02) -> None:
        names = settings.names()
        super().__init__(settings.results_url, names, names.results_queue, prefetch=prefetch,
                         batch_size=prefetch, stage="enrich")
        self.enricher = enricher
        self.batch_window = batch_window
        self.enriched = self.requeued = 0
        self._error_type: tuple[type[Exception], ...] = _enrichment_errors()

    def collect_window(self) -> float:
        return self.batch_window

    async def handle(self, batch: Sequence[aio_pika.abc.AbstractIncomingMessage]) -> None:
        """Enrich, publish, await the confirms together, then ack (see the module doc)."""
        topology = self.topology
        assert topology is not None
        outgoing: list[tuple[aio_pika.abc.AbstractExchange, aio_pika.Message, str]] = []
        for message in batch:
            key = message.routing_key or ""
            try:
                result = self.enricher.enrich(parse_result(message))
            except InvalidResult as exc:
                outgoing.append((topology.dead, dead_letter(message, str(exc), "enrich"), key))
                continue
            except self._error_type as exc:
                reason = f"enrichment failed: {describe(exc)}"
                outgoing.append((topology.dead, dead_letter(message, reason, "enrich"), key))
                continue
            outgoing.append((topology.enriched, aio_pika.Message(
                result.model_dump_json().encode(), content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message.message_id, headers=dict(message.headers or {}),
                app_id="brokerscan"), key))
        outcomes = await self.publish_all(outgoing)
        if self.channel_lost():
            raise self.connection_lost("channel closed while awaiting confirms")
        failed = [(m, o) for m, o in zip(batch, outcomes, strict=True) if o is not None]
        try:
            if not failed:
                await batch[-1].ack(multiple=True)  # one frame: the batch is all of it
            else:
                for message, outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        await message.ack()
                    else:
                        await message.nack(requeue=True)
        except CONNECTION_ERRORS as exc:
            raise self.connection_lost(f"ack failed: {describe(exc)}") from None
        for (exchange, _, _), outcome in zip(outgoing, outcomes, strict=True):
            if outcome is None and exchange is topology.dead:
                self.dead_lettered += 1
            elif outcome is None:
                self.enriched += 1
        if failed:
            self.requeued += len(failed)
            log.warning("enrich: %d publish(es) refused (%s); raw messages requeued",
                        len(failed), describe(failed[0][1]))


def _enrichment_errors() -> tuple[type[Exception], ...]:
    """:class:`enrichment.lookup.EnrichmentError`, once that module exists."""
    try:
        from enrichment.lookup import EnrichmentError
    except ImportError:  # pragma: no cover - the lookup module lands separately
        return ()
    return (EnrichmentError,)
