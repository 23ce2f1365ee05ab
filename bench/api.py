"""Benchmark: what the REST API costs over the SQL it runs.

    .venv/bin/python bench/api.py [--store URL] [--rows 50000] [--rounds 5] [--runs 20]

Without ``--store``, a throwaway embedded store (SQLite) is filled with ``--rows``
generated results (``tests/searchref.make_search_results``, three daily sweeps). With
``--store postgresql://...`` the bench reads that store as it is (a large data set made
elsewhere; ``--fill`` fills it first) and adds one API token to it.

In one run: a real ``brokerscan serve`` process (no rate limit) on 127.64.255.x, and, for
each case, the exact SQL statements the searcher runs for it (recorded from the same call
in this process), replayed with the plain driver (``sqlite3`` or ``asyncpg``, one
connection, every row fetched). Rounds alternate SQL and API so both see the same cache.
The API's time is a client's: request sent to last byte read, over a kept-alive
connection, token checked on every request (one primary-key read). Prints median
milliseconds per case, the overhead and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.census import census_report
from storage.searcher import Searcher, parse_facets
from storage.sqlitestore import path_of
from storage.store import open_store
from storage.tokens import create_token
from tests.searchref import make_search_results

Statement = tuple[str, list[object]]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    params: dict[str, str]
    run: Callable[[Searcher], Awaitable[object]]


def cases(ip: str) -> list[Case]:
    q = "tags:amqp AND autonomous_system.asn:36375"
    facets = "country:10,asn:10,port"
    return [
        Case("healthz (no token, no store)", "/healthz", {}, lambda s: _nothing()),
        Case("fields (token check, no query)", "/api/v1/fields", {}, lambda s: _nothing()),
        Case("services, 100 a page", "/api/v1/services", {"q": q, "limit": "100"},
             lambda s: s.search(q, limit=100)),
        Case("services, 1000 a page", "/api/v1/services", {"limit": "1000"},
             lambda s: s.search("", limit=1000)),
        Case("count (rollup)", "/api/v1/count", {"q": "protocol:mqtt anonymous:true"},
             lambda s: s.count("protocol:mqtt anonymous:true")),
        Case("count + 3 facets (rollup)", "/api/v1/count", {"q": "tags:mqtt",
                                                           "facets": facets},
             lambda s: s.count("tags:mqtt", facets=parse_facets(facets))),
        Case("count + 3 facets (rows)", "/api/v1/count", {"q": q, "facets": facets},
             lambda s: s.count(q, facets=parse_facets(facets))),
        Case("host", f"/api/v1/hosts/{ip}", {}, lambda s: s.host(ip)),
        Case("report (current view)", "/api/v1/report", {}, lambda s: census_report(s)),
        Case("export, CSV, whole view", "/api/v1/export", {"format": "csv"},
             lambda s: _drain(s)),
    ]


async def _nothing() -> None:
    """A case that runs no SQL of its own (the token check is the API's)."""


async def _drain(store: Searcher) -> int:
    rows = 0
    async for chunk in store.export(""):
        rows += len(chunk)
    return rows


async def record(store: Searcher, case: Case) -> list[Statement]:
    """The statements *case* runs, as the searcher sends them."""
    seen: list[Statement] = []
    fetch = store.fetch

    async def recording(sql: str, params: Sequence[object]) -> Any:
        seen.append((sql, list(params)))
        return await fetch(sql, params)

    store.fetch = recording  # type: ignore[method-assign]
    try:
        await case.run(store)
    finally:
        del store.fetch  # back to the class's method
    return seen


class Plain:
    """The plain driver of the store: replays statements, fetching every row."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sqlite: sqlite3.Connection | None = None
        self.pg: asyncpg.Connection[asyncpg.Record] | None = None

    async def open(self) -> None:
        if self.url.startswith("sqlite:"):
            self.sqlite = sqlite3.connect(path_of(self.url))
        else:
            self.pg = await asyncpg.connect(self.url)

    async def run(self, statements: list[Statement]) -> int:
        rows = 0
        for sql, params in statements:
            if self.sqlite is not None:
                rows += len(self.sqlite.execute(sql, params).fetchall())
            else:
                assert self.pg is not None
                rows += len(await self.pg.fetch(sql, *params))
        return rows

    async def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            await self.pg.close()


def free_address() -> tuple[str, int]:
    for last in range(1, 255):
        host = f"127.64.255.{last}"
        with socket.socket() as sock:
            try:
                sock.bind((host, 8080))
            except OSError:
                continue
            return host, 8080
    raise SystemExit("bench: no free address in 127.64.255.0/24")


def start_server(url: str) -> tuple[subprocess.Popen[bytes], str]:
    host, port = free_address()
    proc = subprocess.Popen(
        [sys.executable, "-m", "brokerscan.cli", "serve", "--store", url, "--host", host,
         "--port", str(port), "--rate-limit", "0", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench: brokerscan serve did not start")
        time.sleep(0.05)


async def fill(url: str, rows: int) -> None:
    store = await open_store(url)
    try:
        results = make_search_results(rows, seed=9, sweeps=3)
        for start in range(0, len(results), 5000):
            await store.write(results[start:start + 5000])
    finally:
        await store.close()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a store to read as it is (default: a generated "
                                        "embedded store)")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--fill", action="store_true",
                        help="fill --store with --rows generated results first (it must "
                             "be migrated and hold none of them)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20, help="of each case, per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        url = args.store
        if url is None or args.fill:
            url = url or f"sqlite:///{tmp}/store.db"
            began = time.perf_counter()
            await fill(url, args.rows)
            print(f"filled {args.rows:,} results in {time.perf_counter() - began:.1f} s")
        store = await open_store(url)
        _, token = await create_token(store, "bench-api", "reader")
        ips = await store.fetch("SELECT ip FROM observations LIMIT 1", [])
        ip = str(ips[0]["ip"])
        total = (await store.count("")).total
        print(f"store: {url.split('@')[-1]}, {total:,} services in the current view")
        plan = [(case, await record(store, case)) for case in cases(ip)]
        await store.close()
        proc, base = start_server(url)
        plain = Plain(url)
        await plain.open()
        sql_times: dict[str, list[float]] = {c.name: [] for c, _ in plan}
        api_times: dict[str, list[float]] = {c.name: [] for c, _ in plan}
        rows_of: dict[str, int] = {}
        try:
            async with httpx.AsyncClient(
                    base_url=base, timeout=300,
                    headers={"Authorization": f"Bearer {token}"}) as client:
                for _ in range(args.rounds):
                    for case, statements in plan:
                        runs = max(1, args.runs // 10) if "export" in case.name \
                            or "report" in case.name else args.runs
                        for _ in range(runs):
                            began = time.perf_counter()
                            rows_of[case.name] = await plain.run(statements)
                            sql_times[case.name].append(time.perf_counter() - began)
                        for _ in range(runs):
                            began = time.perf_counter()
                            response = await client.get(case.path, params=case.params)
                            api_times[case.name].append(time.perf_counter() - began)
                            assert response.status_code == 200, response.text
        finally:
            proc.terminate()
            proc.wait()
            await plain.close()
    print(f"\n{args.rounds} rounds; medians; {os.cpu_count()} CPUs\n")
    print("| case | statements | rows | plain SQL ms | API ms | overhead ms | API / SQL |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case, statements in plan:
        sql, api = median_ms(sql_times[case.name]), median_ms(api_times[case.name])
        ratio = f"{api / sql:.2f}" if statements else "-"
        print(f"| {case.name} | {len(statements)} | {rows_of[case.name]:,} | {sql:.2f} | "
              f"{api:.2f} | {api - sql:.2f} | {ratio} |")


if __name__ == "__main__":
    asyncio.run(main())
