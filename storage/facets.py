"""Facet rollups: counts by (protocol, one field's value) for the fields the other rollups
do not hold (:data:`FIELDS`), per sweep (``facet_sweep``) and for the current view
(``facet_current``), kept in the transaction that writes the rows (PostgreSQL: migration
0014's triggers; SQLite: schema step 8's).

For each field every row counts once, under its value or as unknown (``known`` false), so
the rows of one field are a partition of the view by protocol and value: any query over
``protocol`` (and ``sweep``) and that one field is answered exactly by a sum over them.
That is what the overview asks (the CONNACK codes of MQTT, the AMQP products, the trend
of anonymous MQTT brokers) and the search page's facets of a query that only names a
protocol. :func:`source` presents one field's rows with the columns the query compiler
knows (``protocol``, the field's column, ``sweep_id``, ``day``) and their count ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from storage.dialect import Params
from storage.search.compile import View, fields_of
from storage.search.fields import Kind, lookup
from storage.search.parse import Node

__all__ = ["EVERY", "FIELDS", "field_for", "row_values", "rows_sql", "source"]

#: Each field's value as text over a row of ``observations`` or of the current view
#: (``{a}``: the row's alias), NULL when unknown: the same in both stores (a boolean is
#: TRUE/FALSE in PostgreSQL, 1/0 in SQLite; both give '1'/'0'). PostgreSQL's triggers say
#: it once more in SQL (0014's ``facet_values``); ``brokerscan db verify`` compares.
FIELDS: Final = {
    "anonymous": "CASE {a}.anonymous WHEN TRUE THEN '1' WHEN FALSE THEN '0' END",
    "mqtt.return_code": "CAST({a}.mqtt_return_code AS TEXT)",
    "product": "{a}.product",
    "version": "{a}.version",
    "amqp.family": "{a}.amqp_family",
    "tls.version": "{a}.tls_version",
    "cert.trusted": "CASE {a}.cert_trusted WHEN TRUE THEN '1' WHEN FALSE THEN '0' END",
    "cert.self_signed": "CASE {a}.cert_self_signed WHEN TRUE THEN '1' WHEN FALSE THEN '0' END",
}
#: The field a count over protocol alone reads (the fewest values: any would do).
EVERY: Final = "anonymous"
#: Fields a query may name beside the one counted by.
_FREE: Final = frozenset({"protocol", "sweep"})


def field_for(view: View, node: Node, facet: str | None = None) -> str | None:
    """The field whose rows answer a count of *node* in *view* (by *facet*, if given), or
    None when no facet rollup does (a view as of a day; a query over other fields)."""
    used = fields_of(node)
    if view.kind == "at" or (view.kind == "current" and "sweep" in used):
        return None
    names = used - _FREE
    if facet is not None:
        return facet if facet in FIELDS and names <= {facet} else None
    if not names:
        return EVERY
    name = names.pop() if len(names) == 1 else ""
    return name if name in FIELDS else None


def _typed(field: str) -> str:
    kind = lookup(field).kind
    if kind is Kind.BOOL:
        value = "(value = '1')"
    elif kind is Kind.INT:
        value = "CAST(value AS INTEGER)"
    else:
        value = "value"
    return f"CASE WHEN known THEN {value} END"


def source(params: Params, view: View, field: str) -> str:
    """The FROM item of *field*'s rows in *view* (the current view, a sweep, or with
    ``View("sweep", sweep_id="-")`` every sweep), counts in ``n``."""
    column = lookup(field).column
    columns = f"NULLIF(protocol, '') AS protocol, {_typed(field)} AS {column}, n"
    if view.kind == "current":
        return (f"(SELECT {columns} FROM facet_current "
                f"WHERE field = {params.add(field)}) AS v")
    where = f"field = {params.add(field)}"
    if view.sweep_id != "-":
        where += f" AND sweep_id = {params.add(view.sweep_id)}"
    return f"(SELECT day, sweep_id, {columns} FROM facet_sweep WHERE {where}) AS v"


_FIELD_NAMES: Final = " UNION ALL ".join(f"SELECT '{name}' AS field" for name in FIELDS)


def _value(alias: str) -> str:
    """The value of the field named by ``f.field`` of row *alias*, as text or NULL."""
    return "CASE f.field " + " ".join(
        f"WHEN '{name}' THEN {expr.format(a=alias)}" for name, expr in FIELDS.items()) + " END"


def row_values(alias: str) -> str:
    """A subquery of the (field, protocol, known, value) of every field of the one row
    *alias* (``new`` or ``old`` in a trigger)."""
    return (f"(SELECT field, coalesce({alias}.protocol, '') AS protocol, "
            "v IS NOT NULL AS known, coalesce(v, '') AS value FROM "
            f"(SELECT f.field, {_value(alias)} AS v FROM ({_FIELD_NAMES}) AS f) AS x)")


def rows_sql(table: str, keys: Sequence[str]) -> str:
    """``SELECT keys..., field, protocol, known, value, count(*) AS n`` counted from the
    rows of *table* (``observations``, one of its partitions, or the current view) for
    every field: what the rollups must hold (``db verify``, the retention ledger)."""
    groups = ", ".join(str(i + 1) for i in range(len(keys) + 4))
    return (f"SELECT {''.join(f'{k}, ' for k in keys)}field, protocol, "
            "v IS NOT NULL AS known, coalesce(v, '') AS value, count(*) AS n FROM ("
            f"SELECT {''.join(f'o.{k}, ' for k in keys)}f.field, "
            f"coalesce(o.protocol, '') AS protocol, {_value('o')} AS v "
            f"FROM {table} AS o CROSS JOIN ({_FIELD_NAMES}) AS f) AS x GROUP BY {groups}")
