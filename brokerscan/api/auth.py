"""Who is asking: bearer tokens (``Authorization: Bearer bsk_...``), or the same token kept
by a browser in an http-only cookie; roles; the per-token rate limit; CSRF.

- A script sends the header. Every ``/api/`` request without a valid, unrevoked token is a
  401 (JSON, ``WWW-Authenticate: Bearer``); a reader token on an operator endpoint a 403.
- A browser page (the dashboard) posts the token once to ``POST /api/v1/session``; the
  answer sets ``brokerscan_session`` (the token; ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` over https) and ``brokerscan_csrf`` (readable by the page), and returns the
  same CSRF value. A request authenticated by the cookie that changes anything (any method
  but GET and HEAD) must carry ``X-CSRF-Token`` with that value: an HMAC of the token, so a
  page of another site can neither read nor compute it. ``SameSite=Strict`` already keeps
  the cookie off cross-site requests; the header is the second lock. A request with the
  header token needs no CSRF value (a browser never adds that header by itself).
- ``serve --no-auth`` (one user, loopback only) makes every request an operator.
- Each token gets *rate* requests per second (bursts of *burst*); a client address that
  keeps sending bad tokens is limited the same way. Over the limit: 429 with
  ``Retry-After``. The limit is cost-aware (:func:`metered`): a request also costs the
  server time it took past 0.25 s (a second of it as much as a second's worth of requests,
  at most a burst), so a token that sends costly queries side by side gets fewer of them.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from brokerscan.api.context import ApiContext
from brokerscan.api.deps import context
from brokerscan.api.errors import ApiError
from brokerscan.api.instrument import metrics, route_template
from storage.priority import low_priority
from storage.tokens import TokenInfo, csrf_of, verify_token

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "Principal", "check_token",
           "metered", "operator", "principal", "request_shape"]

SESSION_COOKIE: Final = "brokerscan_session"
CSRF_COOKIE: Final = "brokerscan_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: Server time a request may take before it is charged for it (seconds).
FREE_SECONDS: Final = 0.25

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="a token from `brokerscan token create`")
_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, scheme_name="session",
                       description="set by POST /api/v1/session (browsers)")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a token's id, name and role, and how the token came."""

    token_id: str
    name: str
    role: Literal["reader", "operator"]
    via: Literal["header", "cookie", "none"]
    token: str | None = None

    @property
    def csrf(self) -> str | None:
        return csrf_of(self.token) if self.via == "cookie" and self.token else None


_LOCAL: Final = Principal("local", "local (--no-auth)", "operator", "none")


def _client(request: Request) -> str:
    return f"client:{request.client.host if request.client else '?'}"


def _limited(ctx: ApiContext, key: str) -> None:
    wait = ctx.limiter.take(key)
    if wait is not None:
        raise ApiError(429, f"rate limit: {ctx.limiter.rate:g} requests per second "
                            f"(bursts of {ctx.limiter.burst:g}); retry in {wait:.2f} s",
                       headers={"Retry-After": str(max(1, math.ceil(wait)))})


async def check_token(ctx: ApiContext, request: Request, token: str) -> TokenInfo:
    """The token's record, or a 401 (a 429 for an address that keeps trying)."""
    info = await verify_token(ctx.searcher(), token)
    if info is None:
        _limited(ctx, _client(request))
        raise ApiError(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return info


async def principal(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    session: Annotated[str | None, Depends(_cookie)],
) -> Principal:
    """Authenticate the request (see the module docstring), apply the rate limit and, for a
    cookie session, the CSRF check."""
    if not ctx.auth:
        _limited(ctx, "local")
        return _LOCAL
    if bearer is None and request.headers.get("authorization"):
        _limited(ctx, _client(request))
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    if bearer is not None:
        info = await check_token(ctx, request, bearer.credentials)
        who = Principal(info.id, info.name, info.role, "header", bearer.credentials)
    elif session:
        info = await check_token(ctx, request, session)
        who = Principal(info.id, info.name, info.role, "cookie", session)
    else:
        _limited(ctx, _client(request))
        raise ApiError(401, "a token is needed: send 'Authorization: Bearer <token>' "
                            "(make one with brokerscan token create)",
                       headers={"WWW-Authenticate": "Bearer"})
    _limited(ctx, who.token_id)
    if who.via == "cookie" and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        assert who.csrf is not None
        if not hmac.compare_digest(sent.encode(), who.csrf.encode()):
            raise ApiError(403, f"a cookie session must send the {CSRF_HEADER} header (the "
                                "csrf value POST /api/v1/session returned) to change "
                                "anything")
    return who


def request_shape(request: Request) -> str:
    """What decides a request's cost, as a key for :class:`~brokerscan.api.ratelimit.
    Admission`: its route template, the view it reads (now, a sweep, a day), how many
    distinct facets, and whether it searches (a query or none); never the values asked
    for, so the shapes stay few."""
    params = request.query_params
    view = "at" if params.get("at") else "sweep" if params.get("sweep") else "now"
    facets = len({f.strip() for f in params.get("facets", "").split(",") if f.strip()})
    query = "q" if params.get("q", "").strip() else "-"
    return f"{route_template(request.scope)} {view} f{facets} {query}"


async def metered(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    who: Annotated[Principal, Depends(principal)],
) -> AsyncIterator[Principal]:
    """The caller (:func:`principal`), admitted and then charged.

    At most two requests of a token are answered at once; its others wait their turn. A
    request judged costly (:class:`~brokerscan.api.ratelimit.Admission`: its shape ran
    long lately, or its token's last request did) waits for a slot of the server's costly
    lane, so costly queries of any number of tokens never take every core from the cheap
    ones, and its statements run at a low CPU priority (:mod:`storage.priority`), as do
    those of a request whose shape was never measured; one that waited too long is a
    503. Afterwards the token is charged for the
    server time its request took beyond :data:`FREE_SECONDS`: a second of it costs a
    second's worth of requests, at most a full burst (so one request never locks its token
    out for longer than burst / rate seconds). Costly requests sent side by side put the
    token in debt (the cost-aware part of the rate limit; an export is charged for its
    first row, its stream is bounded by the export slots)."""
    shape = request_shape(request)
    admission = ctx.admission
    verdict = admission.judge(shape, who.token_id)
    async with ctx.lanes.lane(who.token_id):
        async with admission.admit(verdict == "costly") as refused:
            if refused is not None:
                metrics().costly_refused.inc()
                raise ApiError(503, refused, headers={"Retry-After": "5"})
            started = time.monotonic()
            try:
                with low_priority(verdict != "cheap"):
                    yield who
            finally:
                took = time.monotonic() - started
                admission.ran(shape, who.token_id, took)
    if took > FREE_SECONDS:
        ctx.limiter.charge(who.token_id,
                           min((took - FREE_SECONDS) * ctx.limiter.rate, ctx.limiter.burst))


async def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller, if it may steer sweeps (role ``operator``); else 403."""
    if who.role != "operator":
        raise ApiError(403, f"token {who.token_id} has role {who.role}: steering sweeps "
                            "needs an operator token")
    return who
