"""Ingest through the whole StoreWriter vs raw binary COPY into the same table, same run.

1. A fresh database, migrated; the PostgreSQL store opened on it.
2. Raw: ``copy_records_to_table('observations', ...)`` of prebuilt rows (storage.rows), in
   batches of ``--batch-size``, with triggers off for that session
   (``session_replication_role = replica``), so without the rollup and services upkeep:
   the ceiling for this table on this machine.
3. Whole consumer: ``--count`` enriched results pre-filled into the enriched queue
   (persistent, confirmed; batch messages of ``--per-message`` results, as the enrichment
   worker sends them), then a :class:`~storage.consumer.StoreWriter` drains it:
   RabbitMQ delivery, validation, ``store.prepare`` and ``store.write_prepared`` (COPY
   into observations, the trigger's rollup and services upkeep, commit), ack after
   commit. Timed from the first write to the last ack; the steady state rate is taken
   between 10 % and 100 % written. Every stream round observes the same addresses a
   minute later than the round before (a recurring sweep: from round 2 on every service of
   the current view moves forward), or with ``--same-time`` at the same time (from round 2
   on no service moves: the shape of this bench before it had the option).

Rounds alternate (raw, then stream, with new rows each time, so the table grows alike for
both) and the median ratio is reported: this machine is noisy. Each run also reports CPU
per row, of this process (client) and of its PostgreSQL backends (server, from /proc):
the CPU ratio (raw CPU a row / stream CPU a row) is what the rows/s ratio comes to when
the machine gives no second core for the writer and the database to work in parallel.

Usage: ``python -m bench.ingest [--count 60000] [--batch-size 2000] [--rounds 3]
[--same-time]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import asyncpg

from brokerscan.model import AsnInfo, GeoInfo, ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.settings import Settings
from brokerscan.stream.consumer import tune_gc
from brokerscan.stream.topology import declare_stream, delete_stream
from brokerscan.stream.wire import batch_id, batch_message
from storage.consumer import StoreWriter
from storage.migrate import migrate
from storage.rows import COLUMNS, observation_row
from storage.store import open_store

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def make_results(count: int, sweep_id: str, started: datetime,
                 observed: datetime | None = None) -> list[ScanResult]:
    asn = AsnInfo(number=15169, organization="Google LLC", network="8.8.8.0/24",
                  source="bench", source_date="2026-01-01")
    geo = GeoInfo(country="US", source="bench", source_date="2026-01-01")
    return [ScanResult(sweep_id=sweep_id, sweep_started_at=started,
                       ip=f"{10 + i // 16_777_216}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                       port=1883, transport=Transport.TCP,
                       observed_at=started if observed is None else observed,
                       duration_ms=12.5, status=Status.SUCCESS, asn=asn, geo=geo)
            for i in range(count)]


_TICK = os.sysconf("SC_CLK_TCK")


def _backend_cpu(pids: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) each PostgreSQL backend has used, from /proc."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone, or not on this machine
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


async def _backends(admin: asyncpg.Connection, database: str) -> set[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return {r["pid"] for r in rows}


@dataclass
class Run:
    """One timed run: rows/s, and CPU per row of this process and of the database."""

    rate: float
    client_us: float
    server_us: float


async def raw_copy(url: str, rows: list[tuple[object, ...]], batch: int) -> Run:
    conn = await asyncpg.connect(url)
    try:
        # The table's bare cost: without the trigger that keeps the rollup and services
        # (a superuser setting; this database is the bench's own).
        await conn.execute("SET session_replication_role = replica")
        pid = conn.get_server_pid()
        server = _backend_cpu({pid})
        client = time.process_time()
        began = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table("observations", records=rows[i:i + batch],
                                                 columns=COLUMNS)
        took = time.perf_counter() - began
        client = time.process_time() - client
        used = _backend_cpu({pid}).get(pid, 0.0) - server.get(pid, 0.0)
        return Run(len(rows) / took, client / len(rows) * 1e6, used / len(rows) * 1e6)
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


async def consume(settings: Settings, url: str, admin: asyncpg.Connection, database: str,
                  count: int, batch: int) -> tuple[float, Run]:
    """Drain the enriched queue through a StoreWriter: overall rows/s, and the steady state
    (from 10 % written) with CPU per row over the whole drain."""
    store = await open_store(url)
    writer = StoreWriter(settings, store, batch_size=batch, max_delay=0.1)
    before_pids = await _backends(admin, database)
    server = _backend_cpu(before_pids)
    client = time.process_time()
    runner = asyncio.create_task(writer.run())
    marks: list[tuple[float, int]] = []
    try:
        while writer.written < count:
            if writer.written:
                marks.append((time.perf_counter(), writer.written))
            await asyncio.sleep(0.01)
        end = time.perf_counter()
        client = time.process_time() - client
        after = _backend_cpu(await _backends(admin, database))
    finally:
        writer.stop()
        await runner
        await store.close()
    used = sum(cpu - server.get(pid, 0.0) for pid, cpu in after.items())
    first = marks[0]
    steady = next(m for m in marks if m[1] >= count // 10)
    overall = (count - first[1]) / (end - first[0])
    rate = (count - steady[1]) / (end - steady[0])
    return overall, Run(rate, client / count * 1e6, used / count * 1e6)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw and stream runs, alternating, new rows each time")
    parser.add_argument("--per-message", type=int, default=500,
                        help="results per AMQP message (the enrichment worker's default)")
    parser.add_argument("--same-time", action="store_true",
                        help="every round observes the services at the same time (so from "
                             "round 2 on no service moves); default: each round a minute "
                             "later, as a recurring sweep moves every service forward")
    args = parser.parse_args()
    if args.rounds < 1 or args.count < 100 or not 1 <= args.batch_size <= 32767 \
            or args.per_message < 1:
        parser.error("need --rounds >= 1, --count >= 100, --batch-size in 1..32767 and "
                     "--per-message >= 1")
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
        ratios, cpu_ratios = [], []
        for round_ in range(1, args.rounds + 1):
            rows = [observation_row(r) for r in
                    make_results(args.count, f"bench-raw-{round_}", started)]
            raw = await raw_copy(url, rows, args.batch_size)
            del rows  # what the writer's process would not hold
            observed = started if args.same_time else started + timedelta(minutes=round_)
            results = make_results(args.count, f"bench-stream-{round_}", started, observed)
            began = time.perf_counter()
            await prefill(names, results, args.per_message)
            filled = args.count / (time.perf_counter() - began)
            del results
            tune_gc()  # as ``brokerscan store-worker`` does once started
            overall, stream = await consume(settings, url, admin, database, args.count,
                                            args.batch_size)
            ratios.append(stream.rate / raw.rate)
            raw_cpu = raw.client_us + raw.server_us
            stream_cpu = stream.client_us + stream.server_us
            cpu_ratios.append(raw_cpu / stream_cpu)
            print(f"round {round_}: raw COPY {raw.rate:,.0f} rows/s ({raw.client_us:.1f} + "
                  f"{raw.server_us:.1f} us CPU a row, client + server); StoreWriter "
                  f"{stream.rate:,.0f} rows/s steady, {overall:,.0f} overall "
                  f"({stream.client_us:.1f} + {stream.server_us:.1f} us); ratio "
                  f"{stream.rate / raw.rate:.2f}x, CPU ratio {raw_cpu / stream_cpu:.2f}x "
                  f"(prefill {filled:,.0f} results/s)")
        print(f"median ratio (steady rows/s / raw COPY) {statistics.median(ratios):.2f}x, "
              f"median CPU ratio {statistics.median(cpu_ratios):.2f}x, over {args.rounds} "
              f"rounds of {args.count:,} rows, batches of {args.batch_size}, "
              f"{args.per_message} results a message  (target >= 0.8x)")
    finally:
        await delete_stream(RABBIT_URL, names)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
