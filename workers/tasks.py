"""The Celery task that runs one shard: a thin synchronous shell around the shard runner.

Celery tasks are synchronous, so each worker process owns one :class:`asyncio.Runner`,
created lazily in that process (after the prefork fork, whatever the pool), and the
runner's loop holds the process's connections (results publisher, Redis, PostgreSQL)
across shards. Transient failures (a database, Redis or broker that is away) retry the
task later; the shard itself is idempotent, so a retry or a redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

from brokerscan.settings import Settings
from workers.shardrun import TransientError, WorkerContext, run_shard

__all__ = ["register"]

_RETRY_SECONDS = 5


class _Process:
    """What one worker process keeps between tasks."""

    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.runner = asyncio.Runner()
        worker_id = f"{socket.gethostname()}:{self.pid}"
        self.context = WorkerContext(settings, worker_id)

    def close(self) -> None:
        try:
            self.runner.run(self.context.close())
        finally:
            self.runner.close()


_process: _Process | None = None


def _current(settings: Settings) -> _Process:
    global _process
    if _process is None or _process.pid != os.getpid():  # first task, or a forked child
        _process = _Process(settings)
    return _process


@worker_process_shutdown.connect
def _shutdown(**_: Any) -> None:
    global _process
    if _process is not None and _process.pid == os.getpid():
        _process.close()
        _process = None


def register(app: Celery) -> None:
    """Register the shard task on ``app`` under its fixed name."""
    settings: Settings = app.conf.brokerscan_settings
    names = settings.names()

    @app.task(name=names.run_shard_task, bind=True, acks_late=True, max_retries=None,
              ignore_result=True)
    def run_shard_task(self: Task, sweep_id: str, shard_id: int, spec: dict[str, Any],
                       shard: dict[str, Any]) -> str:
        process = _current(settings)
        try:
            return process.runner.run(run_shard(process.context, sweep_id, shard_id, spec,
                                                shard))
        except TransientError as exc:
            raise self.retry(exc=exc, countdown=_RETRY_SECONDS) from exc
