"""The store writer's metrics (``store-worker``), defined once; the stream's own metrics
(messages, lag, dead letters) are in :mod:`brokerscan.stream.metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["BATCH_SECONDS", "ROWS", "WRITE_FAILURES"]

ROWS = Counter("brokerscan_store_rows_total",
               "Observations new in the store (a redelivered result adds none)")
BATCH_SECONDS = Histogram("brokerscan_store_batch_seconds",
                          "Time one committed write of a batch took",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                   30))
WRITE_FAILURES = Counter("brokerscan_store_write_failures_total",
                         "Writes that failed (and were retried)")
