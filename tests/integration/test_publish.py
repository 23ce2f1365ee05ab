"""ResultPublisher against the machine's RabbitMQ, directly and through the fault proxy.

Every test runs in its own namespace, binds its consumer queue (exclusive, so it goes with
the connection) before publishing, and deletes the durable exchange it declared. The
consumer unpacks every batch message (:func:`brokerscan.stream.wire.message_lines`) and checks it
as it comes (homogeneous routing key and headers, count header, message id); the tests then
count results by key.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import aio_pika.abc
import pytest

from brokerscan.model import SCHEMA_VERSION, Protocol, ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.stream.publisher import PublisherError, ResultPublisher, message_key, routing_key
from brokerscan.stream.wire import BATCH_CONTENT_TYPE, COUNT_HEADER, batch_id, message_lines
from tests import servers
from tests.faultproxy import FaultProxy
from tests.services import RABBIT_URL
from tests.waiting import HANG, holds_for_async, wait_for_async

pytestmark = pytest.mark.integration

OBSERVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_STATUSES = [Status.SUCCESS, Status.CONNECTION_REFUSED, Status.CONNECTION_TIMEOUT]


def make_results(count: int, sweep: str | None = "sweep-1",
                 statuses: list[Status] = _STATUSES, first: int = 0) -> list[ScanResult]:
    """``count`` distinct results (keys differ in ip/port, the ``first``-th onwards),
    statuses in turn; data only, never dialled."""
    out = []
    for i in range(first, first + count):
        status = statuses[i % len(statuses)]
        out.append(ScanResult(
            sweep_id=sweep, ip=f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            port=1883 + (i >> 24), transport=Transport.TCP, observed_at=OBSERVED,
            status=status, protocol=Protocol.MQTT if status is Status.SUCCESS else None,
            probes=[Protocol.MQTT], raw=b"\x20\x02\x00\x00" if status is Status.SUCCESS else None,
        ))
    return out


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the collector saw it, its results parsed."""

    message_id: str
    routing_key: str
    headers: dict[str, object]  # all but the count
    shard: int | None
    body: bytes
    results: list[ScanResult]


class Collector:
    """A consumer on its own connection: an exclusive queue bound to the results exchange.

    Checks every message as it arrives (so a test fails on the first bad one): persistent,
    the batch content type, one routing key for all its results, headers that match them,
    the count header equal to the number of lines, and the message id of its keys.
    """

    def __init__(self, channel: aio_pika.abc.AbstractChannel, names: Names) -> None:
        self.channel = channel
        self.names = names
        self.keys: collections.Counter[str] = collections.Counter()
        self.messages: list[Received] = []
        self.queue: aio_pika.abc.AbstractQueue | None = None
        self.durable = False
        self.errors: list[str] = []
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
        try:
            received = check_message(message)
        except AssertionError as exc:  # raised here it would only be logged by aio-pika
            self.errors.append(f"{message.message_id}: {exc}")
        else:
            self.messages.append(received)
            self.keys.update(message_key(r) for r in received.results)
        self._changed.set()

    @property
    def duplicates(self) -> int:
        """Results received more than once (counting every extra copy)."""
        return sum(self.keys.values()) - len(self.keys)

    def bodies_by_id(self) -> dict[str, set[bytes]]:
        out: dict[str, set[bytes]] = collections.defaultdict(set)
        for received in self.messages:
            out[received.message_id].add(received.body)
        return out

    async def wait_for(self, expected: set[str], timeout: float = 30.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not expected <= self.keys.keys():
                assert not self.errors, self.errors[:3]
                self._changed.clear()
                await self._changed.wait()
        assert not self.errors, self.errors[:3]


def check_message(message: aio_pika.abc.AbstractIncomingMessage) -> Received:
    """Unpack one message and check that it is a well-formed, homogeneous batch."""
    assert message.content_type == BATCH_CONTENT_TYPE
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.routing_key is not None and message.message_id is not None
    results = [ScanResult.model_validate_json(line) for line in message_lines(message)]
    assert results, "an empty batch"
    assert {routing_key(r) for r in results} == {message.routing_key}
    headers: dict[str, object] = dict(message.headers or {})
    assert headers.pop(COUNT_HEADER) == len(results)
    shard = headers.get("shard")
    assert shard is None or isinstance(shard, int)
    sweep = results[0].sweep_id
    assert all(r.sweep_id == sweep for r in results)
    assert headers == {"schema_version": SCHEMA_VERSION,
                       **({} if sweep is None else {"sweep_id": sweep}),
                       **({} if shard is None else {"shard": shard})}
    assert message.message_id == batch_id(r.key for r in results)
    return Received(message.message_id, message.routing_key, headers, shard, message.body,
                    results)


@pytest.fixture
async def collector(rabbitmq: servers.Endpoint, names: Names) -> AsyncIterator[Collector]:
    connection = await aio_pika.connect(RABBIT_URL)
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
    publisher = ResultPublisher(RABBIT_URL, names)
    await publisher.start()
    try:
        await publish_all(publisher, results)
        # flush() returned: every result is confirmed, none is waiting.
        assert publisher.added == publisher.confirmed == publisher.published == 20_000
        assert publisher.pending == 0 and publisher.republished == 0
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert len(collector.keys) == 20_000 and collector.duplicates == 0
    assert len(collector.messages) == publisher.messages
    # Three routing keys, at most 250 a message: about 20,000 / 250 messages, not 20,000.
    assert 80 <= publisher.messages < 200
    assert max(len(m.results) for m in collector.messages) == 250
    sent = {message_key(r): r for r in results}
    for received in collector.messages:
        assert received.headers == {"schema_version": SCHEMA_VERSION, "sweep_id": "sweep-1",
                                    "shard": 7}
        assert received.shard == 7
        assert all(sent[message_key(r)] == r for r in received.results)


async def test_messages_split_by_size_routing_key_sweep_and_shard(
    collector: Collector, names: Names
) -> None:
    """Every message holds one (routing key, sweep, shard) and at most results_per_message
    results; the same results published again give the same message ids."""
    await collector.bind()
    # 3 statuses (two of them share protocol none) x 3 sweeps (one unknown) x 2 shards
    # (one unknown), 23 results each: ceil(23 / 7) = 4 messages each, 72 in all.
    groups: dict[tuple[str, str | None, int | None], list[ScanResult]] = {}
    for sweep in ("sweep-a", "sweep-b", None):
        for shard in (3, None):
            for status in _STATUSES:
                part = make_results(23, sweep=sweep, statuses=[status], first=23 * len(groups))
                groups[(routing_key(part[0]), sweep, shard)] = part
    ids_per_run: list[collections.Counter[str]] = []
    for _ in range(2):
        seen = len(collector.messages)
        publisher = ResultPublisher(RABBIT_URL, names, results_per_message=7)
        await publisher.start()
        try:
            for (_, _, shard), part in groups.items():
                for result in part:
                    publisher.add(result, shard)
            await publisher.flush()
            assert publisher.confirmed == 18 * 23 and publisher.messages == 72
        finally:
            await publisher.close()
        await wait_for_async(lambda: len(collector.messages) >= seen + 72,  # noqa: B023
                             30, "the run's 72 messages")
        run = collector.messages[seen:]
        for received in run:
            assert 1 <= len(received.results) <= 7
            sweep = received.results[0].sweep_id
            group = groups[(received.routing_key, sweep, received.shard)]  # one known group
            assert {r.key for r in received.results} <= {r.key for r in group}
        # Each group in order, cut at 7: sizes 7, 7, 7 and 2.
        for key, group in groups.items():
            parts = [m.results for m in run
                     if (m.routing_key, m.results[0].sweep_id, m.shard) == key]
            assert parts == [group[0:7], group[7:14], group[14:21], group[21:23]]
        ids_per_run.append(collections.Counter(m.message_id for m in run))
    assert ids_per_run[0] == ids_per_run[1] and len(ids_per_run[0]) == 72
    assert sum(collector.keys.values()) == 2 * 18 * 23 and len(collector.keys) == 18 * 23


async def test_one_result_per_message_still_works(collector: Collector, names: Names) -> None:
    await collector.bind()
    results = make_results(300, sweep=None)
    publisher = ResultPublisher(RABBIT_URL, names, results_per_message=1)
    await publisher.start()
    try:
        await publish_all(publisher, results, shard=None)
        assert publisher.confirmed == publisher.messages == 300
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert len(collector.messages) == 300 and collector.duplicates == 0
    first = collector.messages[0]
    assert first.headers == {"schema_version": SCHEMA_VERSION} and first.shard is None
    assert first.message_id == f"|{first.results[0].ip}|1883+1|" + first.message_id[-16:]


async def test_a_small_group_is_not_held_back_by_a_busy_one(
    collector: Collector, names: Names
) -> None:
    """A result of a rare routing key goes out within about ``flush_interval`` while
    full messages of another key keep every round busy."""
    await collector.bind()
    rare = make_results(1, sweep="rare")[0]
    busy = make_results(100_000, sweep="busy", statuses=[Status.CONNECTION_REFUSED])
    publisher = ResultPublisher(RABBIT_URL, names, flush_interval=0.2)
    await publisher.start()
    try:
        publisher.add(rare)
        started = time.monotonic()
        behind = 0
        while message_key(rare) not in collector.keys:
            assert behind < len(busy), "the rare result went only at the end"
            await publisher.wait_ready()
            publisher.add(busy[behind])
            behind += 1
        took = time.monotonic() - started
        await publisher.flush()
    finally:
        await publisher.close()
    # "Within about flush_interval" is a latency figure; on a loaded machine it is not a
    # test (the report shows it). behind < len(busy) above is the claim: not held back.
    assert took < 0.2 + HANG  # a hang, not a speed test
    report(f"a rare result arrived after {took:.2f} s, {behind:,} busy results behind it")


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
        # Both stay blocked while the broker is stalled (a window of the scenario).
        await holds_for_async(lambda: not waiter.done() and not flusher.done(), 1.0,
                              "wait_ready() and flush() blocked")
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
    # batch_size caps a message too: never more than 100 results in one.
    assert max(len(m.results) for m in collector.messages) == 100


async def test_connection_cut_mid_stream_loses_nothing(
    collector: Collector, names: Names, proxy: FaultProxy
) -> None:
    """Three cuts, each with a round in flight: the proxy stalls, a round goes out and
    waits for its confirms, the connection is reset, the proxy flows again."""
    await collector.bind()
    results = make_results(20_000)
    publisher = ResultPublisher(proxy.url(), names)
    await publisher.start()
    try:
        for start in range(0, 20_000, 5_000):
            chunk = results[start:start + 5_000]
            if start:
                proxy.stall()
                issued = publisher.messages
                for result in chunk[:1_000]:
                    publisher.add(result)
                await wait_for_async(lambda: publisher.messages > issued,  # noqa: B023
                                     30, "a message issued into the stall")
                assert publisher.pending == 1_000
                assert await asyncio.to_thread(proxy.cut) == 1
                proxy.resume()
                chunk = chunk[1_000:]
            async with asyncio.timeout(60):
                await publish_all(publisher, chunk)
        assert publisher.confirmed == publisher.added == 20_000
        assert publisher.reconnects == 3 and proxy.accepted == 4
        assert publisher.republished >= 3 * 500  # at least the round in flight, each time
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert len(collector.keys) == 20_000
    # Every duplicate comes from a republish whose first copy had arrived unconfirmed...
    assert collector.duplicates <= publisher.republished
    # ...and a message published again is the same message: same id, same body.
    assert all(len(bodies) == 1 for bodies in collector.bodies_by_id().values())
    report(f"3 cuts in 20,000: republished {publisher.republished} results in "
           f"{publisher.messages} messages, duplicates delivered {collector.duplicates}, "
           f"reconnects {publisher.reconnects}")


async def test_stall_beyond_the_retry_budget_fails_flush_clearly(
    names: Names, proxy: FaultProxy, collector: Collector
) -> None:
    publisher = ResultPublisher(proxy.url(), names, retry_budget=1.5, confirm_timeout=0.5,
                                connect_timeout=30)
    await publisher.start()  # a loaded machine may take seconds to connect and declare
    publisher.connect_timeout = 0.5  # the reconnects into the stall: each fails fast
    try:
        proxy.stall()
        for result in make_results(50):
            publisher.add(result)
        started = time.monotonic()
        with pytest.raises(PublisherError, match=r"50 result\(s\) still unconfirmed after "
                           r"retrying for .* \(budget 1.5 s\); last error: "):
            await publisher.flush()
        assert time.monotonic() - started < 1.5 + HANG  # the retry budget; the rest: a hang
        with pytest.raises(PublisherError):
            await publisher.wait_ready()
        with pytest.raises(PublisherError):
            publisher.add(make_results(1)[0])
        # 50 results of three routing keys: three messages, each timed out once.
        assert publisher.confirmed == 0 and publisher.timed_out == publisher.messages == 3
        assert "guest:***@" in str(pytest.raises(PublisherError, publisher.add,
                                                 make_results(1)[0]).value)
    finally:
        await publisher.close()  # already failed: tears down without raising again


async def test_returned_and_nacked_messages_are_retried(
    collector: Collector, names: Names
) -> None:
    publisher = ResultPublisher(RABBIT_URL, names, results_per_message=4, declare_queue=False)
    await publisher.start()  # declares the exchange; nothing is bound to it yet
    results = make_results(24)  # 8 of each routing key: 6 messages of 4
    try:
        for result in results:
            publisher.add(result)
        flusher = asyncio.create_task(publisher.flush())
        await wait_for_async(lambda: publisher.returned >= 6, 30, "6 messages returned")
        assert not flusher.done() and publisher.messages % 6 == 0
        # A queue that rejects what it has no room for: the broker nacks those publishes...
        await collector.bind(consume=False,
                             arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        await wait_for_async(lambda: publisher.nacked >= 4, 30, "4 messages nacked")
        assert not flusher.done() and publisher.confirmed == 8  # two messages of 4
        await collector.consume()  # ...until a consumer makes room
        async with asyncio.timeout(30):
            await flusher
    finally:
        await publisher.close()
    await collector.wait_for({message_key(r) for r in results})
    assert publisher.returned >= 6 and publisher.nacked >= 4
    assert publisher.confirmed == 24 and publisher.republished >= 24
    assert max(len(m.results) for m in collector.messages) == 4


async def test_unreachable_broker_at_start_is_one_clear_error(names: Names) -> None:
    host, port = servers.allocate("scratch", 0)  # nothing listens there
    publisher = ResultPublisher(f"amqp://guest:secret@{host}:{port}/%2F", names,
                                connect_timeout=2)
    with pytest.raises(PublisherError, match=r"cannot open the results exchange") as info:
        await publisher.start()
    assert "secret" not in str(info.value)
