"""What the CLI and the API ask a store, and what they get back: the search protocol
(:class:`Searcher`: the hosts behind a query, counts with facets, all of a result set for
export, counts over time, one address's history, grouped counts for reports), its answers
(:class:`Hit`, :class:`Page`, :class:`CountResult`) and facet lists.

Both stores answer it with the same code (:class:`storage.sqlsearcher.SqlSearcher`); the
store conformance suite (``tests/integration/test_store.py``) holds them to the same
answers through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from storage.dialect import Dialect
from storage.reader import Row
from storage.search.compile import View
from storage.search.fields import Kind, lookup
from storage.search.parse import Node, QueryError

__all__ = [
    "EXPORT_COLUMNS",
    "MAX_FACET",
    "MAX_FACETS",
    "MAX_PAGE",
    "CountResult",
    "Hit",
    "Page",
    "Searcher",
    "parse_facets",
]

MAX_PAGE: Final = 1000
MAX_FACET: Final = 1000
#: Facets one count may ask for (each is a GROUP BY of its own on some stores).
MAX_FACETS: Final = 12

#: The columns of a hit and of a CSV export (:mod:`storage.export`), in order (every
#: searchable column, flat).
EXPORT_COLUMNS: Final = (
    "ip", "port", "transport", "protocol", "status", "tls", "anonymous", "mqtt_return_code",
    "mqtt_levels", "product", "version", "amqp_family", "amqp_mechanisms", "tls_version",
    "cert_subject", "cert_issuer", "cert_sha256", "cert_self_signed", "cert_expired",
    "cert_trusted", "asn", "org", "country", "sweep_id", "first_seen", "last_seen",
)

@dataclass(frozen=True, slots=True)
class Hit:
    """One service (or observation) behind a query.

    :ivar values: the :data:`EXPORT_COLUMNS`, decoded
    :ivar record: the stored record, as JSON text (a :class:`~brokerscan.model.ScanResult`)
    """

    values: dict[str, Any]
    record: str

    @property
    def key(self) -> tuple[str, int, str]:
        return (str(self.values["ip"]), int(self.values["port"]),
                str(self.values["transport"]))


@dataclass(frozen=True, slots=True)
class Page:
    hits: list[Hit]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class CountResult:
    """``total`` and, per facet, the top values with their counts (unknown values are not
    a value); ``other`` per facet is the count of rows not shown, unknown ones included
    (Censys's ``other_count``)."""

    total: int
    facets: dict[str, list[tuple[Any, int]]] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    rollup: bool = False
    #: per facet, a name for some values (an AS number's organisation)
    labels: dict[str, dict[Any, str]] = field(default_factory=dict)


def parse_facets(text: str | None, *, default_size: int = 10) -> list[tuple[str, int]]:
    """``country:10,asn:10,port`` as ``[(field name, size)]`` (a field without a size gets
    *default_size*). A field named twice (or by two of its names) is counted once, with
    the larger size; at most :data:`MAX_FACETS` fields.

    :raises QueryError: an unknown field, a bad size, a field that cannot be a facet, or
        more than :data:`MAX_FACETS` fields
    """
    out: list[tuple[str, int]] = []
    if not text:
        return out
    position = 0
    for item in text.split(","):
        name, _, size_text = item.strip().partition(":")
        try:
            field = lookup(name)
        except KeyError as exc:
            raise QueryError(exc.args[0], position) from None
        if field.kind is Kind.IP:
            raise QueryError(f"cannot count by {field.name}: every address is its own group",
                             position)
        try:
            size = int(size_text) if size_text else default_size
        except ValueError:
            raise QueryError(f"{item.strip()!r}: the size must be a whole number",
                             position) from None
        if not 1 <= size <= MAX_FACET:
            raise QueryError(f"sizes go from 1 to {MAX_FACET}", position)
        known = next((i for i, (name, _) in enumerate(out) if name == field.name), None)
        if known is not None:
            out[known] = (field.name, max(size, out[known][1]))
        elif len(out) == MAX_FACETS:
            raise QueryError(f"at most {MAX_FACETS} facets", position)
        else:
            out.append((field.name, size))
        position += len(item) + 1
    return out


class Searcher(Protocol):
    """What the CLI and the API ask a store (both stores answer it:
    :class:`storage.sqlsearcher.SqlSearcher`)."""

    @property
    def dialect(self) -> Dialect:
        """How the store writes its SQL (for questions built beside the search: the
        census, tokens, exports)."""
        ...

    async def fetch(self, sql: str, params: Sequence[object]) -> list[Row]:
        """Run one statement (built with :attr:`dialect`) and return its rows."""
        ...

    def decode(self, column: str, value: Any) -> Any:
        """A stored value of *column* as Python sees it."""
        ...

    async def search(self, query: str | Node, *, view: View = ..., limit: int = 100,
                     cursor: str | None = None) -> Page:
        """One page of the services (or observations) behind *query*.

        :raises QueryError: a malformed query
        :raises ValueError: a bad limit or cursor
        """
        ...

    def export(self, query: str | Node, *, view: View = ...,
               chunk: int = ...) -> AsyncIterator[list[Hit]]:
        """Every hit of *query*, a chunk at a time (constant memory, no cap)."""
        ...

    def export_rows(self, query: str | Node, *, view: View = ..., records: bool = False,
                    line: str | None = None, chunk: int = ...,
                    ) -> AsyncIterator[list[Sequence[Any]]]:
        """Every row of *query* for a bulk export, undecoded, a chunk at a time: with
        *records* ``(ip, port, transport, record)``, with *line* (an SQL expression)
        ``(ip, port, transport, line)``, else the :data:`EXPORT_COLUMNS`."""
        ...

    async def count(self, query: str | Node, *, view: View = ...,
                    facets: Sequence[tuple[str, int]] = ()) -> CountResult:
        """How many match *query*, and the top values of each facet.

        :raises QueryError: a malformed query or facet
        """
        ...

    async def trends(self, query: str | Node, *,
                     interval: Literal["day", "sweep"] = "day") -> list[tuple[str, int]]:
        """Counts of matching observations per day or per sweep (the day or the sweep each
        sweep started)."""
        ...

    async def host(self, ip: str, *, limit: int = 1000) -> list[str]:
        """Every observation of an address, newest first, as JSON records.

        :raises ValueError: *ip* is not an IPv4 address
        """
        ...

    async def sweeps_seen(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The sweeps and local scans the history holds, newest first."""
        ...

    async def grouped(self, view: View, node: Node, exprs: Sequence[str],
                      ) -> list[tuple[Any, ...]]:
        """Counts of *node* in *view* grouped by the SQL expressions *exprs*, largest
        first: ``[(value, ..., count)]``."""
        ...

    def json_text(self, path: Sequence[str]) -> str:
        """The SQL expression of a text value inside the record (``path`` of keys)."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
