"""Dependencies the routes share: the server's context, its store, and which view a query
reads (``sweep=`` one sweep, ``at=`` the current view as of a day, neither: now)."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Final

from fastapi import Depends, Query, Request
from pydantic import BeforeValidator

from brokerscan.api.context import ApiContext
from brokerscan.api.errors import ApiError
from storage.search.compile import CURRENT, View
from storage.search.parse import MAX_LENGTH, YEARS
from storage.searcher import Searcher

__all__ = ["IPV4", "SWEEP_ID", "Q", "SweepId", "context", "known_sweep", "store", "view_of"]

#: What a sweep id may look like (``sw-abcd1234``, ``scan-20261203T101500-1a2b3c``): a
#: value that could never be one is refused before it reaches SQL.
SWEEP_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"

#: The search query parameter, shared by every route that takes one.
Q = Annotated[str, Query(description="a search query (docs/api.md, /api/v1/fields); empty: "
                                     "everything", max_length=MAX_LENGTH)]
SweepId = Annotated[str, Query(pattern=SWEEP_ID, description="a sweep id")]

#: A dotted-quad IPv4 address (no leading zeros).
IPV4: Final = (r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
               r"(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$")


def _iso_day(value: object) -> object:
    """Only YYYY-MM-DD is a day (pydantic alone would also read ``0`` as 1970-01-01)."""
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"{value[:40]!r} is not a day (YYYY-MM-DD)")
    if isinstance(value, str) and not YEARS[0] <= int(value[:4]) <= YEARS[1]:
        raise ValueError(f"{value!r} is outside the years {YEARS[0]:04d} to {YEARS[1]}")
    return value


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.brokerscan
    return ctx


def store(ctx: Annotated[ApiContext, Depends(context)]) -> Searcher:
    return ctx.searcher()


async def known_sweep(searcher: Searcher, sweep_id: str) -> None:
    """A 404 unless the store holds observations of *sweep_id* (one rollup read)."""
    if (await searcher.count("", view=View("sweep", sweep_id=sweep_id))).total == 0:
        raise ApiError(404, f"no observations of sweep {sweep_id} in the store "
                            "(see /api/v1/sweeps)")


async def view_of(
    searcher: Annotated[Searcher, Depends(store)],
    sweep: Annotated[str | None, Query(pattern=SWEEP_ID, description=(
        "read what this sweep (or local scan) observed instead of the current view"))] = None,
    at: Annotated[date | None, BeforeValidator(_iso_day), Query(description=(
        "read the current view as it was at the end of this day (YYYY-MM-DD, UTC)"))] = None,
) -> View:
    """The view a query reads; 400 for both at once, 404 for a sweep the store has no
    observations of."""
    if sweep is not None and at is not None:
        raise ApiError(400, "give sweep= or at=, not both")
    if sweep is not None:
        await known_sweep(searcher, sweep)
        return View("sweep", sweep_id=sweep)
    if at is not None:
        return View("at", at=at)
    return CURRENT
