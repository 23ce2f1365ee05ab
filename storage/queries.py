"""Pure compilation of the dashboard queries (counts, hosts, services) for both backends.

A query names dimensions (:data:`DIMENSIONS`); this module checks them, decides whether
the rollup can answer (:func:`use_rollup`), and builds the SQL text and parameters. The
two backends differ only in a :class:`Dialect`: how parameters are written (``$1`` or
``?``) and how dates and times travel.

Time ranges apply to ``sweep_started_at`` (``since`` inclusive, ``until`` exclusive), the
key observations are partitioned on; the rollup answers them when both ends fall on UTC
midnight, since it counts per UTC day.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from difflib import get_close_matches
from typing import Any, Final, TypeVar

from storage.rows import as_utc

T = TypeVar("T")

__all__ = [
    "next_cursor",
    "DIMENSIONS",
    "HOST_ORDER",
    "SERVICE_DIMENSIONS",
    "SERVICE_ORDER",
    "Dialect",
    "Params",
    "Query",
    "check_dimensions",
    "compile_counts",
    "compile_hosts",
    "compile_services",
    "decode_cursor",
    "encode_cursor",
    "sort_counts",
    "use_rollup",
]

#: Every dimension observations can be counted by.
DIMENSIONS: Final = (
    "day", "protocol", "port", "transport", "tls", "anonymous", "country", "asn", "status",
    "sweep_id",
)
#: The dimensions ``services`` can be filtered on.
SERVICE_DIMENSIONS: Final = (
    "protocol", "port", "transport", "tls", "anonymous", "country", "asn", "status", "sweep_id",
)

_ANON = "CASE anonymous WHEN 1 THEN TRUE WHEN 0 THEN FALSE END"
# Rollup: (expression giving the natural value, column to filter on, value -> stored value).
_ROLLUP: Final[dict[str, tuple[str, str, Callable[[object], object]]]] = {
    "day": ("day", "day", lambda v: v),
    "protocol": ("NULLIF(protocol, '')", "protocol", lambda v: "" if v is None else v),
    "port": ("port", "port", lambda v: v),
    "transport": ("transport", "transport", lambda v: v),
    "tls": ("tls", "tls", lambda v: v),
    "anonymous": (_ANON, "anonymous", lambda v: -1 if v is None else int(bool(v))),
    "country": ("NULLIF(country, '')", "country", lambda v: "" if v is None else v),
    "asn": ("NULLIF(asn, -1)", "asn", lambda v: -1 if v is None else v),
    "status": ("status", "status", lambda v: v),
    "sweep_id": ("sweep_id", "sweep_id", lambda v: v),
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL.

    :ivar positional: parameters are ``$1, $2, ...`` (PostgreSQL) rather than ``?``
    :ivar encode_date: a :class:`~datetime.date` as a parameter
    :ivar encode_time: a :class:`~datetime.datetime` as a parameter
    :ivar decode_date: a stored day back as a :class:`~datetime.date`
    :ivar decode_time: a stored timestamp back as an aware :class:`~datetime.datetime`
    """

    positional: bool
    encode_date: Callable[[date], object]
    encode_time: Callable[[datetime], object]
    decode_date: Callable[[Any], date]
    decode_time: Callable[[Any], datetime]


@dataclass(frozen=True, slots=True)
class Query:
    """SQL text with its parameters.

    :ivar sql: the statement
    :ivar params: its parameters, in order
    :ivar rollup: whether it reads the rollup (counts only)
    """

    sql: str
    params: tuple[object, ...]
    rollup: bool = False


class Params:
    """The parameters of one statement, in order; :meth:`add` returns the placeholder."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[object] = []

    def add(self, value: object) -> str:
        if isinstance(value, datetime):
            value = self.dialect.encode_time(as_utc(value))
        elif isinstance(value, date):
            value = self.dialect.encode_date(value)
        self.values.append(value)
        return f"${len(self.values)}" if self.dialect.positional else "?"


def check_dimensions(names: Sequence[str], allowed: Sequence[str] = DIMENSIONS) -> None:
    """Refuse a name that is not a dimension, in one line.

    :raises ValueError: ``unknown dimension 'x' (did you mean 'y'?); dimensions: ...``
    """
    for name in names:
        if name not in allowed:
            close = get_close_matches(str(name), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown dimension {name!r}{hint}; dimensions: {', '.join(allowed)}"
            )


def _is_midnight(moment: datetime | None) -> bool:
    return moment is None or as_utc(moment).time() == time(0)


def use_rollup(
    by: Sequence[str], where: Mapping[str, object], since: datetime | None,
    until: datetime | None,
) -> bool:
    """Whether the rollup answers exactly: every dimension is in it (all are) and the time
    range, if any, is whole UTC days."""
    return all(d in _ROLLUP for d in [*by, *where]) and _is_midnight(since) and \
        _is_midnight(until)


def _filters(
    params: Params, where: Mapping[str, object], rollup: bool, column: Callable[[str], str],
) -> list[str]:
    clauses = []
    for name, value in where.items():
        if name == "day" and isinstance(value, str):
            value = date.fromisoformat(value)
        if rollup:
            _, col, encode = _ROLLUP[name]
            value = encode(value)
        else:
            col = column(name)
        clauses.append(f"{col} IS NULL" if value is None else f"{col} = {params.add(value)}")
    return clauses


def compile_counts(
    dialect: Dialect, *, by: Sequence[str], where: Mapping[str, object] | None = None,
    since: datetime | None = None, until: datetime | None = None,
    sweep_id: str | None = None, rollup: bool | None = None,
) -> Query:
    """The count of observations grouped by *by* (columns in that order, then ``n``).

    :param rollup: force the source (tests); default: the rollup whenever it is exact
    :raises ValueError: an unknown dimension
    """
    where = dict(where or {})
    check_dimensions([*by, *where])
    roll = use_rollup(by, where, since, until) if rollup is None else rollup
    params = Params(dialect)
    clauses = _filters(params, where, roll, lambda n: n)
    if sweep_id is not None:
        clauses.append(f"sweep_id = {params.add(sweep_id)}")
    key = "day" if roll else "sweep_started_at"
    for bound, op in ((since, ">="), (until, "<")):
        if bound is not None:
            value: object = as_utc(bound).date() if roll else bound
            clauses.append(f"{key} {op} {params.add(value)}")
    exprs = [_ROLLUP[d][0] if roll else d for d in by]
    select = [f"{e} AS {d}" for e, d in zip(exprs, by, strict=True)]
    count = "CAST(coalesce(sum(n), 0) AS bigint)" if roll else "count(*)"
    table = "rollup" if roll else "observations"
    sql = f"SELECT {', '.join([*select, f'{count} AS n'])} FROM {table}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    if by:
        sql += " GROUP BY " + ", ".join(str(i) for i in range(1, len(by) + 1))
    return Query(sql, tuple(params.values), roll)


def sort_counts(rows: list[dict[str, object]], by: Sequence[str]) -> list[dict[str, object]]:
    """*rows* sorted by the dimensions *by* in order, unknown (``None``) values last: the
    same order from every backend."""

    def key(row: dict[str, object]) -> tuple[tuple[bool, str], ...]:
        return tuple((row[d] is None, _sortable(row[d])) for d in by)

    return sorted(rows, key=key)


def _sortable(value: object) -> str:
    # Numbers sort as numbers (zero-padded), everything else as text.
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:020d}"
    return str(value)


#: The longest cursor there is (a sort key of a few short values) is far shorter.
MAX_CURSOR: Final = 1024


def encode_cursor(values: Sequence[object]) -> str:
    """An opaque cursor for the row whose sort key is *values*."""
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode("ascii")


def next_cursor(rows: Sequence[T], limit: int, key: Callable[[T], Sequence[object]]) -> str | None:
    """The cursor of the next page: queries fetch ``limit + 1`` rows, and a row past the
    page means there is more after the page's last row (whose sort key ``key`` gives)."""
    return encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None


def decode_cursor(cursor: str, size: int) -> list[object]:
    """The sort key inside *cursor*.

    :raises ValueError: the cursor was not made by :func:`encode_cursor` for this query
    """
    if len(cursor) > MAX_CURSOR:
        raise ValueError(f"invalid cursor: longer than {MAX_CURSOR} characters")
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, UnicodeError) as exc:
        raise ValueError(f"invalid cursor: {exc}") from None
    except RecursionError:  # nested deeper than json can read: never a cursor of ours
        raise ValueError("invalid cursor: nested too deeply") from None
    if not isinstance(values, list) or len(values) != size:
        raise ValueError("invalid cursor: not a cursor of this listing")
    return values


def _page(
    dialect: Dialect, table: str, select: str, order: Sequence[str], clauses: list[str],
    params: Params, after: Sequence[object] | None, limit: int,
) -> Query:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if after is not None:
        marks = ", ".join(params.add(v) for v in after)
        clauses.append(f"({', '.join(order)}) > ({marks})")
    sql = f"SELECT {select} FROM {table}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += f" ORDER BY {', '.join(order)} LIMIT {params.add(limit + 1)}"
    return Query(sql, tuple(params.values))


#: The sort key of :func:`compile_hosts`: the unique key of an observation.
HOST_ORDER: Final = ("sweep_started_at", "sweep_id", "ip", "port")
#: The sort key of :func:`compile_services`.
SERVICE_ORDER: Final = ("ip", "port", "transport")


def compile_hosts(
    dialect: Dialect, *, where: Mapping[str, object] | None = None,
    since: datetime | None = None, until: datetime | None = None,
    sweep_id: str | None = None, limit: int = 100, after: Sequence[object] | None = None,
) -> Query:
    """The observations behind a count, one page (``limit + 1`` rows fetched to see if more
    follow), in :data:`HOST_ORDER`, after the row keyed *after*.

    :raises ValueError: an unknown dimension or a bad limit
    """
    where = dict(where or {})
    check_dimensions(list(where))
    params = Params(dialect)
    clauses = _filters(params, where, False, lambda n: n)
    if sweep_id is not None:
        clauses.append(f"sweep_id = {params.add(sweep_id)}")
    if since is not None:
        clauses.append(f"sweep_started_at >= {params.add(since)}")
    if until is not None:
        clauses.append(f"sweep_started_at < {params.add(until)}")
    return _page(dialect, "observations", "record, " + ", ".join(HOST_ORDER), HOST_ORDER,
                 clauses, params, after, limit)


def compile_services(
    dialect: Dialect, *, where: Mapping[str, object] | None = None,
    seen_since: datetime | None = None, limit: int = 100,
    after: Sequence[object] | None = None,
) -> Query:
    """One page of the current view, in :data:`SERVICE_ORDER`.

    :raises ValueError: an unknown dimension or a bad limit
    """
    where = dict(where or {})
    check_dimensions(list(where), SERVICE_DIMENSIONS)
    params = Params(dialect)
    clauses = _filters(params, where, False, lambda n: n)
    if seen_since is not None:
        clauses.append(f"last_seen >= {params.add(seen_since)}")
    select = "latest, first_seen, last_seen, last_changed, " + ", ".join(SERVICE_ORDER)
    return _page(dialect, "services", select, SERVICE_ORDER, clauses, params, after, limit)
