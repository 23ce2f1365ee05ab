"""``GET /api/v1/diff``: what changed between two sweeps."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from brokerscan.api.deps import Q, SweepId, known_sweep, store
from brokerscan.api.models import ChangedService, DiffBody, ErrorBody, ServiceKey
from storage.census import diff_sweeps
from storage.search.parse import parse
from storage.searcher import MAX_PAGE, Searcher

__all__ = ["router"]

router = APIRouter(tags=["census"])


@router.get("/diff", response_model=DiffBody,
            responses={404: {"model": ErrorBody, "description": "unknown sweep"}})
async def diff(
    searcher: Annotated[Searcher, Depends(store)],
    a: SweepId,
    b: SweepId,
    q: Q = "",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=(
        "most services listed per kind of change (the counts are always whole)"))] = 100,
) -> DiffBody:
    """Services that answered in *b* and not in *a* (new), in *a* and not in *b* (gone), and
    in both with a change of exposure (anonymous access granted or withdrawn, TLS added or
    removed, certificate replaced, product or version changed); only services matching
    *q* on either side."""
    node = parse(q)
    for sweep in (a, b):
        await known_sweep(searcher, sweep)
    d = await diff_sweeps(searcher, a, b, node, limit=limit)
    return DiffBody(a=d.a, b=d.b, counts=d.counts,
                    new=[ServiceKey(ip=ip, port=port) for ip, port in d.new],
                    gone=[ServiceKey(ip=ip, port=port) for ip, port in d.gone],
                    changed=[ChangedService(ip=c.ip, port=c.port, changes=c.changes)
                             for c in d.changed])
