"""How the API fails: always a JSON body ``{"error": "..."}`` (with ``position`` and
``column`` for a bad query) and a 4xx status for anything the client sent; a service that is
down is a 503; never a traceback.

Handlers are installed by :func:`install`; routes raise :class:`ApiError` (or let a
:class:`~storage.search.tree.QueryError` through)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from brokerscan.api.models import ErrorBody
from storage.db import SERVER_AWAY
from storage.search.parse import MAX_LENGTH
from storage.search.tree import QueryError
from storage.store import StatementTimeout, StoreError

__all__ = ["ERRORS", "ApiError", "error_response", "install"]

log = logging.getLogger("brokerscan.api")


class ApiError(Exception):
    """A request that cannot be answered: *status* and a one-line *message*."""

    def __init__(self, status: int, message: str, *,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = dict(headers or {})


def error_response(status: int, message: str, *, position: int | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": " ".join(message.split())}
    if position is not None:
        body |= {"position": position, "column": position + 1}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


#: The error responses every API route may give, for the OpenAPI document.
ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorBody, "description": "bad input: a malformed query, parameter or "
                                             "cursor (position and column for a query)"},
    401: {"model": ErrorBody, "description": "no valid token"},
    429: {"model": ErrorBody, "description": "too many requests for this token; see the "
                                             "Retry-After header"},
    503: {"model": ErrorBody, "description": "the store (or PostgreSQL, or Redis) is "
                                             "unavailable"},
}

#: Failures of a service under the API (not of the request).
_UNAVAILABLE: Final = (StoreError, RedisError, sqlite3.OperationalError,
                       asyncpg.QueryCanceledError, *SERVER_AWAY)


#: The command that changes a resource when the server's database role may only read.
_WRITERS: Final = {"sweeps": "brokerscan sweep", "schedules": "brokerscan sweep schedule",
                   "watches": "brokerscan watch", "optouts": "brokerscan optout"}

#: What a parameter whose pattern did not match should have been.
_SHAPES: Final = {"ip": "an IPv4 address (a.b.c.d)", "sweep": "a sweep id",
                  "sweep_id": "a sweep id", "a": "a sweep id", "b": "a sweep id"}


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:  # pragma: no cover - pydantic always says something
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    where = ".".join(loc) or "request"
    if where == "q" and first.get("type") == "string_too_long":  # as the parser says it
        raise QueryError(f"the query is longer than {MAX_LENGTH} characters", MAX_LENGTH)
    if first.get("type") == "string_pattern_mismatch" and where in _SHAPES:
        shown = str(first.get("input", ""))[:100]
        return f"{where}: {shown!r} is not {_SHAPES[where]}"
    return f"{where}: {first.get('msg', 'invalid')}"


def _methods(app: FastAPI, scope: Scope) -> set[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return methods


def install(app: FastAPI) -> None:
    """Install the handlers: ApiError, QueryError, ValueError (a bad cursor or limit), the
    request's own validation, HTTP errors of the framework (404 for an unknown path, 405),
    a write refused to a database role that may only read (403, naming the command that
    may), services that are down, and anything else (500, logged, no details out)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return error_response(400, exc.message, position=exc.position)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            return error_response(400, _validation_message(exc))
        except QueryError as error:
            return error_response(400, error.message, position=error.position)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            headers["Allow"] = ", ".join(sorted(_methods(app, request.scope)))
        return error_response(exc.status_code, message, headers=headers)

    for kind in _UNAVAILABLE:
        @app.exception_handler(kind)
        async def unavailable(request: Request, exc: Exception) -> JSONResponse:
            log.warning("%s %s: %s: %s", request.method, request.url.path,
                        type(exc).__name__, exc)
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return error_response(503, f"unavailable: {text}", headers={"Retry-After": "5"})

    @app.exception_handler(asyncpg.InsufficientPrivilegeError)
    async def read_only(request: Request, exc: Exception) -> JSONResponse:
        resource = request.url.path.removeprefix("/api/v1/").split("/")[0]
        command = _WRITERS.get(resource, "the brokerscan command")
        return error_response(403, f"this server's database role may only read: use "
                                   f"{command}, or serve with a role that may write")

    @app.exception_handler(StatementTimeout)
    async def too_long(request: Request, exc: StatementTimeout) -> JSONResponse:
        log.warning("%s %s: statement time limit: %s", request.method, request.url.path, exc)
        return error_response(503, "the query ran past the server's statement time limit "
                                   "and was stopped: narrow it (a smaller view, fewer "
                                   "facets, a more selective query)",
                              headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error (logged by the server)")
