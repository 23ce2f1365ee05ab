"""The Celery application, built from the settings, configured for at-least-once shards.

* late acks and prefetch 1: a shard message is acked only after the task returned, that
  is after every result of the shard was confirmed by the results exchange; a worker holds
  one shard per process, never a hoard;
* reject on worker lost: a child killed mid-shard (OOM, SIGKILL) requeues its message
  instead of acking it; redeliveries are capped by the shard's attempt count in
  PostgreSQL (RabbitMQ 3.x classic queues have no delivery limit of their own);
* long-running tasks keep running when the broker connection is lost (a RabbitMQ restart
  must not throw away the shards in flight): their messages come back after the
  reconnection, and a message whose shard a live run holds is tried again later
  (:func:`scheduler.state.start_shard`), so a shard never runs twice at once;
* soft and hard time limits above the longest shard (the shard runner stops itself and
  hands the rest of the shard back before ``max_shard_seconds``); RabbitMQ's consumer
  timeout (30 min by default) must stay above the hard limit, and so must Redis's
  visibility timeout if Redis is ever the broker;
* one queue per kind of work (plaintext shards, TLS shards), so pools are sized apart;
* SIGTERM is Celery's warm shutdown: no new shard starts, and a running shard hands the
  rest of its work back within about 4 s, whatever the sweep's timeouts (probes in
  flight get 3 s, then are abandoned and handed back: :mod:`workers.shardrun`), so the
  worker exits within 10 s, well within the stop timeouts of
  ``deploy/`` (systemd ``TimeoutStopSec``, Kubernetes ``terminationGracePeriodSeconds``).

``celery -A workers.celery_app worker`` works too: ``app`` is built on first access, from
the environment, not at import time.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from brokerscan.settings import Settings
from workers.shardrun import MAX_SHARD_SECONDS

__all__ = ["make_app"]



def make_app(settings: Settings, *, queues: list[str] | None = None,
             connections: int | None = None, pool: str = "prefork",
             metrics: bool = False) -> Celery:
    """The Celery app of one deployment.

    :param queues: the queues a worker of this app consumes (its heartbeat says so).
    :param connections: the most connections in flight per worker process.
    :param pool: ``prefork`` or ``solo`` (the solo pool runs shards in the main process).
    :param metrics: feed :mod:`workers.metrics` (``PROMETHEUS_MULTIPROC_DIR`` set first).
    """
    names = settings.names()
    app = Celery("brokerscan", broker=settings.broker_url, set_as_current=False)
    exchange = Exchange(f"{names.namespace}.tasks", type="direct", durable=True)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=MAX_SHARD_SECONDS + 300,
        task_time_limit=MAX_SHARD_SECONDS + 600,
        broker_transport_options={"visibility_timeout": 2 * (MAX_SHARD_SECONDS + 600)},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=names.probe_queue,
        task_default_exchange=exchange.name,
        task_queues=[
            Queue(names.probe_queue, exchange, routing_key=names.probe_queue, durable=True),
            Queue(names.probe_tls_queue, exchange, routing_key=names.probe_tls_queue,
                  durable=True),
        ],
        worker_hijack_root_logger=False,
        # opt-in (BROKERSCAN_TASK_EVENTS) for Flower and celery-exporter
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    app.conf.brokerscan_settings = settings
    app.conf.brokerscan_queues = queues
    app.conf.brokerscan_connections = connections
    app.conf.brokerscan_pool = pool
    app.conf.brokerscan_metrics = metrics
    from workers import tasks  # registers the tasks on this app

    tasks.register(app)
    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:  # the module-level ``app`` for ``celery -A``
    global _app
    if name == "app":
        if _app is None:
            _app = make_app(Settings())
        return _app
    raise AttributeError(name)
