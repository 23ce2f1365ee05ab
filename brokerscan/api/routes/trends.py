"""``GET /api/v1/trends``: how many observations matched a query per day or per sweep."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from brokerscan.api.deps import Q, store
from brokerscan.api.models import TrendBucket, TrendsBody
from storage.searcher import Searcher

__all__ = ["router"]

router = APIRouter(tags=["search"])


@router.get("/trends", response_model=TrendsBody)
async def trends(
    searcher: Annotated[Searcher, Depends(store)],
    q: Q = "",
    interval: Annotated[Literal["day", "sweep"], Query(description=(
        "day: per day a sweep started; sweep: per sweep, in the order they started"))] = "day",
) -> TrendsBody:
    """Counts of the observations matching *q* over the whole history (from a rollup
    when *q* uses only fields one holds: these keep the days dropped past retention)."""
    began = time.perf_counter()
    buckets = await searcher.trends(q, interval=interval)
    return TrendsBody(interval=interval,
                      buckets=[TrendBucket(bucket=b, count=n) for b, n in buckets],
                      query_ms=round((time.perf_counter() - began) * 1000, 2))
