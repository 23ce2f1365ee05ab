"""The results store: one interface, a backend per URL scheme.

``await open_store(url)`` picks the backend from :data:`BACKENDS` by the URL's scheme
(``postgresql://`` / ``postgres://``: :class:`~storage.pgstore.PgStore`; ``sqlite:///path``:
:class:`~storage.sqlitestore.SqliteStore`). Every backend passes the same conformance tests
(``tests/integration/test_store.py``).

What every backend promises:

- ``write`` is durable when it returns and idempotent: an observation is identified by
  (sweep_started_at, sweep_id, ip, port), so a redelivered result or a re-run shard (even
  with another ``observed_at``) adds nothing and counts nothing twice;
- ``counts`` groups observations by any of :data:`~storage.queries.DIMENSIONS`; time
  ranges apply to ``sweep_started_at`` (``since`` inclusive, ``until`` exclusive) and
  ``day`` is the UTC day the sweep started;
- ``hosts`` pages through the observations behind any count, ``services`` through the
  current view (one row per ip, port and transport).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import unquote, urlsplit

from brokerscan.model import ScanResult
from brokerscan.oneline import redact
from brokerscan.settings import Settings

if TYPE_CHECKING:  # the search types live beside the search; a store only names them
    from storage.search.compile import View
    from storage.search.tree import Node
    from storage.searcher import CountResult, Hit, Page

__all__ = ["BACKENDS", "DEFAULT_STORE_URL", "Service", "StatementTimeout", "Store", "StoreError",
           "describe_store", "open_store", "store_url"]

#: URL scheme -> "module:class" of the backend.
BACKENDS: Final = {
    "postgresql": "storage.pgstore:PgStore",
    "postgres": "storage.pgstore:PgStore",
    "sqlite": "storage.sqlitestore:SqliteStore",
}


#: The embedded store, in the working directory, when no setting names another.
DEFAULT_STORE_URL: Final = "sqlite:///brokerscan.db"


def store_url(settings: Settings, explicit: str | None = None, *,
              fleet: bool = True) -> str:
    """Which store a command uses: *explicit* (a ``--store`` option), else the ``store_url``
    setting, else (for the fleet's roles and the read side, *fleet*) ``database_url``, else
    :data:`DEFAULT_STORE_URL`. A local scan passes ``fleet=False``: it stores in the
    embedded file unless told otherwise, whatever database a fleet uses."""
    database = settings.database_url if fleet else None
    return explicit or settings.store_url or database or DEFAULT_STORE_URL


def describe_store(url: str) -> str:
    """*url* for messages: a SQLite file with its absolute path, any password hidden."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "sqlite":
        path = unquote(urlsplit(url).path[1:])
        return url if path == ":memory:" else f"sqlite:///{os.path.abspath(path)}"
    return redact(url)


class StoreError(Exception):
    """The store cannot be opened or used; the message is one line for the operator."""


class StatementTimeout(Exception):
    """A statement ran past the store's statement time limit and was stopped (the query
    was too costly for the limit, not the store down)."""


@dataclass(frozen=True, slots=True)
class Service:
    """One service of the current view.

    :ivar ip: address
    :ivar port: port
    :ivar transport: ``tcp`` or ``tls``
    :ivar first_seen: earliest ``observed_at`` of any observation of it
    :ivar last_seen: latest ``observed_at``
    :ivar last_changed: when protocol, status, anonymous, product or certificate last
        changed (``first_seen`` if never)
    :ivar latest: the observation made at ``last_seen``
    """

    ip: str
    port: int
    transport: str
    first_seen: datetime
    last_seen: datetime
    last_changed: datetime
    latest: ScanResult


class Store(Protocol):
    """What every backend implements."""

    async def write(self, results: Sequence[ScanResult]) -> int:
        """Store a batch, in one transaction, committed on return.

        :param results: the batch (every result has ``sweep_id`` and ``sweep_started_at``)
        :returns: how many observations were new (the rest were already stored)
        :raises ValueError: a result has no ``sweep_id`` or ``sweep_started_at``
        """
        ...

    async def prepare(self, results: Sequence[ScanResult],
                      records: Sequence[str | None] | None = None) -> object:
        """The CPU half of :meth:`write`, done ahead: rows for :meth:`write_prepared`.

        ``write(r)`` is ``write_prepared(await prepare(r))``; a caller may prepare the next
        batch while the database works on the previous one (``prepare`` yields to the
        event loop now and then, so that the write in flight keeps moving).

        :param records: ``result.to_json()`` of each result, when the caller has that
            exact text already (saves serialising again); computed where None (for the
            whole batch, or for one result)
        :raises ValueError: as :meth:`write`
        """
        ...

    async def write_prepared(self, prepared: object) -> int:
        """:meth:`write` of what :meth:`prepare` returned (same promises)."""
        ...

    async def counts(
        self, *, by: Sequence[str], since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None,
        where: Mapping[str, object] | None = None,
    ) -> list[dict[str, object]]:
        """Count observations grouped by dimensions.

        :param by: dimensions to group by (none: one total)
        :param since: only sweeps started at or after this
        :param until: only sweeps started before this
        :param sweep_id: only this sweep
        :param where: ``{dimension: value}`` equality filters (``None`` matches unknown)
        :returns: one dict per group, keys *by* then ``count``, sorted by *by*
        :raises ValueError: an unknown dimension
        """
        ...

    async def hosts(
        self, *, where: Mapping[str, object] | None = None, since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None, limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[ScanResult], str | None]:
        """The observations behind a count, one page at a time.

        :param where: as for :meth:`counts`
        :param since: as for :meth:`counts`
        :param until: as for :meth:`counts`
        :param sweep_id: as for :meth:`counts`
        :param limit: most results in this page
        :param cursor: the cursor returned with the previous page (``None``: first page)
        :returns: the page and the cursor of the next one (``None`` after the last)
        :raises ValueError: an unknown dimension or an invalid cursor
        """
        ...

    async def services(
        self, *, where: Mapping[str, object] | None = None,
        seen_since: datetime | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[Service], str | None]:
        """The current view, one page at a time, ordered by (ip, port, transport).

        :param where: equality filters on :data:`~storage.queries.SERVICE_DIMENSIONS`,
            applied to the latest observation of each service
        :param seen_since: only services seen at or after this
        :param limit: most services in this page
        :param cursor: as for :meth:`hosts`
        :returns: the page and the cursor of the next one
        :raises ValueError: an unknown dimension or an invalid cursor
        """
        ...

    # -- search (storage.searcher.Searcher implements these for every backend) -----------

    async def search(self, query: str | Node, *, view: View = ...,
                     limit: int = 100, cursor: str | None = None) -> Page:
        """One page of the services (or observations) behind a search query."""
        ...

    def export(self, query: str | Node, *, view: View = ...,
               chunk: int = 5000) -> AsyncIterator[list[Hit]]:
        """Every hit of a query, a chunk at a time."""
        ...

    async def count(self, query: str | Node, *, view: View = ...,
                    facets: Sequence[tuple[str, int]] = ()) -> CountResult:
        """How many match a query, and the top values of each facet."""
        ...

    async def trends(self, query: str | Node, *,
                     interval: Literal["day", "sweep"] = "day") -> list[tuple[str, int]]:
        """Counts of matching observations per day or per sweep."""
        ...

    async def host(self, ip: str, *, limit: int = 1000) -> list[str]:
        """Every observation of an address, newest first, as JSON records."""
        ...

    async def sweeps_seen(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The sweeps and local scans the history holds."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


async def open_store(url: str, *, read_only: bool = False,
                     statement_timeout: float | None = None) -> Store:
    """Open the store *url* names.

    :param url: ``postgresql://user@host/db``, ``sqlite:///path/file.db`` or
        ``sqlite:///:memory:``
    :param read_only: the caller only reads (``brokerscan serve``): PostgreSQL makes no
        partitions, so a role that may only SELECT can open it
    :param statement_timeout: seconds a statement may run before the store stops it with
        :class:`StatementTimeout` (None: no limit)
    :returns: the open store (PostgreSQL: migrations must be applied)
    :raises StoreError: an unknown scheme, or the store cannot be opened
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    target = BACKENDS.get(scheme)
    if target is None:
        close = get_close_matches(scheme, BACKENDS, n=1)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        raise StoreError(
            f"unknown store URL scheme {scheme or url[:20]!r}{hint}; use one of "
            + ", ".join(f"{s}://" for s in BACKENDS)
        )
    module_name, class_name = target.split(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    store: Store = await backend.open(url, read_only=read_only,
                                      statement_timeout=statement_timeout)
    return store
