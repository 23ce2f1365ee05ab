"""What every backend gives the read side: how it fetches rows (:meth:`StoreReader.fetch`)
and in which :class:`~storage.dialect.Dialect`, from which :meth:`StoreReader.decode` turns
stored values back into Python values. The search (:mod:`storage.searcher`) is written
once on top of it, so PostgreSQL and SQLite answer every question with the same code, and
one conformance suite (``tests/integration/test_store.py``) holds them to the same answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

from storage.dialect import Dialect

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
    """A backend that says how it fetches rows (:meth:`fetch`) and in which
    :attr:`dialect`."""

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
