"""The Celery task that runs one shard, and the worker's life around it (Celery signals).

Celery tasks are synchronous, so each worker process owns one :class:`asyncio.Runner`,
created lazily in that process (after the prefork fork, whatever the pool), and the
runner's loop holds the process's connections (results publisher, Redis, PostgreSQL)
across shards. Transient failures (a database, Redis or broker that is away) retry the
task later, with a growing delay, after recording the error on the shard; the retry
names the run that ended (``released``) and when the outage began (``outage_since``), so
that an outage shorter than ``shard_outage_seconds`` costs the shard no attempt. A
message for a shard that a live run of another worker holds (a duplicate, or one that
came back after a lost broker connection) is tried again later. A failure a retry cannot
mend gives the shard up at once, with its error. The shard itself is
idempotent, so a retry or a redelivery is harmless.

The worker's life is wired through Celery's own signals, not by wrapping the task:

* ``worker_process_init`` (a prefork child) or ``worker_ready`` (the solo pool): the
  process starts beating its heartbeat at once, so an idle worker is visible. The solo
  pool also puts a one-second tick on the event loop's timer: its loop polls the broker
  connection for as long as its next timer allows, up to 10 s, and only between polls
  does it see that a warm shutdown was asked for, so a shard that handed its work back
  would otherwise keep the process up to 10 s more;
* ``worker_ready`` also puts the readiness gate (:mod:`workers.readiness`) on the
  consumer's timer: a worker whose ``/readyz`` fails stops consuming until it passes;
* ``worker_shutting_down`` (SIGTERM to the main process, Celery's warm shutdown): a byte
  of memory shared with every child turns to 1, and each child's running shard hands
  the rest of its work back within about 4 s, probes still in flight abandoned and
  handed back too (:mod:`workers.shardrun`);
* ``task_prerun`` / ``task_postrun`` / ``task_success`` / ``task_retry``: the busy gauge
  and the shard-run counters of :mod:`workers.metrics` (when metrics are on);
* ``worker_process_shutdown`` (a prefork child) or ``worker_shutdown`` (the solo pool,
  whose main process ran the shards): connections closed, heartbeat key deleted, the
  process's live gauges dropped.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import time
from typing import Any

from celery import Celery, Task
from celery.signals import (
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from brokerscan.oneline import describe
from brokerscan.settings import Settings
from workers.shardrun import (
    ShardBusy,
    TransientError,
    WorkerContext,
    fail_shard,
    note_failure,
    run_shard,
    spend_attempt,
)

__all__ = ["draining", "register"]

log = logging.getLogger(__name__)

_RETRY_MAX = 60  # seconds: the longest pause before a shard is tried again
_BUSY_RETRY = 12.0  # seconds: a worker heartbeat (10 s TTL) lapses within this

# One byte shared (MAP_SHARED) with every child the pool forks: 1 once the worker is
# shutting down. Made at import, in the main process, before any fork.
_DRAIN = mmap.mmap(-1, 1)


def draining() -> bool:
    """True once the worker's main process has begun its shutdown."""
    return _DRAIN[0] == 1


class _Process:
    """What one worker process keeps between tasks."""

    def __init__(self, app: Celery) -> None:
        settings: Settings = app.conf.brokerscan_settings
        self.pid = os.getpid()
        self.runner = asyncio.Runner()
        worker_id = f"{socket.gethostname()}:{self.pid}"
        self.context = WorkerContext(
            settings, worker_id, queues=app.conf.get("brokerscan_queues"),
            connections=app.conf.get("brokerscan_connections"), draining=draining,
            metrics=bool(app.conf.get("brokerscan_metrics")))

    def close(self) -> None:
        try:
            self.runner.run(self.context.close())
        finally:
            self.runner.close()


_process: _Process | None = None
_app: Celery | None = None


def _current(app: Celery) -> _Process:
    global _process
    if _process is None or _process.pid != os.getpid():  # first task, or a forked child
        _process = _Process(app)
    return _process


def _start_process() -> None:
    """Open the process's context and start its heartbeat (idle workers beat too)."""
    if _app is None:
        return
    _current(_app).context.heartbeat()
    log.info("worker process %d ready", os.getpid())


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    _start_process()


def _tick() -> None:
    """Nothing: a timer entry that keeps the solo pool's event loop polling briefly."""


_TICK = 1.0  # seconds: the longest a solo worker's loop waits before it looks at its state


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    if _app is None:
        return
    timer = getattr(sender, "timer", None)  # the consumer's, which its event loop polls by
    if _app.conf.get("brokerscan_pool") == "solo":
        _start_process()  # the solo pool runs tasks in this very process
        if timer is not None:
            timer.call_repeatedly(_TICK, _tick)
    gate = _app.conf.get("brokerscan_gate")
    if gate is not None and timer is not None:  # not ready: take no shard (readiness.py)
        timer.call_repeatedly(_TICK, gate.apply, (sender,))


@worker_shutting_down.connect
def _shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
    _DRAIN[0] = 1
    log.info("worker shutting down (%s %s): running shards hand the rest back", sig, how)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    global _process
    if _process is not None and _process.pid == os.getpid():
        try:
            _process.close()
        finally:
            _process = None
            if _app is not None and _app.conf.get("brokerscan_metrics"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())


def _ours(sender: Any) -> bool:
    return _app is not None and getattr(sender, "name", None) == \
        _app.conf.brokerscan_settings.names().run_shard_task \
        and bool(_app.conf.get("brokerscan_metrics"))


@task_prerun.connect
def _task_started(sender: Any = None, **_: Any) -> None:
    if _ours(sender):
        from workers.metrics import BUSY

        BUSY.inc()


@task_postrun.connect
def _task_ended(sender: Any = None, **_: Any) -> None:
    if _ours(sender):
        from workers.metrics import BUSY

        BUSY.dec()


@task_success.connect
def _task_succeeded(sender: Any = None, result: Any = None, **_: Any) -> None:
    if _ours(sender) and isinstance(result, dict):
        from workers.metrics import SHARD_RUNS, queue_label

        queue = (sender.request.delivery_info or {}).get("routing_key", "")
        SHARD_RUNS.labels(queue_label(queue), result.get("outcome", "?")).inc()


@task_retry.connect
def _task_retried(sender: Any = None, request: Any = None, **_: Any) -> None:
    if _ours(sender):
        from workers.metrics import SHARD_RUNS, queue_label

        queue = (getattr(request, "delivery_info", None) or {}).get("routing_key", "")
        SHARD_RUNS.labels(queue_label(queue), "retry").inc()


def register(app: Celery) -> None:
    """Register the shard task on ``app`` under its fixed name (and let the signals above
    act for this app)."""
    global _app
    _app = app
    settings: Settings = app.conf.brokerscan_settings
    names = settings.names()

    @app.task(name=names.run_shard_task, bind=True, acks_late=True, max_retries=None,
              ignore_result=True)
    def run_shard_task(self: Task, sweep_id: str, shard_id: int, spec: dict[str, Any],
                       shard: dict[str, Any], released: str | None = None,
                       outage_since: float | None = None,
                       optout: list[str] | None = None) -> dict[str, str]:
        process = _current(app)
        try:
            report = process.runner.run(run_shard(process.context, sweep_id, shard_id, spec,
                                                  shard, released=released, optout=optout))
        except ShardBusy as exc:  # a duplicate message: look again once a beat could lapse
            log.info("shard %s/%s: %s; trying this message again later", sweep_id, shard_id,
                     exc)
            raise self.retry(exc=exc, countdown=_BUSY_RETRY,
                             kwargs={"released": released, "outage_since": outage_since,
                                     "optout": optout}) from exc
        except TransientError as exc:
            # The run is over (it ended here): the retry says so, and costs no attempt
            # while the outage lasts less than shard_outage_seconds.
            # Past the grace each failed run is an attempt, counted here (the fifth gives
            # the shard up); the retry still names the run, so it is not counted twice.
            now = time.time()
            since = outage_since if outage_since is not None else now
            free = now - since < settings.shard_outage_seconds
            log.warning("shard %s/%s: %s; retrying (%s)", sweep_id, shard_id, exc,
                        f"outage for {now - since:.0f} s: no attempt spent" if free
                        else "outage too long: this run counts as an attempt")
            process.runner.run(
                (note_failure if free else spend_attempt)(process.context, sweep_id, shard_id,
                                                          str(exc), exc.run_id))
            delay = min(_RETRY_MAX, settings.shard_retry_seconds
                        * 2 ** (self.request.retries or 0))
            raise self.retry(exc=exc, countdown=delay, kwargs={
                "released": exc.run_id, "outage_since": since, "optout": optout}) from exc
        except Exception as exc:  # a retry would fail the same way: give the shard up
            error = describe(exc)
            log.error("shard %s/%s failed: %s", sweep_id, shard_id, error, exc_info=True)
            process.runner.run(fail_shard(process.context, sweep_id, shard_id, error))
            return {"outcome": "failed", "text": error}
        log.info("%s", report.text)
        return {"outcome": report.outcome, "text": report.text}
