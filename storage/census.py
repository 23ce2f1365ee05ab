"""Two questions over whole views, in either store: the census report (the counts
:class:`brokerscan.report.Report` renders, read from the store's rollups) and what changed
between two sweeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from brokerscan.report import report_of
from storage.dialect import Params
from storage.reader import Row
from storage.rollups import census_counts
from storage.rows import ip_number
from storage.search.compile import CURRENT, View, compile_where, source
from storage.search.parse import parse
from storage.search.tree import Node
from storage.searcher import Searcher

__all__ = ["Changed", "Diff", "census_report", "diff_sweeps", "exposure_changes"]


@dataclass(frozen=True, slots=True)
class Changed:
    """A service seen in both sweeps whose exposure changed, and how."""

    ip: str
    port: int
    changes: list[str]


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed between sweep *a* and sweep *b* (services that answered, matching the
    query on either side), as counts and as lists (each at most ``limit`` long)."""

    a: str
    b: str
    new: list[tuple[str, int]]
    gone: list[tuple[str, int]]
    changed: list[Changed]
    counts: dict[str, int]
    #: answered in both sweeps, matching the query in *b* only, or in *a* only
    now_matching: list[tuple[str, int]] = field(default_factory=list)
    stopped_matching: list[tuple[str, int]] = field(default_factory=list)


async def census_report(store: Searcher, view: View = CURRENT) -> dict[str, Any]:
    """The census report (the shape :class:`brokerscan.report.Report` gives) of a view,
    from the store's rollups (:mod:`storage.rollups`): the same facts a scan counts in
    memory, shaped by the same function."""
    return {"view": view.describe(), **report_of(await census_counts(store, view))}


async def diff_sweeps(store: Searcher, a: str, b: str, query: str | Node = "", *,
                      limit: int = 1000) -> Diff:
    """Services that answered in sweep *b* and not *a* (new), in *a* and not *b* (gone),
    and in both with a change of exposure: anonymous access granted or withdrawn, TLS
    added or removed, certificate replaced, product or version changed. A service is
    (ip, port); the query has to match it on either side.

    :raises QueryError: a malformed query
    """
    node = parse(query) if isinstance(query, str) else query
    dialect = store.dialect
    columns = "ip, port, tls, anonymous, cert_sha256, product, version"

    def side(params: Params, sweep: str, *, hit: bool, without: str | None = None) -> str:
        """One sweep's answering services (aliased ``v``); with *hit*, only those the query
        matches (else a ``hit`` column says); *without*: none that also answered in that
        sweep (an anti-join on the (sweep_id, ip, port) key, which SQLite indexes)."""
        # parameters in the order of the text (SQLite's are positional)
        view = View("sweep", sweep_id=sweep)
        if hit:
            frm = source(dialect, params, view)
            where = compile_where(dialect, params, node)
        else:
            where = compile_where(dialect, params, node)  # in the SELECT list, first
            frm = source(dialect, params, view)
        conditions = ["status = 'success'"]
        if hit:
            conditions.append(where)
        if without is not None:
            conditions.append(
                "NOT EXISTS (SELECT 1 FROM observations AS o WHERE o.sweep_id = "
                f"{params.add(without)} AND o.ip = v.ip AND o.port = v.port "
                "AND o.status = 'success')")
        shown = "ip, port" if hit else \
            f"{columns}, CASE WHEN {where} THEN 1 ELSE 0 END AS hit"
        return f"SELECT {shown} FROM {frm} WHERE {' AND '.join(conditions)}"

    keys: dict[str, list[tuple[str, int]]] = {}
    for name, here, there in (("new", b, a), ("gone", a, b)):
        params = Params(dialect)
        rows = await store.fetch(side(params, here, hit=True, without=there), params.values)
        keys[name] = sorted(((str(r["ip"]), int(r["port"])) for r in rows),
                            key=lambda k: (ip_number(k[0]) or 0, k[1]))
    params = Params(dialect)
    side_b = side(params, b, hit=False)  # b comes first in the text: its parameters first
    side_a = side(params, a, hit=False)  # (SQLite's are positional)
    both = await store.fetch(
        f"SELECT b.ip AS ip, b.port AS port, a.tls AS a_tls, b.tls AS b_tls, "
        "a.anonymous AS a_anon, b.anonymous AS b_anon, a.cert_sha256 AS a_cert, "
        "b.cert_sha256 AS b_cert, a.product AS a_product, b.product AS b_product, "
        "a.version AS a_version, b.version AS b_version, a.hit AS a_hit, b.hit AS b_hit "
        f"FROM ({side_b}) AS b JOIN ({side_a}) AS a ON a.ip = b.ip AND a.port = b.port "
        "WHERE a.hit = 1 OR b.hit = 1", params.values)
    counts = {"new": len(keys["new"]), "gone": len(keys["gone"]), "changed": 0,
              "anonymous_granted": 0, "anonymous_withdrawn": 0, "tls_added": 0,
              "tls_removed": 0, "certificate_replaced": 0, "product_changed": 0,
              "version_changed": 0}
    changed: list[Changed] = []
    flipped: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    for r in sorted(both, key=lambda r: (ip_number(str(r["ip"])) or 0, r["port"])):
        if bool(r["a_hit"]) != bool(r["b_hit"]) and len(flipped[bool(r["b_hit"])]) < limit:
            flipped[bool(r["b_hit"])].append((str(r["ip"]), int(r["port"])))
        what = exposure_changes(r)
        if what:
            counts["changed"] += 1
            for change in what:
                counts[change] += 1
            if len(changed) < limit:
                changed.append(Changed(str(r["ip"]), int(r["port"]), what))
    return Diff(a, b, keys["new"][:limit], keys["gone"][:limit], changed, counts,
                flipped[True], flipped[False])


def exposure_changes(r: Row) -> list[str]:
    """How a service seen in both sweeps changed (its row has ``a_`` and ``b_`` columns:
    ``anon``, ``tls``, ``cert``, ``product``, ``version``)."""
    out = []
    a_anon, b_anon = r["a_anon"], r["b_anon"]
    if bool(b_anon) and not bool(a_anon) and b_anon is not None:
        out.append("anonymous_granted")
    elif bool(a_anon) and not bool(b_anon):
        out.append("anonymous_withdrawn")
    if bool(r["b_tls"]) and not bool(r["a_tls"]):
        out.append("tls_added")
    elif bool(r["a_tls"]) and not bool(r["b_tls"]):
        out.append("tls_removed")
    if r["a_cert"] is not None and r["b_cert"] is not None and r["a_cert"] != r["b_cert"]:
        out.append("certificate_replaced")
    # a product or version is changed only when both sweeps knew one (learning it, or no
    # longer being told it, is not a change of the broker)
    for column, change in (("product", "product_changed"), ("version", "version_changed")):
        before, after = r[f"a_{column}"], r[f"b_{column}"]
        if before is not None and after is not None and before != after:
            out.append(change)
    return out
