"""``brokerscan optout``: the opt-out requests people sent through the scanner's public
page (``brokerscan serve --identity-page``), kept in the store (storage/optouts.py):
``list`` them, ``approve`` one (its networks join every sweep's blocklist, running sweeps
included, from their next dispatch round on) or ``reject`` one (the record stays).
Deciding twice is harmless."""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Literal

from brokerscan.cli.errors import CliError
from brokerscan.cli.services import opened_store, run_async
from brokerscan.settings import Settings
from storage.optouts import STATES, OptOutError, decide, list_optouts
from storage.searcher import Searcher
from storage.store import store_url

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"optout"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``optout list|approve|reject``."""
    optout = sub.add_parser("optout", help="review the opt-out requests of the public page")
    verbs = optout.add_subparsers(dest="verb", required=True, parser_class=type(optout))
    listing = verbs.add_parser("list", help="the requests, oldest first")
    listing.add_argument("--state", choices=STATES, default=None,
                         help="only requests in this state (default: all)")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    approve = verbs.add_parser("approve", help="approve a request: its networks are never "
                               "dialled again, from the next dispatch round on")
    reject = verbs.add_parser("reject", help="reject a request (the record stays)")
    for p in (approve, reject):
        p.add_argument("id", help="the request's id (oo-...)")
    for p in (listing, approve, reject):
        p.add_argument("--store", metavar="URL", default=None,
                       help="the store the results are in (default: settings)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run an ``optout`` verb."""
    return run_async(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    async with opened_store(store_url(settings, args.store)) as store:
        try:
            return await _verb(args, store)
        except OptOutError as exc:
            raise CliError(str(exc)) from None


async def _verb(args: argparse.Namespace, store: Searcher) -> int:
    if args.verb == "list":
        found = [o.public() for o in await list_optouts(store, args.state)]
        if args.format == "json":
            print(json.dumps(found, indent=2))
        elif not found:
            print("no opt-out requests" + (f" {args.state}" if args.state else ""))
        for item in found if args.format == "text" else []:
            print(f"{item['id']}  {item['state']:<8}  {item['created_at']:.19}  "
                  f"{' '.join(item['networks'])}  contact={item['contact']!r}  "
                  f"reason={item['reason'][:60]!r}")
        return 0
    state: Literal["approved", "rejected"] = ("approved" if args.verb == "approve"
                                              else "rejected")
    optout, changed = await decide(store, args.id, state, by=f"cli:{getpass.getuser()}")
    print(f"{optout.id} {state}: {' '.join(optout.networks)}" if changed
          else f"{optout.id} was {state} already (nothing changed)")
    return 0
