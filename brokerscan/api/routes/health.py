"""``/healthz`` (the process answers) and ``/readyz`` (and so does its store); no token
needed, for load balancers and service managers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from brokerscan.api.deps import store
from brokerscan.api.models import ErrorBody, Health
from storage.searcher import Searcher

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The server is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health,
            responses={503: {"model": ErrorBody, "description": "the store does not answer"}})
async def readyz(searcher: Annotated[Searcher, Depends(store)]) -> Health:
    """The server is up and its store answers a query."""
    await searcher.fetch("SELECT 1 AS one", [])
    return Health(status="ready")
