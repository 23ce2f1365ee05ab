"""The long-running processes of a fleet: ``brokerscan worker`` (Celery, the probe queues)
and ``brokerscan scheduler`` (the dispatch loop).

Each checks every dependency before it starts (PostgreSQL and its migrations, Redis, the
task broker, the results broker), so a wrong setting or a service that is down is one
line and exit 1, never a worker that says ``ready`` and then fails every shard. A worker
also raises its ``nofile`` limit and refuses ``--connections`` the limit cannot hold.
With ``--metrics-port`` (or ``BROKERSCAN_METRICS_PORT``) each serves ``/metrics``,
``/healthz`` and ``/readyz`` (:mod:`brokerscan.health`).

Metrics of a prefork worker: every child process runs its own engine and writes its
metrics to files in a directory of this worker (``prometheus_client``'s multiprocess
mode, :mod:`workers.metrics`); the main process serves them all. The directory is
``PROMETHEUS_MULTIPROC_DIR`` if set (emptied at start), else a fresh temporary one,
removed at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import logging
import os
import shutil
import signal
import socket
import tempfile
import time

from brokerscan.cli.errors import EXIT_BAD_INPUT, CliError
from brokerscan.cli.options import add_ops_options, ops_settings, positive_int
from brokerscan.cli.services import (
    check_services,
    database_url,
    dependency_checks,
    raise_nofile,
    run_async,
    start_ops_server,
)
from brokerscan.health import Health
from brokerscan.logs import setup_logging
from brokerscan.settings import Settings
from workers.tlshooks import check_hooks

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"worker", "scheduler"})

log = logging.getLogger("brokerscan")

_WORKER_NEEDS = ("postgresql", "redis", "task-broker", "results-broker")
_SCHEDULER_NEEDS = ("postgresql", "redis", "task-broker")
_STALE_HEARTBEAT = 30.0  # seconds: a worker process beats every 2 s
_START_GRACE = 60.0  # seconds a worker may take before its first process beats


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker`` and ``scheduler``."""
    worker = sub.add_parser("worker", help="run a Celery worker for the probe queues")
    worker.add_argument("--queues", default="probe,probe-tls",
                        help="probe, probe-tls (comma list)")
    worker.add_argument("--concurrency", type=positive_int, default=None,
                        help="processes (default: one per CPU)")
    worker.add_argument("--pool", choices=("prefork", "solo"), default="prefork")
    worker.add_argument("--connections", type=positive_int, default=1000,
                        help="most connections in flight per process, whatever a sweep "
                             "asks (each needs a file descriptor; default: %(default)s)")
    add_ops_options(worker)
    scheduler = sub.add_parser("scheduler", help="run the dispatch loop")
    scheduler.add_argument("--max-queued", type=positive_int, default=None,
                           help="most shards queued or running per sweep (default: no cap; "
                                "each queue's backlog follows the live workers' capacity)")
    add_ops_options(scheduler)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``worker`` or ``scheduler`` until it is stopped."""
    settings = ops_settings(args, settings)
    if args.command == "worker":
        return _worker(args, settings)
    return _scheduler(args, settings)


# -- worker -------------------------------------------------------------------------------

def _metrics_dir() -> str:
    """An empty multiprocess directory, set in the environment before prometheus_client is
    imported anywhere in this process (the children inherit both)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
        return directory
    directory = tempfile.mkdtemp(prefix="brokerscan-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def _worker_alive(began: float) -> str | None:
    from brokerscan.health import metrics_registry
    from workers.metrics import forget_dead_processes, oldest_heartbeat

    forget_dead_processes()
    oldest = oldest_heartbeat(metrics_registry())
    if oldest is None:
        if time.monotonic() - began < _START_GRACE:
            return None
        return "no worker process has a heartbeat"
    age = time.time() - oldest
    if age < _STALE_HEARTBEAT:
        return None
    return f"a worker process is stuck: its heartbeat is {age:.0f} s old"


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging("probe-worker", settings.log_format)
    names = settings.names()
    queues = {"probe": names.probe_queue, "probe-tls": names.probe_tls_queue}
    try:
        chosen = [queues[q.strip()] for q in args.queues.split(",") if q.strip()]
    except KeyError as exc:
        raise CliError(f"unknown queue {exc.args[0]!r} (use probe, probe-tls)",
                       EXIT_BAD_INPUT) from None
    if not chosen:
        raise CliError("--queues names no queue (use probe, probe-tls)", EXIT_BAD_INPUT)
    soft, _ = raise_nofile(args.connections)
    check_services(settings, _WORKER_NEEDS, "worker")
    check_hooks()  # before "ready": a worker that would record TLS wrongly does not start
    metrics = settings.metrics_port is not None
    directory = _metrics_dir() if metrics else None
    from workers.celery_app import make_app  # Celery is slow to import: only when needed
    from workers.readiness import ReadyGate

    began = time.monotonic()
    health = Health("probe-worker", alive=lambda: _worker_alive(began),
                    checks=dependency_checks(settings, _WORKER_NEEDS))
    server = start_ops_server(settings, health)
    app = make_app(settings, queues=chosen, connections=args.connections, pool=args.pool,
                   metrics=metrics)
    gate = ReadyGate(health, chosen)
    if settings.ready_gate:
        app.conf.brokerscan_gate = gate.start()
    argv = ["worker", "-Q", ",".join(chosen), "-P", args.pool, "--loglevel", "INFO",
            "-n", f"brokerscan-{os.getpid()}@{socket.gethostname()}", "--without-gossip",
            "--without-mingle"]
    if not settings.task_events:  # Flower and celery-exporter tell live workers by these
        argv.append("--without-heartbeat")
    if args.concurrency:
        argv += ["-c", str(args.concurrency)]
    log.info("worker: starting (queues %s, pool %s, %s connections per process, nofile %d)",
             ",".join(chosen), args.pool, f"{args.connections:,}", soft)
    code = 0
    try:
        app.worker_main(argv)
    except SystemExit as exc:  # Celery exits through SystemExit: keep its code
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        gate.stop()
        if server is not None:
            server.stop()
        if directory is not None and directory.startswith(tempfile.gettempdir()):
            shutil.rmtree(directory, ignore_errors=True)
    log.info("worker: stopped (exit %d)", code)
    return code


# -- scheduler ----------------------------------------------------------------------------

def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    setup_logging("scheduler", settings.log_format)
    database_url(settings)
    check_services(settings, _SCHEDULER_NEEDS, "scheduler")
    return run_async(_run_scheduler(args, settings))


async def _run_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.dispatch import Dispatcher  # Celery is slow to import: only when needed
    from workers.celery_app import make_app

    metrics = settings.metrics_port is not None
    dispatcher = Dispatcher(settings, make_app(settings), max_queued=args.max_queued,
                            metrics=metrics)
    server = start_ops_server(settings, Health(
        "scheduler", alive=dispatcher.alive,
        checks=dependency_checks(settings, _SCHEDULER_NEEDS)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    try:
        await dispatcher.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if server is not None:
            server.stop()
    return 0
