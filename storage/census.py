"""Two questions over whole views, in either store: the census report (the counts
:class:`brokerscan.report.Report` renders, counted in the store instead of in memory) and
what changed between two sweeps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from brokerscan.mqttcodes import return_code_name
from storage.queries import Params
from storage.reader import Row
from storage.rows import ip_number
from storage.search.compile import CURRENT, View, compile_where, source
from storage.search.parse import parse
from storage.search.tree import Node
from storage.searcher import Searcher

__all__ = ["Changed", "Diff", "census_report", "diff_sweeps"]


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
    """The census report (the shape :class:`brokerscan.report.Report` renders) of a
    view, counted in the store."""
    async def total(query: str) -> int:
        return (await store.count(query, view=view)).total

    def as_dict(rows: list[tuple[Any, ...]], name: Any = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for *keys, n in rows:
            key = name(*keys) if name else str(keys[0])
            out[key] = out.get(key, 0) + n
        return out

    def port_key(port: Any, transport: Any) -> str:
        return f"{port}/{transport}"

    def product_key(product: Any, version: Any) -> str:
        name = product or "unknown"
        return name if version is None else f"{name} {version}"

    def joined(mechanisms: Any) -> str:
        return " ".join(json.loads(mechanisms)) if isinstance(mechanisms, str) else "?"

    mqtt, amqp = parse("protocol:mqtt"), parse("protocol:amqp")
    done = parse("tls:true AND tls.version:*")
    websocket = parse("protocol:mqtt AND (transport:ws OR transport:wss)")
    levels = await store.count(mqtt, view=view, facets=[("mqtt.level", 10)])
    # only servers that offered mechanisms can have answered the SASL header: a column
    # narrows the rows before the records are read
    offered = parse("protocol:amqp amqp.mechanisms:*")
    sasl = await store.grouped(view, offered, [store.json_text(("amqp", "sasl", "mechanisms")),
                                            store.json_text(("amqp", "sasl",
                                                             "anonymous_offered"))])
    sasl = [row for row in sasl if row[0] is not None and joined(row[0])]
    http = await store.grouped(view, parse("NOT protocol:*"),
                               [store.json_text(("websocket", "server")),
                                store.json_text(("websocket", "tries", "0", "status"))])
    http = [row for row in http if row[1] is not None]  # an HTTP answer, no MQTT in it
    return {
        "view": view.describe(),
        "mqtt": {
            "servers": await total("protocol:mqtt"),
            "plaintext_on_1883": await total("protocol:mqtt port:1883 tls:false"),
            "tls_on_8883": await total("protocol:mqtt port:8883 tls:true"),
            "tls_any_port": await total("protocol:mqtt tls:true"),
            "anonymous_accepted": await total("protocol:mqtt anonymous:true"),
            "auth_required": await total("protocol:mqtt anonymous:false"),
            "by_port": as_dict(await store.grouped(view, mqtt, ["port", "transport"]),
                               port_key),
            "by_return_code": as_dict(await store.grouped(
                view, mqtt, ["mqtt_level", "mqtt_return_code"]),
                lambda level, code: "?" if level is None or code is None
                else return_code_name(int(level), int(code))),
            "by_accepted_level": dict(levels.facets["mqtt.level"]),
            "by_product": as_dict(await store.grouped(view, mqtt, ["product", "version"]),
                                  product_key),
            "over_websocket": await total(
                "protocol:mqtt AND (transport:ws OR transport:wss)"),
            "websocket_endpoints": as_dict(await store.grouped(
                view, websocket, ["transport", store.json_text(("websocket", "path"))]),
                lambda transport, path: f"{transport} {path}"),
        },
        "websocket": {
            "http_without_mqtt": sum(row[-1] for row in http),
            "by_server": as_dict([(server or "(no Server header)", n)
                                  for server, _, n in http]),
        },
        "amqp": {
            "services": await total("protocol:amqp"),
            "by_port": as_dict(await store.grouped(view, amqp, ["port", "transport"]),
                               port_key),
            "by_product": as_dict(
                await store.grouped(view, amqp, ["product", "version", "amqp_family"]),
                lambda p, v, f: f"{p or '?'} {v or '?'}" if p or v
                else f"(AMQP {f}, no Connection.Start)"),
            "by_family": as_dict(await store.grouped(view, amqp, ["amqp_family"])),
            "amqp10_sasl_mechanisms": as_dict([(joined(m), n) for m, _, n in sasl]),
            "amqp10_anonymous_offered": sum(n for _, anonymous, n in sasl
                                            if str(anonymous).lower() in ("true", "1")),
        },
        "tls": {
            "handshakes": await total("tls:true AND tls.version:*"),
            "self_signed": await total("tls.version:* cert.self_signed:true"),
            "expired": await total("tls.version:* cert.expired:true"),
            "trusted": await total("tls.version:* cert.trusted:true"),
            "client_certificate_required": sum(
                n for value, n in await store.grouped(
                    view, parse("tls:true"),
                    [store.json_text(("tls", "client_certificate_required"))])
                if str(value).lower() in ("true", "1")),
            "by_version": as_dict(await store.grouped(view, done, ["tls_version"])),
        },
        "other_open": {
            "ports": await total("status:protocol-error"),
            "by_port": as_dict(await store.grouped(
                view, parse("status:protocol-error"), ["port", "transport"]), port_key),
        },
    }


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
        what = _changes(r)
        if what:
            counts["changed"] += 1
            for change in what:
                counts[change] += 1
            if len(changed) < limit:
                changed.append(Changed(str(r["ip"]), int(r["port"]), what))
    return Diff(a, b, keys["new"][:limit], keys["gone"][:limit], changed, counts,
                flipped[True], flipped[False])


def _changes(r: Row) -> list[str]:
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
