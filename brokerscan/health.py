"""The operations endpoint of a long-running process: Prometheus metrics, liveness, readiness.

Every role (scheduler, probe worker, enrich-worker, store-worker, and ``serve``) answers:

``GET /metrics``
    the Prometheus text format of the process's metrics (of every process of a prefork
    Celery worker, see :func:`metrics_registry`);
``GET /healthz``
    200 while the process is alive: its loop turns and its heartbeat is fresh (the role's
    ``alive`` callable says so); 503 with the reason otherwise. A failing dependency never
    fails liveness (restarting a worker does not bring back its database);
``GET /readyz``
    200 when every dependency answers (PostgreSQL, Redis, the brokers: the role's checks,
    run concurrently with a timeout, cached for ``ready_ttl`` seconds so that probes and
    scrapes never hammer the services); 503 with the failing ones otherwise.

Bodies of the health routes are one JSON object: ``{"status": "ok"|"failing", ...}``.

Two ways to serve it: :class:`OpsServer` (a small threaded HTTP server beside a process's
own work, as ``prometheus_client.start_http_server`` does, but with the health routes) and
:func:`asgi_app` (the same three routes as an ASGI app, for ``brokerscan serve`` to mount).
``prometheus_client`` is imported only inside functions: a prefork worker must set
``PROMETHEUS_MULTIPROC_DIR`` before the first import (:func:`metrics_registry`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from brokerscan.oneline import describe

__all__ = ["Check", "Health", "OpsServer", "amqp_check", "asgi_app", "metrics_registry",
           "redis_check"]

log = logging.getLogger(__name__)

#: A readiness check: returns when the dependency answers, raises (anything) otherwise.
Check = Callable[[], Awaitable[None]]
#: A liveness test: ``None`` when alive, else the one-line reason.
Alive = Callable[[], str | None]

_CHECK_TIMEOUT = 3.0


def metrics_registry() -> Any:
    """The registry a scrape reads: the process's own, or, when ``PROMETHEUS_MULTIPROC_DIR``
    is set (a prefork worker's parent), a fresh one over every process's files (what the
    client library's multiprocess documentation asks for)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


@dataclass
class Health:
    """What the three routes of one process answer.

    :param role: ``scheduler``, ``probe-worker``, ``enrich-worker``, ``store-worker``,
        ``serve`` (shown in the health bodies).
    :param alive: the liveness test (default: always alive).
    :param checks: readiness checks by dependency name (``postgresql``, ``redis``, ...).
    :param ready_ttl: seconds a readiness answer is reused.
    :param registry: the metrics to expose (default: :func:`metrics_registry` per scrape).
    """

    role: str
    alive: Alive = lambda: None
    checks: Mapping[str, Check] = field(default_factory=dict)
    ready_ttl: float = 2.0
    registry: Callable[[], Any] = metrics_registry
    _ready: tuple[float, int, dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, body)`` of ``/healthz``."""
        try:
            reason = self.alive()
        except Exception as exc:  # a broken liveness test is a failing one, said once
            reason = f"liveness test failed: {describe(exc)}"
        if reason is None:
            return 200, {"status": "ok", "role": self.role}
        return 503, {"status": "failing", "role": self.role, "reason": reason}

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, body)`` of ``/readyz`` (cached for ``ready_ttl`` seconds)."""
        now = time.monotonic()
        cached = self._ready
        if cached is not None and now - cached[0] < self.ready_ttl:
            return cached[1], cached[2]
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        failing = {n: o for n, o in zip(names, outcomes, strict=True) if o is not None}
        body: dict[str, Any] = {"status": "failing" if failing else "ok", "role": self.role,
                                "checks": {n: failing.get(n, "ok") for n in names}}
        code = 503 if failing else 200
        self._ready = (time.monotonic(), code, body)
        return code, body

    def readyz_sync(self) -> tuple[int, dict[str, Any]]:
        """:meth:`readyz` from a thread without an event loop (one at a time)."""
        with self._lock:
            return asyncio.run(self.readyz())

    @staticmethod
    async def _run(check: Check) -> str | None:
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT):
                await check()
        except TimeoutError:
            return f"no answer within {_CHECK_TIMEOUT:g} s"
        except Exception as exc:
            return describe(exc)
        return None

    def metrics(self) -> tuple[bytes, str]:
        """``(body, content type)`` of ``/metrics``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry()), CONTENT_TYPE_LATEST


def _json(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


#: Held while an ops request is answered, and by a fork (a prefork pool's children): a
#: child forked while a handler thread held a lock of its own (glibc's resolver in a
#: readiness check, logging, the metrics registry) would inherit it locked and hang at its
#: first use (seen: a worker's children never came up). A fork waits for the answer.
_ANSWERING = threading.Lock()
_FORK_GUARD: list[bool] = []


def _guard_forks() -> None:
    if not _FORK_GUARD:
        _FORK_GUARD.append(True)
        os.register_at_fork(before=_ANSWERING.acquire, after_in_parent=_ANSWERING.release,
                            after_in_child=_ANSWERING.release)


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass each server makes

    def do_GET(self) -> None:
        with _ANSWERING:
            self._answer()

    def _answer(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, ctype = self.health.metrics()
                self._send(200, body, ctype)
            elif path == "/healthz":
                code, data = self.health.healthz()
                self._send(code, _json(data), "application/json")
            elif path == "/readyz":
                code, data = self.health.readyz_sync()
                self._send(code, _json(data), "application/json")
            else:
                self._send(404, _json({"error": f"no route {path}: use /metrics, /healthz, "
                                                "/readyz"}), "application/json")
        except Exception as exc:  # the endpoint must never take the process down
            log.warning("ops endpoint %s failed: %s", path, describe(exc))
            self._send(500, _json({"error": describe(exc)}), "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # scrapes every few seconds would drown the process's own log


class OpsServer:
    """Serves :class:`Health` over HTTP from daemon threads.

    :raises OSError: from :meth:`start`, when the port cannot be bound.
    """

    def __init__(self, health: Health, host: str, port: int) -> None:
        self.health = health
        handler = type("Handler", (_Handler,), {"health": health})
        self._server = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> OpsServer:
        """Bind and serve in a daemon thread."""
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        _guard_forks()
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="brokerscan-ops", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("%s: metrics and health on http://%s:%d (/metrics /healthz /readyz)",
                 self.health.role, host, port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (safe to call twice)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()


ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


def asgi_app(health: Health) -> Callable[[dict[str, Any], ASGIReceive, ASGISend],
                                         Awaitable[None]]:
    """The three routes as a plain ASGI app (no framework needed), for ``brokerscan serve``.

    FastAPI: ``app.mount("/ops", asgi_app(health))`` serves ``/ops/metrics`` etc., or
    ``app.add_route("/metrics", ...)`` per route; the readiness checks run in the server's
    own event loop.
    """

    async def app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path == "/metrics":
            body, ctype = await asyncio.to_thread(health.metrics)
            code = 200
        elif path == "/healthz":
            code, data = health.healthz()
            body, ctype = _json(data), "application/json"
        elif path == "/readyz":
            code, data = await health.readyz()
            body, ctype = _json(data), "application/json"
        else:
            code, body, ctype = 404, _json({"error": f"no route {path}"}), "application/json"
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", ctype.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


# -- readiness checks that need nothing of ours -------------------------------------------

def redis_check(url: str) -> Check:
    """Readiness of Redis at *url*: a PING answered."""
    async def check() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_timeout=_CHECK_TIMEOUT,
                                socket_connect_timeout=_CHECK_TIMEOUT)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return check


def amqp_check(url: str) -> Check:
    """Readiness of an AMQP broker at *url*: a connection opened (login included)."""
    async def check() -> None:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=_CHECK_TIMEOUT)
        await connection.close()

    return check
