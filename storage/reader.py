"""The read side of every store, written once: counts, the observations behind a count, the
current view, and cursor paging.

:mod:`storage.queries` compiles each question to SQL for a :class:`~storage.queries.Dialect`;
:class:`StoreReader` runs it through the backend's ``fetch`` and turns the rows back into
Python values with the same dialect. A backend supplies only those two things: its dialect
(how parameters are written and how values travel) and how rows are fetched. So PostgreSQL
and SQLite answer every question with the same code, and one conformance suite
(``tests/integration/test_store.py``) holds them to the same answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from brokerscan.model import ScanResult
from storage.queries import (
    HOST_ORDER,
    SERVICE_ORDER,
    Dialect,
    compile_counts,
    compile_hosts,
    compile_services,
    decode_cursor,
    next_cursor,
    sort_counts,
)
from storage.store import Service

__all__ = ["Row", "StoreReader"]

class Row(Protocol):
    """A fetched row as the backend's driver returns it (asyncpg's ``Record``, sqlite3's
    ``Row``): values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...

_BOOL_COLUMNS = frozenset({"tls", "anonymous", "cert_self_signed", "cert_expired",
                           "cert_trusted", "tls_handshake"})
_TIME_COLUMNS = frozenset({"sweep_started_at", "observed_at", "first_seen", "last_seen",
                           "last_changed"})


class StoreReader(ABC):
    """The queries of :class:`storage.store.Store`, for any backend that says how it
    fetches rows (:meth:`fetch`) and in which :attr:`dialect`."""

    dialect: Dialect

    @abstractmethod
    async def fetch(self, sql: str, params: Sequence[object]) -> list[Row]:
        """Run one read-only statement and return its rows."""

    def decode(self, column: str, value: Any) -> Any:
        """A stored value as Python sees it (the dialect knows how each kind travels)."""
        if value is None:
            return None
        d = self.dialect
        if column in _TIME_COLUMNS:
            return d.decode_time(value)
        if column == "day":
            return d.decode_date(value)
        if column in _BOOL_COLUMNS:
            return bool(value)
        if column == "ip":
            return str(value)
        return value

    def _cursor_after(self, cursor: str | None, order: Sequence[str]) -> list[object] | None:
        """The sort key a cursor carries, with its times turned back into datetimes."""
        if cursor is None:
            return None
        values = decode_cursor(cursor, len(order))
        for index, column in enumerate(order):
            if column in _TIME_COLUMNS:
                try:
                    values[index] = datetime.fromisoformat(str(values[index]))
                except ValueError:
                    raise ValueError("invalid cursor: not a cursor of this listing") from None
        return values

    def _key(self, row: Row, order: Sequence[str]) -> list[object]:
        return [self.decode(column, row[column]) for column in order]

    async def counts(
        self, *, by: Sequence[str], since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None,
        where: Mapping[str, object] | None = None, rollup: bool | None = None,
    ) -> list[dict[str, object]]:
        """See :meth:`storage.store.Store.counts`; *rollup* forces the source (tests)."""
        query = compile_counts(self.dialect, by=by, where=where, since=since, until=until,
                               sweep_id=sweep_id, rollup=rollup)
        rows = await self.fetch(query.sql, query.params)
        counted = [{**{d: self.decode(d, r[d]) for d in by}, "count": int(r["n"])}
                   for r in rows]
        return sort_counts(counted, by)

    async def hosts(
        self, *, where: Mapping[str, object] | None = None, since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None, limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[ScanResult], str | None]:
        """See :meth:`storage.store.Store.hosts`."""
        query = compile_hosts(self.dialect, where=where, since=since, until=until,
                              sweep_id=sweep_id, limit=limit,
                              after=self._cursor_after(cursor, HOST_ORDER))
        rows = await self.fetch(query.sql, query.params)
        page = [ScanResult.model_validate_json(str(r["record"])) for r in rows[:limit]]
        return page, next_cursor(rows, limit, lambda last: self._key(last, HOST_ORDER))

    async def services(
        self, *, where: Mapping[str, object] | None = None,
        seen_since: datetime | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[Service], str | None]:
        """See :meth:`storage.store.Store.services`."""
        query = compile_services(self.dialect, where=where, seen_since=seen_since, limit=limit,
                                 after=self._cursor_after(cursor, SERVICE_ORDER))
        rows = await self.fetch(query.sql, query.params)
        page = [
            Service(
                ip=str(r["ip"]), port=int(r["port"]), transport=str(r["transport"]),
                first_seen=self.decode("first_seen", r["first_seen"]),
                last_seen=self.decode("last_seen", r["last_seen"]),
                last_changed=self.decode("last_changed", r["last_changed"]),
                latest=ScanResult.model_validate_json(str(r["latest"])),
            )
            for r in rows[:limit]
        ]
        return page, next_cursor(rows, limit, lambda last: self._key(last, SERVICE_ORDER))
