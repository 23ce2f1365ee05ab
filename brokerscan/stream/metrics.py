"""The results-stream workers' metrics (``enrich-worker``, ``store-worker``), defined once.

The consumers keep plain counters (``consumed``, ``dead_lettered``, ``reconnects``, ... and
``dead_reasons``, ``lag_seconds``); :class:`StreamMeter` adds what changed to these
Prometheus objects once a second, so that handling a result costs no metric call. One
worker is one process: no multiprocess mode here. Labels: ``stage`` (``enrich``,
``store``), ``outcome`` (``ok``: passed downstream or stored; ``dead-lettered``;
``requeued``: sent back after a refused publish) and ``reason`` (a closed set, from
:func:`reason_kind`, never the free text).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

__all__ = ["CONSUMED", "DEAD_LETTERS", "LAG", "MESSAGES", "RECONNECTS", "StreamMeter",
           "reason_kind"]

MESSAGES = Counter("brokerscan_stream_messages_total",
                   "Results the stage finished with, by outcome (one per result, however "
                   "many a message carries)", ["stage", "outcome"])
CONSUMED = Counter("brokerscan_stream_consumed_total", "Results taken from the queue",
                   ["stage"])
LAG = Gauge("brokerscan_stream_lag_seconds",
            "Age (now - observed_at) of the oldest result of the last batch handled",
            ["stage"])
DEAD_LETTERS = Counter("brokerscan_dead_letters_total", "Results sent to the dead-letter "
                       "queue, by stage and kind of reason", ["stage", "reason"])
RECONNECTS = Counter("brokerscan_stream_reconnects_total", "Lost broker connections",
                     ["stage"])

_KINDS = (("unknown schema_version", "schema-version"), ("invalid result", "invalid"),
          ("empty message", "empty"), ("not storable", "not-storable"),
          ("enrichment failed", "enrichment"), ("store refused", "store-refused"))


def reason_kind(reason: str) -> str:
    """The closed-set label of a dead letter's one-line reason."""
    for prefix, kind in _KINDS:
        if reason.startswith(prefix):
            return kind
    return "other"


class StreamMeter:
    """Adds a consumer's counter changes to the metrics; call :meth:`sync` now and then.

    :param consumer: an :class:`~brokerscan.stream.consumer.StreamConsumer`; ``ok`` is
        read from its attribute *ok_attr* (``enriched`` or ``written``).
    """

    def __init__(self, consumer: Any, ok_attr: str) -> None:
        self.consumer = consumer
        self.stage: str = consumer.stage
        self.ok_attr = ok_attr
        self._last: dict[str, int] = {}
        self._dead: dict[str, int] = {}

    def _delta(self, name: str) -> int:
        now = int(getattr(self.consumer, name, 0))
        delta = now - self._last.get(name, 0)
        self._last[name] = now
        return max(0, delta)

    def sync(self) -> None:
        """Bring the metrics up to the consumer's counters."""
        stage = self.stage
        for attr, outcome in ((self.ok_attr, "ok"), ("dead_lettered", "dead-lettered"),
                              ("requeued", "requeued")):
            delta = self._delta(attr)
            if delta:
                MESSAGES.labels(stage, outcome).inc(delta)
        if delta := self._delta("consumed"):
            CONSUMED.labels(stage).inc(delta)
        if delta := self._delta("reconnects"):
            RECONNECTS.labels(stage).inc(delta)
        for kind, n in list(self.consumer.dead_reasons.items()):
            if n > self._dead.get(kind, 0):
                DEAD_LETTERS.labels(stage, kind).inc(n - self._dead.get(kind, 0))
                self._dead[kind] = n
        if self.consumer.lag_seconds is not None:
            LAG.labels(stage).set(self.consumer.lag_seconds)
