"""Benchmark: ``brokerscan import`` of a JSON-lines file against the store's own write of
the same results, in the same run, and the import's peak memory at two file sizes.

    .venv/bin/python bench/import_file.py [--lines 50000] [--rounds 3]
        [--memory 50000,200000] [--stores sqlite,postgresql]

Lines: tests/unit/storage/gen.py ``import_lines`` (one address each, every third without a
sweep or enrichment), or with ``--as-scanned`` every line as ``scan -o`` writes it (keyed
and enriched already).

Rate, per store, in rounds that alternate (this machine is noisy), each into a fresh
store (a SQLite file; a throwaway migrated PostgreSQL database, tests/pg.py):

1. ``store.write`` of the file's results, already read, validated, keyed and enriched (by
   the import's own reader, untimed), in batches of
   :data:`~brokerscan.cli.importer.BATCH`: the store writer's rate;
2. the import of the file, in this process (:class:`~brokerscan.cli.importer.Importer`,
   what ``brokerscan import`` runs after its start-up): read, validate, key, enrich,
   write.

The median of the rounds' ratios is reported, and the same for CPU a row of this process
(every thread; PostgreSQL's own CPU is the same rows' for both, and not counted): other
work on this machine moves the rates from round to round, less so the CPU.

Memory: ``brokerscan import FILE`` in a child process for each ``--memory`` size, its own
peak RSS as ``/proc/self/status`` says it (VmHWM) when it exits, and the same for an empty
file (the start-up alone).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerscan.cli.importer import BATCH, Importer, ResultReader
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


def read_all(source: BinaryIO) -> list[ScanResult]:
    """Every result of *source*, as the import reads them (validated, keyed, enriched)."""
    reader = ResultReader(source, open_enricher(["builtin:"]))
    out: list[ScanResult] = []
    while True:
        batch = reader.read()
        out += batch.results
        if batch.done:
            return out


async def baseline(url: str, results: list[ScanResult]) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, every thread) ``store.write`` takes for
    *results*, batch after batch."""
    store = await open_store(url)
    try:
        began, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(results), BATCH):
            await store.write(results[start:start + BATCH])
        return time.perf_counter() - began, time.process_time() - cpu
    finally:
        await store.close()


async def imported(url: str, path: Path) -> tuple[float, float]:
    """Seconds and CPU seconds the import of *path* takes (the command after its
    start-up)."""
    store = await open_store(url)
    enricher = open_enricher(["builtin:"])
    try:
        with open(path, "rb") as source:  # noqa: ASYNC230  (the import reads it this way)
            importer = Importer(store, ResultReader(source, enricher), path.name)
            began, cpu = time.perf_counter(), time.process_time()
            await importer.run()
            took = time.perf_counter() - began, time.process_time() - cpu
        assert importer.tally.stored == importer.tally.new > 0, importer.tally
        return took
    finally:
        enricher.close()
        await store.close()


#: The command, reporting its own peak resident set as it exits (VmHWM: since its exec;
#: a child's rusage would also count what this process had resident when it forked).
PEAK = ("import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(next(\n"
        "    line for line in open('/proc/self/status') if line.startswith('VmHWM'))))\n"
        "from brokerscan.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")


def run_import(path: Path, url: str) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB and the summary line of one import in a child."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, "import", str(path), "--store", url,
                           "--progress", "off"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=ENV, check=False)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr}")
    lines = proc.stderr.splitlines()
    peak = next(line for line in lines if line.startswith("VmHWM:"))
    summary = next(line for line in lines if "stored" in line or "nothing" in line)
    return took, int(peak.split()[1]) / 1024, summary


async def rates(kind: str, path: Path, results: list[ScanResult], rounds: int,
                workdir: Path) -> None:
    ratios, cpu_ratios = [], []
    n = len(results)
    for i in range(rounds):
        async with fresh_store(kind, workdir, "base") as url:
            base, base_cpu = await baseline(url, results)
        async with fresh_store(kind, workdir, "import") as url:
            took, cpu = await imported(url, path)
        ratios.append(base / took)
        cpu_ratios.append(base_cpu / cpu)
        print(f"{kind:<10} round {i + 1}: store.write {n / base:>7,.0f}/s "
              f"({base_cpu / n * 1e6:.0f} us CPU a row)  import {n / took:>7,.0f}/s "
              f"({cpu / n * 1e6:.0f} us)  ratio {base / took:.2f} (CPU {base_cpu / cpu:.2f})",
              flush=True)
    print(f"{kind:<10} median ratio {statistics.median(ratios):.2f} "
          f"(CPU {statistics.median(cpu_ratios):.2f})", flush=True)


def write_lines(path: Path, lines: int, as_scanned: bool) -> None:
    made = import_lines(lines)
    if as_scanned:  # as scan -o writes them: every result keyed and enriched
        made = [r.to_json() + "\n"
                for r in read_all(io.BytesIO("".join(made).encode()))]
    path.write_text("".join(made))


async def run(args: argparse.Namespace) -> None:
    stores = args.stores.split(",")
    tune_gc()  # as the store writer and the import do
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        workdir = Path(tmp)
        path = workdir / "lines.jsonl"
        write_lines(path, args.lines, args.as_scanned)
        with open(path, "rb") as source:  # noqa: ASYNC230  (set-up, untimed)
            results = read_all(source)
        print(f"{args.lines:,} lines ({path.stat().st_size / 1e6:,.0f} MB)"
              f"{', as scanned' if args.as_scanned else ''}", flush=True)
        for kind in stores:
            await rates(kind, path, results, args.rounds, workdir)
        del results
        if not args.memory:
            return
        empty = workdir / "empty.jsonl"
        empty.write_bytes(b"")
        for kind in stores:
            async with fresh_store(kind, workdir, "startup") as url:
                took, rss, _ = run_import(empty, url)
            print(f"{kind:<10} empty file: peak RSS {rss:.0f} MB, {took:.1f} s", flush=True)
        for lines in (int(n) for n in args.memory.split(",")):
            write_lines(path, lines, args.as_scanned)
            for kind in stores:
                async with fresh_store(kind, workdir, "memory") as url:
                    took, rss, last = run_import(path, url)
                print(f"{kind:<10} {lines:>8,} lines: peak RSS {rss:.0f} MB, {took:.1f} s "
                      f"({lines / took:,.0f}/s with start-up); {last}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", default="50000,200000", help="sizes ('' for none)")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--as-scanned", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
