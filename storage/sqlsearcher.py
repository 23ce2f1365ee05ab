"""The search (:class:`storage.searcher.Searcher`) written once in SQL for either store:
the hosts behind a query, counts with facets, all of a result set for export, counts over
time, one address's history, grouped counts for reports.

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
import ipaddress
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Literal, cast

from brokerscan.mqttcodes import LEVEL_NAMES
from storage.cursor import decode_cursor, encode_cursor
from storage.dialect import Params
from storage.facets import EVERY, field_for
from storage.facets import source as facet_source
from storage.reader import Row, StoreReader
from storage.search.compile import (
    CURRENT,
    View,
    compile_where,
    group_expr,
    source,
    uses_rollup,
)
from storage.search.fields import Kind, lookup
from storage.search.parse import Node, parse
from storage.searcher import EXPORT_COLUMNS, MAX_PAGE, CountResult, Hit, Page

__all__ = ["SqlSearcher"]

_EXPORT_CHUNK: Final = 5000
#: Rollup columns that hold their values as they are (no sentinel for unknown).
_PLAIN_ROLLUP_COLUMNS: Final = frozenset({"port", "transport", "tls", "status"})


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


class SqlSearcher(StoreReader):
    """The search operations (:class:`storage.searcher.Searcher`), written once for any
    :class:`~storage.reader.StoreReader`."""

    # -- the hosts behind a query ------------------------------------------------------

    def _after(self, params: Params, cursor: str) -> str:
        ip, port, transport = decode_cursor(cursor, 3)
        if not isinstance(ip, str) or not isinstance(port, int) \
                or not isinstance(transport, str) or not _is_ipv4(ip) \
                or not 0 <= port <= 65535 or not transport.isalpha() \
                or not transport.isascii():
            raise ValueError("invalid cursor: not a cursor of this listing")
        return self._after_key(params, ip, port, transport)

    def _after_key(self, params: Params, ip: str, port: int, transport: str) -> str:
        return self.dialect.after_service(params, ip, port, transport)

    def _select_hits(self, node: Node, view: View, limit: int, cursor: str | None,
                     ) -> tuple[str, Params]:
        params = Params(self.dialect)
        frm = source(self.dialect, params, view)
        where = [compile_where(self.dialect, params, node)]
        if cursor is not None:
            where.append(self._after(params, cursor))
        columns = ", ".join((*EXPORT_COLUMNS, "record"))
        sql = (f"SELECT {columns} FROM {frm} WHERE {' AND '.join(where)} "
               f"ORDER BY {', '.join(self.dialect.service_order)} LIMIT {params.add(limit + 1)}")
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

    async def export_rows(self, query: str | Node, *, view: View = CURRENT,
                          records: bool = False, line: str | None = None,
                          chunk: int = _EXPORT_CHUNK,
                          ) -> AsyncIterator[list[Sequence[Any]]]:
        """Every row of *query* for a bulk export, a chunk at a time, as the driver gives
        them: with *records*, ``(ip, port, transport, record)`` (the record as JSON text);
        with *line* (an SQL expression over the view's columns), ``(ip, port, transport,
        line)``; otherwise the :data:`EXPORT_COLUMNS` in order (:mod:`storage.export` makes
        them cells). ``ip`` is text, and nothing is decoded here: an export is bounded by
        the work per row. The next chunk is asked for before this one is handed over, so
        the store reads it while the caller writes this one."""
        node = _node(query)
        ip_text = self.dialect.ip_text
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
            order = ", ".join(self.dialect.service_order)
            return (f"SELECT {columns} FROM {frm} WHERE {' AND '.join(where)} "
                    f"ORDER BY {order} LIMIT {params.add(chunk + 1)}", params.values)

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
        # Facets a facet rollup answers are counted there; the total and the others from
        # the main rollup when the query allows, else from the rows.
        rolled = {name: size for name, size in facets
                  if not uses_rollup(view, node, [name])
                  and field_for(view, node, name) is not None}
        rest = [(name, size) for name, size in facets if name not in rolled]
        rollup = uses_rollup(view, node, [name for name, _ in rest])
        together: dict[str, list[tuple[Any, int]]] = {}
        scalar = [(name, size) for name, size in rest if lookup(name).kind is not Kind.SET]
        if self.dialect.grouping_sets and scalar:
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
            if name in together:
                values = together[name]
            elif name in rolled:
                values = await self._facet(node, view, name, size, rollup=False,
                                           facet_rollup=True)
            else:
                values = await self._facet(node, view, name, size, rollup)
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
                     facet_rollup: bool = False) -> list[tuple[Any, int]]:
        """The top values of facet *name*: from the rows, the main rollup (*rollup*) or
        *name*'s facet rollup (*facet_rollup*, :mod:`storage.facets`)."""
        params = Params(self.dialect)
        if facet_rollup:
            frm = facet_source(params, view, name)
            rollup = True  # counts in n, groups that came down to 0 left out
            where = compile_where(self.dialect, params, node)
            expr = group_expr(self.dialect, name)
        else:
            frm = source(self.dialect, params, view, rollup=rollup)
            where = compile_where(self.dialect, params, node, rollup=rollup)
            expr = group_expr(self.dialect, name, rollup=rollup)
        counted = "coalesce(sum(n), 0)" if rollup else "count(*)"
        field = lookup(name)
        if field.kind is Kind.SET:
            column = field.column
            sql = (f"SELECT m.value AS value, count(*) AS n FROM {frm}, "
                   f"{self.dialect.set_members(column)} WHERE {where} "
                   f"AND {column} IS NOT NULL GROUP BY 1")
        else:
            sql = (f"SELECT {expr} AS value, {counted} AS n FROM {frm} WHERE {where} "
                   f"AND {expr} IS NOT NULL GROUP BY 1")
            if rollup:
                sql += f" HAVING {counted} > 0"
        sql += f" ORDER BY n DESC, value LIMIT {params.add(size)}"
        rows = await self.fetch(sql, params.values)
        return [(self._facet_value(field.column, r["value"]), int(r["n"])) for r in rows]

    def _facet_value(self, column: str, value: Any) -> Any:
        if column == "mqtt_levels":
            text = str(value)
            return LEVEL_NAMES.get(int(text), text) if text.isdigit() else text
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
        params = Params(self.dialect)
        field = field_for(history, node)
        if field is not None:  # a few rows per sweep
            table, counted = facet_source(params, history, field), "coalesce(sum(n), 0)"
            where = compile_where(self.dialect, params, node)
        elif uses_rollup(history, node):
            table, counted = "rollup AS v", "coalesce(sum(n), 0)"
            where = compile_where(self.dialect, params, node, rollup=True)
        else:
            table, counted = "(SELECT *, observed_at AS first_seen, observed_at AS " \
                "last_seen FROM observations) AS v", "count(*)"
            where = compile_where(self.dialect, params, node)
        if interval == "day":
            sql = (f"SELECT day AS bucket, {counted} AS n FROM {table} WHERE {where} "
                   "GROUP BY 1 ORDER BY 1")
        else:
            sql = (f"SELECT sweep_id AS bucket, {counted} AS n, min(day) AS first_day "
                   f"FROM {table} WHERE {where} GROUP BY 1 ORDER BY 3, 1")
        rows = await self.fetch(sql, params.values)
        return [(str(r["bucket"]), int(r["n"])) for r in rows]

    # -- one address -------------------------------------------------------------------

    async def host(self, ip: str, *, limit: int = 1000) -> list[str]:
        """Every observation of *ip* (newest first, at most *limit*), as JSON records.

        :raises ValueError: *ip* is not an IPv4 address
        """
        if not _is_ipv4(ip):
            raise ValueError(f"{ip!r} is not an IPv4 address")
        params = Params(self.dialect)
        address = self.dialect.ip_value(params, int(ipaddress.IPv4Address(ip)))
        where = f"{self.dialect.ip_column} = {address}"
        rows = await self.fetch(
            f"SELECT record FROM observations WHERE {where} "
            f"ORDER BY observed_at DESC, port LIMIT {params.add(limit)}", params.values)
        return [r["record"] if isinstance(r["record"], str) else str(r["record"]) for r in rows]

    # -- sweeps --------------------------------------------------------------------------

    async def sweeps_seen(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The sweeps (and local scans) the history holds: id, start, day, observations and
        hits by protocol, newest first (from a facet rollup: a few rows a sweep)."""
        params = Params(self.dialect)
        every = facet_source(params, View("sweep", sweep_id="-"), EVERY)
        rows = await self.fetch(
            "SELECT sweep_id, min(day) AS day, sum(n) AS observations, "
            "sum(CASE WHEN protocol = 'mqtt' THEN n ELSE 0 END) AS mqtt, "
            "sum(CASE WHEN protocol = 'amqp' THEN n ELSE 0 END) AS amqp "
            f"FROM {every} GROUP BY sweep_id ORDER BY 2 DESC, 1 DESC LIMIT {params.add(limit)}",
            params.values)
        return [{"id": r["sweep_id"], "day": str(self.decode("day", r["day"])),
                 "observations": int(r["observations"]),
                 "hits": {"mqtt": int(r["mqtt"]), "amqp": int(r["amqp"])}} for r in rows]

    # -- grouped counts, for reports ----------------------------------------------------

    async def grouped(self, view: View, node: Node, exprs: Sequence[str],
                      ) -> list[tuple[Any, ...]]:
        """Counts of *node* in *view* grouped by the SQL expressions *exprs* (columns of
        the view), largest first: ``[(value, ..., count)]``."""
        # Plain rollup columns under a rollup-answerable query: count the rollup's rows.
        rollup = set(exprs) <= _PLAIN_ROLLUP_COLUMNS and uses_rollup(view, node)
        params = Params(self.dialect)
        frm = source(self.dialect, params, view, rollup=rollup)
        where = compile_where(self.dialect, params, node, rollup=rollup)
        select = ", ".join(f"{e} AS g{i}" for i, e in enumerate(exprs))
        group = ", ".join(str(i + 1) for i in range(len(exprs)))
        counted = "coalesce(sum(n), 0)" if rollup else "count(*)"
        having = f" HAVING {counted} > 0" if rollup else ""
        rows = await self.fetch(
            f"SELECT {select}, {counted} AS n FROM {frm} WHERE {where} GROUP BY {group}"
            f"{having} ORDER BY {len(exprs) + 1} DESC, {group}", params.values)
        return [(*(r[f"g{i}"] for i in range(len(exprs))), int(r["n"])) for r in rows]

    def json_text(self, path: Sequence[str]) -> str:
        """The SQL expression of a text value inside the record (``path`` of keys)."""
        return self.dialect.json_text(path)
