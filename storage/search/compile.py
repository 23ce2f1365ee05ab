"""Compile a parsed query (:mod:`storage.search.parse`) into parameterised SQL for either
store: a value is always a parameter, never SQL text; column names come only from the field
table.

A query runs against a *view*:

- ``current`` (the default): the current view, ``services``, one row per service;
- ``sweep``: what one sweep observed (``observations`` of that sweep);
- ``at``: the current view as it was at the end of a day (each service's latest
  observation made before the next midnight).

Counts whose filter and groups use only the census's dimensions (protocol, port, transport,
tls, anonymous, country, asn, status; and sweep in the history) read the rollups instead
(``services_rollup`` for the current view, ``rollup`` for a sweep): a few thousand rows
instead of millions. Every leaf predicate under a ``NOT`` is wrapped in
``COALESCE(..., FALSE)``, so that an unknown value is "does not match" and ``NOT`` turns it
into "matches", as the reference evaluator over JSON records does; outside ``NOT`` an unknown
filters as false does, and the bare comparison can use an index (an address range, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

from storage.dialect import Dialect, Params
from storage.search.fields import BARE_COLUMNS, Field, Kind, lookup
from storage.search.parse import (
    All,
    And,
    Bare,
    Exists,
    Match,
    Node,
    Not,
    Or,
    Prefix,
    QueryError,
    Range,
)

__all__ = [
    "CURRENT",
    "ROLLUP_FIELDS",
    "Compiled",
    "View",
    "ascii_lower",
    "compile_where",
    "fields_of",
    "group_expr",
    "source",
    "uses_rollup",
]

ViewKind = Literal["current", "sweep", "at"]

#: Fields the rollups hold (``sweep`` only in the history's rollup).
ROLLUP_FIELDS: Final = frozenset({"protocol", "port", "transport", "tls", "anonymous",
                                  "country", "asn", "status", "sweep"})

_ROLLUP_EXPR: Final = {
    "protocol": "NULLIF(protocol, '')",
    "port": "port",
    "transport": "transport",
    "tls": "tls",
    "anonymous": "(CASE anonymous WHEN 1 THEN TRUE WHEN 0 THEN FALSE END)",
    "country": "NULLIF(country, '')",
    "asn": "NULLIF(asn, -1)",
    "status": "status",
    "sweep_id": "sweep_id",
}


@dataclass(frozen=True, slots=True)
class View:
    """What a query reads: the current view, one sweep, or the current view as of a day."""

    kind: ViewKind = "current"
    sweep_id: str | None = None
    at: date | None = None

    def __post_init__(self) -> None:
        if (self.kind == "sweep") != (self.sweep_id is not None) or \
                (self.kind == "at") != (self.at is not None):
            raise ValueError("a sweep view needs a sweep id, an at view a day, and no other")

    def describe(self) -> str:
        if self.kind == "sweep":
            return f"sweep {self.sweep_id}"
        if self.kind == "at":
            return f"the current view as of {self.at}"
        return "the current view"


#: The default view: the current view.
CURRENT: Final = View()


@dataclass(frozen=True, slots=True)
class Compiled:
    """A FROM item and a WHERE condition with their parameters (in :attr:`params`)."""

    source: str
    where: str
    rollup: bool


def ascii_lower(text: str) -> str:
    """Lower case for ASCII letters only: what both stores' ``lower()`` do here (SQLite's
    always; PostgreSQL's under the ``C`` collation), and so what the search means by
    case-insensitive."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fields_of(node: Node) -> set[str]:
    """The names of the fields *node* uses; ``""`` stands for a bare term."""
    if isinstance(node, Match | Prefix | Exists | Range):
        return {node.field.name}
    if isinstance(node, Bare):
        return {""}
    if isinstance(node, Not):
        return fields_of(node.item)
    if isinstance(node, And | Or):
        return set().union(*(fields_of(item) for item in node.items))
    return set()


def uses_rollup(view: View, node: Node, groups: Sequence[str] = ()) -> bool:
    """Whether a count of *node* grouped by *groups* can read a rollup."""
    if view.kind == "at":
        return False
    names = fields_of(node) | set(groups)
    allowed = ROLLUP_FIELDS if view.kind == "sweep" else ROLLUP_FIELDS - {"sweep"}
    return names <= allowed


def _next_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


def source(dialect: Dialect, params: Params, view: View, *, rollup: bool = False) -> str:
    """The FROM item of *view*: a subquery whose columns are every field's column plus
    ``record``, ``first_seen`` and ``last_seen``, aliased ``v``."""
    if rollup:
        if view.kind == "sweep":
            return f"(SELECT * FROM rollup WHERE sweep_id = {params.add(view.sweep_id)}) AS v"
        return "services_rollup AS v"
    ip_num = "".join(f", {c}" for c in dialect.extra_ip_columns)
    if view.kind == "current":
        return "(SELECT *, latest AS record FROM services) AS v"
    if view.kind == "sweep":
        return (f"(SELECT *, observed_at AS first_seen, observed_at AS last_seen "
                f"FROM observations WHERE sweep_id = {params.add(view.sweep_id)}) AS v")
    assert view.at is not None
    end = _next_midnight(view.at)
    # each service's latest observation before the end of the day; first_seen is its first
    bound = params.add(end)
    again = params.add(end)
    return (
        "(SELECT * FROM (SELECT sweep_started_at, sweep_id, ip, port, transport, observed_at, "
        "status, protocol, tls, anonymous, mqtt_level, mqtt_return_code, mqtt_levels, "
        "amqp_family, product, version, amqp_mechanisms, tls_version, cert_sha256, "
        "cert_subject, cert_issuer, cert_self_signed, cert_expired, cert_trusted, asn, org, "
        f"country, record, census{ip_num}, min(observed_at) OVER w AS first_seen, "
        "observed_at AS last_seen, "
        "row_number() OVER (PARTITION BY ip, port, transport ORDER BY observed_at DESC, "
        "sweep_id DESC) AS nth "
        f"FROM observations WHERE sweep_started_at < {bound} AND observed_at < {again} "
        "WINDOW w AS (PARTITION BY ip, port, transport)) AS ranked WHERE nth = 1) AS v"
    )


class _Compiler:
    def __init__(self, dialect: Dialect, params: Params, rollup: bool) -> None:
        self.dialect = dialect
        self.params = params
        self.rollup = rollup

    # -- columns and text ---------------------------------------------------------------

    def column(self, field: Field) -> str:
        if self.rollup:
            return _ROLLUP_EXPR[field.column]
        if field.kind is Kind.IP:
            return self.dialect.ip_column
        return field.column

    def fold(self, expr: str) -> str:
        # ASCII-only lower case in both stores (see ascii_lower)
        return self.dialect.ascii_lower(expr)

    def find(self, haystack: str, needle: str) -> str:
        """1-based position of *needle* in *haystack*, 0 if absent."""
        return self.dialect.position(haystack, needle)

    def value(self, field: Field, value: object) -> str:
        if field.kind is Kind.IP:
            assert isinstance(value, int)  # addresses are numbers in the tree
            return self.dialect.ip_value(self.params, value)
        return self.params.add(value)

    # -- nodes --------------------------------------------------------------------------

    def node(self, node: Node, negated: bool = False) -> str:
        if isinstance(node, All):
            return "1 = 1"
        if isinstance(node, Not):
            return f"NOT ({self.node(node.item, True)})"
        if isinstance(node, And):
            return "(" + " AND ".join(self.node(i, negated) for i in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.node(i, negated) for i in node.items) + ")"
        # Outside NOT, unknown and false filter alike (AND and OR of a filter never turn an
        # unknown into true), and a bare comparison can use an index.
        return f"COALESCE({self.leaf(node)}, FALSE)" if negated else f"({self.leaf(node)})"

    def leaf(self, node: Node) -> str:
        if isinstance(node, Bare):
            needle = ascii_lower(node.text)
            return "(" + " OR ".join(
                f"{self.find(self.fold(column), self.params.add(needle))} > 0"
                for column in BARE_COLUMNS) + ")"
        assert isinstance(node, Match | Prefix | Exists | Range)
        field = node.field
        column = self.column(field)
        if isinstance(node, Exists):
            return f"{column} IS NOT NULL"
        if isinstance(node, Range):
            return self.range(field, column, node)
        if isinstance(node, Prefix):
            return self.prefix(field, column, node.prefix)
        return self.match(field, column, node.value)

    def match(self, field: Field, column: str, value: str | int | bool) -> str:
        if field.kind is Kind.TEXT:
            return f"{self.fold(column)} = {self.params.add(ascii_lower(str(value)))}"
        if field.kind is Kind.SET:
            padded = f"(' ' || {column} || ' ')"
            return f"{self.find(padded, self.params.add(f' {value} '))} > 0"
        return f"{column} = {self.value(field, value)}"

    def prefix(self, field: Field, column: str, prefix: str) -> str:
        if field.kind is Kind.SET:
            padded = f"(' ' || {column})"
            return f"{self.find(padded, self.params.add(' ' + prefix))} > 0"
        if field.kind is Kind.TEXT:
            column, prefix = self.fold(column), ascii_lower(prefix)
        return f"substr({column}, 1, {len(prefix)}) = {self.params.add(prefix)}"

    def range(self, field: Field, column: str, node: Range) -> str:
        parts = []
        for bound, inclusive, less in ((node.low, node.low_inclusive, False),
                                       (node.high, node.high_inclusive, True)):
            if bound is None:
                continue
            op = ("<" if less else ">") + ("=" if inclusive else "")
            parts.append(f"{column} {op} {self.value(field, bound)}")
        return " AND ".join(parts) if parts else f"{column} IS NOT NULL"


def compile_where(dialect: Dialect, params: Params, node: Node, *, rollup: bool = False,
                  ) -> str:
    """The WHERE condition of *node*, its values added to *params*; with *rollup* it reads a
    rollup's columns (ask :func:`uses_rollup` first)."""
    return _Compiler(dialect, params, rollup).node(node)


def group_expr(dialect: Dialect, name: str, *, rollup: bool = False) -> str:
    """The SQL expression a facet on field *name* groups by (a day for times)."""
    field = lookup(name)
    compiler = _Compiler(dialect, Params(dialect), rollup)
    column = compiler.column(field)
    if field.kind is Kind.TIME:
        return dialect.utc_day(column)
    if field.kind is Kind.IP:
        raise QueryError(f"cannot count by {name}: every address is its own group", 0)
    return column
