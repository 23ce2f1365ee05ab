"""``brokerscan db``: the PostgreSQL database (``migrate``, ``wait``, ``maintain``,
``grant-readonly``) and, for either store, ``verify`` (every rollup recomputed from the
rows: exit 0 when all equal, 1 with one line per difference otherwise).

``db wait`` blocks until the database answers at the schema version this brokerscan
needs, for what must start after the migrations (a Kubernetes init container, a systemd
``ExecStartPre=``): a database still booting or not yet migrated is waited for, up to
``--timeout`` (then exit 1, the last reason in one line); a schema this brokerscan cannot
use (newer, or an applied migration edited) is exit 2 at once: waiting will not fix it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import asyncpg

from brokerscan.cli.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, CliError
from brokerscan.cli.options import non_negative
from brokerscan.cli.services import database_url, run_async
from brokerscan.settings import Settings
from storage.db import DatabaseError, MigrationError, connect
from storage.grants import READ_TABLES, grant_readonly
from storage.migrate import migrate
from storage.pgstore import PgStore
from storage.rollups import verify_rollups
from storage.store import StoreError, describe_store, open_store, store_url

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"db"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``db migrate``, ``db wait``, ``db maintain`` and ``db grant-readonly``."""
    db = sub.add_parser("db", help="the PostgreSQL database")
    db_verbs = db.add_subparsers(dest="verb", required=True, parser_class=type(db))
    db_verbs.add_parser("migrate", help="apply migrations")
    wait = db_verbs.add_parser(
        "wait", help="wait until the database answers at this brokerscan's schema version")
    wait.add_argument("--timeout", type=non_negative(float), default=300.0, metavar="S",
                      help="give up after S seconds, exit 1 (default: %(default)s)")
    maintain = db_verbs.add_parser(
        "maintain", help="premake partitions, drop those past retention, report health")
    maintain.add_argument("--retention-days", type=int, default=None,
                          help="drop daily partitions older than this (default: settings)")
    maintain.add_argument("--format", choices=("text", "json"), default="text")
    grant = db_verbs.add_parser(
        "grant-readonly", help="make a role that may only read (for brokerscan serve)")
    grant.add_argument("role", metavar="ROLE", help="lower-case role name")
    check = db_verbs.add_parser(
        "verify", help="recompute every rollup count from the rows and compare (any store)")
    check.add_argument("--store", metavar="URL", default=None,
                       help="the store (default: BROKERSCAN_STORE_URL, then the database)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``db migrate``, ``db wait``, ``db maintain`` or ``db grant-readonly``."""
    if args.verb == "grant-readonly":
        return run_async(_grant(args, settings))
    if args.verb == "wait":
        return asyncio.run(_wait(args.timeout, database_url(settings)))
    if args.verb == "verify":
        return run_async(_verify(args.store, settings))
    return run_async(_migrate(settings) if args.verb == "migrate" else _maintain(args, settings))


async def _grant(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(database_url(settings))
    try:
        created = await grant_readonly(conn, args.role)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except asyncpg.PostgresError as exc:
        raise CliError(f"cannot grant {args.role}: {exc}", EXIT_UNAVAILABLE) from None
    finally:
        await conn.close()
    print(f"{'created' if created else 'granted'} {args.role}: SELECT on "
          f"{', '.join(READ_TABLES)}")
    return 0


async def _migrate(settings: Settings) -> int:
    applied = await migrate(database_url(settings))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


#: Seconds between two looks at a database that is not ready yet.
WAIT_INTERVAL = 1.0


async def _wait(seconds: float, url: str) -> int:
    deadline = time.monotonic() + seconds
    said = ""
    while True:
        try:
            conn = await connect(url)  # requires every migration to be applied
        except MigrationError as exc:
            if "db migrate" not in str(exc):  # ahead, or edited: no wait fixes that
                raise CliError(str(exc), EXIT_BAD_INPUT) from None
            reason = str(exc)
        except DatabaseError as exc:
            reason = str(exc)
        else:
            await conn.close()
            print("database is ready")
            return 0
        if time.monotonic() >= deadline:
            raise CliError(f"database not ready after {seconds:g} s: {reason}",
                           EXIT_UNAVAILABLE)
        if reason != said:
            print(f"brokerscan: waiting for the database: {reason}", file=sys.stderr,
                  flush=True)
            said = reason
        await asyncio.sleep(min(WAIT_INTERVAL, max(0.0, deadline - time.monotonic())))


async def _maintain(args: argparse.Namespace, settings: Settings) -> int:
    retention = args.retention_days if args.retention_days is not None \
        else settings.retention_days
    if retention is not None and retention < 1:
        raise CliError(f"--retention-days must be at least 1, not {retention}")
    store = await PgStore.open(database_url(settings))
    try:
        health = await store.maintain(retention_days=retention)
    finally:
        await store.close()
    data = {"partitions": health.partitions, "first_day": str(health.first_day),
            "last_day": str(health.last_day), "days_ahead": health.days_ahead,
            "default_rows": health.default_rows, "retention_days": retention}
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(f"{health.partitions} daily partitions, {health.first_day} .. {health.last_day}"
              f" ({health.days_ahead} days ahead); retention "
              f"{'none' if retention is None else f'{retention} days'}")
    if health.default_rows:
        print(f"brokerscan: warning: {health.default_rows} rows in the default partition",
              file=sys.stderr)
    return 0


async def _verify(explicit: str | None, settings: Settings) -> int:
    url = store_url(settings, explicit)
    try:
        store = await open_store(url, read_only=True)
    except (StoreError, DatabaseError) as exc:
        raise CliError(f"store {describe_store(url)}: {exc}", EXIT_UNAVAILABLE) from None
    try:
        problems = await verify_rollups(store)
    finally:
        await store.close()
    for line in problems:
        print(line)
    if problems:
        print(f"brokerscan: {len(problems)} rollup counts differ from the rows in "
              f"{describe_store(url)}", file=sys.stderr)
        return 1
    print(f"every rollup count equals the rows in {describe_store(url)}", file=sys.stderr)
    return 0
