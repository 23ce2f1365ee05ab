"""The long-running processes of a fleet: ``brokerscan worker`` (Celery, the probe queues)
and ``brokerscan scheduler`` (the dispatch loop). Each checks what it needs before it
starts, so a setting that is wrong or a service that is down is one line and exit 1."""

from __future__ import annotations

import argparse
import os
import socket

from brokerscan.cli.errors import CliError
from brokerscan.cli.services import check_broker, database_url, run_async
from brokerscan.settings import Settings
from workers.tlshooks import check_hooks

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"worker", "scheduler"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``worker`` and ``scheduler``."""
    worker = sub.add_parser("worker", help="run a Celery worker for the probe queues")
    worker.add_argument("--queues", default="probe,probe-tls",
                        help="probe, probe-tls (comma list)")
    worker.add_argument("--concurrency", type=int, default=None, help="processes")
    worker.add_argument("--pool", choices=("prefork", "solo"), default="prefork")
    sub.add_parser("scheduler", help="run the dispatch loop").add_argument(
        "--max-queued", type=int, default=8, help="queued shards per sweep")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``worker`` or ``scheduler`` until it is stopped."""
    if args.command == "worker":
        return _worker(args, settings)
    return run_async(_scheduler(args, settings))


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.celery_app import make_app  # Celery is slow to import: only when needed

    names = settings.names()
    queues = {"probe": names.probe_queue, "probe-tls": names.probe_tls_queue}
    try:
        chosen = [queues[q.strip()] for q in args.queues.split(",") if q.strip()]
    except KeyError as exc:
        raise CliError(f"unknown queue {exc.args[0]!r} (use probe, probe-tls)") from None
    check_broker(settings.broker_url)
    check_hooks()  # before "ready": a worker that would record TLS wrongly does not start
    app = make_app(settings)
    argv = ["worker", "-Q", ",".join(chosen), "-P", args.pool, "--loglevel", "INFO",
            "-n", f"brokerscan-{os.getpid()}@{socket.gethostname()}", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    if args.concurrency:
        argv += ["-c", str(args.concurrency)]
    app.worker_main(argv)
    return 0


async def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.dispatch import Dispatcher  # Celery is slow to import: only when needed
    from workers.celery_app import make_app

    database_url(settings)
    check_broker(settings.broker_url)
    await Dispatcher(settings, make_app(settings), max_queued=args.max_queued).run()
    return 0
