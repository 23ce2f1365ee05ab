"""``/api/v1/watches``: watches (storage/watches.py) and their delivery log, as ``brokerscan
watch`` has them; operator tokens only (a watch's URL and address are an owner's
business, and adding one makes the server dial out)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from brokerscan.api.auth import Principal, operator
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import context
from brokerscan.api.errors import ApiError
from brokerscan.api.models import ErrorBody
from scheduler.notify import send_test
from storage.watches import (
    MAX_EXPIRY_DAYS,
    Watch,
    WatchError,
    create_watch,
    get_watch,
    list_deliveries,
    list_watches,
    remove_watch,
)

__all__ = ["router"]

router = APIRouter(tags=["watches"])

NamePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                               description="a watch's name")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "not an operator token, no CSRF value for a "
                                             "cookie session, or a read-only server"},
    404: {"model": ErrorBody, "description": "no such watch"},
}


class WatchIn(BaseModel):
    """A new watch: a query, networks and AS numbers it is limited to, and at least one
    channel (a webhook needs its secret)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    query: str = Field(default="", max_length=4000)
    networks: list[str] = Field(default_factory=list, max_length=1000)
    asns: list[int] = Field(default_factory=list, max_length=1000)
    webhook_url: str | None = Field(default=None, max_length=2000)
    secret: str | None = Field(default=None, max_length=500)
    email: str | None = Field(default=None, max_length=320)
    certificates: bool = False
    cert_expiry_days: int | None = Field(default=None, ge=0, le=MAX_EXPIRY_DAYS)


class WatchOut(BaseModel):
    """A watch (never its secret)."""

    name: str
    query: str
    networks: list[str]
    asns: list[int]
    webhook_url: str | None
    email: str | None
    certificates: bool
    cert_expiry_days: int | None
    created_at: str


class EventOut(BaseModel):
    id: str
    watch: str
    kind: str
    ip: str
    port: int
    sweep: str
    previous_sweep: str | None
    detail: dict[str, Any] = Field(default_factory=dict)


class DeliveryOut(BaseModel):
    """One row of the delivery log."""

    id: str
    watch: str
    channel: str
    status: str
    attempts: int
    next_try_at: str | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    event: EventOut


def _out(watch: Watch) -> WatchOut:
    return WatchOut(**watch.public())


async def _known(ctx: ApiContext, name: str) -> Watch:
    watch = await get_watch(ctx.searcher(), name)
    if watch is None:
        raise ApiError(404, f"no watch {name!r}")
    return watch


@router.get("/watches", response_model=list[WatchOut], responses=_RESPONSES)
async def watches(ctx: Annotated[ApiContext, Depends(context)],
                  who: Annotated[Principal, Depends(operator)]) -> list[WatchOut]:
    """Every watch, by name. Operator tokens only."""
    return [_out(w) for w in await list_watches(ctx.searcher())]


@router.post("/watches", response_model=WatchOut, status_code=201, responses={
    **_RESPONSES, 409: {"model": ErrorBody, "description": "the name is taken"}})
async def add_watch(ctx: Annotated[ApiContext, Depends(context)], body: WatchIn,
                    who: Annotated[Principal, Depends(operator)]) -> WatchOut:
    """Make a watch (its query is checked by the search compiler). Operator tokens only."""
    store = ctx.searcher()
    if await get_watch(store, body.name) is not None:
        raise ApiError(409, f"a watch named {body.name!r} exists already")
    try:
        watch = await create_watch(store, body.name, body.query, networks=body.networks,
                                   asns=body.asns, webhook_url=body.webhook_url,
                                   secret=body.secret, email=body.email,
                                   certificates=body.certificates,
                                   cert_expiry_days=body.cert_expiry_days)
    except WatchError as exc:
        raise ApiError(400, str(exc)) from None
    return _out(watch)


@router.delete("/watches/{name}", response_model=WatchOut, responses=_RESPONSES)
async def delete_watch(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                       who: Annotated[Principal, Depends(operator)]) -> WatchOut:
    """Remove a watch, its events and its delivery log. Operator tokens only."""
    watch = await _known(ctx, name)
    await remove_watch(ctx.searcher(), name)
    return _out(watch)


@router.get("/watches/{name}/deliveries", response_model=list[DeliveryOut],
            responses=_RESPONSES)
async def deliveries(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                     who: Annotated[Principal, Depends(operator)],
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DeliveryOut]:
    """The watch's delivery log, newest first: status, attempts, next try, last error.
    Operator tokens only."""
    await _known(ctx, name)
    return [DeliveryOut(**d.public()) for d in
            await list_deliveries(ctx.searcher(), name, limit=limit)]


@router.post("/watches/{name}/test", response_model=list[DeliveryOut], responses=_RESPONSES)
async def test_watch(ctx: Annotated[ApiContext, Depends(context)], name: NamePath,
                     who: Annotated[Principal, Depends(operator)]) -> list[DeliveryOut]:
    """Send a test event to the watch's channels now (one try each; retries, if any, are
    the scheduler's); answers with its deliveries. Operator tokens only."""
    watch = await _known(ctx, name)
    sent = await send_test(ctx.searcher(), ctx.settings, watch)
    return [DeliveryOut(**d.public()) for d in sent]
