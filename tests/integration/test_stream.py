"""The stream consumers in-process against the real RabbitMQ, the real enricher (the
shipped data) and a real PostgreSQL store: dead letters, a store that goes away, a poison
result PostgreSQL refuses, redelivery after a lost channel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import aio_pika
import asyncpg
import pytest

from brokerscan.model import ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.settings import Settings
from brokerscan.stream.publisher import ResultPublisher
from brokerscan.stream.status import stream_status
from brokerscan.stream.topology import declare_stream, delete_stream
from brokerscan.stream.wire import BATCH_CONTENT_TYPE, batch_id, batch_message, message_lines
from enrichment.consumer import EnrichmentWorker
from enrichment.lookup import Enricher, open_enricher
from storage.consumer import StoreWriter, database_away
from storage.pgstore import PgStore
from tests.faultproxy import FaultProxy
from tests.services import RABBIT_URL
from tests.waiting import wait_for_async

pytestmark = pytest.mark.integration

STARTED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def enricher() -> Enricher:
    return open_enricher(["builtin:"])


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[PgStore]:
    opened = await PgStore.open(migrated_url)
    yield opened
    await opened.close()


async def stored(store: PgStore) -> int:
    """Observations in the store (from the table, not the rollup)."""
    [row] = await store.fetch("SELECT count(*) AS n FROM observations", [])
    return int(row["n"])


def result(i: int, *, port: int = 1883) -> ScanResult:
    return ScanResult(sweep_id="sw-test", sweep_started_at=STARTED,
                      ip=f"127.1.{i // 250}.{i % 250}", port=port, transport=Transport.TCP,
                      observed_at=STARTED, status=Status.SUCCESS)


@pytest.fixture
async def settings(names: Names) -> AsyncIterator[Settings]:
    """A namespace of its own; every queue and exchange of it deleted afterwards."""
    s = Settings(namespace=names.namespace, results_url=RABBIT_URL)
    yield s
    await delete_stream(RABBIT_URL, s.names())


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


async def until_stored(store: PgStore, count: int, limit: float = 60.0) -> None:
    async def enough() -> bool:
        return await stored(store) >= count

    await wait_for_async(enough, limit, f"{count} observations stored")


async def until_drained(settings: Settings, enrich: EnrichmentWorker, write: StoreWriter,
                        limit: float = 30.0) -> None:
    """Until both queues are empty, everything enriched has been written (some enriched
    results may be written twice: their raw message came back after a lost ack) and
    nothing moved for 0.3 s."""
    quiet_since: float | None = None
    last, seen = (-1, -1), ""

    async def drained() -> bool:
        nonlocal quiet_since, last, seen
        status = await stream_status(settings.results_url, settings.names(), peek=0)
        now = (enrich.consumed, write.consumed)
        idle = (status.raw.messages, status.enriched.messages) == (0, 0) \
            and write.written >= enrich.enriched and now == last
        last, seen = now, f"{status}, {enrich.enriched} enriched, {write.written} written"
        if not idle:
            quiet_since = None
            return False
        quiet_since = quiet_since or time.monotonic()
        return time.monotonic() - quiet_since >= 0.3

    await wait_for_async(drained, limit, "the stream drained, then quiet for 0.3 s",
                         detail=lambda: seen)


async def until(test: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    await wait_for_async(test, limit, what)


async def test_enrich_and_store_with_dead_letters(settings: Settings, store: PgStore,
                                                  enricher: Enricher) -> None:
    enrich = EnrichmentWorker(settings, enricher, prefetch=100)
    write = StoreWriter(settings, store, batch_size=50, max_delay=0.05)
    await enrich.check()  # declares the whole topology
    await publish(settings, [result(i) for i in range(300)])
    await publish_raw(settings, b"{not json", "bad|1", "result.mqtt.success")
    wrong = result(999).model_dump(mode="json") | {"schema_version": 4}
    await publish_raw(settings, json.dumps(wrong).encode(), "bad|2", "result.amqp.success",
                      {"schema_version": 4})
    await publish(settings, [result(i) for i in range(300, 400)])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: enrich.dead_lettered == 2, "2 dead letters")
        await until_stored(store, 400)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    assert await stored(store) == 400
    hosts = [ScanResult.model_validate_json(h.record)
             for h in (await store.search("", limit=1000)).hits]
    assert len(hosts) == 400  # enriched on the way: loopback is reserved space
    assert all(h.asn is not None and h.asn.reserved and h.geo is not None for h in hosts)
    status = await stream_status(settings.results_url, settings.names(), peek=5)
    assert (status.raw.messages, status.enriched.messages, status.dead.messages) == (0, 0, 2)
    by_id = {d.message_id: d for d in status.dead_letters}
    assert by_id["bad|1"].reason is not None and "Invalid JSON" in by_id["bad|1"].reason
    assert by_id["bad|1"].routing_key == "result.mqtt.success"
    assert by_id["bad|2"].reason == "unknown schema_version 4 (this brokerscan reads 1, 2, 3)"
    assert by_id["bad|2"].stage == "enrich" and by_id["bad|2"].body == json.dumps(wrong).encode()
    # peeking left them in the queue
    again = await stream_status(settings.results_url, settings.names(), peek=0)
    assert again.dead.messages == 2


async def test_bad_lines_of_a_batch_are_dead_lettered_alone(settings: Settings, store: PgStore,
                                                            enricher: Enricher) -> None:
    """One batch message: good results, a line that is not JSON, a line of an unknown
    schema version, an empty line. Each bad line becomes a dead letter of its own (its
    bytes, the batch's headers, id ``<batch id>#<index>``); the good results go on, out of
    the enricher as batch messages."""
    good = [result(i) for i in range(10)]
    wrong = json.dumps(result(99).model_dump(mode="json") | {"schema_version": 4}).encode()
    lines = [r.to_json().encode() for r in good[:4]] + [b"{not json"] + \
        [r.to_json().encode() for r in good[4:8]] + [wrong] + \
        [r.to_json().encode() for r in good[8:]]
    message = batch_message(lines, message_id="batch-1", headers={"shard": 3})
    message.body = message.body.replace(b"\n{not", b"\n\n{not")  # an empty line, ignored
    connection = await aio_pika.connect(settings.results_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_stream(channel, settings.names())
        exchange = await channel.get_exchange(settings.names().results_exchange)
        await exchange.publish(message, "result.none.success", mandatory=True)
        enrich = EnrichmentWorker(settings, enricher)
        runner = asyncio.create_task(enrich.run())
        try:
            await until(lambda: enrich.enriched == 10 and enrich.dead_lettered == 2,
                        "10 enriched, 2 dead letters")
        finally:
            enrich.stop()
            await runner
        out = await topology.enriched_queue.get(no_ack=True, timeout=5)
        assert out.content_type == BATCH_CONTENT_TYPE and out.headers["results"] == 10
        assert out.headers["shard"] == 3 and out.routing_key == "result.none.success"
        enriched = [ScanResult.model_validate_json(line) for line in message_lines(out)]
        assert [r.ip for r in enriched] == [r.ip for r in good]
        assert all(r.asn is not None and r.asn.reserved for r in enriched)
        assert out.message_id == batch_id(r.key for r in good)
    status = await stream_status(settings.results_url, settings.names(), peek=5)
    letters = {d.message_id: d for d in status.dead_letters}
    assert set(letters) == {"batch-1#4", "batch-1#9"}
    assert letters["batch-1#4"].body == b"{not json"
    assert letters["batch-1#4"].reason is not None and "Invalid JSON" in letters["batch-1#4"].reason
    assert letters["batch-1#9"].body == wrong
    assert letters["batch-1#9"].reason == "unknown schema_version 4"
    assert {d.stage for d in letters.values()} == {"enrich"}


async def test_store_down_holds_batch_then_lands(settings: Settings, migrated_url: str,
                                                 enricher: Enricher) -> None:
    proxy = FaultProxy("127.0.0.1", 5432)
    store = await PgStore.open(migrated_url.replace("127.0.0.1:5432",
                                                    f"{proxy.host}:{proxy.port}"))
    # Batches of two 50-result messages; in hand at most 4 messages: the batch being
    # written and the next one, prepared and waiting behind it.
    write = StoreWriter(settings, store, batch_size=100, max_delay=0.05, prefetch=4)
    await write.check()
    enrich = EnrichmentWorker(settings, enricher, per_message=50)
    proxy.refuse_new(True)
    proxy.cut()  # PostgreSQL is gone: every write fails to connect
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await publish(settings, [result(i) for i in range(1000)])
        await until(lambda: write.write_failures >= 2, "2 failed writes")
        assert write.written == 0 and write.failing is not None
        # The writer holds 4 messages (200 results); the rest wait, ready, in the queue.
        await until(lambda: enrich.enriched == 1000, "1000 enriched")
        status = await stream_status(settings.results_url, settings.names(), peek=0)
        assert status.enriched.messages is not None and status.enriched.messages >= 16
        proxy.refuse_new(False)
        await until(lambda: write.written == 1000, "1000 written", limit=60)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
        await store.close()
        proxy.stop()
    assert write.failing is None and write.dead_lettered == 0
    check = await PgStore.open(migrated_url)
    try:
        assert await stored(check) == 1000
    finally:
        await check.close()
    status = await stream_status(settings.results_url, settings.names(), peek=0)
    assert status.enriched.messages == 0


async def test_poison_result_is_isolated(settings: Settings, store: PgStore,
                                        enricher: Enricher) -> None:
    write = StoreWriter(settings, store, batch_size=64, max_delay=0.05)
    enrich = EnrichmentWorker(settings, enricher)
    await write.check()
    # A NUL character is valid JSON and a valid result, but PostgreSQL refuses it in text
    # and jsonb: one result the store can never take, in the middle of good ones.
    poison = result(7, port=6666).model_copy(update={"error": "bad\x00byte"})
    batch = [result(i) for i in range(200)] + [poison] + [
        result(i, port=1884) for i in range(50)]
    await publish(settings, batch)
    # and one result the store can never key: no sweep
    await publish(settings, [result(1).model_copy(update={"sweep_id": None})])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: write.written >= 250 and write.dead_lettered == 2,
                    "250 written, 2 dead letters", limit=60)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    status = await stream_status(settings.results_url, settings.names(), peek=5)
    reasons = sorted(d.reason or "" for d in status.dead_letters)
    assert reasons[0].startswith("not storable: no sweep_id")
    assert reasons[1].startswith("store refused the result:")
    assert await stored(store) == 250
    assert {d.stage for d in status.dead_letters} == {"store"}
    assert status.dead_letters[0].message_id is not None


async def test_enricher_redelivers_after_connection_loss(settings: Settings, store: PgStore,
                                                         enricher: Enricher) -> None:
    """Kill the consumer's channel: unacked raw messages come back; nothing vanishes."""
    enrich = EnrichmentWorker(settings, enricher, prefetch=50)
    write = StoreWriter(settings, store, batch_size=100, max_delay=0.05)
    await enrich.check()
    await publish(settings, [result(i) for i in range(2000)])
    runners = [asyncio.create_task(enrich.run()), asyncio.create_task(write.run())]
    try:
        await until(lambda: enrich.enriched > 200, "200 enriched")
        # Close the channel under the worker, as a broker-side close would.
        assert enrich._channel is not None
        await enrich._channel.close()
        await until_stored(store, 2000)
        # Redelivered raw messages are enriched again: let those duplicates drain too.
        await until_drained(settings, enrich, write)
    finally:
        enrich.stop()
        write.stop()
        await asyncio.gather(*runners)
    assert enrich.reconnects >= 1
    assert await stored(store) == 2000  # redelivered duplicates added nothing
    status = await stream_status(settings.results_url, settings.names(), peek=0)
    assert (status.raw.messages, status.enriched.messages, status.dead.messages) == (0, 0, 0)


def test_database_away() -> None:
    from storage.db import DatabaseError

    assert database_away(DatabaseError("cannot reach PostgreSQL at x: connection refused"))
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = ConnectionResetError()
    assert database_away(wrapped)
    assert not database_away(ValueError("no sweep_id"))
    # PostgreSQL restarting or out of disk: a wait, never a verdict on the data
    for away in (asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                 asyncpg.CannotConnectNowError, asyncpg.DiskFullError):
        assert database_away(away("from the server"))
    assert not database_away(asyncpg.UniqueViolationError("duplicate key"))
