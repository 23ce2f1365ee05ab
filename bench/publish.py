"""Benchmark: results/s through ResultPublisher, one result per message vs batches, same run.

    .venv/bin/python bench/publish.py [--count 50000] [--per-message 1,250] [--rounds 2]

A started :class:`~brokerscan.stream.publisher.ResultPublisher` on the local RabbitMQ
(127.0.0.1:5672, guest) publishes ``--count`` results the way a shard task does
(``wait_ready()`` before each ``add()``, ``flush()`` at the end), for each
``results_per_message`` of ``--per-message``: ``1`` is the baseline (one AMQP message per
result, as before batches), the others batch. Everything else is the publisher's defaults,
so the raw results queue is durable and persistent messages are confirmed only once on disk,
as in production.

The results are made before the clock starts, one shard of one sweep, statuses mixed as
in a sweep where most addresses are silent or closed (60 % connection-timeout, 35 %
connection-refused, 5 % MQTT success): three routing keys. Timed from the first ``add()``
to ``flush()`` returning (serialising every result is inside). Each run uses a fresh
namespace (exchange and raw queue, both deleted at the end) and checks that the queue holds
exactly the messages confirmed. Rounds alternate the contenders; the best round counts.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerscan.model import Protocol, ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.stream.publisher import ResultPublisher

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_results(count: int, sweep_id: str) -> list[ScanResult]:
    started = datetime(2026, 6, 1, 8, tzinfo=UTC)
    out = []
    for i in range(count):
        kind = i % 20
        status = (Status.SUCCESS if kind == 0 else
                  Status.CONNECTION_REFUSED if kind < 8 else Status.CONNECTION_TIMEOUT)
        success = status is Status.SUCCESS
        out.append(ScanResult(
            sweep_id=sweep_id, sweep_started_at=started,
            ip=f"{10 + (i >> 24)}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", port=1883,
            transport=Transport.TCP, observed_at=started, duration_ms=12.5, status=status,
            protocol=Protocol.MQTT if success else None, probes=[Protocol.MQTT],
            raw=b"\x20\x02\x00\x00" if success else None))
    return out


async def run_once(results: list[ScanResult], per_message: int) -> tuple[float, int]:
    """Publish every result once; returns (results/s, messages)."""
    names = Names(f"bench{secrets.token_hex(4)}")
    publisher = ResultPublisher(RABBIT_URL, names, results_per_message=per_message)
    await publisher.start()
    try:
        began = time.perf_counter()
        for result in results:
            await publisher.wait_ready()
            publisher.add(result, 0)
        await publisher.flush()
        took = time.perf_counter() - began
    finally:
        await publisher.close()
    connection = await aio_pika.connect(RABBIT_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.results_queue, passive=True)
        queued = queue.declaration_result.message_count
        await queue.delete(if_unused=False, if_empty=False)
        await channel.exchange_delete(names.results_exchange)
    assert publisher.confirmed == len(results), (publisher.confirmed, len(results))
    assert queued == publisher.messages, (queued, publisher.messages)
    return len(results) / took, publisher.messages


async def run(count: int, per_message: list[int], rounds: int) -> None:
    best: dict[int, tuple[float, int]] = {}
    for round_ in range(rounds):
        for n in per_message:
            results = make_results(count, f"bench-{round_}-{n}")
            rate, messages = await run_once(results, n)
            if rate > best.get(n, (0.0, 0))[0]:
                best[n] = (rate, messages)
    baseline = best[per_message[0]][0]
    print(f"{count:,} results, 3 routing keys, best of {rounds} round(s)")
    for n, (rate, messages) in best.items():
        print(f"  results_per_message={n:<5d} {rate:>10,.0f} results/s  {messages:>7,d} "
              f"messages  ({rate / baseline:.2f}x results_per_message={per_message[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--per-message", default="1,250",
                        help="results_per_message values, comma-separated; the first is "
                             "the baseline")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    per_message = [int(n) for n in args.per_message.split(",")]
    asyncio.run(run(args.count, per_message, args.rounds))


if __name__ == "__main__":
    main()
