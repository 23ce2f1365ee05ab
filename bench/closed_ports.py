"""Benchmark: closed-port probes/s of the engine against a C connect() loop, same run.

    .venv/bin/python bench/closed_ports.py [--targets N] [--rounds R]

Every contender connects to the same N loopback addresses (127.88.0.0 upwards) on a port
nothing listens on, 1000 connects in flight, no rate limit. Contenders:

* ``ceiling``: bench/ceiling.c, non-blocking connect() over epoll (compiled here);
* ``engine``: brokerscan's Engine, as a scan runs it;
* ``engine_web``: the same on a web port's spec (``9001``: the MQTT-over-WebSocket probe
  first, then MQTT and AMQP, and the TLS retry on), to show that a closed port costs the
  same whatever probes its spec names;
* ``open_connection``: a naive asyncio loop, one Task and ``asyncio.open_connection`` per
  target (bounded by a semaphore);
* ``sock_connect``: one Task per target with a raw non-blocking socket and
  ``loop.sock_connect``.

Rounds alternate the contenders and the best round of each counts, since this machine
is noisy; the ratios to the ceiling are what docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from brokerscan.model import ScanResult  # noqa: E402
from scheduler.ports import PortSpec  # noqa: E402
from workers.engine import Engine, ScanConfig  # noqa: E402
from workers.transport import Scope  # noqa: E402

FIRST = "127.88.0.0"
PORT = 1999
CONCURRENCY = 1000


def build_ceiling() -> Path:
    out = HERE / "build" / "ceiling"
    src = HERE / "ceiling.c"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
    return out


def run_ceiling(binary: Path, n: int) -> float:
    line = subprocess.run([str(binary), FIRST, str(n), str(PORT), str(CONCURRENCY)],
                          check=True, capture_output=True, text=True).stdout.split()
    assert int(line[1]) == n, f"ceiling: only {line[1]} of {n} refused"
    return float(line[0])


def _addresses(n: int) -> Iterator[int]:
    base = int.from_bytes(socket.inet_aton(FIRST), "big")
    return iter(range(base, base + n))


def run_engine(n: int, mode: str = "scan") -> float:
    """The engine as a scan runs it (``scan``); as a shard runs it, with a ``ready`` hook
    that looks at the clock before every batch of connects (``sweep``); the same with
    metrics on (``sweep+metrics``: workers/metrics.py's connect-time hook on every target,
    the rate-budget timer, a flush into prometheus_client every half second); or as a
    scan of a web port's spec (``web``: the MQTT-over-WebSocket probe first, then MQTT and
    AMQP, TLS retry on)."""
    metrics = mode == "sweep+metrics"
    spec = PortSpec(port=PORT, tls=False, probes=("mqtt",), name=str(PORT))
    if mode == "web":
        spec = PortSpec(port=PORT, tls=False, probes=("mqtt-ws", "mqtt", "amqp"),
                        name=f"{PORT}/tcp", tls_retry=True)
    config = ScanConfig(rate=0, concurrency=CONCURRENCY, connect_timeout=5)

    def sink(_result: ScanResult) -> None:
        raise AssertionError("a closed port produced a result")

    async def go() -> float:
        meter = None
        ready = None
        limiter = None
        if mode == "sweep":
            last_look = [time.monotonic()]

            async def ready() -> None:
                now = time.monotonic()
                if now - last_look[0] >= 0.5:
                    last_look[0] = now

        if metrics:
            from workers.metrics import RateWaitMeter, ShardMeter
            from workers.ratebudget import LocalRateLimiter

            meter = ShardMeter("bench.probe", RateWaitMeter(LocalRateLimiter(0)))
            limiter = meter.limiter
            last = [time.monotonic()]

            async def ready() -> None:
                now = time.monotonic()
                if now - last[0] >= 0.5:
                    last[0] = now
                    meter.flush(engine.stats, engine.in_flight, 0)

        engine = Engine(config, Scope(["127.0.0.0/8"]), ready=ready, limiter=limiter,
                        observe_connect=None if meter is None else meter.observe_connect)
        began = time.perf_counter()
        stats = await engine.run(((ip, spec) for ip in _addresses(n)), sink, total=n)
        elapsed = time.perf_counter() - began
        assert stats.statuses["connection-refused"] == n, stats.statuses
        return n / elapsed

    return asyncio.run(go())


def run_open_connection(n: int) -> float:
    async def one(sem: asyncio.Semaphore, ip: int) -> None:
        async with sem:
            try:
                _, writer = await asyncio.open_connection(socket.inet_ntoa(ip.to_bytes(4, "big")),
                                                          PORT)
                writer.close()
            except ConnectionRefusedError:
                pass

    return asyncio.run(_tasks(n, one))


def run_sock_connect(n: int) -> float:
    async def one(sem: asyncio.Semaphore, ip: int) -> None:
        async with sem:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(
                    sock, (socket.inet_ntoa(ip.to_bytes(4, "big")), PORT))
            except ConnectionRefusedError:
                pass
            finally:
                sock.close()

    return asyncio.run(_tasks(n, one))


async def _tasks(n: int, one: object) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)
    began = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    for ip in _addresses(n):
        if len(pending) >= 2 * CONCURRENCY:  # keep task creation bounded, as a scanner must
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        pending.add(asyncio.ensure_future(one(sem, ip)))  # type: ignore[operator]
    await asyncio.gather(*pending)
    return n / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    binary = build_ceiling()
    contenders: dict[str, Callable[[], float]] = {
        "ceiling": lambda: run_ceiling(binary, args.targets),
        "engine": lambda: run_engine(args.targets),
        "engine (shard)": lambda: run_engine(args.targets, "sweep"),
        "shard+metrics": lambda: run_engine(args.targets, "sweep+metrics"),
        "engine_web": lambda: run_engine(args.targets, "web"),
        "open_connection": lambda: run_open_connection(args.targets),
        "sock_connect": lambda: run_sock_connect(args.targets),
    }
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            best[name] = max(best.get(name, 0.0), fn())
    ceiling = best["ceiling"]
    print(f"closed ports, {args.targets} targets, {CONCURRENCY} in flight, best of "
          f"{args.rounds}")
    print(f"{'contender':<18}{'probes/s':>12}{'x ceiling':>12}")
    for name, rate in best.items():
        print(f"{name:<18}{rate:>12.0f}{rate / ceiling:>12.2f}")
    print(f"metrics on / off (shard): {best['shard+metrics'] / best['engine (shard)']:.3f}")


if __name__ == "__main__":
    main()
