"""``GET /api/v1/query/explain`` (the parsed query, or where it is wrong) and
``GET /api/v1/fields`` (every field of the search language, for the dashboard's help)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from brokerscan.api.models import Explain, FieldInfo, QueryNode
from storage.search.compile import CURRENT, fields_of, uses_rollup
from storage.search.fields import FIELDS, Kind
from storage.search.parse import (
    MAX_LENGTH,
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
    parse,
)

__all__ = ["router", "tree_of"]

router = APIRouter(tags=["query"])


def _bound(kind: Kind, value: int | datetime | None) -> str | int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if kind is Kind.IP:
        return str(ipaddress.IPv4Address(value))
    return value


def tree_of(node: Node) -> QueryNode:
    """A parsed query as JSON-friendly nodes (addresses dotted, times ISO 8601)."""
    if isinstance(node, All):
        return QueryNode(op="all")
    if isinstance(node, Not):
        return QueryNode(op="not", items=[tree_of(node.item)])
    if isinstance(node, And | Or):
        return QueryNode(op="and" if isinstance(node, And) else "or",
                         items=[tree_of(item) for item in node.items])
    if isinstance(node, Bare):
        return QueryNode(op="bare", value=node.text)
    if isinstance(node, Exists):
        return QueryNode(op="exists", field=node.field.name)
    if isinstance(node, Prefix):
        return QueryNode(op="prefix", field=node.field.name, value=node.prefix)
    if isinstance(node, Match):
        value = node.value
        if node.field.kind is Kind.IP and isinstance(value, int):
            value = str(ipaddress.IPv4Address(value))
        return QueryNode(op="match", field=node.field.name, value=value)
    assert isinstance(node, Range)
    kind = node.field.kind
    return QueryNode(op="range", field=node.field.name, low=_bound(kind, node.low),
                     high=_bound(kind, node.high), low_inclusive=node.low_inclusive,
                     high_inclusive=node.high_inclusive)


@router.get("/query/explain", response_model=Explain, response_model_exclude_none=True)
async def explain(q: Annotated[str, Query(max_length=2 * MAX_LENGTH)] = "") -> Explain:
    """Check a query without running it: its tree and the fields it reads, or the mistake
    with its position (``valid: false``; the status is 200 either way)."""
    try:
        node = parse(q)
    except QueryError as exc:
        return Explain(query=q, valid=False, error=exc.message, position=exc.position,
                       column=exc.column)
    return Explain(query=q, valid=True, tree=tree_of(node),
                   fields=sorted(f or "(bare term)" for f in fields_of(node)),
                   rollup=uses_rollup(CURRENT, node))


@router.get("/fields", response_model=list[FieldInfo])
async def fields() -> list[FieldInfo]:
    """Every field of the search language: its name, other names, kind, help line, the
    values it takes (when the vocabulary is closed), and whether it can be a facet."""
    return [FieldInfo(name=f.name, aliases=list(f.aliases), kind=str(f.kind), help=f.help,
                      choices=list(f.choices), facet=f.kind is not Kind.IP) for f in FIELDS]
