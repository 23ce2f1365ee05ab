"""``GET /api/v1/hosts/{ip}``: every observation of one address, across sweeps."""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from brokerscan.api.deps import IPV4, store
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody, HostBody
from storage.searcher import MAX_PAGE, Searcher

__all__ = ["router"]

router = APIRouter(tags=["search"])


@router.get("/hosts/{ip}", response_model=HostBody,
            responses={404: {"model": ErrorBody, "description": "never observed"}})
async def host(
    searcher: Annotated[Searcher, Depends(store)],
    ip: Annotated[str, Path(pattern=IPV4, description="an IPv4 address")],
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> Response:
    """Every stored observation of *ip* (every port, every sweep), newest first."""
    try:
        address = str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise ApiError(400, f"{ip!r} is not an IPv4 address") from None
    records = await searcher.host(address, limit=limit)
    if not records:
        raise ApiError(404, f"no observation of {address} in the store")
    return Response(f'{{"ip": {json.dumps(address)}, "observations": [{", ".join(records)}]}}',
                    media_type="application/json")
