"""``/api/v1/sweeps``: the sweeps of the fleet (PostgreSQL for the record, Redis for live
progress: :mod:`scheduler.status`, as ``brokerscan sweep status``) and the local scans the
store holds; pause, resume and cancel for operator tokens.

A deployment without ``BROKERSCAN_DATABASE_URL`` has no fleet: only the store's scans are
listed. A fleet sweep can be steered only when the server's database role may write
(``serve`` is usually given a read-only role: then steering is a 403 that says so).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from brokerscan.api.auth import Principal, operator
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import SWEEP_ID, context
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody, SteerResult, SweepDetail, SweepSummary
from scheduler import status
from scheduler.records import BadTransition, UnknownSweep
from storage.search.compile import View

__all__ = ["router"]

router = APIRouter(tags=["sweeps"])

SweepPath = Annotated[str, Path(pattern=SWEEP_ID, description="a sweep id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown sweep"}}


@router.get("/sweeps", response_model=list[SweepSummary])
async def sweeps(ctx: Annotated[ApiContext, Depends(context)]) -> list[SweepSummary]:
    """The fleet's sweeps, newest first, then local scans found only in the store; each
    with the observations the store holds of it."""
    stored = {s["id"]: s for s in await ctx.searcher().sweeps_seen()}
    out: list[SweepSummary] = []
    if ctx.fleet:
        async with (await ctx.pool()).acquire() as conn:
            rows = await status.list_sweeps(conn, limit=200)
        for row in rows:
            seen = stored.pop(row["id"], None) or {}
            out.append(SweepSummary(kind="fleet", **row, day=seen.get("day"),
                                    observations=seen.get("observations", 0),
                                    hits=seen.get("hits", {})))
    out += [SweepSummary(kind="scan", **s) for s in stored.values()]
    return out


async def _stored(ctx: ApiContext, sweep_id: str) -> tuple[int, dict[str, int]]:
    result = await ctx.searcher().count("", view=View("sweep", sweep_id=sweep_id),
                                        facets=[("protocol", 10)])
    return result.total, {str(v): n for v, n in result.facets["protocol"]}


@router.get("/sweeps/{sweep_id}", response_model=SweepDetail, responses=_NOT_FOUND)
async def sweep(ctx: Annotated[ApiContext, Depends(context)],
                sweep_id: SweepPath) -> SweepDetail:
    """State and progress of a fleet sweep (probes, probes/s, ETA, hits, shards by state,
    workers alive), or what the store holds of a local scan."""
    observations, hits = await _stored(ctx, sweep_id)
    if ctx.fleet:
        try:
            async with (await ctx.pool()).acquire() as conn:
                data = await status.sweep_status(conn, ctx.redis(), ctx.settings.names(),
                                                 sweep_id)
        except UnknownSweep:
            pass
        else:
            return SweepDetail(kind="fleet", observations=observations, **data)
    if observations == 0:
        raise ApiError(404, f"no sweep {sweep_id}")
    return SweepDetail(id=sweep_id, kind="scan", state="stored", hits=hits,
                       observations=observations)


async def _steer(ctx: ApiContext, sweep_id: str, verb: status.Verb) -> SteerResult:
    if not ctx.fleet:
        raise ApiError(404, f"no sweep {sweep_id}: this deployment has no fleet "
                            "(BROKERSCAN_DATABASE_URL is not set)")
    try:
        async with (await ctx.pool()).acquire() as conn:
            row, notified = await status.steer_sweep(conn, ctx.redis(), ctx.settings.names(),
                                                     sweep_id, verb)
    except UnknownSweep as exc:
        raise ApiError(404, str(exc)) from None
    except BadTransition as exc:
        raise ApiError(409, str(exc)) from None
    return SteerResult(id=row.id, state=row.state, workers_notified=notified)


_STEER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    403: {"model": ErrorBody, "description": "not an operator token, no CSRF value for a "
                                             "cookie session, or a read-only server"},
    409: {"model": ErrorBody, "description": "not possible from the sweep's state"},
}


@router.post("/sweeps/{sweep_id}/pause", response_model=SteerResult,
             responses=_STEER_RESPONSES)
async def pause(ctx: Annotated[ApiContext, Depends(context)], sweep_id: SweepPath,
                who: Annotated[Principal, Depends(operator)]) -> SteerResult:
    """Pause a running sweep (workers stop within a second; shards resume where they
    stopped). Operator tokens only."""
    return await _steer(ctx, sweep_id, "pause")


@router.post("/sweeps/{sweep_id}/resume", response_model=SteerResult,
             responses=_STEER_RESPONSES)
async def resume(ctx: Annotated[ApiContext, Depends(context)], sweep_id: SweepPath,
                 who: Annotated[Principal, Depends(operator)]) -> SteerResult:
    """Resume a paused sweep. Operator tokens only."""
    return await _steer(ctx, sweep_id, "resume")


@router.post("/sweeps/{sweep_id}/cancel", response_model=SteerResult,
             responses=_STEER_RESPONSES)
async def cancel(ctx: Annotated[ApiContext, Depends(context)], sweep_id: SweepPath,
                 who: Annotated[Principal, Depends(operator)]) -> SteerResult:
    """Cancel a running or paused sweep. Operator tokens only."""
    return await _steer(ctx, sweep_id, "cancel")
