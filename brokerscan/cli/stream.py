"""The results-stream commands: ``enrich-worker``, ``store-worker`` and ``stream status``.

Each worker checks everything it needs before it consumes anything (the enrichment files,
the store and its migrations, the broker), so a bad setting or a service that is down ends
in one line on stderr and a non-zero exit (2: bad configuration, 1: a service is
unreachable). Once running, a worker rides out broker and database outages by itself and
stops cleanly on SIGTERM or SIGINT (the batch in hand is finished or left unacked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from brokerscan.cli.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, CliError
from brokerscan.cli.options import add_ops_options, ops_settings, positive_int
from brokerscan.cli.services import pg_check, start_ops_server
from brokerscan.health import Check, Health, amqp_check
from brokerscan.logs import setup_logging
from brokerscan.oneline import describe
from brokerscan.settings import Settings
from brokerscan.stream.connection import StreamError
from brokerscan.stream.consumer import StreamConsumer, tune_gc
from brokerscan.stream.replay import handle_dead_letters
from brokerscan.stream.status import StreamStatus, stream_status
from storage.store import store_url

__all__ = ["COMMANDS", "add_commands", "run", "status_dict"]

#: The top-level commands :func:`add_commands` adds.
COMMANDS = frozenset({"enrich-worker", "store-worker", "stream"})
_STATS_EVERY = 10.0  # seconds between the counter lines a worker logs
_TICK = 1.0  # seconds between metric syncs (and liveness ticks)
_STALE = 30.0  # seconds without a tick after which /healthz fails

log = logging.getLogger("brokerscan.stream")


def add_commands(sub: Any) -> None:
    """Add ``enrich-worker``, ``store-worker`` and ``stream`` to the top-level parser."""
    enrich = sub.add_parser("enrich-worker", help="enrich raw results (ASN, geolocation)")
    store = sub.add_parser("store-worker", help="write enriched results to the store")
    for worker in (enrich, store):
        worker.add_argument("--prefetch", type=int, default=64,
                            help="messages in hand at once, each a batch of results "
                                 "(default: %(default)s)")
        add_ops_options(worker)
    enrich.add_argument("--per-message", type=int, default=500,
                        help="most results in one enriched message (default: %(default)s)")
    store.add_argument("--batch-size", type=int, default=2000,
                       help="results per committed write (default: %(default)s)")
    store.add_argument("--max-delay", type=float, default=0.5,
                       help="seconds a batch waits to fill (default: %(default)s)")
    stream = sub.add_parser("stream", help="the results stream")
    verbs = stream.add_subparsers(dest="verb", required=True, parser_class=type(stream))
    status = verbs.add_parser("status", help="queue depths and the first dead letters")
    status.add_argument("--peek", type=int, default=5, help="dead letters to show")
    status.add_argument("--format", choices=("text", "json"), default="text")
    letters = verbs.add_parser("dead-letters", help="list, replay or drop dead letters")
    actions = letters.add_subparsers(dest="action", required=True, parser_class=type(stream))
    listing = actions.add_parser("list", help="show dead letters and their reasons "
                                              "(they stay in the queue)")
    listing.add_argument("--limit", type=positive_int, default=20)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    for action, text in (("replay", "send dead letters back to the stage they failed in "
                                    "(after a fix)"),
                         ("drop", "delete dead letters")):
        verb = actions.add_parser(action, help=text)
        which = verb.add_mutually_exclusive_group(required=True)
        which.add_argument("--id", dest="ids", action="append", metavar="MESSAGE_ID",
                           help="only this letter (repeatable)")
        which.add_argument("--all", action="store_true", help="every letter")
        verb.add_argument("--limit", type=positive_int, default=None,
                          help="at most this many")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the stream commands.

    :raises CliError: bad configuration (2) or a service that is unreachable (1)
    """
    # aiormq logs every failed connect itself; our own line says it once, with the URL.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    if args.command in ("enrich-worker", "store-worker"):
        settings = ops_settings(args, settings)
        setup_logging(args.command, settings.log_format)
    try:
        if args.command == "enrich-worker":
            return asyncio.run(_enrich_worker(args, settings))
        if args.command == "store-worker":
            return asyncio.run(_store_worker(args, settings))
        if args.verb == "dead-letters":
            return asyncio.run(_dead_letters(args, settings))
        return asyncio.run(_status(args, settings))
    except StreamError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None


async def _enrich_worker(args: argparse.Namespace, settings: Settings) -> int:
    from enrichment.consumer import EnrichmentWorker
    from enrichment.lookup import EnrichmentError, open_enricher

    if not 1 <= args.prefetch <= 65535 or not 1 <= args.per_message <= 100_000:
        raise CliError("--prefetch must be in 1..65535 and --per-message in 1..100000",
                            EXIT_BAD_INPUT)
    try:
        enricher = open_enricher(settings.enrichment_sources)
    except (EnrichmentError, OSError, ValueError) as exc:
        raise CliError(f"enrichment sources: {describe(exc)}", EXIT_BAD_INPUT) from None
    worker = EnrichmentWorker(settings, enricher, prefetch=args.prefetch,
                              per_message=args.per_message)
    await worker.check()
    tune_gc()
    await _serve(worker, settings, "enriched", {"results-broker": amqp_check(
        settings.results_url)},
        lambda: f"consumed {worker.consumed} enriched {worker.enriched} "
                f"dead-lettered {worker.dead_lettered} "
                f"requeued {worker.requeued} reconnects {worker.reconnects}")
    return 0


async def _store_worker(args: argparse.Namespace, settings: Settings) -> int:
    from storage.consumer import StoreWriter
    from storage.store import open_store

    if not 1 <= args.batch_size <= 32767 or args.max_delay < 0 \
            or not 1 <= args.prefetch <= 65535:
        raise CliError("--batch-size must be in 1..32767, --max-delay >= 0 and "
                            "--prefetch in 1..65535", EXIT_BAD_INPUT)
    url = store_url(settings)
    try:
        store = await open_store(url)
    except Exception as exc:  # the store says why in one line; we add where
        code = EXIT_BAD_INPUT if "migrat" in str(exc).lower() else EXIT_UNAVAILABLE
        raise CliError(f"store: {describe(exc)}", code) from None
    upkeep = asyncio.create_task(_upkeep(store, settings.retention_days))
    try:
        writer = StoreWriter(settings, store, batch_size=args.batch_size,
                             max_delay=args.max_delay, prefetch=args.prefetch)
        await writer.check()
        tune_gc()
        checks = {"results-broker": amqp_check(settings.results_url)}
        if url.startswith(("postgresql:", "postgres:")):
            checks["postgresql"] = pg_check(url)
        await _serve(writer, settings, "written", checks,
                     lambda: f"consumed {writer.consumed} written {writer.written} "
                             f"new {writer.new_rows} batches {writer.batches} "
                             f"dead-lettered {writer.dead_lettered} "
                             f"write-failures {writer.write_failures} "
                             f"reconnects {writer.reconnects}")
    finally:
        upkeep.cancel()
        with contextlib.suppress(Exception):
            await store.close()
    return 0


async def _upkeep(store: object, retention_days: int | None) -> None:
    """Partition upkeep of a PostgreSQL store: at start, then hourly (premake partitions,
    drop those past retention, warn about rows in the default partition)."""
    maintain = getattr(store, "maintain", None)
    if maintain is None:  # the embedded store is not partitioned
        return
    while True:
        try:
            health = await maintain(retention_days=retention_days)
            if health.default_rows:
                log.warning("store: %d rows in the default partition", health.default_rows)
        except Exception as exc:  # upkeep must never stop the writer; say it once an hour
            log.warning("store: partition upkeep failed: %s", describe(exc))
        await asyncio.sleep(3600)


async def _serve(consumer: StreamConsumer, settings: Settings, ok_attr: str,
                 checks: dict[str, Check], stats: Callable[[], str]) -> None:
    """Run ``consumer`` until SIGTERM/SIGINT (the batch in hand is finished first), logging
    its counters now and then, with its metrics and health served when asked."""
    loop = asyncio.get_running_loop()
    role = f"{consumer.stage}-worker"
    ticked = time.monotonic()

    def alive() -> str | None:
        age = time.monotonic() - ticked
        return None if age < _STALE else f"event loop stalled for {age:.0f} s"

    def stop(sig: signal.Signals) -> None:
        log.info("%s: %s received: finishing the batch in hand, then stopping", role,
                 sig.name)
        consumer.stop()

    meter = None
    if settings.metrics_port is not None:
        from brokerscan.stream.metrics import StreamMeter

        meter = StreamMeter(consumer, ok_attr)
    server = start_ops_server(settings, Health(role, alive=alive, checks=checks))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    log.info("%s: started", role)
    runner = loop.create_task(consumer.run())
    try:
        last = ""
        next_line = time.monotonic() + _STATS_EVERY
        while not runner.done():
            await asyncio.wait([runner], timeout=_TICK)
            ticked = time.monotonic()
            if meter is not None:
                meter.sync()
            if ticked < next_line and not runner.done():
                continue
            next_line = ticked + _STATS_EVERY
            line = stats()
            if line != last:
                log.info("%s: %s", consumer.stage, line)
                last = line
        await runner
        if meter is not None:
            meter.sync()
        log.info("%s: stopped (%s)", role, stats())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if server is not None:
            server.stop()


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    status = await stream_status(settings.results_url, settings.names(),
                                 peek=max(0, args.peek))
    if args.format == "json":
        _out(json.dumps(status_dict(status), indent=2))
        return 0
    for label, depth in (("raw", status.raw), ("enriched", status.enriched),
                         ("dead", status.dead)):
        if depth.messages is None:
            _out(f"{label:<9} {depth.name}: not declared yet")
        else:
            _out(f"{label:<9} {depth.messages:>10,} waiting  {depth.consumers} consumer(s)"
                  f"  {depth.name}")
    for letter in status.dead_letters:
        _out(f"  dead: {letter.message_id or '-'} [{letter.stage or '?'}] "
              f"{letter.routing_key or '-'}: {letter.reason or '(no reason)'}")
    return 0


async def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    names = settings.names()
    if args.action == "list":
        status = await stream_status(settings.results_url, names, peek=args.limit)
        data = status_dict(status)["dead_letters"]
        if args.format == "json":
            _out(json.dumps({"waiting": status.dead.messages or 0, "letters": data},
                            indent=2))
            return 0
        _out(f"{status.dead.messages or 0:,} dead letter(s) in {status.dead.name}")
        for letter in status.dead_letters:
            _out(f"  {letter.message_id or '-'} [{letter.stage or '?'}] "
                 f"{letter.routing_key or '-'}: {letter.reason or '(no reason)'}")
        return 0
    outcome = await handle_dead_letters(
        settings.results_url, names, args.action,
        message_ids=frozenset(args.ids or ()), limit=args.limit)
    verb = "replayed" if args.action == "replay" else "dropped"
    _out(f"{verb} {len(outcome.handled)} dead letter(s)")
    for ident, why in outcome.left:
        _out(f"  left {ident or '-'}: {why}")
    missing = set(args.ids or ()) - set(outcome.handled) - {i for i, _ in outcome.left}
    if missing:
        raise CliError(f"no dead letter with id {', '.join(sorted(missing))}")
    return 0


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def status_dict(status: StreamStatus) -> dict[str, Any]:
    """``stream status --format json``: depths and dead letters (body as text, cut)."""
    def depth(d: Any) -> dict[str, Any]:
        return {"queue": d.name, "messages": d.messages, "consumers": d.consumers}

    return {"raw": depth(status.raw), "enriched": depth(status.enriched),
            "dead": depth(status.dead),
            "dead_letters": [{"message_id": d.message_id, "routing_key": d.routing_key,
                              "stage": d.stage, "reason": d.reason,
                              "body": d.body[:500].decode(errors="replace")}
                             for d in status.dead_letters]}
