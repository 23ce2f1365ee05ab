"""Benchmark: ``brokerscan import`` of a JSON-lines file against the store's own write of
the same results, in the same run, and the import's peak memory at two file sizes.

    .venv/bin/python bench/import_file.py [--lines 50000,200000] [--stores sqlite,postgresql]

For each store and each size N, in this order:

1. N lines (tests/unit/storage/gen.py ``import_lines``: one address each, every third
   without a sweep or enrichment) written to a file.
2. Baseline: the same results, already read, validated, keyed and enriched (by the
   import's own reader, untimed), written with ``store.write`` in batches of
   :data:`~brokerscan.cli.importer.BATCH` into a fresh store: the store writer's rate.
3. Import: ``python -m brokerscan.cli import FILE --store URL`` in a child process into
   another fresh store; its wall time, less the start-up of the same command on an empty
   file (measured first), gives results/s; ``wait4`` gives its own peak RSS.

Fresh stores: a SQLite file in a temporary directory, a throwaway migrated PostgreSQL
database (tests/pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerscan.cli.importer import BATCH, ResultReader
from brokerscan.model import ScanResult
from brokerscan.stream.consumer import tune_gc
from enrichment.lookup import open_enricher
from storage.migrate import migrate
from storage.store import open_store
from tests.pg import fresh_database
from tests.unit.storage.gen import import_lines

ENV = {**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"}


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@asynccontextmanager
async def fresh_store(kind: str, workdir: Path, tag: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        path = workdir / f"{tag}.db"
        yield f"sqlite:///{path}"
        remove_sqlite(path)
        return
    async with fresh_database() as url:
        await migrate(url)
        yield url


def read_all(path: Path) -> list[ScanResult]:
    enricher = open_enricher(["builtin:"])
    with open(path, "rb") as source:
        reader = ResultReader(source, enricher)
        results: list[ScanResult] = []
        while True:
            batch = reader.read()
            results += batch.results
            if batch.done:
                return results


async def baseline(url: str, results: list[ScanResult]) -> float:
    """Seconds ``store.write`` takes for *results*, batch after batch."""
    store = await open_store(url)
    tune_gc()  # as the store writer (and the import) do
    try:
        began = time.perf_counter()
        for start in range(0, len(results), BATCH):
            await store.write(results[start:start + BATCH])
        return time.perf_counter() - began
    finally:
        await store.close()


def run_import(path: Path, url: str) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB and the last stderr line of one import in a child."""
    with tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "brokerscan.cli", "import", str(path),
                                 "--store", url, "--progress", "off"],
                                stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - began
        err.seek(0)
        text = err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"import failed: {text}")
    return took, usage.ru_maxrss / 1024, text.strip().splitlines()[-1]


async def one(kind: str, lines: int, workdir: Path) -> None:
    path = workdir / f"{lines}.jsonl"
    path.write_text("".join(import_lines(lines)))
    empty = workdir / "empty.jsonl"
    empty.write_bytes(b"")
    async with fresh_store(kind, workdir, "startup") as url:
        startup, startup_rss, _ = run_import(empty, url)
    results = read_all(path)
    async with fresh_store(kind, workdir, "base") as url:
        base = await baseline(url, results)
    del results
    async with fresh_store(kind, workdir, "import") as url:
        took, rss, last = run_import(path, url)
    base_rate = lines / base
    rate = lines / (took - startup)
    print(f"{kind:<10} {lines:>8,} lines ({path.stat().st_size / 1e6:,.0f} MB)  "
          f"store.write {base_rate:>8,.0f}/s  import {rate:>8,.0f}/s "
          f"({lines / took:,.0f}/s with {startup:.2f} s start-up)  "
          f"ratio {rate / base_rate:.2f}  peak RSS {rss:.0f} MB "
          f"(empty file: {startup_rss:.0f} MB)", flush=True)
    print(f"           import said: {last}", flush=True)
    path.unlink()


async def run(sizes: list[int], stores: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        for kind in stores:
            for lines in sizes:
                await one(kind, lines, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", default="50000,200000")
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    asyncio.run(run([int(n) for n in args.lines.split(",")], args.stores.split(",")))


if __name__ == "__main__":
    main()
