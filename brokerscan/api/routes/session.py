"""``/api/v1/session``: a browser signs in by posting a token once and is then known by an
http-only cookie (see :mod:`brokerscan.api.auth` for the cookies and the CSRF rule)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Request, Response

from brokerscan.api.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    check_token,
    principal,
)
from brokerscan.api.context import ApiContext
from brokerscan.api.deps import context
from brokerscan.api.errors import ERRORS
from brokerscan.api.models import ErrorBody, SessionBody, SessionRequest
from storage.tokens import csrf_of

__all__ = ["router"]

router = APIRouter(tags=["session"], responses=ERRORS)

#: How long a browser keeps the cookies (sign in again after).
SESSION_SECONDS: Final = 12 * 3600


def _body(who: Principal) -> SessionBody:
    return SessionBody(token_id=who.token_id, name=who.name, role=who.role, via=who.via,
                       csrf=who.csrf)


@router.post("/session", response_model=SessionBody, openapi_extra={"security": []})
async def sign_in(request: Request, response: Response, body: SessionRequest,
                  ctx: Annotated[ApiContext, Depends(context)]) -> SessionBody:
    """Check a token and keep it in an http-only, SameSite=Strict cookie; the answer holds
    the CSRF value to send as ``X-CSRF-Token`` with every POST and DELETE (it is also in
    the readable cookie ``brokerscan_csrf``)."""
    info = await check_token(ctx, request, body.token)
    secure = request.url.scheme == "https"
    csrf = csrf_of(body.token)
    response.set_cookie(SESSION_COOKIE, body.token, max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict", secure=secure)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=SESSION_SECONDS, path="/",
                        httponly=False, samesite="strict", secure=secure)
    return SessionBody(token_id=info.id, name=info.name, role=info.role, via="cookie",
                       csrf=csrf)


@router.get("/session", response_model=SessionBody, response_model_exclude_none=True)
async def whoami(who: Annotated[Principal, Depends(principal)]) -> SessionBody:
    """Who the request is (the token's id, name and role, and how it came)."""
    return _body(who)


@router.delete("/session", status_code=204, responses={
    403: {"model": ErrorBody, "description": "a cookie session without its CSRF value"}})
async def sign_out(who: Annotated[Principal, Depends(principal)]) -> Response:
    """Forget the cookies (the token itself stays valid: revoke it with
    ``brokerscan token revoke``)."""
    response = Response(status_code=204)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", httponly=name == SESSION_COOKIE,
                               samesite="strict")
    return response
