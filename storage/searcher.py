"""Answering searches, in either store: the hosts behind a query, counts with facets, all
of a result set for export, counts over time, one address's history, and what changed
between two sweeps.

Built on :class:`storage.reader.StoreReader` (a backend gives its dialect and how it fetches
rows) and on the compiler of :mod:`storage.search.compile`; every value is a parameter.
Results are ordered by (ip, port, transport) and paged by a cursor on that key, so a page is
an index range scan however deep it is; an export walks the same pages, so its memory does
not grow with the result set.

Why one piece: every operation is a method of one class over the same three things (the
view's FROM item, the compiled WHERE and the dialect's decoding); split by operation, each
file would import the others' private helpers (the keyset clause, the facet ranking).
"""

from __future__ import annotations

import asyncio
import csv
import io
import ipaddress
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from storage.queries import Params, decode_cursor, encode_cursor
from storage.reader import Row, StoreReader
from storage.rows import ip_number
from storage.search.compile import (
    CURRENT,
    View,
    compile_where,
    group_expr,
    source,
    uses_rollup,
)
from storage.search.fields import Kind, lookup
from storage.search.parse import Node, QueryError, parse

__all__ = [
    "EXPORT_COLUMNS",
    "MAX_FACET",
    "MAX_FACETS",
    "MAX_PAGE",
    "CountResult",
    "Hit",
    "Page",
    "Searcher",
    "formula_safe",
    "parse_facets",
]

MAX_PAGE: Final = 1000
MAX_FACET: Final = 1000
#: Facets one count may ask for (each is a GROUP BY of its own on some stores).
MAX_FACETS: Final = 12
_EXPORT_CHUNK: Final = 5000

#: The columns of a CSV export, in order (every searchable column, flat).
EXPORT_COLUMNS: Final = (
    "ip", "port", "transport", "protocol", "status", "tls", "anonymous", "mqtt_return_code",
    "mqtt_levels", "product", "version", "amqp_family", "amqp_mechanisms", "tls_version",
    "cert_subject", "cert_issuer", "cert_sha256", "cert_self_signed", "cert_expired",
    "cert_trusted", "asn", "org", "country", "sweep_id", "first_seen", "last_seen",
)
_FORMULA: Final = frozenset("=+-@\t\r")


def formula_safe(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula: text starting with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``."""
    return "'" + text if text[:1] in _FORMULA else text


def _pg_csv_line() -> str:
    """One CSV line of :data:`EXPORT_COLUMNS` as a PostgreSQL expression: the cells
    :meth:`Searcher.export_cells` and Python's csv writer make (quoted when a cell holds a
    comma, a quote or a line break). Column names only: no value enters this text."""
    cells = []
    for column in EXPORT_COLUMNS:
        if column == "ip":
            cells.append("host(ip)")
        elif column in ("first_seen", "last_seen"):
            # isoformat(): microseconds only when there are some
            cells.append(f"coalesce(replace(to_char({column} AT TIME ZONE 'UTC', "
                         f"'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') || '+00:00', '')")
        elif column in _FLAG_COLUMNS:
            cells.append(f"CASE {column} WHEN TRUE THEN 'true' WHEN FALSE THEN 'false' "
                         "ELSE '' END")
        elif column in _FOREIGN_TEXT:
            safe = (f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', chr(9), chr(13)) "
                    f"THEN chr(39) || {column} ELSE {column} END")
            special = " + ".join(f"strpos({column}, {c})" for c in
                                 ("','", "'\"'", "chr(10)", "chr(13)"))
            cells.append(
                f"CASE WHEN {column} IS NULL THEN '' WHEN {special} = 0 THEN {safe} "
                f"ELSE '\"' || replace({safe}, '\"', '\"\"') || '\"' END")
        else:  # numbers, and names from a fixed vocabulary (transport, status, ...)
            cells.append(f"coalesce(CAST({column} AS text), '')")
    return "concat_ws(',', " + ", ".join(cells) + ")"


_FLAG_COLUMNS: Final = frozenset({"tls", "anonymous", "cert_self_signed", "cert_expired",
                                  "cert_trusted"})
#: Export columns whose text a remote server chose (a spreadsheet must not run it).
_FOREIGN_TEXT: Final = frozenset({"product", "version", "amqp_mechanisms", "tls_version",
                                  "cert_subject", "cert_issuer", "cert_sha256", "org",
                                  "country", "sweep_id"})
_LEVEL_NAMES: Final = {"3": "3.1", "4": "3.1.1", "5": "5.0"}


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


def _is_ipv4(text: str) -> bool:
    """A dotted-quad IPv4 address (``inet_aton`` also takes ``127.1`` and ``0x7f.1``, which
    PostgreSQL's ``inet`` refuses)."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _node(query: str | Node) -> Node:
    return parse(query) if isinstance(query, str) else query


class Searcher(StoreReader):
    """The search operations, for any :class:`~storage.reader.StoreReader`."""

    # -- the hosts behind a query ------------------------------------------------------

    def _order(self) -> tuple[str, ...]:
        return ("ip", "port", "transport") if self.dialect.positional \
            else ("ip_num", "ip", "port", "transport")

    def _after(self, params: Params, cursor: str) -> str:
        ip, port, transport = decode_cursor(cursor, 3)
        if not isinstance(ip, str) or not isinstance(port, int) \
                or not isinstance(transport, str) or not _is_ipv4(ip) \
                or not 0 <= port <= 65535 or not transport.isalpha() \
                or not transport.isascii():
            raise ValueError("invalid cursor: not a cursor of this listing")
        return self._after_key(params, ip, port, transport)

    def _after_key(self, params: Params, ip: str, port: int, transport: str) -> str:
        values: list[object] = [ip, port, transport]
        if self.dialect.positional:
            marks = [f"{params.add(ip)}::inet", params.add(port), params.add(transport)]
        else:
            values = [ip_number(ip), *values]
            marks = [params.add(v) for v in values]
        return f"({', '.join(self._order())}) > ({', '.join(marks)})"

    def _select_hits(self, node: Node, view: View, limit: int, cursor: str | None,
                     ) -> tuple[str, Params]:
        params = Params(self.dialect)
        frm = source(self.dialect, params, view)
        where = [compile_where(self.dialect, params, node)]
        if cursor is not None:
            where.append(self._after(params, cursor))
        columns = ", ".join((*EXPORT_COLUMNS, "record"))
        sql = (f"SELECT {columns} FROM {frm} WHERE {' AND '.join(where)} "
               f"ORDER BY {', '.join(self._order())} LIMIT {params.add(limit + 1)}")
        return sql, params

    def _hit(self, row: Row) -> Hit:
        values = {c: self.decode(c, row[c]) for c in EXPORT_COLUMNS}
        record = row["record"]
        return Hit(values, record if isinstance(record, str) else str(record))

    async def search(self, query: str | Node, *, view: View = CURRENT, limit: int = 100,
                     cursor: str | None = None) -> Page:
        """One page of the services (or observations) behind *query*.

        :raises QueryError: a malformed query
        :raises ValueError: a bad limit or cursor
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be in 1..{MAX_PAGE}, not {limit}")
        sql, params = self._select_hits(_node(query), view, limit, cursor)
        rows = await self.fetch(sql, params.values)
        hits = [self._hit(r) for r in rows[:limit]]
        more = encode_cursor(list(hits[-1].key)) if len(rows) > limit else None
        return Page(hits, more)

    async def export_csv(self, query: str | Node, *, view: View = CURRENT,
                         ) -> AsyncIterator[str]:
        """Every row of *query* as CSV text (no header: :data:`EXPORT_COLUMNS`), a chunk at
        a time: empty for unknown, ``true``/``false``, ISO 8601 times, text from servers
        made :func:`formula_safe`. PostgreSQL writes each line itself (the work per row is
        what bounds an export, and it is done beside this process); SQLite's rows are
        written here."""
        if self.dialect.positional:
            async for rows in self.export_rows(query, view=view, line=_pg_csv_line()):
                yield "\n".join([r[3] for r in rows]) + "\n"
            return
        cells = self.export_cells()
        async for rows in self.export_rows(query, view=view):
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(map(cells, rows))
            yield out.getvalue()

    async def export_rows(self, query: str | Node, *, view: View = CURRENT,
                          records: bool = False, line: str | None = None,
                          chunk: int = _EXPORT_CHUNK,
                          ) -> AsyncIterator[list[Sequence[Any]]]:
        """Every row of *query* for a bulk export, a chunk at a time, as the driver gives
        them: with *records*, ``(ip, port, transport, record)`` (the record as JSON text);
        with *line* (an SQL expression over the view's columns), ``(ip, port, transport,
        line)``; otherwise the :data:`EXPORT_COLUMNS` in order (:meth:`export_cells` makes
        them plain). ``ip`` is text, and nothing is decoded here: an export is bounded by
        the work per row. The next chunk is asked for before this one is handed over, so
        the store reads it while the caller writes this one."""
        node = _node(query)
        ip_text = "host(ip)" if self.dialect.positional else "ip"
        wanted: Sequence[str] = ("port", "transport", "record") if records \
            else ("port", "transport", f"{line} AS line") if line is not None \
            else EXPORT_COLUMNS[1:]
        columns = ", ".join((f"{ip_text} AS ip_text", *wanted))

        def select(after: Sequence[Any] | None) -> tuple[str, list[object]]:
            params = Params(self.dialect)
            frm = source(self.dialect, params, view)
            where = [compile_where(self.dialect, params, node)]
            if after is not None:
                where.append(self._after_key(params, str(after[0]), int(after[1]),
                                             str(after[2])))
            return (f"SELECT {columns} FROM {frm} WHERE {' AND '.join(where)} "
                    f"ORDER BY {', '.join(self._order())} LIMIT {params.add(chunk + 1)}",
                    params.values)

        pending = asyncio.ensure_future(self.fetch(*select(None)))
        try:
            while True:
                rows = cast(list[Sequence[Any]], await pending)  # records index by position
                more = len(rows) > chunk
                rows = rows[:chunk]
                if more:
                    pending = asyncio.ensure_future(self.fetch(*select(rows[-1])))
                if rows:
                    yield rows
                if not more:
                    return
        finally:
            pending.cancel()

    def export_cells(self, escape: Callable[[str], str] | None = formula_safe,
                     ) -> Callable[[Sequence[Any]], list[object]]:
        """A function from a row of :meth:`export_rows` to its plain cells: times in ISO
        8601, booleans ``true``/``false``, None for unknown, numbers as they are; *escape*
        applied to the text that comes from the Internet (products, certificate names,
        organisations, ...)."""
        d = self.dialect

        def moment(value: Any) -> object:
            return None if value is None else d.decode_time(value).isoformat()

        def flag(value: Any) -> object:
            return None if value is None else "true" if value else "false"

        def foreign(value: Any) -> object:
            return value if value is None or escape is None else escape(value)

        convert: list[Callable[[Any], object] | None] = []
        for column in EXPORT_COLUMNS:
            if column in ("first_seen", "last_seen"):
                convert.append(moment)
            elif column in _FLAG_COLUMNS:
                convert.append(flag)
            elif column in _FOREIGN_TEXT:
                convert.append(foreign)
            else:
                convert.append(None)
        steps = [(i, f) for i, f in enumerate(convert) if f is not None]

        def cells(row: Sequence[Any]) -> list[object]:
            out: list[object] = list(row)
            for i, f in steps:
                out[i] = f(out[i])
            return out
        return cells

    async def export(self, query: str | Node, *, view: View = CURRENT,
                     chunk: int = _EXPORT_CHUNK) -> AsyncIterator[list[Hit]]:
        """Every hit of *query*, a chunk at a time (constant memory, no cap)."""
        node = _node(query)
        cursor: str | None = None
        while True:
            sql, params = self._select_hits(node, view, chunk, cursor)
            rows = await self.fetch(sql, params.values)
            hits = [self._hit(r) for r in rows[:chunk]]
            if hits:
                yield hits
            if len(rows) <= chunk:
                return
            cursor = encode_cursor(list(hits[-1].key))

    # -- counts ------------------------------------------------------------------------

    async def count(self, query: str | Node, *, view: View = CURRENT,
                    facets: Sequence[tuple[str, int]] = ()) -> CountResult:
        """How many match *query*, and the top values of each facet.

        :raises QueryError: a malformed query or facet
        """
        node = _node(query)
        rollup = uses_rollup(view, node, [name for name, _ in facets])
        together: dict[str, list[tuple[Any, int]]] = {}
        scalar = [(name, size) for name, size in facets if lookup(name).kind is not Kind.SET]
        if self.dialect.positional and scalar:
            total, together = await self._facets_in_one_scan(node, view, scalar, rollup)
        else:
            params = Params(self.dialect)
            frm = source(self.dialect, params, view, rollup=rollup)
            where = compile_where(self.dialect, params, node, rollup=rollup)
            counted = "coalesce(sum(n), 0)" if rollup else "count(*)"
            rows = await self.fetch(f"SELECT {counted} AS n FROM {frm} WHERE {where}",
                                    params.values)
            total = int(rows[0]["n"])
        out: dict[str, list[tuple[Any, int]]] = {}
        other: dict[str, int] = {}
        labels: dict[str, dict[Any, str]] = {}
        for name, size in facets:
            values = together[name] if name in together \
                else await self._facet(node, view, name, size, rollup)
            out[name] = values
            if lookup(name).kind is not Kind.SET:
                other[name] = max(0, total - sum(c for _, c in values))
            if name == "asn" and values:
                labels[name] = await self.organisations([int(v) for v, _ in values])
        return CountResult(total, out, other, rollup, labels)

    async def organisations(self, numbers: Sequence[int]) -> dict[int, str]:
        """The organisation the current view records for each AS number (one service of
        each, found by the ``asn`` index: a few probes, however big the network)."""
        params = Params(self.dialect)
        rows_sql = ", ".join(f"(CAST({params.add(n)} AS bigint))" for n in numbers)
        rows = await self.fetch(
            f"WITH wanted(asn) AS (VALUES {rows_sql}) SELECT asn, (SELECT org FROM services "
            "WHERE services.asn = wanted.asn AND org IS NOT NULL LIMIT 1) AS org FROM wanted",
            params.values)
        return {int(r["asn"]): str(r["org"]) for r in rows if r["org"] is not None}

    async def _facets_in_one_scan(self, node: Node, view: View,
                                  facets: Sequence[tuple[str, int]], rollup: bool,
                                  ) -> tuple[int, dict[str, list[tuple[Any, int]]]]:
        """The total and the facets of a count, from one scan of the rows or the rollup
        (PostgreSQL's grouping sets) rather than one scan each: the same groups, ranked as
        :meth:`_facet` ranks them (count, then value; unknown values and groups of a
        rollup that came down to 0 left out)."""
        names = list(dict.fromkeys(name for name, _ in facets))
        sizes = {name: max(s for n, s in facets if n == name) for name in names}
        params = Params(self.dialect)
        frm = source(self.dialect, params, view, rollup=rollup)
        where = compile_where(self.dialect, params, node, rollup=rollup)
        counted = "coalesce(sum(n), 0)" if rollup else "count(*)"
        exprs = [group_expr(self.dialect, name, rollup=rollup) for name in names]
        values = ", ".join(f"{e} AS v{i}" for i, e in enumerate(exprs))
        flags = ", ".join(f"GROUPING({e}) AS g{i}" for i, e in enumerate(exprs))
        everything = " AND ".join(f"g{i} = 1" for i in range(len(exprs)))
        # Each facet's top values by its own top-N sort over the groups (one sort of every
        # group of every facet cost more than the scan on a rollup of 10^5 rows). The
        # branches come back in order, each sorted: an Append runs its plans one by one.
        tops = "".join(
            f" UNION ALL (SELECT * FROM g WHERE g{i} = 0 AND v{i} IS NOT NULL AND n > 0 "
            f"ORDER BY n DESC, v{i} LIMIT {params.add(sizes[name])})"
            for i, name in enumerate(names))
        sql = (f"WITH g AS MATERIALIZED (SELECT {values}, {flags}, {counted} AS n "
               f"FROM {frm} WHERE {where} "
               f"GROUP BY GROUPING SETS ((), {', '.join(f'({e})' for e in exprs)})) "
               f"(SELECT * FROM g WHERE {everything}){tops}")
        out: dict[str, list[tuple[Any, int]]] = {name: [] for name in names}
        total = 0  # no row at all: nothing matched (the empty grouping set still gives one)
        for row in await self.fetch(sql, params.values):
            i = next((i for i in range(len(names)) if row[f"g{i}"] == 0), None)
            if i is None:
                total = int(row["n"])
                continue
            name = names[i]
            out[name].append((self._facet_value(lookup(name).column, row[f"v{i}"]),
                              int(row["n"])))
        return total, out

    async def _facet(self, node: Node, view: View, name: str, size: int, rollup: bool,
                     ) -> list[tuple[Any, int]]:
        field = lookup(name)
        params = Params(self.dialect)
        frm = source(self.dialect, params, view, rollup=rollup)
        where = compile_where(self.dialect, params, node, rollup=rollup)
        counted = "coalesce(sum(n), 0)" if rollup else "count(*)"
        if field.kind is Kind.SET:
            column = field.column
            if self.dialect.positional:
                member = f"unnest(string_to_array({column}, ' '))"
                sql = (f"SELECT m.value AS value, count(*) AS n FROM {frm}, "
                       f"LATERAL {member} AS m(value) WHERE {where} AND {column} IS NOT NULL "
                       f"GROUP BY 1")
            else:
                member = (f"json_each('[\"' || replace({column}, ' ', '\",\"') || '\"]')")
                sql = (f"SELECT m.value AS value, count(*) AS n FROM {frm}, {member} AS m "
                       f"WHERE {where} AND {column} IS NOT NULL GROUP BY 1")
        else:
            expr = group_expr(self.dialect, name, rollup=rollup)
            sql = (f"SELECT {expr} AS value, {counted} AS n FROM {frm} WHERE {where} "
                   f"AND {expr} IS NOT NULL GROUP BY 1")
            if rollup:
                sql += f" HAVING {counted} > 0"
        sql += f" ORDER BY n DESC, value LIMIT {params.add(size)}"
        rows = await self.fetch(sql, params.values)
        return [(self._facet_value(field.column, r["value"]), int(r["n"])) for r in rows]

    def _facet_value(self, column: str, value: Any) -> Any:
        if column == "mqtt_levels":
            return _LEVEL_NAMES.get(str(value), str(value))
        if column in ("first_seen", "last_seen"):
            return value
        return self.decode(column, value)

    async def trends(self, query: str | Node, *, interval: Literal["day", "sweep"] = "day",
                     ) -> list[tuple[str, int]]:
        """Counts of observations matching *query* per day (the day each sweep started) or
        per sweep (in the order they started), from the history.

        :raises QueryError: a malformed query
        """
        node = _node(query)
        history = View("sweep", sweep_id="-")
        rollup = uses_rollup(history, node)
        params = Params(self.dialect)
        where = compile_where(self.dialect, params, node, rollup=rollup)
        if rollup:
            table, counted, day = "rollup", "coalesce(sum(n), 0)", "day"
        else:
            table, counted, day = "(SELECT *, observed_at AS first_seen, observed_at AS " \
                "last_seen FROM observations)", "count(*)", "day"
        if interval == "day":
            sql = (f"SELECT {day} AS bucket, {counted} AS n FROM {table} AS v WHERE {where} "
                   "GROUP BY 1 ORDER BY 1")
        else:
            sql = (f"SELECT sweep_id AS bucket, {counted} AS n, min({day}) AS first_day "
                   f"FROM {table} AS v WHERE {where} GROUP BY 1 ORDER BY 3, 1")
        rows = await self.fetch(sql, params.values)
        return [(str(r["bucket"]), int(r["n"])) for r in rows]

    # -- one address -------------------------------------------------------------------

    async def host(self, ip: str, *, limit: int = 1000) -> list[str]:
        """Every observation of *ip* (newest first, at most *limit*), as JSON records.

        :raises ValueError: *ip* is not an IPv4 address
        """
        number = ip_number(ip) if _is_ipv4(ip) else None
        if number is None:
            raise ValueError(f"{ip!r} is not an IPv4 address")
        params = Params(self.dialect)
        where = f"ip = {params.add(ip)}::inet" if self.dialect.positional \
            else f"ip_num = {params.add(number)}"
        rows = await self.fetch(
            f"SELECT record FROM observations WHERE {where} "
            f"ORDER BY observed_at DESC, port LIMIT {params.add(limit)}", params.values)
        return [r["record"] if isinstance(r["record"], str) else str(r["record"]) for r in rows]

    # -- sweeps --------------------------------------------------------------------------

    async def sweeps_seen(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The sweeps (and local scans) the history holds: id, start, day, observations and
        hits by protocol, newest first (from the rollup)."""
        params = Params(self.dialect)
        rows = await self.fetch(
            "SELECT sweep_id, min(day) AS day, sum(n) AS observations, "
            "sum(CASE WHEN protocol = 'mqtt' THEN n ELSE 0 END) AS mqtt, "
            "sum(CASE WHEN protocol = 'amqp' THEN n ELSE 0 END) AS amqp "
            f"FROM rollup GROUP BY sweep_id ORDER BY 2 DESC, 1 DESC LIMIT {params.add(limit)}",
            params.values)
        return [{"id": r["sweep_id"], "day": str(self.decode("day", r["day"])),
                 "observations": int(r["observations"]),
                 "hits": {"mqtt": int(r["mqtt"]), "amqp": int(r["amqp"])}} for r in rows]
