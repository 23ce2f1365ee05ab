"""The durable record of sweeps and their shards in PostgreSQL (tables of migration 0001).

Every function is one short transaction over an asyncpg connection (or one taken from a
pool). The rules they keep:

- A sweep moves running -> paused | cancelled | finished | failed, paused -> running |
  cancelled and failed -> cancelled; :func:`retry_failed` takes a failed sweep back to
  running; anything else is :class:`BadTransition`.
- A shard moves pending -> queued (:func:`claim_pending`) -> running (:func:`start_shard`)
  -> done | paused | cancelled | failed (:func:`finish_shard`); paused shards are queued
  again when their sweep runs again. Messages are delivered at least once, so a start or
  finish that arrives for a shard already finished changes nothing.
- The counts of a shard (probes, open, hits, statuses) cover exactly the exponents
  ``[first_exponent, position)`` except ``unfinished`` (targets abandoned by a run that
  was handed back, migration 0006: the next run probes them first):
  :func:`checkpoint_shard` and :func:`finish_shard` *add* what was counted since the
  previous checkpoint, together with the new position.

Why one piece: every statement on ``sweeps`` and ``sweep_shards``, so that the state
machine's transitions and the counts they carry are read, and kept consistent, together.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast, get_args

import asyncpg

from scheduler.records import (
    BadTransition,
    NameInUse,
    PeriodStarted,
    ShardCounts,
    ShardRow,
    ShardStart,
    ShardState,
    StateError,
    SweepExists,
    SweepRow,
    SweepState,
    UnknownShard,
    UnknownSweep,
    check_transition,
    shard_row,
    sweep_row,
)
from scheduler.sizing import QueueLoad
from storage.db import Conn

__all__ = [
    "BadTransition",
    "NameInUse",
    "PeriodStarted",
    "QueueLoad",
    "ShardCounts",
    "ShardRow",
    "ShardStart",
    "ShardState",
    "StateError",
    "SweepExists",
    "SweepRow",
    "SweepState",
    "UnknownShard",
    "UnknownSweep",
    "checkpoint_shard",
    "claim_pending",
    "create_sweep",
    "finish_shard",
    "get_sweep",
    "list_sweeps",
    "failed_shards",
    "maybe_finish_sweep",
    "note_shard_error",
    "put_back",
    "queue_loads",
    "requeue_queued",
    "running_runs",
    "stale_queued",
    "retry_failed",
    "spend_attempt",
    "set_sweep_state",
    "shard_counts",
    "start_shard",
]

_OUTSTANDING = ("pending", "queued", "running", "paused")  # a sweep with these is not over
_FINAL = ("done", "cancelled", "failed")

# ------------------------------------------------------------------------------- sweeps

_SHARD_COLUMNS = ["sweep_id", "shard_index", "queue", "first_exponent", "end_exponent",
                  "position"]  # fmt: skip


async def create_sweep(
    conn: Conn,
    *,
    sweep_id: str,
    name: str | None,
    spec: Mapping[str, Any],
    target_count: int,
    shards: Sequence[ShardRow],
    schedule: str | None = None,
    period: datetime | None = None,
) -> None:
    """Record a new running sweep and all its shards (pending), in one transaction.

    The shards go in with one binary COPY, so a plan of 65,536 shards takes a fraction of
    a second.

    :param sweep_id: the application's id (``sw-`` + 8 base32 characters)
    :param name: the operator's name for it, or None
    :param spec: the sweep's parameters (JSON-serialisable)
    :param target_count: eligible targets (addresses x ports after the blocklists)
    :param shards: the plan; see :class:`ShardRow`
    :param schedule: the schedule whose run this is (with *period*, the beginning of the
        period it runs for: :mod:`scheduler.schedules`)
    :raises SweepExists: the id is taken (nothing is written)
    :raises PeriodStarted: the schedule's run of *period* exists already (nothing is
        written)
    :raises NameInUse: a running or paused sweep has this name (nothing is written)
    :raises ValueError: two shards share an index
    """
    records = [
        (sweep_id, s.index, s.queue, s.first_exponent, s.end_exponent,
         s.first_exponent if s.position is None else s.position)
        for s in shards
    ]  # fmt: skip
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sweeps (id, name, spec, state, started_at, target_count,"
                " shard_count, schedule, period)"
                " VALUES ($1, $2, $3::jsonb, 'running', now(), $4, $5, $6, $7)",
                sweep_id, name, json.dumps(dict(spec)), target_count, len(records),
                schedule, period,
            )  # fmt: skip
            await conn.copy_records_to_table(
                "sweep_shards", records=records, columns=_SHARD_COLUMNS
            )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "sweeps_active_name":
            holder = await conn.fetchval(
                "SELECT id FROM sweeps WHERE name = $1 AND state IN ('running', 'paused')",
                name,
            )
            raise NameInUse(f"a sweep named {name!r} is already under way: {holder}") from None
        if exc.constraint_name == "sweeps_schedule_period":
            raise PeriodStarted(f"schedule {schedule}: the run of {period} exists "
                                "already") from None
        if exc.constraint_name == "sweep_shards_pkey":
            raise ValueError(f"sweep {sweep_id}: two shards have the same index") from None
        raise SweepExists(f"sweep {sweep_id} exists already") from None


async def get_sweep(conn: Conn, sweep_id: str) -> SweepRow | None:
    """The sweep with this id, or None."""
    row = await conn.fetchrow("SELECT * FROM sweeps WHERE id = $1", sweep_id)
    return None if row is None else sweep_row(row)


async def list_sweeps(conn: Conn, limit: int = 50) -> list[SweepRow]:
    """The *limit* most recently created sweeps, newest first."""
    rows = await conn.fetch("SELECT * FROM sweeps ORDER BY created_at DESC, id LIMIT $1", limit)
    return [sweep_row(r) for r in rows]


async def set_sweep_state(conn: Conn, sweep_id: str, new_state: SweepState) -> SweepRow:
    """Pause, resume, cancel or finish a sweep.

    Cancelling also cancels its pending and paused shards; queued and running ones are
    cancelled by the workers that receive them.

    :returns: the sweep as it is now
    :raises UnknownSweep: no such sweep
    :raises BadTransition: not allowed from the sweep's state (one-line message)
    """
    if new_state not in get_args(SweepState):
        raise ValueError(f"{new_state!r} is not a sweep state")
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM sweeps WHERE id = $1 FOR UPDATE", sweep_id)
        if state is None:
            raise UnknownSweep(f"no sweep {sweep_id}")
        check_transition(sweep_id, state, new_state)
        if new_state == "cancelled":
            await conn.execute(
                "UPDATE sweep_shards SET state = 'cancelled', finished_at = now(),"
                " updated_at = now() WHERE sweep_id = $1 AND state IN ('pending', 'paused')",
                sweep_id,
            )
        row = await conn.fetchrow(
            "UPDATE sweeps SET state = $2, updated_at = now(),"
            " finished_at = CASE WHEN $2 IN ('cancelled', 'finished', 'failed') THEN now() END,"
            " failed_shards = (SELECT count(*) FROM sweep_shards"
            "                  WHERE sweep_id = $1 AND state = 'failed')"
            " WHERE id = $1 RETURNING *",
            sweep_id, new_state,
        )  # fmt: skip
    assert row is not None  # locked above
    return sweep_row(row)


async def maybe_finish_sweep(conn: Conn, sweep_id: str) -> bool:
    """End a running sweep once none of its shards is pending, queued, running or paused:
    ``finished`` if every shard is done (or cancelled), ``failed`` if any shard failed
    (their number is recorded in ``failed_shards``; :func:`retry_failed` runs them again).

    :returns: whether the sweep is over now (by this call or before)
    :raises UnknownSweep: no such sweep
    """
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM sweeps WHERE id = $1 FOR UPDATE", sweep_id)
        if state is None:
            raise UnknownSweep(f"no sweep {sweep_id}")
        if state != "running":
            return bool(state in ("finished", "failed"))
        outstanding = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM sweep_shards WHERE sweep_id = $1"
            " AND state = ANY($2::text[]))",
            sweep_id, _OUTSTANDING,
        )  # fmt: skip
        if outstanding:
            return False
        failed = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM sweep_shards WHERE sweep_id = $1 AND state = 'failed')",
            sweep_id)
        await set_sweep_state(conn, sweep_id,  # nested: a savepoint
                              "failed" if failed else "finished")
    return True


async def failed_shards(conn: Conn, sweep_id: str, limit: int = 20) -> list[ShardRow]:
    """The failed shards of a sweep (lowest index first, at most *limit*), with their
    errors: ``error`` (why it was given up) and ``last_error`` (the last run's failure)."""
    rows = await conn.fetch(
        "SELECT * FROM sweep_shards WHERE sweep_id = $1 AND state = 'failed'"
        " ORDER BY shard_index LIMIT $2", sweep_id, limit)
    return [shard_row(r) for r in rows]


async def retry_failed(conn: Conn, sweep_id: str) -> tuple[SweepRow, int]:
    """Queue a sweep's failed shards again (attempts from zero, each resumes at its last
    checkpoint, so nothing is counted twice) and run the sweep again if it had ended
    ``failed`` (or ``finished`` with failed shards, before migration 0005).

    :returns: the sweep as it is now, and how many shards go again
    :raises UnknownSweep: no such sweep
    :raises BadTransition: the sweep is cancelled, or has no failed shard
    :raises NameInUse: its name was taken by another sweep under way meanwhile
    """
    async with conn.transaction():
        current = await conn.fetchval("SELECT state FROM sweeps WHERE id = $1 FOR UPDATE",
                                      sweep_id)
        if current is None:
            raise UnknownSweep(f"no sweep {sweep_id}")
        if current == "cancelled":
            raise BadTransition(f"sweep {sweep_id} is cancelled: cannot retry it")
        status = await conn.execute(
            "UPDATE sweep_shards SET state = 'pending', attempts = 0, error = NULL,"
            " finished_at = NULL, updated_at = now()"
            " WHERE sweep_id = $1 AND state = 'failed'", sweep_id)
        count = int(status.split()[-1])
        if count == 0:
            raise BadTransition(f"sweep {sweep_id} has no failed shard to retry")
        try:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE sweeps SET state = CASE WHEN state = 'paused' THEN 'paused'"
                    " ELSE 'running' END, finished_at = NULL, failed_shards = 0,"
                    " retries = retries + 1, updated_at = now() WHERE id = $1 RETURNING *",
                    sweep_id)
        except asyncpg.UniqueViolationError:
            raise NameInUse(f"sweep {sweep_id}: its name is taken by a sweep under way; "
                            "finish or cancel that one first") from None
    assert row is not None
    return sweep_row(row), count


async def shard_counts(conn: Conn, sweep_id: str) -> ShardCounts:
    """Shards per state and the counts recorded so far.

    :raises UnknownSweep: no such sweep
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if await conn.fetchval("SELECT 1 FROM sweeps WHERE id = $1", sweep_id) is None:
            raise UnknownSweep(f"no sweep {sweep_id}")
        by_state = await conn.fetch(
            "SELECT state, count(*) AS n,"
            " sum(position - first_exponent - cardinality(unfinished)) AS covered,"
            " sum(probes) AS probes, sum(open) AS open, sum(requeues) AS requeues"
            " FROM sweep_shards WHERE sweep_id = $1 GROUP BY state",
            sweep_id,
        )
        sums: dict[str, dict[str, int]] = {"hits": {}, "statuses": {}}
        for column in sums:
            rows = await conn.fetch(
                f"SELECT key, sum(value::bigint) AS n FROM sweep_shards,"
                f" jsonb_each_text({column}) WHERE sweep_id = $1 GROUP BY key ORDER BY key",
                sweep_id,
            )
            sums[column] = {r["key"]: int(r["n"]) for r in rows}
    states = dict.fromkeys(cast(tuple[ShardState, ...], get_args(ShardState)), 0)
    states.update({r["state"]: int(r["n"]) for r in by_state})
    return ShardCounts(
        states=states,
        covered=sum(int(r["covered"]) for r in by_state),
        probes=sum(int(r["probes"]) for r in by_state),
        open=sum(int(r["open"]) for r in by_state),
        hits=sums["hits"],
        statuses=sums["statuses"],
        requeues=sum(int(r["requeues"]) for r in by_state),
    )


# ------------------------------------------------------------------------------ dispatch


async def claim_pending(
    conn: Conn, sweep_id: str, limit: int, queue: str | None = None
) -> list[ShardRow]:
    """Mark up to *limit* pending or paused shards as queued, lowest index first, and
    return them. Concurrent callers never get the same shard (``SKIP LOCKED``); a sweep
    that is not running gives none.

    :param queue: only shards of this Celery queue
    :raises UnknownSweep: no such sweep
    """
    async with conn.transaction():
        # FOR SHARE: a pause or cancel waits for this claim, and this claim for it.
        state = await conn.fetchval("SELECT state FROM sweeps WHERE id = $1 FOR SHARE", sweep_id)
        if state is None:
            raise UnknownSweep(f"no sweep {sweep_id}")
        if state != "running" or limit <= 0:
            return []
        rows = await conn.fetch(
            "WITH picked AS (SELECT shard_index FROM sweep_shards"
            "   WHERE sweep_id = $1 AND state IN ('pending', 'paused')"
            "   AND ($3::text IS NULL OR queue = $3)"
            "   ORDER BY shard_index LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE sweep_shards s SET state = 'queued', queued_at = now(), updated_at = now()"
            " FROM picked WHERE s.sweep_id = $1 AND s.shard_index = picked.shard_index"
            " RETURNING s.*",
            sweep_id, limit, queue,
        )  # fmt: skip
    return sorted((shard_row(r) for r in rows), key=lambda s: s.index)


async def queue_loads(conn: Conn, sweep_ids: Sequence[str]) -> dict[tuple[str, str], QueueLoad]:
    """Per (sweep, queue): shards queued or running (the backlog) and shards ready to be
    queued (pending or paused), for the dispatcher's sizing (:mod:`scheduler.sizing`).
    One statement over the ``sweep_shards_state`` index; pairs with neither are absent."""
    rows = await conn.fetch(
        "SELECT sweep_id, queue,"
        " count(*) FILTER (WHERE state IN ('queued', 'running')) AS backlog,"
        " count(*) FILTER (WHERE state IN ('pending', 'paused')) AS pending"
        " FROM sweep_shards WHERE sweep_id = ANY($1::text[])"
        " AND state IN ('pending', 'queued', 'running', 'paused')"
        " GROUP BY sweep_id, queue", list(sweep_ids))
    return {(r["sweep_id"], r["queue"]): QueueLoad(int(r["backlog"]), int(r["pending"]))
            for r in rows}


# -------------------------------------------------------------------------------- worker


async def start_shard(
    conn: Conn, sweep_id: str, index: int, worker: str, max_attempts: int, *,
    run_id: str | None = None, released: str | None = None,
    holder_alive: Callable[[str, str], Awaitable[bool]] | None = None,
) -> ShardStart:
    """Decide whether a worker that received this shard's message should run it.

    Runs it (state running, held by *run_id*, from the last checkpoint: its
    ``unfinished`` targets, then the walk from its ``position``) unless the shard is
    already done, cancelled or failed, the sweep is paused (the shard becomes paused) or
    cancelled (cancelled), another live run holds it (``busy``: try again later), or the
    lost runs reach ``max_attempts`` (failed).

    Attempts count lost runs, not deliveries: a shard found running under a run that
    is not *released* (the run that sent this message again after a transient failure)
    and whose worker no longer runs it (*holder_alive* false) was lost, and costs one.
    A transient outage, retried within its grace, costs nothing.

    :param run_id: this run's id (default: a new one)
    :param released: the run that ended transiently and sent this message again
    :param holder_alive: ``(worker, run_id) -> bool``: does that worker still run it?
        (default: no)
    """
    run_id = run_id or uuid.uuid4().hex
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT sh.state, sh.position, sh.unfinished, sh.end_exponent, sh.attempts,"
            " sh.last_error, sh.worker, sh.run_id, sh.checkpoints,"
            " s.state AS sweep"
            " FROM sweep_shards sh JOIN sweeps s ON s.id = sh.sweep_id"
            " WHERE sh.sweep_id = $1 AND sh.shard_index = $2 FOR UPDATE OF sh",
            sweep_id, index,
        )  # fmt: skip
        if row is None:
            return ShardStart(False, "unknown shard", None, None, 0, 0, 0)
        shard, sweep, attempts = row["state"], row["sweep"], row["attempts"]
        last_error = row["last_error"]
        new, reason, error = shard, "", None
        held = shard == "running" and row["run_id"] is not None \
            and row["run_id"] != released
        if held and holder_alive is not None and row["worker"] \
                and await holder_alive(row["worker"], row["run_id"]):
            return ShardStart(False, f"shard is running on {row['worker']}", sweep, shard,
                              row["position"], row["end_exponent"], attempts,
                              tuple(row["unfinished"]), busy=True,
                              checkpoints=row["checkpoints"])
        if held and shard not in _FINAL and sweep == "running":
            attempts += 1  # the run that held it was lost
        if shard in _FINAL:
            reason = f"shard is {shard} already"
        elif sweep in ("paused", "cancelled"):
            new, reason = sweep, f"sweep is {sweep}"
        elif sweep in ("finished", "failed"):
            reason = f"sweep is {sweep}"
        elif attempts >= max_attempts:
            new, reason = "failed", f"gave up after {attempts} attempts"
            if last_error:
                reason += f"; last error: {last_error}"
            error = reason
        else:
            new = "running"
        if new != shard or new == "running" or attempts != row["attempts"]:
            await conn.execute(
                "UPDATE sweep_shards SET state = $3, attempts = $4, updated_at = now(),"
                " worker = CASE WHEN $3 = 'running' THEN $5 ELSE worker END,"
                " run_id = CASE WHEN $3 = 'running' THEN $7 ELSE run_id END,"
                " started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END,"
                " finished_at = CASE WHEN $3 IN ('cancelled', 'failed') THEN now() END,"
                " error = $6 WHERE sweep_id = $1 AND shard_index = $2",
                sweep_id, index, new, attempts, worker, error, run_id,
            )  # fmt: skip
    return ShardStart(
        run=not reason, reason=reason, sweep_state=sweep, shard_state=new,
        position=row["position"], end_exponent=row["end_exponent"], attempts=attempts,
        unfinished=tuple(row["unfinished"]), checkpoints=row["checkpoints"],
    )  # fmt: skip


async def spend_attempt(conn: Conn, sweep_id: str, index: int, error: str,
                        max_attempts: int) -> bool:
    """Count a run that failed on an outage longer than its grace as an attempt, and give
    the shard up (``failed``, with why) once attempts reach *max_attempts*.

    :returns: whether the shard is failed now
    """
    row = await conn.fetchrow(
        "UPDATE sweep_shards SET attempts = attempts + 1, updated_at = now(),"
        " last_error = $3, last_error_at = now(),"
        " state = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE state END,"
        " finished_at = CASE WHEN attempts + 1 >= $4 THEN now() ELSE finished_at END,"
        " error = CASE WHEN attempts + 1 >= $4"
        "   THEN 'gave up after ' || (attempts + 1) || ' attempts; last error: ' || $3"
        "   ELSE error END"
        " WHERE sweep_id = $1 AND shard_index = $2"
        " AND state NOT IN ('done', 'cancelled', 'failed') RETURNING state",
        sweep_id, index, error[:2000], max_attempts)
    return row is not None and row["state"] == "failed"


async def note_shard_error(conn: Conn, sweep_id: str, index: int, error: str,
                           run_id: str | None = None) -> None:
    """Record why a run of the shard failed (``last_error``), kept when the shard is
    given up so that the operator sees the cause, not only the count of attempts.

    :param run_id: the run that failed, if it held the shard: it holds it no more (the
        shard is ``queued`` again, its message sent again by the worker)
    """
    await conn.execute(
        "UPDATE sweep_shards SET last_error = $3, last_error_at = now(), updated_at = now(),"
        " state = CASE WHEN state = 'running' AND run_id = $4 THEN 'queued' ELSE state END,"
        " queued_at = CASE WHEN state = 'running' AND run_id = $4 THEN now()"
        "   ELSE queued_at END,"
        " run_id = CASE WHEN state = 'running' AND run_id = $4 THEN NULL ELSE run_id END"
        " WHERE sweep_id = $1 AND shard_index = $2", sweep_id, index, error[:2000], run_id)


_ADD_COUNTS = """
    probes = probes + $4, open = open + $5, hits = sweep_add_counts(hits, $6::jsonb),
    statuses = sweep_add_counts(statuses, $7::jsonb), updated_at = now()
"""


def _counts(
    probes: int, open: int, hits: Mapping[str, int] | None, statuses: Mapping[str, int] | None
) -> tuple[int, int, str, str]:
    if probes < 0 or open < 0:
        raise ValueError("counts cannot be negative")
    return probes, open, json.dumps(dict(hits or {})), json.dumps(dict(statuses or {}))


async def checkpoint_shard(
    conn: Conn,
    sweep_id: str,
    index: int,
    position: int,
    *,
    probes: int = 0,
    open: int = 0,
    hits: Mapping[str, int] | None = None,
    statuses: Mapping[str, int] | None = None,
    worker: str | None = None,
    run_id: str | None = None,
    unfinished: Sequence[int] | None = None,
) -> bool:
    """Record that a running shard reached *position*, adding the counts made since the
    previous checkpoint, in one statement: the counts always cover exactly what the
    checkpoint says is done, so a run replayed from it counts nothing twice.

    :param worker: if given, only that worker's run may checkpoint
    :param run_id: if given, only that run may checkpoint (a stale redelivery or a run
        that was superseded cannot move a shard another run now holds)
    :param unfinished: exponents below *position* not finished yet (targets in flight);
        ``None`` keeps the recorded ones
    :returns: False, and nothing changes, if the shard is not running (or not *worker*'s
        or *run_id*'s) or *position* is behind the recorded one: the run should stop
    """
    status = await conn.execute(
        f"UPDATE sweep_shards SET position = $3, {_ADD_COUNTS},"
        " checkpoints = checkpoints + 1,"
        " unfinished = coalesce($10::bigint[], unfinished)"
        " WHERE sweep_id = $1 AND shard_index = $2 AND state = 'running'"
        " AND position <= $3 AND $3 <= end_exponent AND ($8::text IS NULL OR worker = $8)"
        " AND ($9::text IS NULL OR run_id = $9)",
        sweep_id, index, position, *_counts(probes, open, hits, statuses), worker, run_id,
        None if unfinished is None else list(unfinished),
    )  # fmt: skip
    return status == "UPDATE 1"


async def finish_shard(
    conn: Conn,
    sweep_id: str,
    index: int,
    *,
    state: Literal["done", "paused", "cancelled", "failed"],
    position: int,
    probes: int,
    open: int,
    hits: Mapping[str, int],
    statuses: Mapping[str, int],
    error: str | None = None,
    worker: str | None = None,
    unfinished: Sequence[int] = (),
    run_id: str | None = None,
) -> bool:
    """Record the end of a run, adding the counts made since the last checkpoint.

    ``done`` sets the position to the shard's end and is idempotent: a second finish of a
    done shard changes nothing, so counts are never doubled. Other states apply only to a
    shard that is not done, cancelled or failed.

    :param position: where the run stopped (ignored for ``done``)
    :param unfinished: exponents below *position* whose targets the run did not finish
        (see :func:`scheduler.sweeps.hand_back`); they replace the recorded ones unless
        *position* is behind the recorded one or the state is ``failed`` (a failure
        keeps the last hand-back for ``sweep retry``)
    :param worker: as for :func:`checkpoint_shard`
    :param run_id: as for :func:`checkpoint_shard` (ignored for ``done`` from a final
        state: the work was done)
    :returns: True if recorded; False if the shard had already finished (or is another
        worker's), and nothing changed
    :raises UnknownShard: no such shard
    """
    if state not in ("done", "paused", "cancelled", "failed"):
        raise ValueError(f"{state!r} is not a state a run can end in")
    from_states = ["pending", "queued", "running", "paused"]
    if state == "done":
        from_states += ["cancelled", "failed"]  # the work was done: count it
    # A run that ends (paused, too: a pause, the time limit, a worker shutdown) was not
    # lost, so it costs no attempt (attempts count lost runs, see start_shard).
    status = await conn.execute(
        f"UPDATE sweep_shards SET {_ADD_COUNTS}, state = $3, error = $9,"
        " unfinished = CASE WHEN $3 = 'done' THEN '{}'::bigint[]"
        "   WHEN $3 <> 'failed' AND least($10, end_exponent) >= position THEN $12::bigint[]"
        "   ELSE unfinished END,"
        " position = CASE WHEN $3 = 'done' THEN end_exponent"
        "   ELSE greatest(position, least($10, end_exponent)) END,"
        " finished_at = CASE WHEN $3 = 'paused' THEN NULL ELSE now() END,"
        " checkpoints = checkpoints + 1"
        " WHERE sweep_id = $1 AND shard_index = $2 AND state = ANY($11::text[])"
        " AND ($8::text IS NULL OR worker = $8)"
        " AND ($13::text IS NULL OR run_id = $13 OR state IN ('cancelled', 'failed'))",
        sweep_id, index, state, *_counts(probes, open, hits, statuses), worker, error,
        position, from_states, list(unfinished), run_id,
    )  # fmt: skip
    if status == "UPDATE 1":
        return True
    exists = await conn.fetchval(
        "SELECT 1 FROM sweep_shards WHERE sweep_id = $1 AND shard_index = $2", sweep_id, index
    )
    if exists is None:
        raise UnknownShard(f"sweep {sweep_id} has no shard {index}")
    return False


# ---------------------------------------------------------------------- runs and faults


async def running_runs(conn: Conn, sweep_id: str,
                       indexes: Sequence[int] | None = None) -> dict[int, tuple[str, str, int]]:
    """The running shards of a sweep (only *indexes*, if given): index -> (worker,
    run id, checkpoints). What the live counts of a run are checked against, and what
    the scheduler checks heartbeats against."""
    rows = await conn.fetch(
        "SELECT shard_index, worker, run_id, checkpoints FROM sweep_shards"
        " WHERE sweep_id = $1 AND state = 'running' AND run_id IS NOT NULL"
        " AND ($2::integer[] IS NULL OR shard_index = ANY($2::integer[]))",
        sweep_id, None if indexes is None else list(indexes))
    return {r["shard_index"]: (r["worker"] or "", r["run_id"], r["checkpoints"])
            for r in rows}


async def put_back(conn: Conn, sweep_id: str, index: int, run_id: str, reason: str) -> bool:
    """Put a running shard whose run was lost (its worker gone) back to pending, for the
    dispatcher to queue again; the lost run costs one attempt (as in :func:`start_shard`).
    Its checkpoint stays: the next run resumes there.

    :returns: False if the shard is no longer held by *run_id* (nothing changes)
    """
    status = await conn.execute(
        "UPDATE sweep_shards SET state = 'pending', attempts = attempts + 1,"
        " requeues = requeues + 1, run_id = NULL, last_error = $4, last_error_at = now(),"
        " updated_at = now()"
        " WHERE sweep_id = $1 AND shard_index = $2 AND state = 'running' AND run_id = $3",
        sweep_id, index, run_id, reason[:2000])
    return bool(status == "UPDATE 1")


async def stale_queued(conn: Conn, older_than: float) -> list[tuple[str, ShardRow]]:
    """Shards of running sweeps queued more than *older_than* seconds ago and not
    started since (oldest first): their message may be lost."""
    rows = await conn.fetch(
        "SELECT sh.* FROM sweep_shards sh JOIN sweeps s ON s.id = sh.sweep_id"
        " WHERE s.state = 'running' AND sh.state = 'queued'"
        " AND sh.queued_at < now() - make_interval(secs => $1)"
        " ORDER BY sh.queued_at LIMIT 1000", older_than)
    return [(r["sweep_id"], shard_row(r)) for r in rows]


async def requeue_queued(conn: Conn, sweep_id: str, index: int) -> ShardRow | None:
    """Mark a queued shard as queued again now (its message is sent again): the row,
    or None if it is no longer queued."""
    row = await conn.fetchrow(
        "UPDATE sweep_shards SET queued_at = now(), requeues = requeues + 1,"
        " updated_at = now() WHERE sweep_id = $1 AND shard_index = $2 AND state = 'queued'"
        " RETURNING *", sweep_id, index)
    return None if row is None else shard_row(row)
