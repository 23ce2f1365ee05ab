"""What a sweep looks like now, and steering it: the durable record (PostgreSQL) joined with
the live counters, control state and heartbeats (Redis). ``brokerscan sweep status|list|
pause|resume|cancel`` and the REST API's ``/api/v1/sweeps`` both read and steer through
here, so both faces say the same thing."""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from brokerscan.names import Names
from scheduler import live, sizing, state
from scheduler.records import SweepRow, SweepState, UnknownSweep
from storage.db import Conn

__all__ = ["STEER", "Verb", "list_sweeps", "live_counts", "steer_sweep", "sweep_status"]

Verb = Literal["pause", "resume", "cancel"]
#: The state each steering verb asks for.
STEER: Final[dict[str, SweepState]] = {"pause": "paused", "resume": "running",
                                       "cancel": "cancelled"}


def summary(row: SweepRow) -> dict[str, Any]:
    """One line of ``sweep list``: id, name, state, targets, shards, failed shards,
    creation time, and the schedule and period it ran for (None for a sweep started by
    hand)."""
    return {"id": row.id, "name": row.name, "state": row.state, "targets": row.target_count,
            "shards": row.shard_count, "failed_shards": row.failed_shards,
            "created_at": row.created_at.isoformat(), "schedule": row.schedule,
            "period": row.period.isoformat() if row.period else None}


async def list_sweeps(conn: Conn, *, limit: int = 50) -> list[dict[str, Any]]:
    """The *limit* most recent sweeps, newest first (see :func:`summary`)."""
    return [summary(r) for r in await state.list_sweeps(conn, limit=limit)]


async def sweep_status(conn: Conn, redis: Redis, names: Names, sweep_id: str | None,
                       ) -> dict[str, Any]:
    """State, progress, probes/s, ETA, hits, open ports, statuses, shards by state, the
    shards that failed (with their last error) and how often the sweep was retried, the
    workers alive (idle or busy, and their queues), the fleet's capacity per queue (shards
    its live processes run at once: what the scheduler sizes each queue's backlog to) with
    how many processes are busy and idle, and whether a scheduler runs;
    *sweep_id* None: the newest sweep.

    :raises UnknownSweep: no such sweep (or no sweep at all)
    :raises RedisError: Redis cannot be reached
    """
    if sweep_id is None:
        recent = await state.list_sweeps(conn, limit=1)
        if not recent:
            raise UnknownSweep("no sweeps yet")
        sweep_id = recent[0].id
    sweep = await state.get_sweep(conn, sweep_id)
    if sweep is None:
        raise UnknownSweep(f"no sweep {sweep_id}")
    counts = await live_counts(conn, redis, names, sweep_id)
    shards = await state.shard_counts(conn, sweep_id)  # (the states; the counts are read)
    failed = await state.failed_shards(conn, sweep_id, limit=10)
    workers = await live.live_workers(redis, names)
    scheduler = await live.scheduler_alive(redis, names)
    probes = counts.probes
    running = sweep.state == "running"
    capacity = sizing.capacity_by_queue(
        (tuple(q.removeprefix(names.namespace + ".") for q in w.queues), w.capacity)
        for w in workers)
    busy = sum(1 for w in workers if w.busy)
    return {
        "id": sweep.id, "name": sweep.name, "state": sweep.state,
        "targets": sweep.target_count, "probes": probes,
        "progress": round(min(1.0, probes / sweep.target_count), 4) if sweep.target_count
        else 1.0,
        "probes_per_second": round(counts.probes_per_second or 0.0, 1) if running else 0.0,
        "eta_seconds": counts.eta(sweep.target_count) if running else None,
        "hits": counts.hits, "open": counts.open, "statuses": counts.statuses,
        "shards": dict(shards.states), "requeued": shards.requeues,
        "failed_shards": [{"shard": f.index, "queue": f.queue, "attempts": f.attempts,
                           "error": f.error, "last_error": f.last_error,
                           "last_error_at": f.last_error_at.isoformat()
                           if f.last_error_at else None} for f in failed],
        "retries": sweep.retries,
        "workers": [{"id": w.worker_id, "queues": list(w.queues),
                     "state": "busy" if w.busy else "idle",
                     "sweep": w.sweep_id or None, "shard": w.shard,
                     "probes": w.probes} for w in workers],
        "capacity": capacity, "workers_busy": busy, "workers_idle": len(workers) - busy,
        "scheduler_alive": scheduler,
        "created_at": sweep.created_at.isoformat(),
        "schedule": sweep.schedule,
        "period": sweep.period.isoformat() if sweep.period else None,
    }


async def live_counts(conn: Conn, redis: Redis, names: Names, sweep_id: str,
                      ) -> live.LiveCounts:
    """A sweep's counts, each target once: the durable counts of every shard (PostgreSQL,
    up to its last checkpoint) plus, for each running shard, what its run counted since
    that checkpoint (Redis) if the entry belongs to the run that holds the shard and to its
    last checkpoint. An entry of a lost or superseded run, or one from before the last
    checkpoint, is left out: its targets are counted by the checkpoint, or will be by the
    run that replays them. Read in this order (Redis, the durable counts, the runs), a
    checkpoint written meanwhile can only leave a run's recent part out, never count it
    twice. Redis restarted empty: the durable counts alone, until the runs' next writes.

    :raises UnknownSweep: no such sweep
    :raises RedisError: Redis cannot be reached
    """
    runs = await live.read_counts(redis, names, sweep_id)
    durable = await state.shard_counts(conn, sweep_id)
    marks = await state.running_runs(conn, sweep_id, list(runs.runs)) if runs.runs else {}
    probes, opened = durable.probes, durable.open
    hits, statuses = Counter(durable.hits), Counter(durable.statuses)
    for index, run in runs.runs.items():
        mark = marks.get(index)
        if mark is None or (mark[1], mark[2]) != (run.run_id, run.checkpoint):
            continue
        probes += run.probes
        opened += run.open
        hits.update(run.hits)
        statuses.update(run.statuses)
    return live.LiveCounts(probes, opened, dict(sorted(hits.items())),
                           dict(sorted(statuses.items())), runs.probes_per_second)


async def steer_sweep(conn: Conn, redis: Redis, names: Names, sweep_id: str, verb: Verb,
                      ) -> tuple[SweepRow, bool]:
    """Pause, resume or cancel a sweep: the durable state first, then the control key that
    workers obey within half a second.

    :returns: the sweep as it is now, and whether Redis took the new state (if not, the
        scheduler mirrors it when it next runs)
    :raises UnknownSweep: no such sweep
    :raises BadTransition: not allowed from the sweep's state
    """
    row = await state.set_sweep_state(conn, sweep_id, STEER[verb])
    try:
        await live.set_control(redis, names, row.id, row.state)
    except (RedisError, OSError):
        return row, False
    return row, True
