"""``brokerscan token``: API tokens for ``brokerscan serve`` (create, list, revoke), kept
in the store the server answers from. A new token is printed once, on the last line of
``token create``; only its hash is stored."""

from __future__ import annotations

import argparse
import json
from typing import Any

import asyncpg

from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.cli.services import opened_store, run_async
from brokerscan.settings import Settings
from storage.store import store_url
from storage.tokens import ROLES, TokenError, TokenInfo, create_token, list_tokens, revoke_token

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"token"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token create|list|revoke``."""
    token = sub.add_parser("token", help="API tokens for brokerscan serve")
    verbs = token.add_subparsers(dest="verb", required=True, parser_class=type(token))
    create = verbs.add_parser("create", help="make a token (printed once, on the last line)")
    create.add_argument("--name", required=True, help="who or what it is for")
    create.add_argument("--role", choices=ROLES, default="reader",
                        help="reader: read everything; operator: also pause, resume and "
                             "cancel sweeps (default: %(default)s)")
    listing = verbs.add_parser("list", help="every token (never the secret)")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    revoke = verbs.add_parser("revoke", help="refuse a token from now on")
    revoke.add_argument("token_id", metavar="ID")
    for p in (create, listing, revoke):
        p.add_argument("--store", metavar="URL", default=None,
                       help="the store the server answers from (default: settings)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``token`` verb."""
    return run_async(_run(args, settings))


def _plain(info: TokenInfo) -> dict[str, Any]:
    return {"id": info.id, "name": info.name, "role": info.role,
            "created_at": info.created_at.isoformat(),
            "revoked_at": info.revoked_at.isoformat() if info.revoked_at else None}


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    # tokens need no partitions: a store opened to read takes them too
    async with opened_store(store_url(settings, args.store), read_only=True) as store:
        try:
            if args.verb == "create":
                info, token = await create_token(store, args.name, args.role)
                print(f"token {info.id} ({info.role}) for {info.name}: shown once, keep it now")
                print(token)
            elif args.verb == "revoke":
                info = await revoke_token(store, args.token_id)
                print(f"{info.id} revoked")
            else:
                tokens = [_plain(t) for t in await list_tokens(store)]
                if args.format == "json":
                    print(json.dumps(tokens, indent=2))
                for t in tokens if args.format == "text" else ():
                    state = f"revoked {t['revoked_at'][:19]}" if t["revoked_at"] else "active"
                    print(f"{t['id']}  {t['role']:<8}  {t['created_at'][:19]}  {state:<27}  "
                          f"{t['name']}")
        except TokenError as exc:
            raise CliError(str(exc)) from None
        except asyncpg.PostgresError as exc:
            raise CliError(f"the store refused: {exc}", EXIT_UNAVAILABLE) from None
    return 0
