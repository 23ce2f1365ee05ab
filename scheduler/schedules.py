"""Recurring sweeps: the ``schedules`` table (migration 0010) and starting their runs.

A schedule is a sweep's spec (what ``sweep start`` records) and a cadence
(:mod:`scheduler.cadence`). Every round of every scheduler calls :func:`start_due`: each
schedule whose next run is due is locked (``FOR UPDATE SKIP LOCKED``: another scheduler
passes it by), its latest period that has begun is found, and then, in that one
transaction:

- the period was handled already: nothing (the row's next due time is put right);
- the schedule's previous run is still running or paused: the period is *skipped*, and
  the row says why (``last_skip``, shown by ``schedule list``); the log says so too;
- otherwise its run is created (its opt-out lists read again and the approved opt-out
  requests added: :func:`run_spec`; a sweep with ``schedule`` and ``period``; a UNIQUE
  (schedule, period) constraint makes a second start of one period impossible even
  without the lock);

and the row moves on to the next period. After downtime only the latest period that has
begun runs, once. All times are the database's (``now()``), so schedulers with skewed
clocks agree.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from brokerscan.names import Names
from scheduler import launch
from scheduler.cadence import (
    Cadence,
    default_jitter,
    format_duration_spec,
    parse_duration,
    parse_jitter,
    period_key,
)
from scheduler.records import PeriodStarted, Row, StateError
from scheduler.sweeps import SweepSpec
from scheduler.targets import TargetError
from storage.db import Conn

__all__ = ["Outcome", "ScheduleExists", "ScheduleRow", "UnknownSchedule", "add_schedule",
           "check_name", "list_schedules", "prepare", "remove_schedule", "run_name", "run_spec",
           "set_paused", "start_due"]

log = logging.getLogger(__name__)

_UNDER_WAY = ("running", "paused")  # a run in these states blocks the next period
_PER_ROUND = 20  # schedules started at most per call (the rest in the next round)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # as the table's CHECK
_FILES = "optout_files"  # the stored spec's opt-out lists, read again by every run


class ScheduleExists(StateError):
    """A schedule of this name exists already."""


class UnknownSchedule(StateError):
    """No schedule has this name."""


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One row of ``schedules``; *spec* is the runs' spec (without ``started_at``; without
    ``seed`` when each run draws its own)."""

    name: str
    spec: dict[str, Any]
    cadence: Cadence
    jitter: int
    paused: bool
    next_period: datetime | None
    next_due: datetime | None
    last_period: datetime | None
    last_sweep: str | None
    last_skip: str | None
    last_error: str | None
    skipped: int
    runs: int
    created_at: datetime

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for ``schedule list`` and the API."""
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {"name": self.name, "cadence": self.cadence.describe(),
                "every": None if self.cadence.every is None
                else format_duration_spec(self.cadence.every),
                "cron": self.cadence.cron, "jitter_seconds": self.jitter,
                "state": "paused" if self.paused else "active",
                "targets": list(self.spec.get("targets", [])),
                "ports": self.spec.get("ports"), "rate": self.spec.get("rate"),
                "next_due": None if self.paused else iso(self.next_due),
                "last_period": iso(self.last_period), "last_sweep": self.last_sweep,
                "last_skip": self.last_skip, "last_error": self.last_error,
                "runs": self.runs, "skipped": self.skipped,
                "created_at": iso(self.created_at)}


def _row(r: Row) -> ScheduleRow:
    spec = r["spec"]
    return ScheduleRow(
        name=r["name"], spec=json.loads(spec) if isinstance(spec, str) else spec,
        cadence=Cadence(every=r["every_seconds"], cron=r["cron"]),
        jitter=r["jitter_seconds"], paused=r["paused"], next_period=r["next_period"],
        next_due=r["next_due"], last_period=r["last_period"], last_sweep=r["last_sweep"],
        last_skip=r["last_skip"], last_error=r["last_error"], skipped=r["skipped"],
        runs=r["runs"], created_at=r["created_at"])


def _next(name: str, cadence: Cadence, jitter: int,
          after: datetime) -> tuple[datetime | None, datetime | None]:
    """The first period beginning after *after*, and when its run is due."""
    start = cadence.next_start(after)
    if start is None:
        return None, None
    return start, cadence.due(name, jitter, start)


def check_name(name: str) -> None:
    """:raises StateError: *name* is not a schedule's name (letters, digits, ``_.-``, at
    most 64, starting with a letter or digit)"""
    if not _NAME.fullmatch(name):
        raise StateError(f"bad schedule name {name!r}: use letters, digits and _.- (at "
                         "most 64, first a letter or digit)")


def run_name(schedule: str, period: datetime) -> str:
    """The name of a schedule's run of a period: ``nightly-20261207T000000Z``."""
    return f"{schedule}-{period_key(period)}"


# ------------------------------------------------------------------------ the operator


def prepare(name: str, spec: SweepSpec, *, every: str | None, cron: str | None,
            jitter: str | None, fixed_seed: bool, now: datetime,
            optout_files: Sequence[str] = ()) -> tuple[dict[str, Any], Cadence, int]:
    """Check a schedule whole before anything is written (``sweep schedule add`` and the
    API): its name, cadence and jitter (default: a tenth of the period, at most a
    minute), and that its runs can be planned. Returns the spec to store (without name
    and start time; without the seed unless *fixed_seed*: each run draws its own), the
    cadence and the jitter in seconds. *optout_files* (the opt-out lists the spec's
    ``optout`` was read from) are stored with it: each run reads them again, and adds the
    approved opt-out requests (:func:`run_spec`).

    :raises StateError: a bad name
    :raises scheduler.cadence.CadenceError: a bad interval, cron expression or jitter
    :raises scheduler.launch.PlanError: a spec that cannot be planned, or sweeps nothing
    """
    check_name(name)
    cadence = Cadence(every=parse_duration(every) if every else None, cron=cron)
    seconds = default_jitter(cadence, now) if jitter is None else parse_jitter(jitter)
    cadence.check_jitter(seconds, now)
    launch.checked_plan(spec)
    stored = spec.model_dump(mode="json", exclude={"name", "started_at"})
    if not fixed_seed:
        del stored["seed"]
    stored[_FILES] = [os.path.abspath(path) for path in optout_files]
    return stored, cadence, seconds


def run_spec(stored: Mapping[str, Any], approved: Sequence[str] = ()) -> dict[str, Any]:
    """A schedule's stored spec as its run starts: the opt-out lists read again (a
    schedule stored before they were kept keeps the networks it had) and the *approved*
    opt-out requests added (:mod:`scheduler.optoutfeed`).

    :raises scheduler.targets.TargetError: an opt-out list cannot be read (one line)
    """
    spec = dict(stored)
    files = spec.pop(_FILES, None)
    kept = list(spec.get("optout", [])) if files is None else []
    spec["optout"] = launch.opt_out(files or [], [*kept, *approved])
    return spec


async def add_schedule(conn: Conn, name: str, spec: Mapping[str, Any], cadence: Cadence,
                       jitter: int) -> ScheduleRow:
    """Record a schedule; its first run is for the first period beginning after now.

    :raises ScheduleExists: the name is taken (nothing is written)
    :raises StateError: a bad name
    """
    check_name(name)
    async with conn.transaction():
        now = await conn.fetchval("SELECT now()")
        start, due = _next(name, cadence, jitter, now)
        try:
            row = await conn.fetchrow(
                "INSERT INTO schedules (name, spec, every_seconds, cron, jitter_seconds,"
                " next_period, next_due) VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7)"
                " RETURNING *", name, json.dumps(dict(spec)), cadence.every, cadence.cron,
                jitter, start, due)
        except asyncpg.UniqueViolationError:
            raise ScheduleExists(f"a schedule named {name!r} exists already") from None
    assert row is not None
    return _row(row)


async def list_schedules(conn: Conn) -> list[ScheduleRow]:
    """Every schedule, by name."""
    return [_row(r) for r in await conn.fetch("SELECT * FROM schedules ORDER BY name")]


async def set_paused(conn: Conn, name: str, paused: bool) -> ScheduleRow:
    """Pause a schedule (no period runs until it is resumed; a run under way goes on), or
    resume it (from the first period beginning after now: periods missed while paused
    are not run).

    :raises UnknownSchedule: no such schedule
    :raises StateError: it is paused (or active) already
    """
    async with conn.transaction():
        r = await conn.fetchrow("SELECT *, now() AS now FROM schedules WHERE name = $1"
                                " FOR UPDATE", name)
        if r is None:
            raise UnknownSchedule(f"no schedule {name}")
        if r["paused"] == paused:
            raise StateError(f"schedule {name} is already {'paused' if paused else 'active'}")
        current = _row(r)
        start, due = current.next_period, current.next_due
        if not paused:
            start, due = _next(name, current.cadence, current.jitter, r["now"])
        row = await conn.fetchrow(
            "UPDATE schedules SET paused = $2, next_period = $3, next_due = $4,"
            " updated_at = now() WHERE name = $1 RETURNING *", name, paused, start, due)
    assert row is not None
    return _row(row)


async def remove_schedule(conn: Conn, name: str) -> None:
    """Remove a schedule (its runs stay, with its name; a run under way goes on).

    :raises UnknownSchedule: no such schedule
    """
    status = await conn.execute("DELETE FROM schedules WHERE name = $1", name)
    if status != "DELETE 1":
        raise UnknownSchedule(f"no schedule {name}")


# ----------------------------------------------------------------------- the scheduler


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`start_due` did for one schedule's period: started *sweep*, skipped it
    (*skipped* says why), or failed to plan it (*error*)."""

    schedule: str
    period: datetime
    sweep: str | None = None
    skipped: str | None = None
    error: str | None = None


async def start_due(conn: Conn, names: Names, optout: Sequence[str] = ()) -> list[Outcome]:
    """Start the runs that are due (one transaction per schedule), their specs with the
    approved opt-out networks *optout* too (:func:`run_spec`); what was done."""
    done: list[Outcome] = []
    for _ in range(_PER_ROUND):
        async with conn.transaction():
            r = await conn.fetchrow(
                "SELECT *, now() AS now FROM schedules WHERE NOT paused"
                " AND next_due <= now() ORDER BY next_due LIMIT 1 FOR UPDATE SKIP LOCKED")
            if r is None:
                break
            outcome = await _handle(conn, _row(r), r["now"], names, optout)
        if outcome is not None:
            done.append(outcome)
            _log(outcome)
    return done


async def _handle(conn: Conn, schedule: ScheduleRow, now: datetime, names: Names,
                  optout: Sequence[str]) -> Outcome | None:
    name, cadence = schedule.name, schedule.cadence
    found = cadence.pending(name, schedule.jitter, schedule.last_period, now)
    if found is None:
        start, due = _next(name, cadence, schedule.jitter, now)
        await _move_on(conn, name, start, due)
        return None
    period, due = found
    if now < due:  # after downtime: a later period has begun, its jitter not yet past
        await _move_on(conn, name, period, due)
        return None
    start, next_due = _next(name, cadence, schedule.jitter, period)
    previous = await conn.fetchrow(
        "SELECT id, state, period FROM sweeps WHERE schedule = $1"
        " AND state = ANY($2::text[]) ORDER BY period DESC LIMIT 1", name, list(_UNDER_WAY))
    if previous is not None:
        why = (f"period {period_key(period)} skipped: the run of period "
               f"{period_key(previous['period'])}, {previous['id']}, is still "
               f"{previous['state']}")
        await conn.execute(
            "UPDATE schedules SET last_period = $2, last_skip = $3, skipped = skipped + 1,"
            " next_period = $4, next_due = $5, updated_at = now() WHERE name = $1",
            name, period, why, start, next_due)
        return Outcome(name, period, skipped=why)
    sweep_id: str | None = None
    error: str | None = None
    try:
        spec = SweepSpec.model_validate({
            **run_spec(schedule.spec, optout), "name": run_name(name, period),
            "started_at": now,
            "seed": schedule.spec.get("seed", secrets.randbelow(2**31))})
        plan = launch.checked_plan(spec)
        async with conn.transaction():  # a savepoint: a refused start leaves the row
            sweep_id = await launch.create_sweep(conn, plan, names, schedule=name,
                                                 period=period)
    except ValidationError as exc:  # a spec this version cannot read
        error = f"period {period_key(period)} not started: bad spec: {exc.errors()[0]['msg']}"
    except (launch.PlanError, TargetError) as exc:
        error = f"period {period_key(period)} not started: {exc}"
    except PeriodStarted:
        pass  # started by another scheduler: nothing more to record
    except StateError as exc:
        error = f"period {period_key(period)} not started: {exc}"
    await conn.execute(
        "UPDATE schedules SET last_period = $2, next_period = $3, next_due = $4,"
        " last_sweep = coalesce($5, last_sweep), runs = runs + ($5 IS NOT NULL)::int,"
        " last_error = $6, updated_at = now() WHERE name = $1",
        name, period, start, next_due, sweep_id, error)
    if sweep_id is None and error is None:
        return None
    return Outcome(name, period, sweep=sweep_id, error=error)


async def _move_on(conn: Conn, name: str, start: datetime | None,
                   due: datetime | None) -> None:
    await conn.execute("UPDATE schedules SET next_period = $2, next_due = $3,"
                       " updated_at = now() WHERE name = $1", name, start, due)


def _log(outcome: Outcome) -> None:
    if outcome.sweep is not None:
        log.info("schedule %s: started %s for period %s", outcome.schedule, outcome.sweep,
                 period_key(outcome.period))
    elif outcome.skipped is not None:
        log.warning("schedule %s: %s", outcome.schedule, outcome.skipped)
    else:
        log.warning("schedule %s: %s", outcome.schedule, outcome.error)
