"""``/api/v1/schedules``: the fleet's recurring sweeps (:mod:`scheduler.schedules`, as
``brokerscan sweep schedule list``); add, pause, resume and remove for operator tokens,
checked as the sweeps' steering is. A schedule added here is checked as ``brokerscan
sweep schedule add`` checks it (:func:`scheduler.schedules.prepare`), with the server's
scope, client id prefix and opt-out lists. Each run is a sweep listed by
``/api/v1/sweeps`` with its ``schedule``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import ValidationError

from brokerscan.api.auth import Principal, operator
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import context
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody, ScheduleRequest, ScheduleSteered, ScheduleSummary
from scheduler import schedules
from scheduler.cadence import CadenceError
from scheduler.launch import PlanError, opt_out
from scheduler.records import StateError
from scheduler.sweeps import SweepSpec
from scheduler.targets import TargetError

__all__ = ["router"]

router = APIRouter(tags=["schedules"])

NamePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                               description="a schedule's name")]
_STEER_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown schedule, or no fleet"},
    403: {"model": ErrorBody, "description": "not an operator token, no CSRF value for a "
                                             "cookie session, or a read-only server"},
    409: {"model": ErrorBody, "description": "paused (or active) already"},
}


@router.get("/schedules", response_model=list[ScheduleSummary])
async def list_schedules(ctx: Annotated[ApiContext, Depends(context)]) -> list[ScheduleSummary]:
    """The recurring sweeps, by name: cadence, next run due, last run, skipped periods
    (and why the latest was skipped). Empty without a fleet."""
    if not ctx.fleet:
        return []
    async with (await ctx.pool()).acquire() as conn:
        rows = await schedules.list_schedules(conn)
    return [ScheduleSummary(**r.summary()) for r in rows]


_SERVER_DECIDES = ("name", "started_at", "scope", "client_id_prefix", "optout")
_ADD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a bad cadence, jitter, name or sweep option"},
    403: _STEER_RESPONSES[403],
    404: {"model": ErrorBody, "description": "no fleet"},
    409: {"model": ErrorBody, "description": "a schedule of this name exists already"},
}


def _spec(ctx: ApiContext, options: dict[str, Any]) -> SweepSpec:
    taken = sorted(set(options) & set(_SERVER_DECIDES))
    if taken:
        raise ApiError(400, f"sweep.{taken[0]} is not the request's to give (the server's "
                            "settings or the schedule decide it)")
    settings = ctx.settings
    try:
        return SweepSpec.model_validate({
            "seed": secrets.randbelow(2**31), **options, "scope": settings.scope,
            "client_id_prefix": settings.client_id_prefix,
            "optout": opt_out(settings.blocklist_files)})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ApiError(400, f"sweep.{where}: {error['msg']}") from None
    except TargetError as exc:
        raise ApiError(400, str(exc)) from None


@router.post("/schedules", response_model=ScheduleSummary, status_code=201,
             responses=_ADD_RESPONSES)
async def add_schedule(ctx: Annotated[ApiContext, Depends(context)], body: ScheduleRequest,
                       who: Annotated[Principal, Depends(operator)]) -> ScheduleSummary:
    """Add a recurring sweep (as ``brokerscan sweep schedule add``): its first run is
    for the first period beginning after now. Operator tokens only."""
    if not ctx.fleet:
        raise ApiError(404, "this deployment has no fleet (BROKERSCAN_DATABASE_URL is not "
                            "set)")
    spec = _spec(ctx, body.sweep)
    try:
        stored, cadence, jitter = schedules.prepare(
            body.name, spec, every=body.every, cron=body.cron, jitter=body.jitter,
            fixed_seed="seed" in body.sweep, now=datetime.now(UTC),
            optout_files=ctx.settings.blocklist_files)
    except (StateError, CadenceError, PlanError) as exc:
        raise ApiError(400, str(exc)) from None
    try:
        async with (await ctx.pool()).acquire() as conn:
            row = await schedules.add_schedule(conn, body.name, stored, cadence, jitter)
    except schedules.ScheduleExists as exc:
        raise ApiError(409, str(exc)) from None
    return ScheduleSummary(**row.summary())


async def _steer(ctx: ApiContext, name: str, verb: str) -> ScheduleSteered:
    if not ctx.fleet:
        raise ApiError(404, f"no schedule {name}: this deployment has no fleet "
                            "(BROKERSCAN_DATABASE_URL is not set)")
    try:
        async with (await ctx.pool()).acquire() as conn:
            if verb == "remove":
                await schedules.remove_schedule(conn, name)
                return ScheduleSteered(name=name, state="removed")
            row = await schedules.set_paused(conn, name, verb == "pause")
    except schedules.UnknownSchedule as exc:
        raise ApiError(404, str(exc)) from None
    except StateError as exc:
        raise ApiError(409, str(exc)) from None
    return ScheduleSteered(name=row.name, state="paused" if row.paused else "active")


@router.post("/schedules/{name}/pause", response_model=ScheduleSteered,
             responses=_STEER_RESPONSES)
async def pause_schedule(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                         who: Annotated[Principal, Depends(operator)]) -> ScheduleSteered:
    """Start no more runs of the schedule (a run under way goes on). Operator tokens
    only."""
    return await _steer(ctx, name, "pause")


@router.post("/schedules/{name}/resume", response_model=ScheduleSteered,
             responses=_STEER_RESPONSES)
async def resume_schedule(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                          who: Annotated[Principal, Depends(operator)]) -> ScheduleSteered:
    """Run the schedule again from its next period. Operator tokens only."""
    return await _steer(ctx, name, "resume")


@router.delete("/schedules/{name}", response_model=ScheduleSteered,
               responses=_STEER_RESPONSES)
async def remove_schedule(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                          who: Annotated[Principal, Depends(operator)]) -> ScheduleSteered:
    """Remove the schedule (its runs stay, with its name). Operator tokens only."""
    return await _steer(ctx, name, "remove")
