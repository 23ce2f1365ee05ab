"""Watches, kept in either store (tables ``watches``, ``watch_events``,
``watch_deliveries``; PostgreSQL migration 0011, SQLite step 4): a saved query with
networks and AS numbers, evaluated when a sweep finishes against the sweep before it.

Evaluation (:mod:`storage.watcheval`: every watch in one pass over the two sweeps) finds
events, recorded one per (watch, sweep, service, kind), so a sweep evaluated twice adds
nothing. Each event
gets one delivery per channel of its watch (webhook, email), a row of the delivery log
that the deliverer (:mod:`scheduler.notify`) moves from ``pending`` to ``delivered``,
``failed`` (out of attempts) or ``refused`` (outside the outbound allow list).

Every function takes a store (:class:`~storage.searcher.Searcher`); its ``fetch`` runs one
statement in a transaction of its own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from storage.dialect import Params
from storage.reader import Row
from storage.search.parse import QueryError, parse
from storage.search.tree import Node
from storage.searcher import Searcher

__all__ = ["KINDS", "MAX_EXPIRY_DAYS", "Delivery", "Event", "Watch", "WatchError",
           "add_delivery_attempt", "create_watch", "due_deliveries", "effective_query",
           "get_watch", "list_deliveries", "list_watches", "pending_count", "remove_watch"]

#: What an evaluation reports: a service that answered only in the new sweep and matches;
#: one that answered in both and matches now only; one that matched before only; one that
#: matched before and no longer answered; (with ``certificates``) one whose certificate
#: expired since; (with ``cert_expiry_days``) one whose certificate has expired or will
#: within that many days of the observation, every sweep. ``test`` is what ``watch test``
#: sends.
Kind = Literal["new", "now_matching", "stopped_matching", "gone", "certificate_expired",
               "certificate_expiring", "test"]
KINDS: Final = ("new", "now_matching", "stopped_matching", "gone", "certificate_expired",
                "certificate_expiring")
Status = Literal["pending", "delivered", "failed", "refused"]

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EMAIL: Final = re.compile(r"[^@\s,;<>]+@[A-Za-z0-9.-]+")
_WATCH_COLUMNS: Final = ("name, query, networks, asns, webhook_url, secret, email, "
                         "certificates, cert_expiry_days, created_at")
_DELIVERY_COLUMNS: Final = (
    "d.id AS id, d.event_id AS event_id, d.watch AS watch, d.channel AS channel, "
    "d.status AS status, d.attempts AS attempts, d.next_try_at AS next_try_at, "
    "d.last_error AS last_error, d.created_at AS created_at, d.delivered_at AS delivered_at, "
    "e.sweep_id AS sweep_id, e.previous AS previous, e.ip AS ip, e.port AS port, "
    "e.kind AS kind, e.detail AS detail")
#: the longest certificate expiry horizon a watch may ask for
MAX_EXPIRY_DAYS: Final = 3650


class WatchError(ValueError):
    """A watch cannot be made or found (one line: what is wrong)."""


@dataclass(frozen=True, slots=True)
class Watch:
    """A watch as stored (the secret included: the deliverer signs with it)."""

    name: str
    query: str
    networks: tuple[str, ...]
    asns: tuple[int, ...]
    webhook_url: str | None
    secret: str | None
    email: str | None
    certificates: bool
    #: also report matches whose certificate expired or expires within this many days
    cert_expiry_days: int | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        """The watch as shown to people and API clients (never the secret)."""
        return {"name": self.name, "query": self.query, "networks": list(self.networks),
                "asns": list(self.asns), "webhook_url": self.webhook_url,
                "email": self.email, "certificates": self.certificates,
                "cert_expiry_days": self.cert_expiry_days,
                "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class Event:
    """What one evaluation found for one watch and one service."""

    id: str
    watch: str
    sweep_id: str
    previous: str | None
    ip: str
    port: int
    kind: str
    detail: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The event as a webhook's JSON body and an email's text show it."""
        return {"id": self.id, "watch": self.watch, "kind": self.kind, "ip": self.ip,
                "port": self.port, "sweep": self.sweep_id, "previous_sweep": self.previous,
                **({"detail": self.detail} if self.detail else {})}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One row of the delivery log, with its event."""

    id: str
    channel: Literal["webhook", "email"]
    status: Status
    attempts: int
    next_try_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    event: Event

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "watch": self.event.watch, "channel": self.channel,
                "status": self.status, "attempts": self.attempts,
                "next_try_at": _iso(self.next_try_at), "last_error": self.last_error,
                "created_at": self.created_at.isoformat(),
                "delivered_at": _iso(self.delivered_at), "event": self.event.payload()}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _split(text: object) -> list[str]:
    return [part for part in str(text or "").split(",") if part]


def _watch(store: Searcher, row: Row) -> Watch:
    return Watch(name=str(row["name"]), query=str(row["query"]),
                 networks=tuple(_split(row["networks"])),
                 asns=tuple(int(n) for n in _split(row["asns"])),
                 webhook_url=row["webhook_url"], secret=row["secret"], email=row["email"],
                 certificates=bool(row["certificates"]),
                 cert_expiry_days=None if row["cert_expiry_days"] is None
                 else int(row["cert_expiry_days"]),
                 created_at=store.dialect.decode_time(row["created_at"]))


def effective_query(query: str, networks: tuple[str, ...] | list[str] = (),
                    asns: tuple[int, ...] | list[int] = (), *, also: str = "") -> Node:
    """The watch's query with its networks and AS numbers: ``(query) AND (ip:N OR ...)
    AND (asn:A OR ...)`` (and *also*, a term of ours). The networks and numbers are
    validated before they enter the text, so nothing but addresses and digits is added.

    :raises QueryError: the query does not compile
    """
    parts = [f"({query})"] if query.strip() else []
    if networks:
        parts.append("(" + " OR ".join(
            f"ip:{ipaddress.IPv4Network(n, strict=False)}" for n in networks) + ")")
    if asns:
        parts.append("(" + " OR ".join(f"asn:{int(a)}" for a in asns) + ")")
    if also:
        parts.append(also)
    return parse(" AND ".join(parts))


def _check(name: str, query: str, networks: list[str], asns: list[int],
           webhook_url: str | None, secret: str | None, email: str | None,
           cert_expiry_days: int | None) -> list[str]:
    if not _NAME.fullmatch(name):
        raise WatchError(f"watch name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    cidrs = []
    for net in networks:
        try:
            cidrs.append(str(ipaddress.IPv4Network(net.strip(), strict=False)))
        except ValueError:
            raise WatchError(f"--networks: {net!r} is not an IPv4 network") from None
    for asn in asns:
        if not 0 <= asn < 2**32:
            raise WatchError(f"--asn: {asn} is not an AS number")
    if cert_expiry_days is not None and not 0 <= cert_expiry_days <= MAX_EXPIRY_DAYS:
        raise WatchError(f"--cert-expiry-days: {cert_expiry_days} is not 0 to "
                         f"{MAX_EXPIRY_DAYS} days")
    try:
        effective_query(query, cidrs, asns)
    except QueryError as exc:
        raise WatchError(f"--query: {exc}") from None
    if webhook_url is None and email is None:
        raise WatchError("a watch needs --webhook URL or --email ADDRESS (or both)")
    if webhook_url is not None:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WatchError(f"--webhook: {webhook_url!r} is not an http:// or https:// URL")
        if not secret:
            raise WatchError("a webhook needs --secret (the key of its HMAC-SHA256 signature)")
    if email is not None and not _EMAIL.fullmatch(email):
        raise WatchError(f"--email: {email!r} is not one email address")
    return cidrs


async def create_watch(store: Searcher, name: str, query: str, *,
                       networks: list[str] | None = None, asns: list[int] | None = None,
                       webhook_url: str | None = None, secret: str | None = None,
                       email: str | None = None, certificates: bool = False,
                       cert_expiry_days: int | None = None) -> Watch:
    """Make a watch.

    :raises WatchError: a bad name, query, network, AS number, URL or address; no
        channel; a webhook without a secret; a name taken already
    """
    cidrs = _check(name, query, networks or [], asns or [], webhook_url, secret, email,
                   cert_expiry_days)
    if await get_watch(store, name) is not None:
        raise WatchError(f"a watch named {name!r} exists already (watch remove it first)")
    params = Params(store.dialect)
    values = ", ".join(params.add(v) for v in (
        name, query, ",".join(cidrs), ",".join(str(a) for a in asns or []), webhook_url,
        secret, email, certificates, cert_expiry_days, datetime.now(UTC)))
    rows = await store.fetch(f"INSERT INTO watches ({_WATCH_COLUMNS}) VALUES ({values}) "
                             f"RETURNING {_WATCH_COLUMNS}", params.values)
    return _watch(store, rows[0])


async def list_watches(store: Searcher) -> list[Watch]:
    """Every watch, by name."""
    rows = await store.fetch(f"SELECT {_WATCH_COLUMNS} FROM watches ORDER BY name", [])
    return [_watch(store, r) for r in rows]


async def get_watch(store: Searcher, name: str) -> Watch | None:
    params = Params(store.dialect)
    rows = await store.fetch(f"SELECT {_WATCH_COLUMNS} FROM watches WHERE name = "
                             f"{params.add(name)}", params.values)
    return _watch(store, rows[0]) if rows else None


async def remove_watch(store: Searcher, name: str) -> None:
    """Remove a watch with its events and delivery log.

    :raises WatchError: no such watch
    """
    if await get_watch(store, name) is None:
        raise WatchError(f"no watch {name!r} (see brokerscan watch list)")
    for table, column in (("watch_deliveries", "watch"), ("watch_events", "watch"),
                          ("watches", "name")):
        params = Params(store.dialect)
        await store.fetch(f"DELETE FROM {table} WHERE {column} = {params.add(name)}",
                          params.values)


def _delivery(store: Searcher, row: Row) -> Delivery:
    d = store.dialect

    def moment(value: Any) -> datetime | None:
        return None if value is None else d.decode_time(value)

    event = Event(str(row["event_id"]), str(row["watch"]), str(row["sweep_id"]),
                  row["previous"], str(row["ip"]), int(row["port"]), str(row["kind"]),
                  json.loads(str(row["detail"])))
    created = moment(row["created_at"])
    assert created is not None
    return Delivery(id=str(row["id"]), channel=row["channel"], status=row["status"],
                    attempts=int(row["attempts"]), next_try_at=moment(row["next_try_at"]),
                    last_error=row["last_error"], created_at=created,
                    delivered_at=moment(row["delivered_at"]), event=event)


async def due_deliveries(store: Searcher, *, now: datetime | None = None,
                         limit: int = 1000) -> list[Delivery]:
    """Pending deliveries whose next try is due, oldest first."""
    params = Params(store.dialect)
    when = params.add(now or datetime.now(UTC))
    rows = await store.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM watch_deliveries AS d JOIN watch_events AS e "
        f"ON e.id = d.event_id WHERE d.status = 'pending' AND d.next_try_at <= {when} "
        f"ORDER BY d.next_try_at, d.id LIMIT {params.add(limit)}", params.values)
    return [_delivery(store, r) for r in rows]


async def pending_count(store: Searcher) -> int:
    """Deliveries not yet delivered, failed or refused."""
    rows = await store.fetch(
        "SELECT count(*) AS n FROM watch_deliveries WHERE status = 'pending'", [])
    return int(rows[0]["n"])


async def list_deliveries(store: Searcher, watch: str | None = None, *,
                          limit: int = 100) -> list[Delivery]:
    """The delivery log, newest first (of one watch, or of all)."""
    params = Params(store.dialect)
    where = f"WHERE d.watch = {params.add(watch)} " if watch is not None else ""
    rows = await store.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM watch_deliveries AS d JOIN watch_events AS e "
        f"ON e.id = d.event_id {where}ORDER BY d.created_at DESC, d.id "
        f"LIMIT {params.add(limit)}", params.values)
    return [_delivery(store, r) for r in rows]


async def add_delivery_attempt(store: Searcher, delivery_id: str, status: Status, *,
                               error: str | None = None,
                               next_try_at: datetime | None = None) -> None:
    """Record one attempt (or a refusal, which is not an attempt) in the delivery log; a
    delivery that got through keeps the error of the try before, if any."""
    params = Params(store.dialect)
    now = datetime.now(UTC)
    tried = 0 if status == "refused" else 1
    sets = (f"status = {params.add(status)}, attempts = attempts + {params.add(tried)}, "
            f"last_error = coalesce({params.add(error)}, last_error), "
            f"next_try_at = {params.add(next_try_at)}, "
            f"delivered_at = {params.add(now if status == 'delivered' else None)}")
    await store.fetch(f"UPDATE watch_deliveries SET {sets} WHERE id = "
                      f"{params.add(delivery_id)} AND status = 'pending'", params.values)
