"""``GET /api/v1/services``: one page of the services (or a sweep's observations) behind a
query, and the cursor of the next page."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from brokerscan.api.deps import Q, store, view_of
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody, ServicesPage
from storage.search.compile import View
from storage.search.tree import QueryError
from storage.searcher import MAX_PAGE, Hit, Searcher

__all__ = ["hit_json", "router"]

router = APIRouter(tags=["search"])


def _plain(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def hit_json(hit: Hit) -> str:
    """A hit as JSON: its columns and its stored record, spliced in as it is stored (it is
    JSON already; parsing and writing it again would cost more than the query)."""
    values = json.dumps({k: _plain(v) for k, v in hit.values.items()}, ensure_ascii=False)
    return f'{values[:-1]}, "record": {hit.record}}}'


@router.get("/services", response_model=ServicesPage,
            responses={404: {"model": ErrorBody, "description": "unknown sweep"}})
async def services(
    searcher: Annotated[Searcher, Depends(store)],
    view: Annotated[View, Depends(view_of)],
    q: Q = "",
    cursor: Annotated[str | None, Query(max_length=2000, description=(
        "the cursor the previous page returned"))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="results per page")] = 100,
) -> Response:
    """The services behind *q* in the current view (one row per ip, port and transport),
    or the observations of one sweep (``sweep=``), or the current view as of a day
    (``at=``); ordered by (ip, port, transport), paged by a cursor."""
    began = time.perf_counter()
    try:
        page = await searcher.search(q, view=view, limit=limit, cursor=cursor)
    except QueryError:
        raise
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    took = round((time.perf_counter() - began) * 1000, 2)
    head = json.dumps({"view": view.describe(), "cursor": page.cursor, "query_ms": took})
    body = f'{head[:-1]}, "results": [{", ".join(hit_json(h) for h in page.hits)}]}}'
    return Response(body, media_type="application/json")
