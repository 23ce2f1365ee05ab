"""Row types, states and errors of the durable sweep record (see :mod:`scheduler.state`).

Pure: the rules of sweep transitions and the mapping from database rows to frozen
dataclasses, with no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

__all__ = [
    "BadTransition",
    "NameInUse",
    "PeriodStarted",
    "Row",
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
    "check_transition",
    "shard_row",
    "sweep_row",
]

SweepState = Literal["running", "paused", "cancelled", "finished", "failed"]
ShardState = Literal["pending", "queued", "running", "done", "paused", "cancelled", "failed"]

_TRANSITIONS: dict[str, frozenset[str]] = {
    "running": frozenset({"paused", "cancelled", "finished", "failed"}),
    "paused": frozenset({"running", "cancelled"}),
    "cancelled": frozenset(),
    "finished": frozenset(),
    "failed": frozenset({"cancelled"}),  # and back to running, by retry_failed alone
}
_VERBS = {"running": "resume", "paused": "pause", "cancelled": "cancel", "finished": "finish",
          "failed": "fail"}


class StateError(Exception):
    """A request the record refuses; the message is one line for the operator."""


class SweepExists(StateError):
    """A sweep with this id exists already."""


class NameInUse(SweepExists):
    """Another running or paused sweep has this name."""


class PeriodStarted(SweepExists):
    """The schedule's run of this period exists already (another scheduler started it)."""


class UnknownSweep(StateError):
    """No sweep has this id."""


class UnknownShard(StateError):
    """The sweep has no shard with this index."""


class BadTransition(StateError):
    """The sweep cannot go from its state to the one asked for."""


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One row of ``sweeps``; *spec* holds the sweep's parameters as given at start."""

    id: str
    name: str | None
    spec: dict[str, Any]
    state: SweepState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    target_count: int
    shard_count: int
    failed_shards: int
    retries: int = 0
    #: the schedule that started it and the period it ran for (migration 0010), or None
    schedule: str | None = None
    period: datetime | None = None


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One row of ``sweep_shards``.

    For :func:`create_sweep` only the plan is read (*index*, *queue*, the exponents, and
    *position*, which defaults to *first_exponent*); the other fields are what the
    database returns.
    """

    index: int
    queue: str
    first_exponent: int
    end_exponent: int
    position: int | None = None
    state: ShardState = "pending"
    attempts: int = 0
    probes: int = 0
    open: int = 0
    hits: Mapping[str, int] = field(default_factory=dict)
    statuses: Mapping[str, int] = field(default_factory=dict)
    worker: str | None = None
    error: str | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    run_id: str | None = None
    checkpoints: int = 0
    requeues: int = 0


@dataclass(frozen=True, slots=True)
class ShardStart:
    """What a worker should do with a shard message (:func:`start_shard`).

    :ivar run: probe ``[position, end_exponent)`` if true; otherwise ack and drop it
    :ivar reason: why not (empty when *run*)
    :ivar sweep_state: the sweep's state (None for an unknown shard)
    :ivar shard_state: the shard's state after this call (None for an unknown shard)
    :ivar position: where to resume the walk: the last checkpoint
    :ivar end_exponent: where the shard ends (exclusive)
    :ivar attempts: lost runs so far (a run whose worker vanished, or that kept
        failing past the outage grace); the shard fails when they reach the cap
    :ivar unfinished: exponents below *position* left unfinished by the last run: probe
        them first
    :ivar busy: not run because a live run of another worker holds the shard: try the
        message again later (it is neither dropped nor an attempt)
    :ivar checkpoints: checkpoints written so far (this run's live counts are since then)
    """

    run: bool
    reason: str
    sweep_state: SweepState | None
    shard_state: ShardState | None
    position: int
    end_exponent: int
    attempts: int
    unfinished: tuple[int, ...] = ()
    busy: bool = False
    checkpoints: int = 0


@dataclass(frozen=True, slots=True)
class ShardCounts:
    """Progress of a sweep (:func:`shard_counts`).

    :ivar states: shards per state, every state present
    :ivar covered: exponents behind the shards' positions (done work, checkpoints included)
    :ivar probes: probes recorded so far (done shards and checkpoints of the others)
    :ivar requeues: times the scheduler put a shard back (worker gone, message lost)
    """

    states: dict[ShardState, int]
    covered: int
    probes: int
    open: int
    hits: dict[str, int]
    statuses: dict[str, int]
    requeues: int = 0


# ----------------------------------------------------------------------------- row mapping


class Row(Protocol):
    """A database row: an asyncpg Record, or a dict in tests."""

    def __getitem__(self, key: str, /) -> Any: ...


def _json(value: object) -> Any:
    # No codec is installed on our connections, so jsonb arrives as text; a caller's
    # connection with a json codec hands over the decoded value.
    return json.loads(value) if isinstance(value, str) else value


def sweep_row(r: Row) -> SweepRow:
    """Map a ``sweeps`` row to a :class:`SweepRow`."""
    return SweepRow(
        id=r["id"], name=r["name"], spec=_json(r["spec"]), state=r["state"],
        created_at=r["created_at"], started_at=r["started_at"],
        finished_at=r["finished_at"], updated_at=r["updated_at"],
        target_count=r["target_count"], shard_count=r["shard_count"],
        failed_shards=r["failed_shards"], retries=r["retries"],
        schedule=r["schedule"], period=r["period"],
    )  # fmt: skip


def shard_row(r: Row) -> ShardRow:
    """Map a ``sweep_shards`` row to a :class:`ShardRow`."""
    return ShardRow(
        index=r["shard_index"], queue=r["queue"], first_exponent=r["first_exponent"],
        end_exponent=r["end_exponent"], position=r["position"], state=r["state"],
        attempts=r["attempts"], probes=r["probes"], open=r["open"], hits=_json(r["hits"]),
        statuses=_json(r["statuses"]), worker=r["worker"], error=r["error"],
        last_error=r["last_error"], last_error_at=r["last_error_at"],
        queued_at=r["queued_at"], started_at=r["started_at"],
        finished_at=r["finished_at"], updated_at=r["updated_at"], run_id=r["run_id"],
        checkpoints=r["checkpoints"], requeues=r["requeues"],
    )  # fmt: skip



def check_transition(sweep_id: str, old: str, new: str) -> None:
    """Allow running -> paused | cancelled | finished | failed, paused -> running |
    cancelled and failed -> cancelled (failed -> running is :func:`retry_failed`'s).

    :raises ValueError: *new* is not a sweep state
    :raises BadTransition: anything else, e.g. ``sweep sw-abc is finished: cannot pause it``
    """
    if new not in _VERBS:
        raise ValueError(f"{new!r} is not a sweep state")
    if new not in _TRANSITIONS.get(old, frozenset()):
        already = "already " if old == new else ""
        hint = " (sweep retry queues its failed shards again)" if old == "failed" else ""
        raise BadTransition(f"sweep {sweep_id} is {already}{old}: cannot {_VERBS[new]} it"
                            + hint)
