"""The SQL each backend writes its own way: one :class:`Dialect` per store
(:data:`PG` for PostgreSQL, :data:`SQLITE` for the embedded store), each method named for
what differs, and :class:`Params`, the parameters of one statement.

What differs, and why: PostgreSQL keeps an address as ``inet`` (it compares, sorts and
prints itself), SQLite as text beside its number (``ip_num``, which compares and sorts);
PostgreSQL numbers its parameters (``$1``), SQLite counts them (``?``); PostgreSQL has
``GROUPING SETS`` and set-returning functions, SQLite ``json_each``; PostgreSQL's
``lower()`` follows the collation (so it is asked for ``C``: ASCII only, as SQLite's
always is); times travel as ``timestamptz`` or as fixed-width UTC text.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Final, Literal, cast

from storage.rows import as_utc, format_time, parse_time

__all__ = ["PG", "SQLITE", "Cell", "Dialect", "Params", "PostgresDialect", "SqliteDialect"]

#: How an export column becomes a CSV cell (:mod:`storage.export` says which column is
#: which): as it is, ``true``/``false``, an ISO 8601 time, or text a remote server chose
#: (kept from being read as a spreadsheet formula).
Cell = Literal["plain", "flag", "time", "foreign"]


def _dotted(number: int) -> str:
    return socket.inet_ntoa(number.to_bytes(4, "big"))


class Dialect(ABC):
    """What one backend's SQL says its own way."""

    #: The columns services are ordered and paged by (the cursor's key is ip, port,
    #: transport), as the view's indexes have them.
    service_order: tuple[str, ...]
    #: The column an address compares on (``ip:`` matches, ranges, CIDR blocks).
    ip_column: str
    #: The address as text, in a select list.
    ip_text: str
    #: Columns of ``observations`` beside ``ip`` that the store keeps for the address.
    extra_ip_columns: tuple[str, ...]
    #: Whether ``GROUPING SETS`` counts several facets in one scan.
    grouping_sets: bool
    #: The table of every service's latest state, and the one that keeps its census facts
    #: (PostgreSQL keeps them apart: ``services_census`` moves only with a newer record).
    services_table: str
    current_facts_table: str
    #: Whether history past retention is dropped (day partitions), its counts kept in a
    #: ledger beside each per-sweep rollup (``<rollup>_expired``: ``db verify`` adds them).
    retention_ledger: bool

    @abstractmethod
    def placeholder(self, position: int) -> str:
        """The mark of the parameter at 1-based *position*."""

    @abstractmethod
    def encode_date(self, day: date) -> object:
        """A day as a parameter."""

    @abstractmethod
    def encode_time(self, moment: datetime) -> object:
        """An aware UTC time as a parameter."""

    @abstractmethod
    def decode_date(self, value: Any) -> date:
        """A stored day back as a :class:`~datetime.date`."""

    @abstractmethod
    def decode_time(self, value: Any) -> datetime:
        """A stored time back as an aware :class:`~datetime.datetime`."""

    @abstractmethod
    def ip_value(self, params: Params, number: int) -> str:
        """The IPv4 address *number* as a parameter :attr:`ip_column` compares with."""

    @abstractmethod
    def after_service(self, params: Params, ip: str, port: int, transport: str) -> str:
        """The condition "after the service (ip, port, transport)" in
        :attr:`service_order` (a keyset page)."""

    @abstractmethod
    def ascii_lower(self, expr: str) -> str:
        """*expr* in lower case, ASCII letters only."""

    @abstractmethod
    def position(self, haystack: str, needle: str) -> str:
        """1-based position of *needle* in *haystack*, 0 if absent."""

    @abstractmethod
    def utc_day(self, expr: str) -> str:
        """The UTC day (``YYYY-MM-DD``) of the time *expr*."""

    @abstractmethod
    def set_members(self, column: str) -> str:
        """A FROM item (``m``) with one row per space-separated member of *column*, in
        ``m.value``, for the row at hand."""

    @abstractmethod
    def json_text(self, path: Sequence[str]) -> str:
        """A text value inside ``record`` (the path of keys; digits index arrays)."""

    @abstractmethod
    def json_rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        """A FROM item (``r``) of the objects of the JSON array in parameter *param*, with
        *columns* (name, ``text`` or ``integer``): many rows through one parameter."""

    @abstractmethod
    def census_facts(self, alias: str) -> tuple[str, str]:
        """A FROM item of one row per census fact of the row *alias* names (its
        ``census`` column), and the fact's expression."""

    @abstractmethod
    def csv_line(self, cells: Sequence[tuple[str, Cell]], formula: str) -> str | None:
        """The CSV line of *cells* (columns and how each becomes a cell; text starting
        with a character of *formula* gets a leading ``'``) as one SQL expression, or None
        where lines are better written by the caller."""


class PostgresDialect(Dialect):
    """PostgreSQL: ``inet`` addresses, ``$n`` parameters, ``timestamptz``."""

    service_order = ("ip", "port", "transport")
    ip_column = "ip"
    ip_text = "host(ip)"
    extra_ip_columns = ()
    grouping_sets = True
    services_table = "services_core"
    current_facts_table = "services_census"
    retention_ledger = True

    def placeholder(self, position: int) -> str:
        return f"${position}"

    def encode_date(self, day: date) -> object:
        return day

    def encode_time(self, moment: datetime) -> object:
        return moment

    def decode_date(self, value: Any) -> date:
        return cast(date, value)  # asyncpg's own

    def decode_time(self, value: Any) -> datetime:
        return cast(datetime, value)

    def ip_value(self, params: Params, number: int) -> str:
        return f"{params.add(_dotted(number))}::inet"

    def after_service(self, params: Params, ip: str, port: int, transport: str) -> str:
        marks = [f"{params.add(ip)}::inet", params.add(port), params.add(transport)]
        return f"({', '.join(self.service_order)}) > ({', '.join(marks)})"

    def ascii_lower(self, expr: str) -> str:
        return f'lower({expr} COLLATE "C")'

    def position(self, haystack: str, needle: str) -> str:
        return f"strpos({haystack}, {needle})"

    def utc_day(self, expr: str) -> str:
        return f"to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def set_members(self, column: str) -> str:
        return f"LATERAL unnest(string_to_array({column}, ' ')) AS m(value)"

    def json_text(self, path: Sequence[str]) -> str:
        return f"(record #>> '{{{','.join(path)}}}')"

    def json_rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        kinds = ", ".join(f"{name} {kind}" for name, kind in columns)
        return f"json_to_recordset(CAST({param} AS json)) AS r({kinds})"

    def census_facts(self, alias: str) -> tuple[str, str]:
        return f"unnest({alias}.census) AS f(fact)", "f.fact"  # text[]

    def csv_line(self, cells: Sequence[tuple[str, Cell]], formula: str) -> str | None:
        # PostgreSQL writes each line itself: the work per row is what bounds an export,
        # and it is done beside this process. Column names only: no value enters the text.
        starts = ", ".join(f"chr({ord(c)})" for c in formula)
        out = []
        for column, cell in cells:
            if column == "ip":
                out.append(self.ip_text)
            elif cell == "time":
                # isoformat(): microseconds only when there are some
                out.append(f"coalesce(replace(to_char({column} AT TIME ZONE 'UTC', "
                           f"'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') || '+00:00', '')")
            elif cell == "flag":
                out.append(f"CASE {column} WHEN TRUE THEN 'true' WHEN FALSE THEN 'false' "
                           "ELSE '' END")
            elif cell == "foreign":
                safe = (f"CASE WHEN left({column}, 1) IN ({starts}) "
                        f"THEN chr(39) || {column} ELSE {column} END")
                special = " + ".join(f"strpos({column}, {c})" for c in
                                     ("','", "'\"'", "chr(10)", "chr(13)"))
                out.append(
                    f"CASE WHEN {column} IS NULL THEN '' WHEN {special} = 0 THEN {safe} "
                    f"ELSE '\"' || replace({safe}, '\"', '\"\"') || '\"' END")
            else:  # numbers, and names from a fixed vocabulary (transport, status, ...)
                out.append(f"coalesce(CAST({column} AS text), '')")
        return "concat_ws(',', " + ", ".join(out) + ")"


class SqliteDialect(Dialect):
    """SQLite: text addresses beside their number (``ip_num``), ``?`` parameters, times
    as fixed-width UTC text (they sort)."""

    service_order = ("ip_num", "ip", "port", "transport")
    ip_column = "ip_num"
    ip_text = "ip"
    extra_ip_columns = ("ip_num",)
    grouping_sets = False
    services_table = "services"
    current_facts_table = "services"
    retention_ledger = False

    def placeholder(self, position: int) -> str:
        return "?"

    def encode_date(self, day: date) -> object:
        return day.isoformat()

    def encode_time(self, moment: datetime) -> object:
        return format_time(moment)

    def decode_date(self, value: Any) -> date:
        return date.fromisoformat(str(value))

    def decode_time(self, value: Any) -> datetime:
        return parse_time(str(value))

    def ip_value(self, params: Params, number: int) -> str:
        return params.add(number)

    def after_service(self, params: Params, ip: str, port: int, transport: str) -> str:
        number = int.from_bytes(socket.inet_aton(ip), "big")
        marks = [params.add(v) for v in (number, ip, port, transport)]
        return f"({', '.join(self.service_order)}) > ({', '.join(marks)})"

    def ascii_lower(self, expr: str) -> str:
        return f"lower({expr})"

    def position(self, haystack: str, needle: str) -> str:
        return f"instr({haystack}, {needle})"

    def utc_day(self, expr: str) -> str:
        return f"substr(CAST({expr} AS text), 1, 10)"

    def set_members(self, column: str) -> str:
        return f"json_each('[\"' || replace({column}, ' ', '\",\"') || '\"]') AS m"

    def json_text(self, path: Sequence[str]) -> str:
        steps = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path)
        return f"json_extract(record, '${steps}')"

    def json_rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        picked = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
        return f"(SELECT {picked} FROM json_each({param})) AS r"

    def census_facts(self, alias: str) -> tuple[str, str]:
        return f"json_each({alias}.census) AS f", "f.value"  # a JSON array

    def csv_line(self, cells: Sequence[tuple[str, Cell]], formula: str) -> str | None:
        return None  # the store runs in this process: the caller writes the rows


PG: Final = PostgresDialect()
SQLITE: Final = SqliteDialect()


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
        return self.dialect.placeholder(len(self.values))
