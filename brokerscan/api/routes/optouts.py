"""``/api/v1/optouts``: the opt-out requests of the scanner's public page
(storage/optouts.py), as ``brokerscan optout`` has them: list, approve, reject. Operator
tokens only (a request names a person's contact, and approving one changes what every
sweep dials). Deciding twice is harmless; a rejected request keeps its record."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from brokerscan.api.auth import Principal, operator
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import context
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody
from storage.optouts import OptOut, OptOutError, decide, list_optouts

__all__ = ["router"]

router = APIRouter(tags=["optouts"])

IdPath = Annotated[str, Path(pattern=r"^oo-[0-9a-f]{12}$", description="a request's id")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "not an operator token, no CSRF value for a "
                                             "cookie session, or a read-only server"},
    404: {"model": ErrorBody, "description": "no such request"},
}


class OptOutOut(BaseModel):
    """One opt-out request; ``changed`` (on a decision): whether this call changed it."""

    id: str
    networks: list[str]
    contact: str
    reason: str
    client: str
    state: Literal["pending", "approved", "rejected"]
    created_at: str
    decided_at: str | None
    decided_by: str | None
    changed: bool | None = None


def _out(optout: OptOut, changed: bool | None = None) -> OptOutOut:
    return OptOutOut(**optout.public(), changed=changed)


@router.get("/optouts", response_model=list[OptOutOut], responses=_RESPONSES)
async def optouts(ctx: Annotated[ApiContext, Depends(context)],
                  who: Annotated[Principal, Depends(operator)],
                  state: Annotated[Literal["pending", "approved", "rejected"] | None,
                                   Query(description="only requests in this state")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[OptOutOut]:
    """The opt-out requests, oldest first. Operator tokens only."""
    return [_out(o) for o in await list_optouts(ctx.searcher(), state, limit=limit)]


async def _decide(ctx: ApiContext, who: Principal, optout_id: str,
                  state: Literal["approved", "rejected"]) -> OptOutOut:
    try:
        optout, changed = await decide(ctx.searcher(), optout_id, state,
                                       by=f"token:{who.name}")
    except OptOutError as exc:
        raise ApiError(404, str(exc)) from None
    return _out(optout, changed)


@router.post("/optouts/{optout_id}/approve", response_model=OptOutOut, responses=_RESPONSES)
async def approve_optout(ctx: Annotated[ApiContext, Depends(context)], optout_id: IdPath,
                         who: Annotated[Principal, Depends(operator)]) -> OptOutOut:
    """Approve a request: its networks join every sweep's blocklist (running sweeps from
    their next dispatch round on). Approving twice changes nothing. Operator tokens only."""
    return await _decide(ctx, who, optout_id, "approved")


@router.post("/optouts/{optout_id}/reject", response_model=OptOutOut, responses=_RESPONSES)
async def reject_optout(ctx: Annotated[ApiContext, Depends(context)], optout_id: IdPath,
                        who: Annotated[Principal, Depends(operator)]) -> OptOutOut:
    """Reject a request (the record stays, and may still be approved). Operator tokens
    only."""
    return await _decide(ctx, who, optout_id, "rejected")
