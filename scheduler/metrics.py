"""The scheduler's metrics, defined once: what the fleet is doing, seen from the dispatch loop.

The scheduler is one asyncio process, so these are plain in-process metrics. The gauges
that describe the fleet (shards by state, progress, workers alive, queue depths) are
refreshed by the dispatch loop every few seconds from PostgreSQL, Redis and RabbitMQ:
Prometheus reads one consistent picture whichever worker it could not scrape. Labels:
``state`` (a shard state), ``sweep`` (the id of a sweep under way: a handful at a time),
``queue`` (a queue name without the namespace).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["DISPATCHED", "ERRORS", "QUEUE_CONSUMERS", "QUEUE_MESSAGES", "SHARDS",
           "SWEEP_FAILED_SHARDS", "SWEEP_PROGRESS", "SWEEPS", "TICKS", "WORKERS_ALIVE"]

TICKS = Counter("brokerscan_scheduler_ticks_total", "Rounds of the dispatch loop")
ERRORS = Counter("brokerscan_scheduler_errors_total",
                 "Rounds of the dispatch loop that failed (a service away)", ["kind"])
DISPATCHED = Counter("brokerscan_shards_dispatched_total", "Shard messages sent, by queue",
                     ["queue"])
SHARDS = Gauge("brokerscan_shards", "Shards of the sweeps under way, by state", ["state"])
SWEEPS = Gauge("brokerscan_sweeps", "Sweeps among the 1000 newest, by state", ["state"])
SWEEP_PROGRESS = Gauge("brokerscan_sweep_progress_ratio",
                       "Targets probed / targets, of each sweep under way", ["sweep"])
SWEEP_FAILED_SHARDS = Gauge("brokerscan_sweep_failed_shards",
                            "Failed shards of each sweep under way", ["sweep"])
WORKERS_ALIVE = Gauge("brokerscan_workers_alive",
                      "Worker processes with a fresh heartbeat, by queue they consume",
                      ["queue"])
QUEUE_MESSAGES = Gauge("brokerscan_queue_messages",
                       "Messages ready in a queue (unacked ones not counted)", ["queue"])
QUEUE_CONSUMERS = Gauge("brokerscan_queue_consumers", "Consumers of a queue", ["queue"])
