"""Benchmark: PgStore.write rows/s at steady state vs raw binary COPY into the same table.

    .venv/bin/python bench/store_write.py [--batch 5000] [--batches 20] [--warmup 3]

In one run, in a throwaway database (tests/pg.py) with the migrations applied, alternating
batch by batch so that both see the same table sizes and server state:

* ``raw COPY``: ``copy_records_to_table("observations", ...)`` of rows already mapped, one
  transaction per batch, triggers off for that session: the ceiling (no dedupe, no rollup,
  no current view);
* ``raw COPY + mapping``: the same, timing the row mapping (``observation_row``) too;
* ``PgStore.write``: what the storage consumer calls: mapping, COPY into observations,
  the trigger's rollup and services upserts, commit;
* ``PgStore.write (redelivered)``: the same batch again (all duplicates: the COPY fails on
  the unique key, and the batch is merged through the staging table, adding nothing).

Every batch is a new sweep (new keys). Prints rows/s (median of the timed batches).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import migrate
from storage.pgstore import PgStore
from storage.rows import COLUMNS, observation_row
from tests.pg import fresh_database
from tests.unit.storage.gen import make_results


async def run(batch: int, batches: int, warmup: int) -> None:
    async with fresh_database() as url:
        await migrate.migrate(url)
        store = await PgStore.open(url)
        conn = await asyncpg.connect(url)
        # Raw COPY is the table's bare cost: triggers (the rollup and services upkeep) off.
        await conn.execute("SET session_replication_role = replica")
        start = datetime(2026, 6, 1, 8, tzinfo=UTC)
        timings: dict[str, list[float]] = {k: [] for k in (
            "raw COPY", "raw COPY + mapping", "PgStore.write", "PgStore.write (redelivered)")}
        try:
            for i in range(warmup + batches):
                def sweep(tag: str, i: int = i) -> list[tuple[str, datetime]]:
                    return [(f"sw-{tag}{i:05d}", start + timedelta(minutes=i))]

                raw = make_results(batch, seed=i, sweep_list=sweep("raw"))
                mapped = make_results(batch, seed=i, sweep_list=sweep("map"))
                stored = make_results(batch, seed=i, sweep_list=sweep("store"))
                rows = [observation_row(r) for r in raw]
                t0 = time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table("observations", records=rows,
                                                     columns=COLUMNS)
                t1 = time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "observations", records=[observation_row(r) for r in mapped],
                        columns=COLUMNS)
                t2 = time.perf_counter()
                assert await store.write(stored) == batch
                t3 = time.perf_counter()
                assert await store.write(stored) == 0
                t4 = time.perf_counter()
                if i >= warmup:
                    for key, took in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                                         strict=True):
                        timings[key].append(batch / took)
            total = await conn.fetchval("SELECT count(*) FROM observations")
        finally:
            await conn.close()
            await store.close()
    ceiling = statistics.median(timings["raw COPY"])
    print(f"batch {batch} rows, {batches} timed batches after {warmup} warm-up; "
          f"{total} rows in observations at the end")
    for key, values in timings.items():
        median = statistics.median(values)
        print(f"  {key:30s} {median:>10,.0f} rows/s  ({median / ceiling:.2f}x raw COPY)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.batch, args.batches, args.warmup))


if __name__ == "__main__":
    main()
