"""Ingest through the whole StoreWriter vs raw binary COPY into the same table, same run.

1. A fresh database, migrated; the PostgreSQL store opened on it.
2. Raw: ``copy_records_to_table('observations', ...)`` of prebuilt rows (storage.rows), in
   batches of ``--batch-size``: the ceiling for this table on this machine.
3. Whole consumer: ``--count`` enriched results pre-filled into the enriched queue
   (persistent, confirmed; batch messages of ``--per-message`` results, as the enrichment
   worker sends them), then a :class:`~storage.consumer.StoreWriter` drains it:
   RabbitMQ delivery, validation, ``store.write`` (stage COPY + merge + services + rollup,
   committed), ack after commit. Timed from the first write to the last ack; the steady
   state rate is taken between 10 % and 100 % written.

Usage: ``python -m bench.ingest [--count 100000] [--batch-size 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from datetime import UTC, datetime

import aio_pika
import asyncpg

from brokerscan.model import AsnInfo, GeoInfo, ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.settings import Settings
from brokerscan.wire import batch_id, batch_message
from storage.consumer import StoreWriter
from storage.deadletter import declare_stream
from storage.migrate import migrate
from storage.rows import COLUMNS, observation_row
from storage.store import open_store

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_results(count: int, sweep_id: str, started: datetime) -> list[ScanResult]:
    asn = AsnInfo(number=15169, organization="Google LLC", network="8.8.8.0/24",
                  source="bench", source_date="2026-01-01")
    geo = GeoInfo(country="US", source="bench", source_date="2026-01-01")
    return [ScanResult(sweep_id=sweep_id, sweep_started_at=started,
                       ip=f"{10 + i // 16_777_216}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                       port=1883, transport=Transport.TCP, observed_at=started,
                       duration_ms=12.5, status=Status.SUCCESS, asn=asn, geo=geo)
            for i in range(count)]


async def raw_copy(url: str, rows: list[tuple[object, ...]], batch: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        began = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table("observations", records=rows[i:i + batch],
                                                 columns=COLUMNS)
        return len(rows) / (time.perf_counter() - began)
    finally:
        await conn.close()


async def prefill(names: Names, results: list[ScanResult], per_message: int) -> None:
    """Publish *results* to the enriched exchange as the enrichment worker does: batch
    messages of *per_message* results."""
    connection = await aio_pika.connect(RABBIT_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_stream(channel, names)
        messages = []
        for i in range(0, len(results), per_message):
            chunk = results[i:i + per_message]
            messages.append(batch_message(
                [r.model_dump_json().encode() for r in chunk],
                message_id=batch_id(r.key for r in chunk),
                headers={"schema_version": 1, "sweep_id": chunk[0].sweep_id or ""}))
        for i in range(0, len(messages), 50):
            await asyncio.gather(*(topology.enriched.publish(m, "result.none.success")
                                   for m in messages[i:i + 50]))


async def consume(settings: Settings, url: str, count: int, batch: int) -> tuple[float, float]:
    store = await open_store(url)
    writer = StoreWriter(settings, store, batch_size=batch, max_delay=0.1)
    runner = asyncio.create_task(writer.run())
    marks: list[tuple[float, int]] = []
    try:
        while writer.written < count:
            if writer.written:
                marks.append((time.perf_counter(), writer.written))
            await asyncio.sleep(0.01)
        end = time.perf_counter()
    finally:
        writer.stop()
        await runner
        await store.close()
    first = marks[0]
    steady = next(m for m in marks if m[1] >= count // 10)
    overall = (count - first[1]) / (end - first[0])
    return overall, (count - steady[1]) / (end - steady[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--per-message", type=int, default=500,
                        help="results per AMQP message (the enrichment worker's default)")
    args = parser.parse_args()
    database = f"brokerscan_bench_{secrets.token_hex(5)}"
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    names = Names(f"b{secrets.token_hex(5)}")
    settings = Settings(namespace=names.namespace, results_url=RABBIT_URL)
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        await migrate(url)
        started = datetime.now(UTC).replace(microsecond=0)
        await (await open_store(url)).close()  # premakes today's partition
        rows = [observation_row(r) for r in make_results(args.count, "bench-raw", started)]
        raw = await raw_copy(url, rows, args.batch_size)
        print(f"raw copy_records_to_table  {raw:>10,.0f} rows/s  ({args.count:,} rows, "
              f"batches of {args.batch_size})")
        results = make_results(args.count, "bench-stream", started)
        began = time.perf_counter()
        await prefill(names, results, args.per_message)
        print(f"prefill enriched queue     {args.count / (time.perf_counter() - began):>10,.0f}"
              f" results/s ({args.per_message} per message, publisher confirms)")
        overall, steady = await consume(settings, url, args.count, args.batch_size)
        print(f"StoreWriter end to end     {overall:>10,.0f} rows/s overall, {steady:,.0f} "
              f"rows/s steady (10-100 %)")
        print(f"ratio (steady / raw COPY)  {steady / raw:>10.2f}x  (target >= 0.5x)")
    finally:
        connection = await aio_pika.connect(RABBIT_URL)
        async with connection:
            channel = await connection.channel()
            for queue in (names.results_queue, names.enriched_queue, names.dead_letter_queue):
                await channel.queue_delete(queue)
            for exchange in (names.results_exchange, names.enriched_exchange,
                             names.dead_letter_exchange):
                await channel.exchange_delete(exchange)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
