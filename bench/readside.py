"""Benchmark: the read side at scale (issue 9's targets), the API against its own SQL.

    .venv/bin/python bench/readside.py --store postgresql://127.0.0.1/brokerscan_bench_readside
    .venv/bin/python bench/readside.py --store sqlite:////tmp/readside.db

The store is made beforehand by ``bench/readside_data.py`` (10^7 observations in
PostgreSQL, 10^6 in SQLite). In one run, against a real ``brokerscan serve`` process (no
rate limit, a reader token checked on every request):

* **counts with facets**, those the rollup answers and those it cannot; **first pages** of
  selective searches (50 a page, as the dashboard asks); for each, the exact statements the
  searcher runs for it (recorded from the same call in this process) are replayed with the
  plain driver on one connection, every row fetched. Rounds alternate SQL and API so both
  see the same cache; p50 and p95 of ``--runs`` requests per case and side.
* **export**: CSV and JSON lines of a query of a few hundred thousand services, rows a
  second through the API (every byte read) against the plain SQL's keyset walk.
* **50 concurrent clients**: each sends the count and page cases in turn for
  ``--seconds``; every answer must be a 200, and p50/p95 and the request rate are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api import Case, Plain, record, start_server
from storage.db import DatabaseError
from storage.export import csv_chunks
from storage.searcher import Searcher, parse_facets
from storage.store import StoreError, open_store
from storage.tokens import create_token


@dataclass(frozen=True)
class Kind:
    name: str
    target_ms: float | None


ROLLUP = Kind("count, rollup", 100)
ROWS = Kind("count, rows", 500)
PAGE = Kind("first page", 200)


def count_case(q: str, facets: str) -> Case:
    return Case(f"`{q}` + `{facets}`", "/api/v1/count", {"q": q, "facets": facets},
                lambda s: s.count(q, facets=parse_facets(facets)))


def page_case(q: str) -> Case:
    return Case(f"`{q}`", "/api/v1/services", {"q": q, "limit": "50"},
                lambda s: s.search(q, limit=50))


def export_case(q: str, kind: str) -> Case:
    async def drain(s: Searcher) -> int:  # what the API's export runs
        rows = 0
        if kind == "csv":
            async for text in csv_chunks(s, q):
                rows += text.count("\n")
            rows -= 1  # the header
        else:
            async for chunk in s.export_rows(q, records=True):
                rows += len(chunk)
        return rows
    return Case(f"`{q}`, {kind}", "/api/v1/export", {"q": q, "format": kind}, drain)


def plan(sha256: str) -> list[tuple[Kind, Case]]:
    return [
        (ROLLUP, count_case("protocol:mqtt", "port,transport,anonymous")),
        (ROLLUP, count_case("protocol:mqtt AND port:1883 AND tls:false", "country:10")),
        (ROLLUP, count_case("protocol:mqtt AND port:8883 AND tls:true", "asn:10")),
        (ROLLUP, count_case("tags:mqtt AND mqtt.anonymous:true", "country:10,asn:10")),
        (ROLLUP, count_case("tags:amqp AND port:5672", "country:10,asn:10,port")),
        (ROLLUP, count_case("tags:amqp AND autonomous_system.asn:36375", "port,status")),
        (ROWS, count_case("product:Mosquitto", "version:10,country:10")),
        (ROWS, count_case("tags:amqp AND product:RabbitMQ AND version:3.6*", "country:10")),
        (ROWS, count_case("cert.self_signed:true", "tls.version,port")),
        (ROWS, count_case("amqp.mechanisms:EXTERNAL", "asn:10")),
        (ROWS, count_case("mqtt.level:5 AND anonymous:false", "product:10")),
        (PAGE, page_case("tags:amqp AND autonomous_system.asn:36375")),
        (PAGE, page_case("ip:141.211.0.0/16")),
        (PAGE, page_case("product:qpidd AND country:DE")),
        (PAGE, page_case(f"cert.sha256:{sha256}")),
        (PAGE, page_case("protocol:mqtt AND anonymous:true AND country:NL")),
    ]


def quantile(samples: list[float], q: float) -> float:
    """The *q* quantile (nearest rank), in milliseconds."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


async def timed_cases(plain: Plain, client: httpx.AsyncClient,
                      recorded: list[tuple[Kind, Case, list]],  # type: ignore[type-arg]
                      rounds: int, runs: int) -> dict[str, tuple[list[float], list[float]]]:
    times: dict[str, tuple[list[float], list[float]]] = {
        c.name: ([], []) for _, c, _ in recorded}
    for _ in range(rounds):
        for _, case, statements in recorded:
            sql, api = times[case.name]
            for _ in range(runs):
                began = time.perf_counter()
                await plain.run(statements)
                sql.append(time.perf_counter() - began)
            for _ in range(runs):
                began = time.perf_counter()
                response = await client.get(case.path, params=case.params)
                api.append(time.perf_counter() - began)
                assert response.status_code == 200, response.text
    return times


async def export_rates(plain: Plain, client: httpx.AsyncClient, store: Searcher, q: str,
                       runs: int) -> list[tuple[str, int, float, float]]:
    out = []
    for kind in ("csv", "jsonl"):
        case = export_case(q, kind)
        statements = await record(store, case)
        sql_best = api_best = math.inf
        rows = (await store.count(q)).total  # the keyset statements fetch one row more each
        for _ in range(runs):
            began = time.perf_counter()
            await plain.run(statements)
            sql_best = min(sql_best, time.perf_counter() - began)
            began = time.perf_counter()
            lines = 0
            async with client.stream("GET", case.path, params=case.params) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    lines += chunk.count(b"\n")
            api_best = min(api_best, time.perf_counter() - began)
            assert lines - (kind == "csv") == rows, (lines, rows)
        out.append((kind, rows, rows / sql_best, rows / api_best))
    return out


async def concurrent(base: str, token: str, cases: list[Case], clients: int,
                     seconds: float) -> tuple[int, int, list[float], float]:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        stop = time.monotonic() + seconds

        async def one(i: int) -> None:
            n = i
            while time.monotonic() < stop:
                case = cases[n % len(cases)]
                n += 1
                began = time.perf_counter()
                try:
                    response = await client.get(case.path, params=case.params)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:80]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    for e in errors[:5]:
        print(f"  error: {e}")
    return len(latencies), len(errors), latencies, elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="made by bench/readside_data.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10, help="of each case, per round")
    parser.add_argument("--export", default="protocol:mqtt AND anonymous:true",
                        help="the query exported")
    parser.add_argument("--export-runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    url = args.store
    store = await open_store(url)
    _, token = await create_token(store, "bench-readside", "reader")
    rows = await store.fetch(
        "SELECT cert_sha256 FROM services WHERE cert_sha256 IS NOT NULL LIMIT 1", [])
    sha256 = rows[0]["cert_sha256"]
    observations = (await store.fetch("SELECT count(*) AS n FROM observations", []))[0]["n"]
    services = (await store.count("")).total
    print(f"store: {url.split('@')[-1]}: {observations:,} observations, {services:,} "
          f"services in the current view; {os.cpu_count()} CPUs")
    recorded = [(kind, case, await record(store, case)) for kind, case in plan(sha256)]
    proc, base = start_server(url)
    plain = Plain(url)
    await plain.open()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for _, case, statements in recorded:  # warm: the first run of each is not timed
                await plain.run(statements)
                assert (await client.get(case.path, params=case.params)).status_code == 200
            times = await timed_cases(plain, client, recorded, args.rounds, args.runs)
            print(f"\n{args.rounds} rounds x {args.runs} runs a case and side\n")
            print("| kind (target p95) | query + facets | statements | SQL p50 | SQL p95 | "
                  "API p50 | API p95 | API p95 / SQL p95 |")
            print("|---|---|---:|---:|---:|---:|---:|---:|")
            worst: dict[str, float] = {}
            for kind, case, statements in recorded:
                sql, api = times[case.name]
                s50, s95, a50, a95 = (quantile(sql, 0.5), quantile(sql, 0.95),
                                      quantile(api, 0.5), quantile(api, 0.95))
                worst[kind.name] = max(worst.get(kind.name, 0.0), a95)
                print(f"| {kind.name} (< {kind.target_ms:.0f} ms) | {case.name} | "
                      f"{len(statements)} | {s50:.1f} | {s95:.1f} | {a50:.1f} | {a95:.1f} | "
                      f"{a95 / s95:.2f} |")
            for kind in (ROLLUP, ROWS, PAGE):
                verdict = "met" if worst[kind.name] < (kind.target_ms or math.inf) \
                    else "MISSED"
                print(f"{kind.name}: worst API p95 {worst[kind.name]:.1f} ms, target "
                      f"< {kind.target_ms:.0f} ms: {verdict}")
            print(f"\nexport `{args.export}`, best of {args.export_runs}\n")
            print("| format | rows | plain SQL rows/s | API rows/s | API / SQL |")
            print("|---|---:|---:|---:|---:|")
            for kind_name, n, sql_rate, api_rate in await export_rates(
                    plain, client, store, args.export, args.export_runs):
                print(f"| {kind_name} | {n:,} | {sql_rate:,.0f} | {api_rate:,.0f} | "
                      f"{api_rate / sql_rate:.2f} |")
        cases = [c for _, c, _ in recorded]
        done, failed, latencies, elapsed = await concurrent(base, token, cases, args.clients,
                                                            args.seconds)
        print(f"\n{args.clients} concurrent clients, {elapsed:.0f} s: {done:,} requests "
              f"({done / elapsed:.1f}/s), {failed} errors; p50 "
              f"{quantile(latencies, 0.5):.0f} ms, p95 {quantile(latencies, 0.95):.0f} ms")
    finally:
        proc.terminate()
        proc.wait()
        await plain.close()
        await store.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except (StoreError, DatabaseError, OSError) as exc:  # a store that is not there
        raise SystemExit(f"readside: {exc}") from None
