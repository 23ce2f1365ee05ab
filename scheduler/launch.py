"""Creating a sweep from its spec: the one path of ``brokerscan sweep start`` and of the
runs a schedule starts (:mod:`scheduler.schedules`).

The plan is checked first (a bad target or port list, or nothing left to sweep after the
blocklists, is one line), then the sweep and all its shards are recorded in one
transaction; the scheduler's next round mirrors the state into Redis and dispatches it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
from collections.abc import Iterable
from datetime import datetime

from brokerscan.names import Names
from scheduler import state
from scheduler.blocklist import IPSet, load_blocklist
from scheduler.ports import PortError
from scheduler.sweeps import SweepPlan, SweepSpec, plan_sweep
from scheduler.targets import TargetError
from storage.db import Conn

__all__ = ["PlanError", "checked_plan", "create_sweep", "default_name", "new_sweep_id",
           "opt_out"]


class PlanError(ValueError):
    """The spec cannot be planned, or leaves nothing to sweep; the message is one line."""


def new_sweep_id() -> str:
    """A fresh sweep id: ``sw-`` and eight base32 characters."""
    return "sw-" + base64.b32encode(secrets.token_bytes(5)).decode().lower()


def default_name(spec: SweepSpec) -> str:
    """A name from what is swept (the same request twice gets the same name, so the
    second is refused while the first is under way)."""
    digest = hashlib.sha256(json.dumps([spec.targets, spec.ports, spec.probe, spec.seed,
                                        spec.allow_reserved]).encode()).hexdigest()[:10]
    return f"sweep-{digest}"


def opt_out(paths: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The networks of the opt-out lists at *paths* (ZMap format) and *extra* (approved
    requests, :func:`storage.optouts.approved_networks`), as CIDRs: what a spec keeps, so
    that its sweep applies the lists as they were when it was made.

    :raises scheduler.targets.TargetError: an unreadable file or a bad line (one line)
    """
    optout = IPSet.from_networks(list(extra))
    for path in paths:
        optout = optout.union(load_blocklist(path))
    return [str(net) for lo, hi in optout.ranges for net in
            ipaddress.summarize_address_range(ipaddress.IPv4Address(lo),
                                              ipaddress.IPv4Address(hi))]


def checked_plan(spec: SweepSpec) -> SweepPlan:
    """Plan *spec*, refusing a plan with no target.

    :raises PlanError: a bad target or port list, or nothing to sweep
    """
    try:
        plan = plan_sweep(spec)
    except (TargetError, PortError) as exc:
        raise PlanError(str(exc)) from None
    if plan.targets == 0:
        raise PlanError(f"nothing to sweep: {plan.exclusions.describe()}")
    return plan


async def create_sweep(conn: Conn, plan: SweepPlan, names: Names, *,
                       schedule: str | None = None, period: datetime | None = None) -> str:
    """Record *plan* as a new running sweep with all its shards pending; its id.

    :raises scheduler.state.NameInUse: a sweep of the same name is under way
    :raises scheduler.state.PeriodStarted: the schedule's run of *period* exists already
    """
    sweep_id = new_sweep_id()
    rows = [state.ShardRow(index=i, queue=group.queue(names),
                           first_exponent=shard.first_exponent,
                           end_exponent=shard.end_exponent)
            for group, shard, i in plan.shard_ids()]
    await state.create_sweep(conn, sweep_id=sweep_id, name=plan.spec.name,
                             spec=plan.spec.model_dump(mode="json"),
                             target_count=plan.targets, shards=rows,
                             schedule=schedule, period=period)
    return sweep_id
