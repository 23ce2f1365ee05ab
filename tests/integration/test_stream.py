"""The stream consumers in-process against the real RabbitMQ: dead letters, store failures,
poison results, acks. Enricher and store are small stand-ins here (the processes of
test_stream_e2e.py use the real ones), so what is tested is the consumers' own logic."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import aio_pika
import pytest

from brokerscan.model import AsnInfo, GeoInfo, ScanResult, Status, Transport
from brokerscan.settings import Settings
from enrichment.consumer import EnrichmentWorker
from storage.consumer import StoreWriter, is_unreachable
from storage.deadletter import stream_status
from workers.publish import ResultPublisher

pytestmark = pytest.mark.integration

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
STARTED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class StandInEnricher:
    def enrich(self, result: ScanResult) -> ScanResult:
        return result.model_copy(update={"asn": AsnInfo(number=64512, source="test"),
                                         "geo": GeoInfo(country="ZZ", source="test")})


class MemoryStore:
    """Idempotent on (sweep_started_at, sweep_id, ip, port); can be made to fail."""

    def __init__(self) -> None:
        self.rows: dict[tuple[object, ...], ScanResult] = {}
        self.fail_with: BaseException | None = None
        self.poison_port: int | None = None
        self.calls = 0

    async def write(self, results: Sequence[ScanResult]) -> int:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if any(r.port == self.poison_port for r in results):
            raise RuntimeError("invalid byte sequence for encoding UTF8: 0x00")
        new = 0
        for r in results:
            key = (r.sweep_started_at, r.sweep_id, r.ip, r.port)
            new += key not in self.rows
            self.rows[key] = r
        return new

    async def close(self) -> None:
        pass


def result(i: int, *, port: int = 1883) -> ScanResult:
    return ScanResult(sweep_id="sw-test", sweep_started_at=STARTED,
                      ip=f"127.1.{i // 250}.{i % 250}", port=port, transport=Transport.TCP,
                      observed_at=STARTED, status=Status.SUCCESS)


@pytest.fixture
async def settings() -> AsyncIterator[Settings]:
    """A namespace of its own; every queue and exchange of it deleted afterwards."""
    s = Settings(namespace=f"t{secrets.token_hex(5)}", results_url=RABBIT_URL)
    yield s
    names = s.names()
    connection = await aio_pika.connect(RABBIT_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (names.results_queue, names.enriched_queue, names.dead_letter_queue):
            await channel.queue_delete(queue)
        for exchange in (names.results_exchange, names.enriched_exchange,
                         names.dead_letter_exchange):
            await channel.exchange_delete(exchange)


async def publish(settings: Settings, results: Sequence[ScanResult]) -> None:
    publisher = ResultPublisher(settings.results_url, settings.names())
    await publisher.start()
    for r in results:
        publisher.add(r)
    await publisher.close()


async def publish_raw(settings: Settings, body: bytes, message_id: str, key: str,
                      headers: dict[str, aio_pika.abc.FieldValue] | None = None) -> None:
    connection = await aio_pika.connect(settings.results_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(settings.names().results_exchange,
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(aio_pika.Message(body, message_id=message_id, headers=headers,
                                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                               key, mandatory=True)


async def until(test: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not test():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_enrich_and_store_with_dead_letters(settings: Settings) -> None:
    store = MemoryStore()
    enrich = EnrichmentWorker(settings, StandInEnricher(), prefetch=100)
    write = StoreWriter(settings, store, batch_size=50, max_delay=0.05)
    await enrich.check()  # declares the whole topology
    await publish(settings, [result(i) for i in range(300)])
    await publish_raw(settings, b"{not json", "bad|1", "result.mqtt.success")
    wrong = result(999).model_dump(mode="json") | {"schema_version": 2}
    await publish_raw(settings, json.dumps(wrong).encode(), "bad|2", "result.amqp.success",
                      {"schema_version": 2})
    await publish(settings, [result(i) for i in range(300, 400)])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: len(store.rows) == 400 and enrich.dead_lettered == 2)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    assert all(r.asn is not None and r.asn.number == 64512 for r in store.rows.values())
    status = await stream_status(settings.results_url, settings.names(), peek=5)
    assert (status.raw.messages, status.enriched.messages, status.dead.messages) == (0, 0, 2)
    by_id = {d.message_id: d for d in status.dead_letters}
    assert by_id["bad|1"].reason is not None and "Invalid JSON" in by_id["bad|1"].reason
    assert by_id["bad|1"].routing_key == "result.mqtt.success"
    assert by_id["bad|2"].reason == "unknown schema_version 2 (this brokerscan reads 1)"
    assert by_id["bad|2"].stage == "enrich" and by_id["bad|2"].body == json.dumps(wrong).encode()
    # peeking left them in the queue
    again = await stream_status(settings.results_url, settings.names(), peek=0)
    assert again.dead.messages == 2


async def test_store_down_holds_batch_then_lands(settings: Settings) -> None:
    store = MemoryStore()
    store.fail_with = ConnectionRefusedError("connection refused")
    assert is_unreachable(store.fail_with)
    write = StoreWriter(settings, store, batch_size=100, max_delay=0.05)
    await write.check()
    enrich = EnrichmentWorker(settings, StandInEnricher())
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await publish(settings, [result(i) for i in range(1000)])
        await until(lambda: store.calls >= 3)
        status = await stream_status(settings.results_url, settings.names(), peek=0)
        assert not store.rows and write.failing is not None
        # Prefetch holds 200; the rest wait, ready, in the enriched queue.
        await until(lambda: enrich.enriched == 1000)
        status = await stream_status(settings.results_url, settings.names(), peek=0)
        assert status.enriched.messages is not None and status.enriched.messages >= 700
        store.fail_with = None
        await until(lambda: len(store.rows) == 1000, limit=40)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    assert write.failing is None and write.dead_lettered == 0
    status = await stream_status(settings.results_url, settings.names(), peek=0)
    assert status.enriched.messages == 0


async def test_poison_result_is_isolated(settings: Settings) -> None:
    store = MemoryStore()
    store.poison_port = 6666
    write = StoreWriter(settings, store, batch_size=64, max_delay=0.05)
    enrich = EnrichmentWorker(settings, StandInEnricher())
    await write.check()
    batch = [result(i) for i in range(200)] + [result(7, port=6666)] + [
        result(i, port=1884) for i in range(50)]
    await publish(settings, batch)
    # and one result the store can never key: no sweep
    await publish(settings, [result(1).model_copy(update={"sweep_id": None})])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: len(store.rows) == 250 and write.dead_lettered == 2, limit=60)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    status = await stream_status(settings.results_url, settings.names(), peek=5)
    reasons = sorted(d.reason or "" for d in status.dead_letters)
    assert reasons[0].startswith("not storable: no sweep_id")
    assert "store refused the result: RuntimeError: invalid byte sequence" in reasons[1]
    assert {d.stage for d in status.dead_letters} == {"store"}
    assert status.dead_letters[0].message_id is not None


async def test_enricher_redelivers_after_connection_loss(settings: Settings) -> None:
    """Kill the consumer's connection: unacked raw messages come back; nothing vanishes."""
    store = MemoryStore()
    enrich = EnrichmentWorker(settings, StandInEnricher(), prefetch=50)
    write = StoreWriter(settings, store, batch_size=100, max_delay=0.05)
    await enrich.check()
    await publish(settings, [result(i) for i in range(2000)])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: enrich.enriched > 200)
        # Close the channel under the worker, as a broker-side close would.
        assert enrich._channel is not None
        await enrich._channel.close()
        await until(lambda: len(store.rows) == 2000, limit=60)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    assert enrich.reconnects >= 1
    status = await stream_status(settings.results_url, settings.names(), peek=0)
    assert (status.raw.messages, status.enriched.messages, status.dead.messages) == (0, 0, 0)


def test_is_unreachable() -> None:
    from storage.db import DatabaseError

    assert is_unreachable(DatabaseError("cannot reach PostgreSQL at x: connection refused"))
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_unreachable(wrapped)
    assert not is_unreachable(ValueError("no sweep_id"))
