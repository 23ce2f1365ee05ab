"""The probe worker's metrics, defined once, and how a shard run feeds them.

Prefork: a Celery worker is one parent and ``--concurrency`` child processes, each with its
own engine. Metrics use ``prometheus_client``'s multiprocess mode: ``brokerscan worker``
sets ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory of its own *before* this module is
first imported, each child writes its values to memory-mapped files there, and the parent
alone serves ``/metrics`` over all of them (:func:`brokerscan.health.metrics_registry`).
Counters of a child that exits stay counted; live gauges (``livesum``, ``livemin``) of dead
children are dropped (:func:`forget_dead_processes`). The same code runs in one process
(``--pool solo``) unchanged.

The engine is never slowed by a metric call per target: a shard run keeps plain counters
(the engine's :class:`~workers.engine.ScanStats`, a local histogram of connect times, the
seconds spent waiting for the rate budget) and :class:`ShardMeter` adds what changed to the
Prometheus objects every half second, with the sweep's own live counters.

No label carries an address: ``queue`` (``probe``, ``probe-tls``), ``protocol`` (``mqtt``,
``amqp``, ``none``) and ``status`` (the closed set of :class:`~brokerscan.model.Status`).
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import time
from bisect import bisect_left
from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from brokerscan.model import ScanResult
from workers.engine import ScanStats
from workers.ratebudget import RateLimiter

__all__ = [
    "CONNECT_SECONDS", "HEARTBEAT", "IN_FLIGHT", "PROBES", "PUBLISHED", "RATE_WAIT",
    "SHARD_RUNS", "BUSY", "RateWaitMeter", "ShardMeter", "forget_dead_processes",
]

PROBES = Counter("brokerscan_probes_total",
                 "Targets probed, by queue, protocol found (none) and status",
                 ["queue", "protocol", "status"])
IN_FLIGHT = Gauge("brokerscan_connections_in_flight",
                  "Connections connecting or being probed", multiprocess_mode="livesum")
CONNECT_SECONDS = Histogram(
    "brokerscan_connect_seconds", "Time a TCP connect took, whatever its outcome",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RATE_WAIT = Counter("brokerscan_rate_budget_wait_seconds_total",
                    "Seconds the engine waited for the fleet's rate budget")
PUBLISHED = Counter("brokerscan_results_published_total",
                    "Results confirmed by the results exchange")
SHARD_RUNS = Counter("brokerscan_shard_runs_total",
                     "Shard runs ended, by queue and outcome (done, handed-back, paused, "
                     "cancelled, skipped, retry)", ["queue", "outcome"])
BUSY = Gauge("brokerscan_worker_busy_processes", "Worker processes running a shard",
             multiprocess_mode="livesum")
HEARTBEAT = Gauge("brokerscan_worker_heartbeat_timestamp_seconds",
                  "Unix time of the oldest fresh heartbeat among the worker's processes",
                  multiprocess_mode="livemin")


def queue_label(queue: str) -> str:
    """``probe`` or ``probe-tls`` from a namespaced queue name."""
    return queue.rsplit(".", 1)[-1]


class RateWaitMeter:
    """A rate limiter that adds the seconds each ``acquire`` waited to ``waited``."""

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.waited = 0.0

    async def acquire(self, wanted: int) -> int:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            return await self.inner.acquire(wanted)
        finally:
            self.waited += loop.time() - began


class ShardMeter:
    """What one shard run adds to the metrics: fed by the engine's hooks, flushed often."""

    def __init__(self, queue: str, limiter: RateWaitMeter, confirmed: int = 0) -> None:
        """:param confirmed: the publisher's ``confirmed`` count when the shard starts
            (one publisher serves many shards)."""
        self.queue = queue_label(queue)
        self.limiter = limiter
        self._bounds: list[float] = list(CONNECT_SECONDS._upper_bounds)  # includes +Inf
        self._connects = [0] * len(self._bounds)
        self._connect_sum = 0.0
        self._emitted: Tally[tuple[str, str]] = Tally()  # (protocol, status) of results
        self._sent: Tally[tuple[str, str]] = Tally()
        self._waited = 0.0
        self._confirmed = confirmed

    def observe_connect(self, seconds: float) -> None:
        """The engine's ``observe_connect`` hook: one list increment per target."""
        self._connects[bisect_left(self._bounds, seconds)] += 1
        self._connect_sum += seconds

    def saw(self, result: ScanResult) -> None:
        """Count a result the engine emitted (the sink calls this)."""
        protocol = result.protocol.value if result.protocol is not None else "none"
        self._emitted[protocol, result.status.value] += 1

    def flush(self, stats: ScanStats, in_flight: int, confirmed: int) -> None:
        """Add what changed since the last flush to the Prometheus objects.

        Targets not emitted (closed ports of a sweep without ``--all``) count as protocol
        ``none``, so the probes counted here are exactly the engine's ``done``.
        """
        now: Tally[tuple[str, str]] = Tally(self._emitted)
        by_status: Tally[str] = Tally()
        for (_, status), n in self._emitted.items():
            by_status[status] += n
        for status, n in stats.statuses.items():
            if n > by_status[status]:
                now["none", status] += n - by_status[status]
        for key, n in now.items():
            delta = n - self._sent[key]
            if delta > 0:
                PROBES.labels(self.queue, key[0], key[1]).inc(delta)
        self._sent = now
        for i, n in enumerate(self._connects):
            if n:
                CONNECT_SECONDS._buckets[i].inc(n)  # a whole flush of observations at once
                self._connects[i] = 0
        if self._connect_sum:
            CONNECT_SECONDS._sum.inc(self._connect_sum)
            self._connect_sum = 0.0
        waited = self.limiter.waited
        if waited > self._waited:
            RATE_WAIT.inc(waited - self._waited)
            self._waited = waited
        if confirmed > self._confirmed:
            PUBLISHED.inc(confirmed - self._confirmed)
        self._confirmed = confirmed
        IN_FLIGHT.set(in_flight)


_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def forget_dead_processes(directory: str | None = None) -> None:
    """Drop the live-gauge files of processes that are gone (a child killed with -9 never
    says so itself), so that ``livesum``/``livemin`` gauges count living processes only."""
    from prometheus_client import multiprocess

    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_FILE.search(os.path.basename(path))
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


def oldest_heartbeat(registry: Any) -> float | None:
    """The smallest heartbeat timestamp among the worker's live processes, if any."""
    for metric in registry.collect():
        if metric.name == "brokerscan_worker_heartbeat_timestamp_seconds":
            values = [s.value for s in metric.samples if s.value > 0]
            return min(values) if values else None
    return None


def heartbeat_now(busy_since_tick: float | None) -> None:
    """Record a heartbeat: now, or the last loop tick of a shard in progress (so a stuck
    event loop shows as a stale heartbeat)."""
    HEARTBEAT.set(time.time() if busy_since_tick is None else busy_since_tick)
