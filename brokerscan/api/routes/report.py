"""``GET /api/v1/report``: the census report of the current view, a sweep or a past day."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from brokerscan.api.deps import store, view_of
from brokerscan.api.models import ErrorBody, ReportBody
from storage.census import census_report
from storage.search.compile import View
from storage.searcher import Searcher

__all__ = ["router"]

router = APIRouter(tags=["census"])


@router.get("/report", response_model=ReportBody,
            responses={404: {"model": ErrorBody, "description": "unknown sweep"}})
async def report(searcher: Annotated[Searcher, Depends(store)],
                 view: Annotated[View, Depends(view_of)]) -> ReportBody:
    """MQTT servers (on 1883 without TLS, on 8883 with TLS, accepting anonymous clients),
    AMQP services by port, product and family, TLS and other open ports: the counts of
    the 2019 census, counted in the store."""
    return ReportBody.model_validate(await census_report(searcher, view))
