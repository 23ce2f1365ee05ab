"""A probe worker that is not ready takes no shard until it is (issue 17).

The worker's readiness (``/readyz``: PostgreSQL, Redis and both brokers answer, see
:mod:`brokerscan.health`) is checked from a thread every few seconds, whether or not the
ops endpoint is served. Celery's consumer applies it from its own event loop (a timer
entry, so the consumer's state is only touched from its thread): not ready, the worker
cancels its consumers of the shard queues (Celery's ``cancel_consumer``, done locally),
so the broker gives the shards to workers that can run them; ready again, it consumes
them again (``add_consumer``). A shard already running is left to finish or fail on its
own (an outage within its grace costs it no attempt, :mod:`workers.tasks`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from brokerscan.health import Health
from brokerscan.oneline import describe

__all__ = ["ReadyGate"]

log = logging.getLogger(__name__)


class ReadyGate:
    """Readiness checked from a thread, applied to Celery's consumer by :meth:`apply`.

    :param every: seconds between checks.
    """

    def __init__(self, health: Health, queues: Sequence[str], every: float = 3.0) -> None:
        self.health = health
        self.queues = tuple(queues)
        self.every = every
        self.ready = True
        self.failing: dict[str, Any] = {}
        self.paused = False  # the consumers are cancelled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-gate", daemon=True)

    def start(self) -> ReadyGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                code, body = self.health.readyz_sync()
            except Exception as exc:  # a broken check is a failing one
                code, body = 503, {"checks": {"readiness": describe(exc)}}
            self.ready = code == 200
            self.failing = {k: v for k, v in body.get("checks", {}).items() if v != "ok"}

    def apply(self, consumer: Any) -> None:
        """Cancel or restore the shard queues' consumers (from the consumer's loop)."""
        if not self.ready and not self.paused:
            log.warning("worker not ready (%s): it takes no shard until it is",
                        ", ".join(f"{k}: {v}" for k, v in self.failing.items()) or "?")
            self.paused = True
            for queue in self.queues:
                try:
                    consumer.cancel_task_queue(queue)
                except Exception as exc:  # the broker is away: deselected all the same
                    log.debug("cancelling the consumer of %s: %s", queue, describe(exc))
        elif self.ready and self.paused:
            try:
                for queue in self.queues:
                    consumer.add_task_queue(queue)
            except Exception as exc:  # the broker is not back yet: next time
                log.debug("consuming %s again failed: %s", self.queues, describe(exc))
                return
            self.paused = False
            log.info("worker ready again: taking shards from %s", ", ".join(self.queues))
