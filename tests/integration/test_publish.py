"""ResultPublisher against the machine's RabbitMQ, directly and through the fault proxy.

Every test runs in its own namespace, binds its consumer queue (exclusive, so it goes with
the connection) before publishing, and deletes the durable exchange it declared.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from uuid import uuid4

import aio_pika
import aio_pika.abc
import pytest

from brokerscan.model import Protocol, ScanResult, Status, Transport
from brokerscan.names import Names
from tests import servers
from tests.faultproxy import FaultProxy
from workers.publish import PublisherError, ResultPublisher, message_key, routing_key

pytestmark = pytest.mark.integration

RABBIT = "amqp://guest:guest@127.0.0.1:5672/%2F"
OBSERVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_STATUSES = [Status.SUCCESS, Status.CONNECTION_REFUSED, Status.CONNECTION_TIMEOUT]


def make_results(count: int, sweep: str = "sweep-1") -> list[ScanResult]:
    """``count`` distinct results (keys differ in ip/port); data only, never dialled."""
    out = []
    for i in range(count):
        status = _STATUSES[i % 3]
        out.append(ScanResult(
            sweep_id=sweep, ip=f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            port=1883 + (i >> 24), transport=Transport.TCP, observed_at=OBSERVED,
            status=status, protocol=Protocol.MQTT if status is Status.SUCCESS else None,
            probes=[Protocol.MQTT], raw=b"\x20\x02\x00\x00" if status is Status.SUCCESS else None,
        ))
    return out


class Collector:
    """A consumer on its own connection: an exclusive queue bound to the results exchange."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, names: Names) -> None:
        self.channel = channel
        self.names = names
        self.ids: collections.Counter[str] = collections.Counter()
        self.first: aio_pika.abc.AbstractIncomingMessage | None = None
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.durable = False
        self._changed = asyncio.Event()

    async def bind(self, pattern: str = "result.#", *, consume: bool = True, durable: bool = False,
                   arguments: dict[str, aio_pika.abc.FieldValue] | None = None) -> None:
        """Bind a queue: exclusive and transient, or (``durable``) like production's."""
        exchange = await self.channel.declare_exchange(
            self.names.results_exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        if durable:  # deleted by the fixture
            self.queue = await self.channel.declare_queue(
                f"{self.names.namespace}.results-durable", durable=True, arguments=arguments)
            self.durable = True
        else:
            self.queue = await self.channel.declare_queue(exclusive=True, arguments=arguments)
        await self.queue.bind(exchange, pattern)
        if consume:
            await self.consume()

    async def consume(self) -> None:
        assert self.queue is not None
        await self.queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if self.first is None:
            self.first = message
        assert message.message_id is not None
        self.ids[message.message_id] += 1
        self._changed.set()

    @property
    def duplicates(self) -> int:
        return sum(self.ids.values()) - len(self.ids)

    async def wait_for(self, expected: set[str], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not expected <= self.ids.keys():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def names() -> Names:
    return Names(f"t{uuid4().hex[:10]}")


@pytest.fixture
async def collector(rabbitmq: servers.Endpoint, names: Names) -> AsyncIterator[Collector]:
    connection = await aio_pika.connect(RABBIT)
    channel = await connection.channel()
    collector = Collector(channel, names)
    try:
        yield collector
    finally:
        if collector.durable and collector.queue is not None:
            await collector.queue.delete(if_unused=False, if_empty=False)
        await channel.exchange_delete(names.results_exchange)
        await connection.close()


@pytest.fixture
def proxy(rabbitmq: servers.Endpoint) -> Iterator[FaultProxy]:
    with FaultProxy(rabbitmq.host, rabbitmq.port) as p:
        yield p


async def publish_all(publisher: ResultPublisher, results: list[ScanResult],
                      shard: int | None = 7) -> None:
    """What the shard task does: backpressure before each result, flush at the end."""
    for result in results:
        await publisher.wait_ready()
        publisher.add(result, shard)
    await publisher.flush()


async def until(check: Callable[[], bool], limit: float = 30.0) -> None:
    """Poll ``check`` (a publisher counter) until it holds; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def confirmed_at_least(publisher: ResultPublisher, count: int) -> Callable[[], bool]:
    return lambda: publisher.confirmed >= count


def report(line: str) -> None:
    """Figures for the benchmark notes: shown in the test output, never asserted."""
    print(f"\n[publish] {line}", file=sys.stderr)  # noqa: T201


# --------------------------------------------------------------------------- tests


def test_keys_are_deterministic() -> None:
    r = make_results(1)[0]
    assert message_key(r) == "sweep-1|127.0.0.0|1883"
    assert message_key(r.model_copy(update={"sweep_id": None})) == "|127.0.0.0|1883"
    assert routing_key(r) == "result.mqtt.success"
    assert routing_key(make_results(2)[1]) == "result.none.connection-refused"


async def test_every_result_arrives_once_confirmed(collector: Collector, names: Names) -> None:
    await collector.bind()
    results = make_results(20_000)
    publisher = ResultPublisher(RABBIT, names)
    await publisher.start()
    try:
        await publish_all(publisher, results)
        # flush() returned: every result is confirmed, none is waiting.
        assert publisher.added == publisher.confirmed == publisher.published == 20_000
        assert publisher.pending == 0 and publisher.republished == 0
    finally:
        await publisher.close()
    expected = {message_key(r) for r in results}
    await collector.wait_for(expected)
    assert len(collector.ids) == 20_000 and collector.duplicates == 0

    first = collector.first
    assert first is not None and first.message_id is not None
    sent = next(r for r in results if message_key(r) == first.message_id)
    assert ScanResult.model_validate_json(first.body) == sent
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.content_type == "application/json"
    assert first.routing_key == routing_key(sent)
    assert first.headers == {"schema_version": 1, "sweep_id": "sweep-1", "shard": 7}


async def test_flush_and_wait_ready_block_while_the_broker_is_stalled(
    collector: Collector, names: Names, proxy: FaultProxy
) -> None:
    await collector.bind()
    publisher = ResultPublisher(proxy.url(), names, batch_size=100, max_pending=1000)
    await publisher.start()
    results = make_results(1_500)
    try:
        await publish_all(publisher, results[:100])
        proxy.stall()
        for result in results[100:1_100]:
            publisher.add(result)
        waiter = asyncio.create_task(publisher.wait_ready())
        flusher = asyncio.create_task(publisher.flush())
        await asyncio.sleep(1.0)
        assert not waiter.done() and not flusher.done()
        assert publisher.pending == 1_000 and publisher.confirmed == 100
        proxy.resume()
        async with asyncio.timeout(20):
            await waiter
            await flusher
        assert publisher.confirmed == 1_100 and publisher.republished == 0
        await publish_all(publisher, results[1_100:])  # the same connection carries on
        assert publisher.confirmed == 1_500 and publisher.reconnects == 0
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})


async def test_connection_cut_mid_stream_loses_nothing(
    collector: Collector, names: Names, proxy: FaultProxy
) -> None:
    await collector.bind()
    results = make_results(20_000)
    publisher = ResultPublisher(proxy.url(), names)
    await publisher.start()
    try:
        sender = asyncio.create_task(publish_all(publisher, results))
        for threshold in (3_000, 9_000, 15_000):
            await until(confirmed_at_least(publisher, threshold))
            assert await asyncio.to_thread(proxy.cut) == 1
        async with asyncio.timeout(60):
            await sender
        assert publisher.confirmed == publisher.added == 20_000
        assert publisher.reconnects == 3 and proxy.accepted == 4
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert len(collector.ids) == 20_000
    # Every duplicate comes from a republish whose first copy had arrived unconfirmed.
    assert collector.duplicates <= publisher.republished
    report(f"3 cuts in 20,000: republished {publisher.republished}, "
           f"duplicates delivered {collector.duplicates}, reconnects {publisher.reconnects}")


async def test_stall_beyond_the_retry_budget_fails_flush_clearly(
    names: Names, proxy: FaultProxy, collector: Collector
) -> None:
    publisher = ResultPublisher(proxy.url(), names, retry_budget=1.5, confirm_timeout=0.5,
                                connect_timeout=0.5)
    await publisher.start()
    try:
        proxy.stall()
        for result in make_results(50):
            publisher.add(result)
        started = time.monotonic()
        with pytest.raises(PublisherError, match=r"50 result\(s\) still unconfirmed after "
                           r"retrying for .* \(budget 1.5 s\); last error: "):
            await publisher.flush()
        assert time.monotonic() - started < 10
        with pytest.raises(PublisherError):
            await publisher.wait_ready()
        with pytest.raises(PublisherError):
            publisher.add(make_results(1)[0])
        assert publisher.confirmed == 0 and publisher.timed_out == 50
        assert "guest:***@" in str(pytest.raises(PublisherError, publisher.add,
                                                 make_results(1)[0]).value)
    finally:
        await publisher.close()  # already failed: tears down without raising again


async def test_returned_and_nacked_messages_are_retried(
    collector: Collector, names: Names
) -> None:
    publisher = ResultPublisher(RABBIT, names, batch_size=20, declare_queue=False)
    await publisher.start()  # declares the exchange; nothing is bound to it yet
    results = make_results(20)
    try:
        for result in results:
            publisher.add(result)
        flusher = asyncio.create_task(publisher.flush())
        await until(lambda: publisher.returned >= 20)
        assert not flusher.done()
        # A queue that rejects what it has no room for: the broker nacks those publishes...
        await collector.bind(consume=False,
                             arguments={"x-max-length": 5, "x-overflow": "reject-publish"})
        await until(lambda: publisher.nacked >= 15)
        assert not flusher.done() and publisher.confirmed == 5
        await collector.consume()  # ...until a consumer makes room
        async with asyncio.timeout(30):
            await flusher
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert publisher.returned >= 20 and publisher.nacked >= 15
    assert publisher.confirmed == 20 and publisher.republished >= 20


async def test_unreachable_broker_at_start_is_one_clear_error(names: Names) -> None:
    host, port = servers.allocate("scratch", 0)  # nothing listens there
    publisher = ResultPublisher(f"amqp://guest:secret@{host}:{port}/%2F", names,
                                connect_timeout=2)
    with pytest.raises(PublisherError, match=r"cannot open the results exchange") as info:
        await publisher.start()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("durable", [False, True], ids=["transient-queue", "durable-queue"])
async def test_throughput_batched_vs_one_by_one(
    collector: Collector, names: Names, durable: bool
) -> None:
    """Measured, not asserted: confirms awaited per batch of 500 vs one at a time.

    With a durable queue the broker confirms a persistent message only after writing it to
    disk, as in production; with a transient one it confirms on routing.
    """
    await collector.bind(durable=durable)
    figures = {}
    runs: tuple[tuple[str, int, int, float], ...] = (
        ("batched (500)", 20_000, 500, 0.2), ("one-by-one", 2_000, 1, 0.0))
    for label, count, batch_size, interval in runs:
        results = make_results(count, sweep=f"bench-{label}")
        publisher = ResultPublisher(RABBIT, names, batch_size=batch_size,
                                    flush_interval=interval)
        await publisher.start()
        try:
            started = time.perf_counter()
            await publish_all(publisher, results)
            figures[label] = count / (time.perf_counter() - started)
        finally:
            await publisher.close()
        await collector.wait_for({message_key(r) for r in results}, timeout=60)
    queue = "durable" if durable else "transient"
    report(f"{queue} queue: "
           + ", ".join(f"{label}: {rate:,.0f} results/s" for label, rate in figures.items())
           + f" (ratio {figures['batched (500)'] / figures['one-by-one']:.1f}x)")
