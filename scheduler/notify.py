"""Delivering watch events (:mod:`storage.watches`): webhooks over HTTP, emails over SMTP,
at least once, every try in the delivery log.

- **Webhook**: ``POST`` of a JSON body (the event), with ``X-Brokerscan-Signature:
  sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the watch's secret>`` and
  ``X-Brokerscan-Delivery: <id>`` (the same on every retry: the receiver's idempotency
  key). Any 2xx is delivered. A URL is dialled only if its host is inside the outbound
  allow list (``BROKERSCAN_WATCH_ALLOW``: CIDRs or exact host names; a name not listed is
  resolved and every address must be inside a listed network, and the address checked is
  the one dialled, never the name again: no DNS rebinding); otherwise the delivery is
  ``refused`` with the reason, and nothing is sent. Redirects are not followed.
- **Email**: through ``BROKERSCAN_SMTP_URL`` (smtplib in a thread; STARTTLS whenever the
  server offers it, with certificate checks).
- **Retries**: a failed try waits ``watch_retry_seconds`` doubled per attempt, up to
  ``watch_attempts`` tries, then ``failed``.
- **Isolation**: each watch's deliveries run in a task of their own, each try bounded by
  ``watch_timeout_seconds``; a receiver that hangs holds only its own watch's task.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
import ssl
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from brokerscan.settings import Settings
from storage.searcher import Searcher
from storage.watches import (
    Delivery,
    Watch,
    add_delivery_attempt,
    due_deliveries,
    get_watch,
    list_deliveries,
    pending_count,
)
from storage.watcheval import record_test_event

__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "Deliverer", "OutsideAllowList",
           "body_of", "check_allowed", "pinned", "send_test", "sign"]

SIGNATURE_HEADER = "X-Brokerscan-Signature"
DELIVERY_HEADER = "X-Brokerscan-Delivery"
#: Deliveries of one watch in flight at once.
_PER_WATCH = 4


class OutsideAllowList(Exception):
    """A webhook's host is not inside the outbound allow list (it is never dialled)."""


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of *body*."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_of(delivery: Delivery) -> bytes:
    """The exact bytes a webhook receives (and the signature covers)."""
    return json.dumps({"delivery": delivery.id, **delivery.event.payload()},
                      sort_keys=True, separators=(",", ":")).encode()


async def check_allowed(url: str, allow: list[str]) -> str | None:
    """Refuse *url* unless its host is a listed name, or an address (given, or every one
    the name resolves to) inside a listed network.

    :returns: the address to connect to (the one checked: a name is not resolved again,
        so a DNS answer that changes in between cannot lead elsewhere), or None for a
        listed name (the operator trusts it)
    :raises OutsideAllowList: with the reason
    """
    host = urlsplit(url).hostname or ""
    networks = []
    for item in allow:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            if item.lower().rstrip(".") == host.lower().rstrip("."):
                return None
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OutsideAllowList(f"cannot resolve {host!r}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0])) for info in infos]
    for address in addresses:
        if not any(address.version == n.version and address in n for n in networks):
            raise OutsideAllowList(f"{host} ({address}) is outside the outbound allow list "
                                   "(BROKERSCAN_WATCH_ALLOW)")
    return str(addresses[0])


def pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """*url* to dial *address* instead of its host name (the URL, the ``Host`` header and
    the TLS server name of the name), or as it is when there is no address to pin."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if address is None or address == host:
        return url, {}, {}
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    return (urlunsplit(parts._replace(netloc=netloc)), {"Host": parts.netloc.rpartition("@")[2]},
            {"sni_hostname": host})


def _send_email(settings: Settings, to: str, subject: str, text: str) -> None:
    """One email through the configured SMTP server (blocking: run in a thread)."""
    if settings.smtp_url is None:
        raise RuntimeError("no SMTP server configured (BROKERSCAN_SMTP_URL)")
    url = urlsplit(settings.smtp_url)
    if url.scheme != "smtp" or not url.hostname:
        raise RuntimeError("BROKERSCAN_SMTP_URL must be smtp://[user:password@]host[:port]")
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    with smtplib.SMTP(url.hostname, url.port or 25,
                      timeout=settings.watch_timeout_seconds) as smtp:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(message)


class Deliverer:
    """Runs due deliveries: one task per watch with work, each try bounded in time."""

    def __init__(self, store: Searcher, settings: Settings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.store = store
        self.settings = settings
        self._client = client or httpx.AsyncClient(
            follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(settings.watch_timeout_seconds))
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._client.aclose()

    async def round(self) -> int:
        """Start a task for each watch that has due deliveries and none running; returns
        how many watches got one. Does not wait for them."""
        started = 0
        self._tasks = {w: t for w, t in self._tasks.items() if not t.done()}
        by_watch: dict[str, list[Delivery]] = {}
        for delivery in await due_deliveries(self.store):
            by_watch.setdefault(delivery.event.watch, []).append(delivery)
        for name, deliveries in by_watch.items():
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._watch_task(name, deliveries))
                started += 1
        return started

    async def settle(self) -> None:
        """Wait for the tasks under way (one try of each due delivery)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks = {}

    async def drain(self, *, poll: float = 0.05) -> None:
        """Deliver until nothing is pending (retries included): for a command that
        evaluates once and exits."""
        while True:
            await self.round()
            if self._tasks:
                await asyncio.wait(list(self._tasks.values()), timeout=poll)
            elif not await pending_count(self.store):
                return
            else:
                await asyncio.sleep(poll)  # a retry not yet due
            self._tasks = {w: t for w, t in self._tasks.items() if not t.done()}

    async def _watch_task(self, name: str, deliveries: list[Delivery]) -> None:
        watch = await get_watch(self.store, name)
        gate = asyncio.Semaphore(_PER_WATCH)

        async def one(delivery: Delivery) -> None:
            async with gate:
                await self.deliver(watch, delivery)
        await asyncio.gather(*(one(d) for d in deliveries))

    async def deliver(self, watch: Watch | None, delivery: Delivery) -> None:
        """One try of *delivery*, recorded."""
        try:
            if watch is None:
                raise RuntimeError("the watch was removed")
            async with asyncio.timeout(self.settings.watch_timeout_seconds):
                if delivery.channel == "webhook":
                    await self._webhook(watch, delivery)
                else:
                    await self._email(watch, delivery)
        except OutsideAllowList as exc:
            await add_delivery_attempt(self.store, delivery.id, "refused", error=str(exc))
            return
        except Exception as exc:  # any failure of the receiver or the way there
            attempts = delivery.attempts + 1
            error = f"{type(exc).__name__}: {exc}"[:500] if str(exc) \
                else type(exc).__name__
            if attempts >= self.settings.watch_attempts:
                await add_delivery_attempt(self.store, delivery.id, "failed", error=error)
            else:
                wait = self.settings.watch_retry_seconds * 2 ** (attempts - 1)
                await add_delivery_attempt(
                    self.store, delivery.id, "pending", error=error,
                    next_try_at=datetime.now(UTC) + timedelta(seconds=wait))
            return
        await add_delivery_attempt(self.store, delivery.id, "delivered")

    async def _webhook(self, watch: Watch, delivery: Delivery) -> None:
        url, secret = watch.webhook_url, watch.secret
        if url is None or secret is None:
            raise RuntimeError("the watch has no webhook any more")
        target, host, extensions = pinned(
            url, await check_allowed(url, self.settings.watch_allow))
        body = body_of(delivery)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
                   DELIVERY_HEADER: delivery.id, "User-Agent": "brokerscan-watch", **host}
        response = await self._client.post(target, content=body, headers=headers,
                                           extensions=extensions)
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code} from the receiver")

    async def _email(self, watch: Watch, delivery: Delivery) -> None:
        if watch.email is None:
            raise RuntimeError("the watch has no email address any more")
        event = delivery.event
        subject = (f"[brokerscan] {watch.name}: {event.kind.replace('_', ' ')} "
                   f"{event.ip}:{event.port}")
        text = (f"Watch {watch.name} ({watch.query or 'everything'}) found in sweep "
                f"{event.sweep_id} (compared with {event.previous or 'no earlier sweep'}):\n\n"
                f"  {event.kind}: {event.ip}:{event.port}\n\n"
                f"Delivery {delivery.id}\n\n"
                + json.dumps({"delivery": delivery.id, **event.payload()}, indent=2) + "\n")
        await asyncio.to_thread(_send_email, self.settings, watch.email, subject, text)


async def send_test(store: Searcher, settings: Settings, watch: Watch) -> list[Delivery]:
    """Record a ``test`` event for *watch* and try each of its deliveries once, now
    (retries, if any, are the scheduler's); returns them as logged."""
    event = await record_test_event(store, watch)
    deliverer = Deliverer(store, settings)
    try:
        for delivery in await list_deliveries(store, watch.name, limit=10):
            if delivery.event.id == event.id:
                await deliverer.deliver(watch, delivery)
    finally:
        await deliverer.close()
    return [d for d in await list_deliveries(store, watch.name, limit=10)
            if d.event.id == event.id]
