"""Build the API app from settings (never at import time): the routers under ``/api/v1``
behind the token check, the session routes, health, the offline docs page, the web
dashboard (``/``, :mod:`brokerscan.web`), the scanner's public page if asked for
(:mod:`brokerscan.web.identity`), the error handlers, the OpenAPI document, the
limits against hostile clients (:mod:`brokerscan.api.guard`, a middleware of its own), and
the hook for metrics.

``build_app(settings, store_url)`` opens the store when the app starts (read-only for
PostgreSQL: no partitions are made, so a SELECT-only role serves) and closes it at the end;
``brokerscan serve`` opens it first (to fail in one line) and hands it over as *store*.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from brokerscan import __version__
from brokerscan.api import errors
from brokerscan.api.auth import metered
from brokerscan.api.context import ApiContext
from brokerscan.api.docs import mount_docs
from brokerscan.api.guard import Guard, GuardMiddleware
from brokerscan.api.instrument import instrument
from brokerscan.api.ratelimit import Admission, RateLimiter, Slots
from brokerscan.api.routes import (
    count,
    diff,
    export,
    health,
    hosts,
    optouts,
    query,
    report,
    schedules,
    services,
    session,
    sweeps,
    trends,
    watches,
)
from brokerscan.settings import Settings
from brokerscan.web.app import mount_dashboard
from brokerscan.web.identity import identity_routes, optout_limiter
from storage.searcher import Searcher
from storage.store import open_store

__all__ = ["DEFAULT_BURST", "DEFAULT_COSTLY_SLOTS", "DEFAULT_EXPORTS_PER_SERVER",
           "DEFAULT_EXPORTS_PER_TOKEN",
           "DEFAULT_RATE", "build_app", "openapi_document"]

#: Requests per second per token, and the burst a token may spend at once.
DEFAULT_RATE: Final = 20.0
DEFAULT_BURST: Final = 40.0
#: Exports streaming at once, per token and on the whole server.
DEFAULT_EXPORTS_PER_TOKEN: Final = 2
#: Costly requests answered at once (:class:`Admission`): every core but one, so that cheap
#: requests always find one.
DEFAULT_COSTLY_SLOTS: Final = max(1, (os.cpu_count() or 2) - 1)
DEFAULT_EXPORTS_PER_SERVER: Final = 8

_DESCRIPTION: Final = """Search, count and export the MQTT and AMQP services brokerscan has
found, read the census report and the history of sweeps, and steer the fleet's sweeps.

Every `/api/` request needs a token (`brokerscan token create`): send
`Authorization: Bearer <token>`. Errors are JSON: `{"error": "..."}`, with `position` and
`column` for a query that cannot be read. Reference: docs/api.md."""


class _Headers:
    """Headers on every answer: no sniffing, no framing, and no caching of API answers
    (they depend on the token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without FastAPI's 422 answers (bad input is a 400 here, with
    the :class:`~brokerscan.api.models.ErrorBody` every error has)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes, tags=app.openapi_tags)
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = doc
    return doc


def build_app(settings: Settings, store_url: str, *, auth: bool = True,
              rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST,
              store: Searcher | None = None, guard: Guard | None = None,
              exports: Slots | None = None,
              admission: Admission | None = None, identity: bool = False) -> FastAPI:
    """The API app.

    :param settings: the deployment's settings (``database_url`` and ``redis_url`` for the
        fleet's sweeps, ``namespace``)
    :param store_url: the store to answer from
    :param auth: False for ``serve --no-auth`` (one user on loopback: every request is an
        operator)
    :param rate: requests per second per token (0: no limit)
    :param burst: requests a token may make at once
    :param store: an open store to use (and leave open); default: open *store_url* at
        start-up and close it at shut-down
    :param guard: allowed hosts, the body limit and the send timeout (default: loopback
        names only without *auth*, any host with it; :mod:`brokerscan.api.guard`)
    :param exports: exports at once per token and per server
    :param admission: the costly lane (default: :data:`DEFAULT_COSTLY_SLOTS` slots)
    :param identity: serve the scanner's public page and opt-out form, without a token
        (:mod:`brokerscan.web.identity`)
    """
    ctx = ApiContext(settings=settings, store_url=store_url, auth=auth,
                     limiter=RateLimiter(rate=rate, burst=max(1.0, burst)), store=store,
                     exports=exports or Slots(DEFAULT_EXPORTS_PER_TOKEN,
                                              DEFAULT_EXPORTS_PER_SERVER),
                     admission=admission or Admission(DEFAULT_COSTLY_SLOTS))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = ctx.store is None
        if owned:
            ctx.store = await open_store(store_url, read_only=True)
        try:
            yield
        finally:
            await ctx.close(store=owned)

    app = FastAPI(title="brokerscan", version=__version__, description=_DESCRIPTION,
                  docs_url=None, redoc_url=None, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name,
                  redirect_slashes=False)  # a redirect would be built from the Host header
    app.state.brokerscan = ctx
    errors.install(app)
    app.add_middleware(GuardMiddleware, guard=guard or Guard.of(loopback_only=not auth))
    app.add_middleware(_Headers)

    api = APIRouter(prefix="/api/v1", responses=errors.ERRORS,
                    dependencies=[Depends(metered, scope="function")])
    for module in (services, count, trends, hosts, report, diff, sweeps, schedules, export,
                   query, watches, optouts):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(session.router, prefix="/api/v1")
    app.include_router(health.router)
    mount_docs(app)
    if identity:
        app.router.routes.extend(identity_routes(ctx, optout_limiter()))
    mount_dashboard(app)  # the web dashboard at / (brokerscan/web), after the API's routes
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    instrument(app, ctx.admission)
    return app


def openapi_document() -> str:
    """The committed OpenAPI document's text (``brokerscan/api/openapi.json``): what
    ``/openapi.json`` serves, for any settings."""
    app = build_app(Settings(), "sqlite:///:memory:")
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
