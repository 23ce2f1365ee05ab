"""``brokerscan sweep``: plan, start, steer and watch distributed sweeps.

Every verb checks what it needs (the plan, then PostgreSQL, Redis and the broker) before it
changes anything, so a mistake or a service that is down ends in one line and a non-zero
exit with nothing half-created.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from brokerscan.cli import schedule
from brokerscan.cli.errors import CliError
from brokerscan.cli.services import (
    NO_SCHEDULER,
    check_broker,
    database_url,
    opened_store,
    run_async,
)
from brokerscan.cli.sweepspec import add_plan_options, add_run_options, plan_or_fail, sweep_spec
from brokerscan.cli.text import format_duration, format_rate
from brokerscan.settings import Settings
from scheduler import launch, live, state, status
from scheduler.launch import default_name
from scheduler.sweeps import SweepPlan, SweepSpec, describe_plan
from storage.db import connect
from storage.optouts import approved_networks
from storage.store import store_url
from storage.urls import sqlite_file

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"sweep"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sweep`` and its verbs."""
    sweep = sub.add_parser("sweep", help="distributed sweeps: plan, start, steer, watch")
    verbs = sweep.add_subparsers(dest="verb", required=True, parser_class=type(sweep))
    add_plan_options(verbs.add_parser("plan", help="dry run: counts, shards, duration; "
                                                    "sends nothing"))
    start = verbs.add_parser("start", help="create a sweep; the scheduler dispatches it")
    add_run_options(start)
    start.add_argument("--name", default=None)
    schedule.add_commands(verbs)
    status = verbs.add_parser("status", help="progress, rates, hits, shards, workers")
    status.add_argument("sweep_id", nargs="?")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--format", choices=("text", "json"), default="text")
    for verb in ("pause", "resume", "cancel"):
        verbs.add_parser(verb, help=f"{verb} a sweep").add_argument("sweep_id")
    verbs.add_parser("retry", help="queue the failed shards of a sweep again").add_argument(
        "sweep_id")
    verbs.add_parser("list", help="recent sweeps").add_argument(
        "--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a ``sweep`` verb."""
    return run_async(_VERBS[args.verb](args, settings))


# -- plan and start ----------------------------------------------------------------------

async def _plan_cmd(args: argparse.Namespace, settings: Settings) -> int:
    began = time.perf_counter()
    spec = sweep_spec(args, settings)
    try:  # what `sweep start` would add; a dry run still plans without a store to ask
        approved = await _approved(settings, create=False)
    except CliError as exc:
        approved = []
        print(f"brokerscan: note: approved opt-outs not read ({exc}); `sweep start` "
              "refuses to start without them", file=sys.stderr)
    plan = plan_or_fail(_with_approved(spec, approved))
    info = describe_plan(plan, settings.names()) | {"seed": plan.spec.seed,
                                                      "plan_seconds": round(
                                                          time.perf_counter() - began, 3)}
    if args.format == "json":
        print(json.dumps(info, indent=2))
    else:
        print(f"eligible addresses {info['addresses']:>16,}\n"
              f"targets            {info['targets']:>16,}  ({', '.join(info['ports'])})\n"
              f"excluded           {info['excluded']}\n"
              f"shards             {info['shards']:>16,}  "
              + ", ".join(f"{q}: {n:,}" for q, n in info["queues"].items()) + "\n"
              + _duration_line(plan))
    return 0


async def _approved(settings: Settings, *, create: bool = True) -> list[str]:
    """The approved opt-out networks of the store (``brokerscan optout``); with *create*
    false, none when the store is an SQLite file that does not exist (it holds none, and a
    dry run makes no file)."""
    url = store_url(settings)
    if not create and _no_file(url):
        return []
    async with opened_store(url) as store:
        return await approved_networks(store)


def _no_file(url: str) -> bool:
    """*url* names an SQLite file that does not exist."""
    path = sqlite_file(url)
    return path is not None and not os.path.exists(path)


def _with_approved(spec: SweepSpec, approved: list[str]) -> SweepSpec:
    """*spec* with the approved opt-out requests joining its lists."""
    if not approved:
        return spec
    return spec.model_copy(update={"optout": launch.opt_out([], [*spec.optout, *approved])})


async def _start_cmd(args: argparse.Namespace, settings: Settings) -> int:
    spec = sweep_spec(args, settings, name=args.name or "")
    if not spec.name:
        spec = spec.model_copy(update={"name": default_name(spec)})
    spec = spec.model_copy(update={"started_at": datetime.now(UTC)})
    plan = plan_or_fail(_with_approved(spec, await _approved(settings)))
    spec = plan.spec
    names = settings.names()
    url = database_url(settings)
    check_broker(settings.broker_url)
    redis = Redis.from_url(settings.redis_url)
    try:
        await redis.ping()
        conn = await connect(url)
        try:
            sweep_id = await launch.create_sweep(conn, plan, names)
        except state.SweepExists as exc:
            raise CliError(str(exc)) from None
        finally:
            await conn.close()
        await live.set_control(redis, names, sweep_id, "running")
        scheduler = await live.scheduler_alive(redis, names)
    finally:
        await redis.aclose()
    info = describe_plan(plan, names) | {"id": sweep_id, "name": spec.name,
                                           "seed": spec.seed}
    if args.format == "json":
        print(json.dumps(info, indent=2))
    else:
        print(f"{sweep_id}  {spec.name}: {plan.targets:,} targets in {plan.shard_count:,} "
              f"shards, rate {format_rate(spec.rate)} ({_duration_text(plan)})")
    if not scheduler:
        print(NO_SCHEDULER, file=sys.stderr)
    return 0


def _duration_text(plan: SweepPlan) -> str:
    if plan.seconds is None:
        return "as fast as the fleet goes"
    return format_duration(plan.seconds)


def _duration_line(plan: SweepPlan) -> str:
    if plan.seconds is None:
        return "duration           no rate limit: as fast as the fleet goes"
    return f"duration at {format_rate(plan.spec.rate)}  {_duration_text(plan)}"


# -- steering and watching -----------------------------------------------------------------

async def _steer(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(database_url(settings))
    redis = Redis.from_url(settings.redis_url)
    try:
        row, notified = await status.steer_sweep(conn, redis, settings.names(), args.sweep_id,
                                                 args.verb)
    except (state.UnknownSweep, state.BadTransition) as exc:
        raise CliError(str(exc)) from None
    finally:
        await redis.aclose()
        await conn.close()
    if not notified:
        print("brokerscan: note: Redis is unreachable; workers will follow when the "
              "scheduler next mirrors the state", file=sys.stderr)
    print(f"{row.id} {row.state}")
    return 0


async def _status_data(settings: Settings, sweep_id: str | None) -> dict[str, Any]:
    conn = await connect(database_url(settings))
    redis = Redis.from_url(settings.redis_url)
    try:
        try:
            data = await status.sweep_status(conn, redis, settings.names(), sweep_id)
        except state.UnknownSweep as exc:
            raise CliError(str(exc)) from None
    finally:
        await redis.aclose()
        await conn.close()
    return data


def _render_status(d: dict[str, Any]) -> str:
    width = 30
    filled = int(width * d["progress"])
    eta = "--" if d["eta_seconds"] is None else format_duration(d["eta_seconds"])
    shards = d["shards"]
    hits = ", ".join(f"{k} {v:,}" for k, v in sorted(d["hits"].items())) or "none yet"
    return "\n".join([
        f"{d['id']}  {d['name'] or ''}  [{d['state']}]"
        + (f"  (schedule {d['schedule']})" if d.get("schedule") else ""),
        f"[{'#' * filled}{'.' * (width - filled)}] {100 * d['progress']:5.1f}%  "
        f"{d['probes']:,}/{d['targets']:,}  {d['probes_per_second']:,.0f} probes/s  ETA {eta}",
        f"hits: {hits}   open ports: {d['open']:,}",
        "shards: " + "  ".join(f"{s} {shards.get(s, 0):,}" for s in (
            "done", "running", "queued", "pending", "paused", "failed", "cancelled"))
        + (f"  (put back {d['requeued']:,} times: worker gone or message lost)"
           if d.get("requeued") else ""),
        *_failed_lines(d),
        _workers_line(d)
        + ("" if d["scheduler_alive"] else "   (no scheduler running)"),
        *_worker_lines(d["workers"]),
    ])


def _failed_lines(d: dict[str, Any]) -> list[str]:
    lines = []
    for f in d["failed_shards"]:
        lines.append(f"  failed shard {f['shard']} ({f['queue']}, {f['attempts']} attempts):"
                     f" {f['error'] or f['last_error'] or 'no error recorded'}")
    if lines:
        lines.append(f"  (brokerscan sweep retry {d['id']} queues them again)")
    return lines


def _workers_line(d: dict[str, Any]) -> str:
    workers = d["workers"]
    if not workers:
        return "workers alive: 0"
    capacity = ", ".join(f"{q} {n:,}" for q, n in sorted(d["capacity"].items()))
    return (f"workers alive: {len(workers):,} ({d['workers_busy']:,} busy, "
            f"{d['workers_idle']:,} idle)   capacity: {capacity or 'none'}")


def _worker_lines(workers: list[dict[str, Any]], most: int = 12) -> list[str]:
    lines = []
    for w in workers[:most]:
        queues = ",".join(q.rsplit(".", 1)[-1] for q in w["queues"]) or "?"
        doing = f"shard {w['sweep']}/{w['shard']}, {w['probes']:,} probes" \
            if w["state"] == "busy" else "idle"
        lines.append(f"  {w['id']}  [{queues}]  {doing}")
    if len(workers) > most:
        lines.append(f"  ... and {len(workers) - most} more (--format json lists all)")
    return lines


async def _status_cmd(args: argparse.Namespace, settings: Settings) -> int:
    while True:
        data = await _status_data(settings, args.sweep_id)
        text = json.dumps(data, indent=2, default=str) if args.format == "json" \
            else _render_status(data)
        if args.watch and args.format == "text" and sys.stdout.isatty():
            print("\033[2J\033[H" + text, flush=True)
        else:
            print(text, flush=True)
        if not args.watch or data["state"] in ("finished", "cancelled", "failed"):
            return 0
        await asyncio.sleep(1.0)


async def _list_cmd(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(database_url(settings))
    try:
        rows = await state.list_sweeps(conn, limit=50)
    finally:
        await conn.close()
    items = [status.summary(r) for r in rows]
    if args.format == "json":
        print(json.dumps(items, indent=2))
    else:
        for i in items:
            failed = f"  {i['failed_shards']} failed" if i["failed_shards"] else ""
            scheduled = f"  (schedule {i['schedule']})" if i["schedule"] else ""
            print(f"{i['id']}  {i['state']:<9}  {i['targets']:>16,} targets  "
                  f"{i['created_at'][:19]}  {i['name'] or ''}{scheduled}{failed}")
    return 0


async def _retry_cmd(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(database_url(settings))
    try:
        row, count = await state.retry_failed(conn, args.sweep_id)
    except state.StateError as exc:
        raise CliError(str(exc)) from None
    finally:
        await conn.close()
    redis = Redis.from_url(settings.redis_url)
    try:
        await live.set_control(redis, settings.names(), row.id, row.state)
        scheduler = await live.scheduler_alive(redis, settings.names())
    except (RedisError, OSError):
        scheduler = True  # unknown; the scheduler mirrors the state when it runs
    finally:
        await redis.aclose()
    print(f"{row.id} {row.state}: {count} failed shard(s) queued again")
    if not scheduler:
        print(NO_SCHEDULER, file=sys.stderr)
    return 0


_VERBS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "plan": _plan_cmd, "start": _start_cmd, "status": _status_cmd, "list": _list_cmd,
    "pause": _steer, "resume": _steer, "cancel": _steer, "retry": _retry_cmd,
    "schedule": schedule.run_verb,
}


