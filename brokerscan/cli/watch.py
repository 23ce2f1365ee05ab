"""``brokerscan watch``: watches (add, list, test, remove, deliveries, evaluate), kept in
the store the results are in. A watch tells its owner, by a signed webhook or an email,
what is new in a sweep under its query (networks, AS numbers): see storage/watches.py
and scheduler/notify.py. The scheduler evaluates watches when a sweep finishes;
``watch evaluate SWEEP`` does it by hand (after a local scan, say)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from brokerscan.cli.errors import CliError
from brokerscan.cli.services import opened_store, run_async
from brokerscan.settings import Settings
from scheduler.notify import Deliverer, send_test
from storage.searcher import Searcher
from storage.store import store_url
from storage.watches import (
    MAX_EXPIRY_DAYS,
    WatchError,
    create_watch,
    get_watch,
    list_deliveries,
    list_watches,
    remove_watch,
)
from storage.watcheval import evaluate_sweep

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"watch"})


def _asns(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: AS numbers, comma separated") from None


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``watch add|list|test|remove|deliveries|evaluate``."""
    watch = sub.add_parser("watch", help="tell me when something new is exposed")
    verbs = watch.add_subparsers(dest="verb", required=True, parser_class=type(watch))
    add = verbs.add_parser("add", help="make a watch")
    add.add_argument("name")
    add.add_argument("--query", default="", help="a search query (docs/search.md)")
    add.add_argument("--networks", default="", metavar="CIDR,...",
                     help="only addresses in these networks")
    add.add_argument("--asn", type=_asns, default=[], metavar="N,...",
                     help="only addresses of these AS numbers")
    add.add_argument("--webhook", metavar="URL", help="POST each event here (signed)")
    add.add_argument("--secret", help="the webhook's HMAC-SHA256 key")
    add.add_argument("--email", metavar="ADDRESS", help="mail each event here (SMTP settings)")
    add.add_argument("--certificates", action="store_true",
                     help="also report certificates that expired since the sweep before")
    add.add_argument("--cert-expiry-days", type=int, metavar="N",
                     help="also report, every sweep, matches whose certificate has expired or "
                          f"expires within N days (0 to {MAX_EXPIRY_DAYS})")
    listing = verbs.add_parser("list", help="every watch (never the secret)")
    test = verbs.add_parser("test", help="send a test event to a watch's channels now")
    test.add_argument("name")
    remove = verbs.add_parser("remove", help="remove a watch, its events and delivery log")
    remove.add_argument("name")
    log = verbs.add_parser("deliveries", help="the delivery log, newest first")
    log.add_argument("name", nargs="?", default=None)
    log.add_argument("--limit", type=int, default=50)
    evaluate = verbs.add_parser("evaluate", help="evaluate every watch on a sweep and "
                                "deliver what is new (what the scheduler does at its end)")
    evaluate.add_argument("sweep")
    evaluate.add_argument("--against", metavar="SWEEP", default=None,
                          help="compare with this sweep (default: the one before)")
    evaluate.add_argument("--no-wait", action="store_true",
                          help="try each delivery once; leave retries to the scheduler")
    for p in (add, listing, test, remove, log, evaluate):
        p.add_argument("--store", metavar="URL", default=None,
                       help="the store the results are in (default: settings)")
    for p in (listing, log, test, evaluate):
        p.add_argument("--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``watch`` verb."""
    return run_async(_run(args, settings))


def _print(args: argparse.Namespace, items: list[dict[str, Any]], line: str) -> None:
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return
    for item in items:
        print(line.format(**item))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    async with opened_store(store_url(settings, args.store)) as store:
        try:
            return await _verb(args, settings, store)
        except WatchError as exc:
            raise CliError(str(exc)) from None


async def _verb(args: argparse.Namespace, settings: Settings, store: Searcher) -> int:
    if args.verb == "add":
        networks = [n for n in args.networks.split(",") if n.strip()]
        watch = await create_watch(store, args.name, args.query, networks=networks,
                                   asns=args.asn, webhook_url=args.webhook,
                                   secret=args.secret, email=args.email,
                                   certificates=args.certificates,
                                   cert_expiry_days=args.cert_expiry_days)
        print(f"watch {watch.name} added")
    elif args.verb == "remove":
        await remove_watch(store, args.name)
        print(f"watch {args.name} removed")
    elif args.verb == "list":
        _print(args, [w.public() for w in await list_watches(store)],
               "{name}  {query!r}  networks={networks} asns={asns}  "
               "webhook={webhook_url}  email={email}")
    elif args.verb == "deliveries":
        if args.name is not None and await get_watch(store, args.name) is None:
            raise WatchError(f"no watch {args.name!r} (see brokerscan watch list)")
        _print(args, [_flat(d.public()) for d in await list_deliveries(
            store, args.name, limit=args.limit)], _LOG_LINE)
    elif args.verb == "test":
        tested = await get_watch(store, args.name)
        if tested is None:
            raise WatchError(f"no watch {args.name!r} (see brokerscan watch list)")
        done = [_flat(d.public()) for d in await send_test(store, settings, tested)]
        _print(args, done, _LOG_LINE)
        return 0 if all(d["status"] == "delivered" for d in done) else 1
    else:
        events = await evaluate_sweep(store, args.sweep, previous=args.against)
        deliverer = Deliverer(store, settings)
        try:
            if args.no_wait:
                await deliverer.round()
                await deliverer.settle()
            else:
                await deliverer.drain()
        finally:
            await deliverer.close()
        _print(args, [e.payload() for e in events],
               "{watch}  {kind:<17}  {ip}:{port}  (sweep {sweep})")
    return 0


_LOG_LINE = ("{created_at:.19}  {watch}  {channel:<7}  {status:<9}  tries={attempts}  "
             "{kind} {ip}:{port}  {id}  {last_error}")


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    event = item["event"]
    return {**item, "kind": event["kind"], "ip": event["ip"], "port": event["port"],
            "last_error": item["last_error"] or ""}
