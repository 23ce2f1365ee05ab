"""``brokerscan sweep schedule``: recurring sweeps (add, list, pause, resume, remove).

``add`` takes exactly the options of ``sweep start`` (:mod:`brokerscan.cli.sweepspec`)
plus a cadence: ``--every 24h`` or ``--cron '0 3 * * *'`` (UTC) and ``--jitter``. The
schedule is checked whole (cadence, jitter, targets, the plan) before anything is
written; the scheduler starts each run (:mod:`scheduler.schedules`).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from brokerscan.cli.errors import CliError
from brokerscan.cli.services import database_url
from brokerscan.cli.sweepspec import add_run_options, sweep_spec
from brokerscan.settings import Settings
from scheduler import schedules
from scheduler.cadence import CadenceError
from scheduler.launch import PlanError
from scheduler.records import StateError
from storage.db import connect

__all__ = ["add_commands", "run_verb"]


def add_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``schedule`` and its verbs under ``sweep``."""
    schedule = verbs.add_parser("schedule", help="recurring sweeps: add, list, pause, "
                                                 "resume, remove")
    sub = schedule.add_subparsers(dest="schedule_verb", required=True,
                                  parser_class=type(schedule))
    add = sub.add_parser("add", help="run a sweep every period (the options of sweep start)")
    add.add_argument("schedule_name", metavar="NAME",
                     help="the schedule's name; its runs are named NAME-<period>")
    add_run_options(add)
    cadence = add.add_mutually_exclusive_group(required=True)
    cadence.add_argument("--every", metavar="DURATION",
                         help="an interval: 90s, 15m, 6h, 1d, 2w, 1h30m; periods begin at "
                              "its multiples since 1970-01-01 UTC (24h: at midnight UTC)")
    cadence.add_argument("--cron", metavar="EXPR",
                         help="a cron expression in UTC ('0 3 * * *'; a sixth leading "
                              "field gives seconds)")
    add.add_argument("--jitter", metavar="DURATION", default=None,
                     help="start each run up to this late, the same for every scheduler "
                          "(default: a tenth of the period, at most 1m; 0 for none)")
    sub.add_parser("list", help="schedules, their next run, last run and skips").add_argument(
        "--format", choices=("text", "json"), default="text")
    for verb, text in (("pause", "start no more runs until resumed"),
                       ("resume", "run again from the next period"),
                       ("remove", "remove a schedule (its runs stay)")):
        sub.add_parser(verb, help=text).add_argument("schedule_name", metavar="NAME")


async def run_verb(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``sweep schedule`` verb."""
    verb = args.schedule_verb
    if verb == "add":
        return await _add(args, settings)
    if verb == "list":
        return await _list(args, settings)
    conn = await connect(database_url(settings))
    try:
        if verb == "remove":
            await schedules.remove_schedule(conn, args.schedule_name)
            print(f"{args.schedule_name} removed")
            return 0
        row = await schedules.set_paused(conn, args.schedule_name, verb == "pause")
    except StateError as exc:
        raise CliError(str(exc)) from None
    finally:
        await conn.close()
    print(f"{row.name} {'paused' if row.paused else 'active'}" + (
        "" if row.paused or row.next_due is None else f": next run due {_when(row.next_due)}"))
    return 0


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    spec = sweep_spec(args, settings)
    try:
        stored, cadence, jitter = schedules.prepare(
            args.schedule_name, spec, every=args.every, cron=args.cron, jitter=args.jitter,
            fixed_seed=args.seed is not None, now=datetime.now(UTC),
            optout_files=[*settings.blocklist_files, *args.blocklist])
    except (StateError, CadenceError, PlanError) as exc:
        raise CliError(str(exc)) from None
    conn = await connect(database_url(settings))
    try:
        row = await schedules.add_schedule(conn, args.schedule_name, stored, cadence, jitter)
    except StateError as exc:
        raise CliError(str(exc)) from None
    finally:
        await conn.close()
    if args.format == "json":
        print(json.dumps(row.summary(), indent=2))
    else:
        print(f"{row.name}: {cadence.describe()}, jitter {row.jitter} s; first run due "
              f"{_when(row.next_due)}")
    return 0


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(database_url(settings))
    try:
        rows = await schedules.list_schedules(conn)
    finally:
        await conn.close()
    items = [r.summary() for r in rows]
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no schedules (brokerscan sweep schedule add NAME TARGET... --every 24h)")
    for row, item in zip(rows, items, strict=True):
        print(_line(row, item))
    return 0


def _line(row: schedules.ScheduleRow, item: dict[str, Any]) -> str:
    state = "paused" if row.paused else f"next {_when(row.next_due)}"
    last = f"last {row.last_sweep}" if row.last_sweep else "no run yet"
    text = (f"{row.name}  {row.cadence.describe()}  {state}  {last}  "
            f"runs {row.runs}  skipped {row.skipped}  targets {' '.join(item['targets'])}")
    if row.last_skip:
        text += f"\n  {row.last_skip}"
    if row.last_error:
        text += f"\n  {row.last_error}"
    return text
