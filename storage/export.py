"""Every result of a query, written out: CSV (the searchable columns, one header, one set of
cell rules) and JSON lines (the stored records). ``brokerscan search --all`` and the API's
``/export`` both stream these, so the two write the same bytes.

Cells: empty for unknown, ``true``/``false`` for booleans, ISO 8601 times, numbers as they
are; text a remote server chose (products, certificate names, organisations, ...) that a
spreadsheet would take for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return) gets a leading ``'``. Where the store writes whole lines in SQL
(:meth:`storage.dialect.Dialect.csv_line`, PostgreSQL) it is given the same rules.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, Final

from storage.dialect import Cell
from storage.search.compile import CURRENT, View
from storage.search.tree import Node
from storage.searcher import EXPORT_COLUMNS, Hit, Searcher

__all__ = ["CELLS", "FORMULA", "cell", "csv_chunks", "csv_header", "formula_safe", "hit_cells",
           "jsonl_chunks"]

#: The characters a spreadsheet reads a formula after.
FORMULA: Final = "=+-@\t\r"

_FORMULA_START: Final = frozenset(FORMULA)
_FLAGS: Final = frozenset({"tls", "anonymous", "cert_self_signed", "cert_expired",
                           "cert_trusted"})
#: Export columns whose text a remote server chose (a spreadsheet must not run it).
_FOREIGN: Final = frozenset({"product", "version", "amqp_mechanisms", "tls_version",
                             "cert_subject", "cert_issuer", "cert_sha256", "org", "country",
                             "sweep_id"})
_TIMES: Final = frozenset({"first_seen", "last_seen"})

#: How each export column becomes a cell, in the order of the columns.
CELLS: Final[tuple[tuple[str, Cell], ...]] = tuple(
    (c, "time" if c in _TIMES else "flag" if c in _FLAGS else "foreign" if c in _FOREIGN
     else "plain") for c in EXPORT_COLUMNS)
_KIND: Final[dict[str, Cell]] = dict(CELLS)


def formula_safe(text: str) -> str:
    """A text cell that a spreadsheet will not run as a formula: text starting with a
    character of :data:`FORMULA` gets a leading ``'``."""
    return "'" + text if text[:1] in _FORMULA_START else text


def _flag(value: Any) -> object:
    return None if value is None else "true" if value else "false"


def _foreign(value: Any) -> object:
    return None if value is None else formula_safe(str(value))


def _converters(decode_time: Callable[[Any], datetime],
                ) -> list[tuple[int, Callable[[Any], object]]]:
    def moment(value: Any) -> object:
        return None if value is None else decode_time(value).isoformat()

    by_kind: dict[Cell, Callable[[Any], object]] = {"time": moment, "flag": _flag,
                                                    "foreign": _foreign}
    return [(i, by_kind[kind]) for i, (_, kind) in enumerate(CELLS) if kind in by_kind]


def _cells_of(decode_time: Callable[[Any], datetime],
              ) -> Callable[[Sequence[Any]], list[object]]:
    """A function from a row of :data:`EXPORT_COLUMNS` values to its cells (None is an
    empty cell to the csv writer)."""
    steps = _converters(decode_time)

    def cells(row: Sequence[Any]) -> list[object]:
        out: list[object] = list(row)
        for i, convert in steps:
            out[i] = convert(out[i])
        return out
    return cells


def _same(value: Any) -> datetime:
    return value  # type: ignore[no-any-return]  # a Hit's times are decoded already


_HIT_CELLS: Final = _cells_of(_same)


def hit_cells(hit: Hit) -> list[object]:
    """The CSV cells of a hit of the search (its values decoded)."""
    return _HIT_CELLS([hit.values[c] for c in EXPORT_COLUMNS])


def cell(column: str, value: Any) -> object:
    """The CSV cell of one decoded *value* of *column* (a day, for a time column counted
    by day, stays as it is)."""
    kind = _KIND.get(column, "plain")
    if kind == "flag":
        return _flag(value)
    if kind == "foreign":
        return _foreign(value)
    return value.isoformat() if isinstance(value, datetime) else value


def _csv(rows: Sequence[Sequence[object]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def csv_header() -> str:
    """The header line of a CSV export."""
    return _csv([EXPORT_COLUMNS])


async def csv_chunks(searcher: Searcher, query: str | Node, *, view: View = CURRENT,
                     ) -> AsyncIterator[str]:
    """The header, then every row of *query* as CSV text, a chunk at a time (constant
    memory, no cap)."""
    yield csv_header()
    line = searcher.dialect.csv_line(CELLS, FORMULA)
    if line is not None:
        async for rows in searcher.export_rows(query, view=view, line=line):
            yield "\n".join([r[3] for r in rows]) + "\n"
        return
    cells = _cells_of(searcher.dialect.decode_time)
    async for rows in searcher.export_rows(query, view=view):
        yield _csv(list(map(cells, rows)))


async def jsonl_chunks(searcher: Searcher, query: str | Node, *, view: View = CURRENT,
                       ) -> AsyncIterator[str]:
    """Every record of *query* as stored (compact JSON, whose strings never hold a raw line
    break), one a line, a chunk at a time."""
    async for rows in searcher.export_rows(query, view=view, records=True):
        yield "".join(str(r[3]) + "\n" for r in rows)
