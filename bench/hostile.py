"""Benchmark: 20 normal clients of ``brokerscan serve``, alone and beside hostile ones.

    .venv/bin/python bench/hostile.py [--store URL] [--rows 20000] [--seconds 20] [--rounds 2]

Without ``--store``, a throwaway SQLite store is filled with ``--rows`` generated results
(``tests/searchref.make_search_results``, two daily sweeps). One real ``brokerscan serve``
process with its default limits, on 127.64.254.x; 20 normal clients (a token each, one
request at a time: a page of services, a count with one facet, a host, a query check)
measure their latencies, each waiting :data:`THINK` seconds between requests. Rounds
alternate "alone" and "hostile" in the same run, so both
see the same machine; the hostile mix, with a token of its own, runs beside the normal
clients during its rounds:

- slow readers: 20 connections sending half a request head a byte at a time, reconnecting
  when closed (slowloris);
- stalled exports: 8 JSON-lines exports at a time that read nothing (a 4 KiB receive
  buffer), reopened when refused or ended;
- expensive queries: 4 loops of the costliest legal requests (a bare term over the view as
  of a day with six facets, the report as of a day, a diff of the two sweeps).

Prints the normal clients' p50 and p95 in each kind of round, the ratio of the p95s (the
target: at most 2), and what the hostile clients got (statuses, closed connections).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.store import open_store
from storage.tokens import create_token
from tests.searchref import make_search_results

NORMAL = 20
#: Seconds a normal client waits between its requests (a person on the dashboard, or a
#: script polling): 20 clients ask about 40 times a second, which the server can answer
#: without a queue, so the baseline measures answering, not waiting in line.
THINK = 0.5
COSTLY = [("/api/v1/count", {"q": "rabbit", "at": "2026-03-02",
                             "facets": "country,asn,port,product,org,version"}),
          ("/api/v1/report", {"at": "2026-03-02"}),
          ("/api/v1/diff", {"a": "sw-00", "b": "sw-01", "limit": "1000"})]


def free_address() -> tuple[str, int]:
    for last in range(1, 255):
        host = f"127.64.254.{last}"
        with socket.socket() as sock:
            try:
                sock.bind((host, 8080))
            except OSError:
                continue
            return host, 8080
    raise SystemExit("bench: no free address in 127.64.254.0/24")


def start_server(url: str) -> tuple[subprocess.Popen[bytes], str, int]:
    host, port = free_address()
    proc = subprocess.Popen(
        [sys.executable, "-m", "brokerscan.cli", "serve", "--store", url, "--host", host,
         "--port", str(port), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, host, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench: brokerscan serve did not start")
        time.sleep(0.05)


async def prepare(url: str, rows: int, fill: bool) -> list[str]:
    store = await open_store(url)
    try:
        if fill:
            results = make_search_results(rows, seed=12, sweeps=2)
            for start in range(0, len(results), 5000):
                await store.write(results[start:start + 5000])
        return [(await create_token(store, f"bench {i}", "reader"))[1]
                for i in range(NORMAL + 1)]
    finally:
        await store.close()


async def normal_client(base: str, token: str, until: float, out: list[float],
                        errors: Counter[str]) -> None:
    requests = [("/api/v1/services", {"q": "port:1883", "limit": "20"}),
                ("/api/v1/count", {"q": "protocol:mqtt", "facets": "country"}),
                ("/api/v1/query/explain", {"q": "product:rabbit* AND tls:true"}),
                ("/api/v1/services", {"q": "protocol:amqp", "limit": "50"})]
    async with httpx.AsyncClient(base_url=base, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        i = 0
        while time.monotonic() < until:
            path, params = requests[i % len(requests)]
            i += 1
            started = time.monotonic()
            try:
                response = await client.get(path, params=params)
                if response.status_code != 200:
                    errors[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            out.append(time.monotonic() - started)
            await asyncio.sleep(THINK)


async def slow_reader(host: str, port: int, until: float, got: Counter[str]) -> None:
    head = f"GET /api/v1/count HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            got["slow: refused"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            for byte in head + b"a" * 1000:
                if time.monotonic() > until:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.5)
                if reader.at_eof():
                    break
            got["slow: closed by the server"] += 1
        except OSError:
            got["slow: closed by the server"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def stalled_export(host: str, port: int, token: str, until: float,
                         got: Counter[str]) -> None:
    request = (f"GET /api/v1/export?format=jsonl HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    while time.monotonic() < until:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
            first = await asyncio.wait_for(loop.sock_recv(sock, 64), 30)
            got[f"export: {first[9:12].decode(errors='replace')}"] += 1
            # read nothing more until the server gives up (its send timeout) or time is up
            while time.monotonic() < until:
                await asyncio.sleep(1)
                peek = b""
                with contextlib.suppress(BlockingIOError):
                    peek = sock.recv(1, socket.MSG_PEEK)
                if peek == b"" and not _alive(sock):
                    got["export: ended by the server"] += 1
                    break
        except (OSError, TimeoutError):
            got["export: closed"] += 1
        finally:
            sock.close()
        await asyncio.sleep(0.2)


def _alive(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def expensive(base: str, token: str, until: float, got: Counter[str],
                    which: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        i = which
        while time.monotonic() < until:
            path, params = COSTLY[i % len(COSTLY)]
            i += 1
            try:
                response = await client.get(path, params=params)
                got[f"costly {path.rsplit('/', 1)[1]}: {response.status_code}"] += 1
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            except httpx.HTTPError as exc:
                got[f"costly: {type(exc).__name__}"] += 1


async def one_round(base: str, host: str, port: int, tokens: list[str], seconds: float,
                    hostile: bool, got: Counter[str]) -> tuple[list[float], Counter[str]]:
    until = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    tasks = [normal_client(base, tokens[i], until, latencies, errors) for i in range(NORMAL)]
    if hostile:
        bad = tokens[NORMAL]
        tasks += [slow_reader(host, port, until, got) for _ in range(20)]
        tasks += [stalled_export(host, port, bad, until, got) for _ in range(8)]
        tasks += [expensive(base, bad, until, got, i) for i in range(4)]
    await asyncio.gather(*tasks)
    return latencies, errors


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="a store to read as it is (default: a generated "
                                        "SQLite store)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="of each kind")
    args = parser.parse_args()
    if args.rows < 1 or args.seconds <= 0 or args.rounds < 1:
        raise SystemExit("bench: --rows, --seconds and --rounds must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{tmp}/hostile.db"
        if not url.startswith(("sqlite:", "postgresql:")):
            raise SystemExit(f"bench: cannot use store {url!r}")
        tokens = await prepare(url, args.rows, args.store is None)
        proc, host, port = start_server(url)
        base = f"http://{host}:{port}"
        alone: list[float] = []
        beside: list[float] = []
        errors: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
        got: Counter[str] = Counter()
        try:
            for _ in range(args.rounds):
                for hostile in (False, True):
                    samples, wrong = await one_round(base, host, port, tokens, args.seconds,
                                                     hostile, got)
                    (beside if hostile else alone).extend(samples)
                    errors[hostile].update(wrong)
                    print(f"  round {'hostile' if hostile else 'alone  '}: "
                          f"{len(samples)} requests, p95 {p95(samples):.1f} ms", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    store = "SQLite" if url.startswith("sqlite:") else "PostgreSQL"
    print(f"{store}, {args.rows} rows, {NORMAL} normal clients, {args.rounds} x "
          f"{args.seconds:g} s per kind, on {os.cpu_count()} cores")
    for name, samples in (("alone", alone), ("beside hostile", beside)):
        print(f"  {name:15} {len(samples):6} requests  p50 "
              f"{statistics.median(samples) * 1000:7.1f} ms  p95 {p95(samples):7.1f} ms")
    print(f"  p95 ratio (beside / alone): {p95(beside) / p95(alone):.2f} (target <= 2)")
    print(f"  normal clients' errors: alone {dict(errors[False])}, "
          f"beside {dict(errors[True])}")
    print(f"  hostile clients got: {dict(sorted(got.items()))}")


if __name__ == "__main__":
    asyncio.run(main())
