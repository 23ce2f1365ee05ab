"""The API's metrics: one ASGI middleware that :func:`instrument` adds to the app once every
route is in place (:func:`brokerscan.api.app.build_app` calls it last, so it is the
outermost middleware and times everything the app does, security and headers included).

Metrics (``brokerscan serve`` serves them on ``--metrics-port``, like every other role;
the API's own port has no ``/metrics``):

``brokerscan_http_requests_total{route,method,status}``
    requests answered, by route *template* (``/api/v1/hosts/{ip}``, never the address
    asked for), method and status code;
``brokerscan_http_request_seconds{route}``
    time from the request to the last byte of the answer (a histogram);
``brokerscan_http_requests_in_flight``
    requests being answered now;
``brokerscan_http_response_bytes_total{route}``
    body bytes sent, counted as they go: ``route="/api/v1/export"`` is the export bytes,
    and it moves while a long export streams;
``brokerscan_http_costly_running``, ``brokerscan_http_costly_waiting``
    requests judged costly being answered, and waiting for a slot of the costly lane
    (``serve --costly-slots``; :class:`brokerscan.api.ratelimit.Admission`);
``brokerscan_http_costly_refused_total``
    costly requests refused (503) after waiting too long for a slot.

A path that matches no route is ``route="unmatched"``, a method outside the usual set
``method="other"``: nothing a client sends can make a new series.

Written by hand on ``prometheus_client`` rather than with an instrumentation package: the
route template follows from what the router leaves in the scope (:func:`route_template`),
the whole thing is a few dozen lines, and the names stay in this project's scheme (and
the uv.lock that four branches edit stays as it is).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from brokerscan.api.ratelimit import Admission

__all__ = ["Instrument", "Metrics", "instrument", "metrics", "route_template"]


@dataclass(frozen=True)
class Metrics:
    """The API's metric objects."""

    requests: Counter
    request_seconds: Histogram
    in_flight: Gauge
    response_bytes: Counter
    costly_running: Gauge
    costly_waiting: Gauge
    costly_refused: Counter


@cache
def metrics() -> Metrics:
    """The API's metrics, defined on first use, not at import: every command imports this
    module (the CLI imports ``serve``), and ``prometheus_client`` decides at its own import
    whether values live in ``PROMETHEUS_MULTIPROC_DIR``, which a prefork worker sets only at
    start (:mod:`brokerscan.cli.fleet`). Imported earlier, the worker's children would keep
    their counts to themselves and its ``/metrics`` would read zeros."""
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        requests=Counter("brokerscan_http_requests_total",
                         "API requests answered, by route template, method and status",
                         ["route", "method", "status"]),
        request_seconds=Histogram("brokerscan_http_request_seconds",
                                  "Time from an API request to the last byte of its answer",
                                  ["route"],
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                           5, 10, 30, 60, 300)),
        in_flight=Gauge("brokerscan_http_requests_in_flight", "API requests being answered"),
        response_bytes=Counter("brokerscan_http_response_bytes_total",
                               "Body bytes of API answers sent, by route template (export: "
                               "route=\"/api/v1/export\")", ["route"]),
        costly_running=Gauge("brokerscan_http_costly_running",
                             "API requests judged costly being answered"),
        costly_waiting=Gauge("brokerscan_http_costly_waiting",
                             "API requests judged costly waiting for a slot of the lane"),
        costly_refused=Counter("brokerscan_http_costly_refused_total",
                               "Costly API requests refused after waiting too long"))


_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED: Final = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that answered *scope* (read after the app ran), or
    ``unmatched``.

    FastAPI leaves the matched endpoint and its path parameters in the scope, but the
    route object it leaves has no router prefix (``/hosts/{ip}`` for ``/api/v1/hosts/...``)
    and a page route or a mount leaves none: so the template is the request's path with
    each parameter's value put back as ``{name}``. A mounted app (``/static``) is one
    route, its prefix. A path whose parameters cannot be found in it is ``unmatched``
    rather than a new series.
    """
    if "endpoint" not in scope:
        return UNMATCHED
    app_root = str(scope.get("app_root_path", ""))
    mount = str(scope.get("root_path", ""))
    if mount.startswith(app_root):
        mount = mount[len(app_root):]
    params = scope.get("path_params") or {}
    if mount and not params:
        return mount
    template = str(scope.get("path", ""))
    if app_root and template.startswith(app_root):
        template = template[len(app_root):]
    # right to left (parameters come in the order of the path): a value that is also an
    # earlier literal segment, or another parameter's value, is found in its own place
    end = len(template)
    for name, value in reversed(list(params.items())):
        text = str(value)
        at = template.rfind(text, 0, end) if text else -1
        after = at + len(text)
        if at < 1 or template[at - 1] != "/" or template[after:after + 1] not in ("", "/"):
            return UNMATCHED
        template = template[:at] + "{" + name + "}" + template[after:]
        end = at
    return template or "/"


class Instrument:
    """The middleware: counts, times and sizes every HTTP request."""

    def __init__(self, app: ASGIApp, admission: Admission | None = None) -> None:
        self.app = app
        self.metrics = metrics()
        if admission is not None:
            self.metrics.costly_running.set_function(lambda: admission.running)
            self.metrics.costly_waiting.set_function(lambda: admission.waiting)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"
        status = 500  # what the client gets if the app raises before answering
        start = time.perf_counter()

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size = len(message.get("body", b""))
                if size:
                    m.response_bytes.labels(route_template(scope)).inc(size)
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, counted)
        finally:
            m.in_flight.dec()
            route = route_template(scope)
            m.requests.labels(route, method, str(status)).inc()
            m.request_seconds.labels(route).observe(time.perf_counter() - start)


def instrument(app: FastAPI, admission: Admission) -> None:
    """Add the metrics middleware to *app* (call once, after every route is added); the
    costly lane's gauges read *admission*."""
    app.add_middleware(Instrument, admission=admission)
