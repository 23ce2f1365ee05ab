"""``GET /api/v1/count``: how many match a query, with the top values of facets
(``facets=country:10,asn:10,port``), Shodan's ``host/count`` shape plus Censys's
``other_count`` and ``query_duration_millis``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from brokerscan.api.deps import Q, store, view_of
from brokerscan.api.models import CountBody, ErrorBody, FacetValue
from storage.search.compile import View
from storage.searcher import Searcher, parse_facets

__all__ = ["router"]

router = APIRouter(tags=["search"])


@router.get("/count", response_model=CountBody,
            responses={404: {"model": ErrorBody, "description": "unknown sweep"}})
async def count(
    searcher: Annotated[Searcher, Depends(store)],
    view: Annotated[View, Depends(view_of)],
    q: Q = "",
    facets: Annotated[str | None, Query(max_length=2000, description=(
        "fields to count by, each with how many top values: country:10,asn:10,port"))] = None,
) -> CountBody:
    """The number of services (or observations) matching *q*, and per facet its top
    values with their counts; counts over the census's dimensions read a rollup, and so
    do facets of product, version, CONNACK code, TLS version, anonymous and certificate
    trust under a query over protocol alone (the facet rollups)."""
    began = time.perf_counter()
    wanted = parse_facets(facets)
    result = await searcher.count(q, view=view, facets=wanted)
    return CountBody(
        view=view.describe(), total=result.total,
        facets={name: [FacetValue(value=v, count=n, label=result.labels.get(name, {}).get(v))
                       for v, n in values]
                for name, values in result.facets.items()},
        other=result.other, rollup=result.rollup,
        query_ms=round((time.perf_counter() - began) * 1000, 2))
