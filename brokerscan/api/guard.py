"""What the server refuses before any route runs (issue 18): a Host it does not answer to,
an unsafe request from another site, and a body over the limit; and what it stops while
answering: an answer the client does not read.

- **Host.** ``serve --no-auth`` answers only loopback names (``localhost``, 127.0.0.0/8,
  ``::1``), so a page of another site that rebinds its DNS name to 127.0.0.1 gets a 421,
  never data; ``--allowed-host NAME`` (any mode) names the others it answers to.
  ``/healthz`` and ``/readyz`` answer any name (a load balancer's check uses an address;
  they hold no data).
- **Other sites.** A request with any method but GET, HEAD and OPTIONS is refused (403)
  when the browser says it comes from another site: ``Sec-Fetch-Site`` other than
  ``same-origin`` or ``none``, else an ``Origin`` whose host is not the request's own (or
  an allowed host). Scripts send neither header and are not affected.
- **Body.** A ``Content-Length`` over the limit is a 413 at once; a body sent without one
  is counted as it is read and refused with a 413 at the limit (never held whole).
- **Sending.** A piece of an answer that the client does not take within *send_timeout*
  (a stalled export) ends the answer and closes the connection.
- **Gone.** A GET or HEAD whose client disconnects before its answer is complete is
  cancelled, and with it the store's statement (asyncpg cancels it on the server; the
  SQLite store interrupts it): nobody waits for work nobody will read.

Written as one small ASGI middleware rather than Starlette's ``TrustedHostMiddleware``,
which answers in plain text, compares names only (not 127.0.0.0/8) and cuts an IPv6 Host
at its first colon. The metrics middleware is separate (:mod:`brokerscan.api.instrument`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_SEND_TIMEOUT", "Guard", "GuardMiddleware", "host_of"]

log = logging.getLogger("brokerscan.api")

#: The largest request body (the API's bodies are a token or a few fields).
DEFAULT_MAX_BODY: Final = 64 * 1024
#: Seconds a client may leave one piece of an answer unread.
DEFAULT_SEND_TIMEOUT: Final = 30.0

_SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_ANY_HOST: Final = frozenset({"/healthz", "/readyz"})
_SAME_SITE: Final = frozenset({"same-origin", "none"})


def host_of(value: str) -> str:
    """The name in a Host header or an authority, without its port, lower case
    (``[::1]:80`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def is_loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    """The server's limits.

    :ivar loopback_only: answer loopback Host names only (``--no-auth``), plus *hosts*
    :ivar hosts: other Host names answered (empty, and not *loopback_only*: any)
    :ivar max_body: the largest request body, in bytes
    :ivar send_timeout: seconds one piece of an answer may wait for the client
    """

    loopback_only: bool = False
    hosts: frozenset[str] = field(default_factory=frozenset)
    max_body: int = DEFAULT_MAX_BODY
    send_timeout: float = DEFAULT_SEND_TIMEOUT

    @classmethod
    def of(cls, *, loopback_only: bool, hosts: Iterable[str] = (),
           max_body: int = DEFAULT_MAX_BODY,
           send_timeout: float = DEFAULT_SEND_TIMEOUT) -> Guard:
        return cls(loopback_only, frozenset(host_of(h) for h in hosts), max_body,
                   send_timeout)

    def allows_host(self, host: str) -> bool:
        if host in self.hosts:
            return True
        if self.loopback_only:
            return is_loopback_name(host)
        return not self.hosts

    def cross_site(self, headers: dict[bytes, bytes]) -> str | None:
        """Why an unsafe request comes from another site, or None."""
        site = headers.get(b"sec-fetch-site")
        if site is not None:
            text = site.decode("latin-1").strip().lower()
            return None if text in _SAME_SITE else f"Sec-Fetch-Site is {text!r}"
        origin = headers.get(b"origin")
        if origin is None:
            return None
        text = origin.decode("latin-1").strip()
        netloc = urlsplit(text).netloc.lower() if text != "null" else ""
        own = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if netloc and (netloc == own or host_of(netloc) in self.hosts):
            return None
        return f"Origin {text[:100]!r} is not this site"


class _Stalled(Exception):
    """The client left a piece of the answer unread for the send timeout."""


def _refuse(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"error": message}).encode()
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]},
            {"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Applies a :class:`Guard` to every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        headers = dict(scope.get("headers", []))
        host = host_of(headers.get(b"host", b"").decode("latin-1"))
        refusal: tuple[int, str] | None = None
        if not guard.allows_host(host) and scope.get("path") not in _ANY_HOST:
            refusal = (421, f"this server does not answer to the host name {host[:100]!r} "
                            "(see serve --allowed-host)")
        elif scope["method"] not in _SAFE and (why := guard.cross_site(headers)):
            refusal = (403, f"cross-site request refused: {why}")
        else:
            length = headers.get(b"content-length", b"0").decode("latin-1")
            if length.isdigit() and int(length) > guard.max_body:
                refusal = (413, f"the request body is larger than {guard.max_body} bytes")
        if refusal is not None:
            for message in _refuse(*refusal):
                await send(message)
            return

        if scope["method"] in ("GET", "HEAD"):
            await self._cancelled_when_gone(scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _cancelled_when_gone(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, cancelled if the client disconnects before the answer is out.
        The request (no body) is read first; a task then waits for the disconnect, and
        the app's own later reads see it too."""
        task = asyncio.current_task()
        assert task is not None
        request: Message | None = await receive()
        gone = asyncio.Event()
        answered = False

        async def watch() -> None:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                if not answered:
                    task.cancel()

        async def reading() -> Message:
            nonlocal request
            if request is not None:
                first, request = request, None
                return first
            await gone.wait()
            return {"type": "http.disconnect"}

        async def sending(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        watcher = asyncio.create_task(watch())
        try:
            await self._guarded(scope, reading, sending)
        except asyncio.CancelledError:
            if not gone.is_set() or answered or task.uncancel() > 0:
                raise  # not ours: the server is stopping
            client = scope.get("client")
            log.warning("%s %s: the client went away: request cancelled",
                     client[0] if client else "?", scope.get("path", ""))
        finally:
            answered = True
            watcher.cancel()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > guard.max_body:
                    raise HTTPException(413, "the request body is larger than "
                                             f"{guard.max_body} bytes")
            return message

        async def timed(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), guard.send_timeout)
            except TimeoutError:
                raise _Stalled from None

        try:
            await self.app(scope, counted, timed)
        except* _Stalled:
            client = scope.get("client")
            log.warning("%s %s: the client read nothing for %g s: answer ended",
                        client[0] if client else "?", scope.get("path", ""),
                        guard.send_timeout)
