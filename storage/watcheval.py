"""Evaluating every watch (:mod:`storage.watches`) on a sweep against the sweep before it,
in one pass, and recording what it finds as events with their pending deliveries.

One statement reads both sweeps once (each bounded by the days it started on, so that
PostgreSQL reads only those daily partitions) and joins them per (ip, port). Each distinct
query of the watches is compiled by the search compiler (:mod:`storage.search.compile`, the
same as ``brokerscan search`` and ``diff``) into one bit of a per-side mask; a row comes
back only where the masks differ (or, with AS-number watches, the AS number changed; or,
with ``cert_expiry_days``, a matching certificate expires soon). Networks and AS numbers,
which most watches differ by, are applied to those rows here through dictionaries keyed by
prefix and number, so 100 watches on 100 ranges cost one scan, not 100.

What each watch gets is exactly what :func:`storage.census.diff_sweeps` under its
effective query (:func:`storage.watches.effective_query`) says: ``new`` (answered only in
the new sweep, matching), ``gone`` (matched, answered only before), ``now_matching`` and
``stopped_matching`` (answered in both, matching on one side; with the exposure changes as
detail); ``certificate_expired`` (``certificates``): new or now matching with
``cert.expired:true`` added; ``certificate_expiring`` (``cert_expiry_days``): matching now,
with a leaf certificate whose ``not_after`` is before the observation plus that many days.

Events not recorded yet are inserted in chunks (one JSON parameter a chunk, each chunk's
deliveries right after it), so no statement holds the store for long; when the sweep had
events already, one statement then gives every one that lacks them its deliveries.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from storage.census import exposure_changes
from storage.dialect import Dialect, Params
from storage.reader import Row
from storage.search.compile import View, compile_where, source
from storage.search.parse import parse
from storage.search.tree import Node
from storage.searcher import Searcher
from storage.watches import Event, Watch, list_watches

__all__ = ["evaluate_sweep", "previous_sweep", "record_test_event", "sweep_days",
           "sweep_stored"]

#: distinct queries per mask column (bits of a signed 64-bit integer)
_BITS: Final = 62
#: events (and their deliveries) written by one statement
_CHUNK: Final = 5000
_EXPIRY_PATH: Final = ("tls", "certificate", "not_after")
_EVENT_COLUMNS: Final = (("id", "text"), ("watch", "text"), ("ip", "text"),
                         ("port", "integer"), ("kind", "text"), ("detail", "text"))
_FRESH_COLUMNS: Final = (("id", "text"), ("watch", "text"))

Found = tuple[str, str, int, str, dict[str, Any]]  # watch, ip, port, kind, detail


async def sweep_days(store: Searcher, sweep_id: str) -> tuple[date, date] | None:
    """The first and last UTC day *sweep_id*'s results started on (from the rollup, which
    every stored result adds to), or None if nothing of it is stored."""
    params = Params(store.dialect)
    rows = await store.fetch(
        "SELECT min(day) AS low, max(day) AS high FROM rollup WHERE sweep_id = "
        f"{params.add(sweep_id)}", params.values)
    if not rows or rows[0]["low"] is None:
        return None
    d = store.dialect
    return d.decode_date(rows[0]["low"]), d.decode_date(rows[0]["high"])


async def sweep_stored(store: Searcher, sweep_id: str) -> int:
    """How many results of *sweep_id* the store holds (successes or not), from the
    rollup."""
    params = Params(store.dialect)
    rows = await store.fetch(
        f"SELECT sum(n) AS n FROM rollup WHERE sweep_id = {params.add(sweep_id)}",
        params.values)
    return int(rows[0]["n"] or 0) if rows else 0


async def previous_sweep(store: Searcher, sweep_id: str) -> str | None:
    """The sweep (or local scan) that started last before *sweep_id*, if any. Its first
    day is the latest first day of another sweep in the rollup up to *sweep_id*'s: only
    the observations from that day to *sweep_id*'s last are read (partitions, in
    PostgreSQL)."""
    days = await sweep_days(store, sweep_id)
    if days is None:
        return None
    params = Params(store.dialect)
    rows = await store.fetch(
        "SELECT max(first) AS day FROM (SELECT sweep_id, min(day) AS first FROM rollup "
        f"GROUP BY sweep_id) AS s WHERE sweep_id <> {params.add(sweep_id)} "
        f"AND first <= {params.add(days[0])}", params.values)
    if not rows or rows[0]["day"] is None:
        return None
    params = Params(store.dialect)
    start = params.add(_midnight(store.dialect.decode_date(rows[0]["day"])))
    end = params.add(_midnight(days[1] + timedelta(days=1)))
    mark = params.add(sweep_id)
    rows = await store.fetch(
        "WITH s AS (SELECT sweep_id, min(sweep_started_at) AS started FROM observations "
        f"WHERE sweep_started_at >= {start} AND sweep_started_at < {end} GROUP BY sweep_id) "
        f"SELECT sweep_id FROM s WHERE started < (SELECT started FROM s WHERE sweep_id = "
        f"{mark}) ORDER BY started DESC, sweep_id DESC LIMIT 1", params.values)
    return str(rows[0]["sweep_id"]) if rows else None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Target:
    """One watch's interest in one query bit: its diff kinds (``expired``: only
    certificate_expired), its networks (as (number, mask)) and AS numbers."""

    watch: Watch
    expired: bool
    networks: tuple[tuple[int, int], ...]
    asns: frozenset[int]


@dataclass(slots=True)
class _Bit:
    """Who listens to one query: everywhere, by network prefix, by AS number."""

    node: Node
    everywhere: list[_Target] = field(default_factory=list)
    by_prefix: dict[int, dict[int, list[_Target]]] = field(default_factory=dict)
    by_asn: dict[int, list[_Target]] = field(default_factory=dict)

    def add(self, target: _Target) -> None:
        if target.networks:
            for number, mask in target.networks:
                self.by_prefix.setdefault(mask, {}).setdefault(number, []).append(target)
        elif target.asns:
            for asn in target.asns:
                self.by_asn.setdefault(asn, []).append(target)
        else:
            self.everywhere.append(target)

    def matching(self, ip: int, asn: int | None) -> Iterable[_Target]:
        """The targets whose networks hold *ip* and whose AS numbers hold *asn*."""
        yield from self.everywhere
        for mask, nets in self.by_prefix.items():
            for target in nets.get(ip & mask, ()):
                if not target.asns or asn in target.asns:
                    yield target
        if asn is not None:
            yield from self.by_asn.get(asn, ())


def _plan(watches: list[Watch]) -> list[_Bit]:
    """A bit per distinct query (the watch's, and with ``certificates`` the same with
    ``cert.expired:true``), each with the watches that listen to it."""
    bits: dict[str, _Bit] = {}
    for watch in watches:
        networks = tuple(
            (int(net.network_address), int(net.netmask)) for net in
            (ipaddress.IPv4Network(n, strict=False) for n in watch.networks))
        asns = frozenset(watch.asns)
        texts = [(watch.query, False)]
        if watch.certificates:
            texts.append((f"({watch.query}) AND cert.expired:true" if watch.query.strip()
                          else "cert.expired:true", True))
        for text, expired in texts:
            key = text.strip()
            if key not in bits:
                bits[key] = _Bit(parse(key))
            bits[key].add(_Target(watch, expired, tuple(sorted(set(networks))), asns))
    return list(bits.values())


def _statement(store: Searcher, bits: list[_Bit], sweep: str, sweep_days: tuple[date, date],
               before: str, before_days: tuple[date, date] | None,
               expiry_days: int | None) -> tuple[str, list[object]]:
    """The one statement: both sides' masks per (ip, port), and the rows that differ."""
    dialect = store.dialect
    params = Params(dialect)
    columns = (len(bits) + _BITS - 1) // _BITS
    has_asns = any(bit.by_asn or any(t.asns for nets in bit.by_prefix.values()
                                     for ts in nets.values() for t in ts) for bit in bits)

    def side(sweep_id: str, days: tuple[date, date] | None, *, newer: bool) -> str:
        masks = []
        for c in range(columns):
            cases = [f"CASE WHEN {compile_where(dialect, params, bit.node)} THEN {1 << n} "
                     "ELSE 0 END" for n, bit in enumerate(bits[c * _BITS:(c + 1) * _BITS])]
            masks.append(f"({' + '.join(cases)}) AS h{c}")
        extra = ""
        if newer and expiry_days is not None:
            extra = (f", CASE WHEN cert_sha256 IS NOT NULL THEN "
                     f"{dialect.json_text(_EXPIRY_PATH)} END AS not_after, "
                     "observed_at")
        low, high = days if days is not None else (date(1970, 1, 1), date(1970, 1, 1))
        frm = source(dialect, params, View("sweep", sweep_id=sweep_id))
        return (f"SELECT {dialect.ip_text} AS ip_text, ip, port, asn, tls, anonymous, "
                f"cert_sha256, product, version, {', '.join(masks)}{extra} FROM {frm} "
                f"WHERE sweep_started_at >= {params.add(_midnight(low))} "
                f"AND sweep_started_at < {params.add(_midnight(high + timedelta(days=1)))} "
                "AND status = 'success'")

    newer = side(sweep, sweep_days, newer=True)
    older = side(before, before_days, newer=False)
    either = " OR ".join(f"b.h{c} <> 0" for c in range(columns))
    differ = [f"coalesce(b.h{c}, 0) <> coalesce(a.h{c}, 0)" for c in range(columns)]
    if has_asns:
        differ.append("(a.ip IS NOT NULL AND b.ip IS NOT NULL AND "
                      f"coalesce(a.asn, -1) <> coalesce(b.asn, -1) AND ({either}))")
    if expiry_days is not None:  # a superset: every observation is before now
        cutoff = datetime.now(UTC) + timedelta(days=expiry_days + 1)
        differ.append(f"(b.not_after IS NOT NULL AND b.not_after < "
                      f"{params.add(cutoff.strftime('%Y-%m-%dT%H:%M:%S'))} AND ({either}))")
    picked = ", ".join(f"b.h{c} AS b_h{c}, a.h{c} AS a_h{c}" for c in range(columns))
    expiry = ", b.not_after AS not_after, b.observed_at AS observed_at" \
        if expiry_days is not None else ""
    sql = (f"WITH b AS ({newer}), a AS ({older}) "
           "SELECT b.ip_text AS b_ip, a.ip_text AS a_ip, b.port AS b_port, "
           "a.port AS a_port, b.asn AS b_asn, a.asn AS a_asn, a.tls AS a_tls, "
           "b.tls AS b_tls, a.anonymous AS a_anon, b.anonymous AS b_anon, "
           "a.cert_sha256 AS a_cert, b.cert_sha256 AS b_cert, a.product AS a_product, "
           "b.product AS b_product, a.version AS a_version, b.version AS b_version, "
           f"{picked}{expiry} FROM b FULL JOIN a ON a.ip = b.ip AND a.port = b.port "
           f"WHERE {' OR '.join(differ)}")
    return sql, params.values


def _listeners(bits: list[_Bit], row: Row, side: str, columns: int,
               ip: int) -> set[_Target]:
    if row[f"{side}_ip"] is None:
        return set()
    asn = row[f"{side}_asn"]
    asn = None if asn is None else int(asn)
    out: set[_Target] = set()
    for c in range(columns):
        mask = int(row[f"{side}_h{c}"] or 0)
        while mask:
            low = mask & -mask
            out.update(bits[c * _BITS + low.bit_length() - 1].matching(ip, asn))
            mask ^= low
    return out


def _expiring(dialect: Dialect, row: Row, days: int) -> str | None:
    """The leaf's ``not_after`` if it is before the observation plus *days*."""
    text = row["not_after"]
    if text is None:
        return None
    not_after = datetime.fromisoformat(str(text))
    seen = dialect.decode_time(row["observed_at"])
    return str(text) if not_after < seen + timedelta(days=days) else None


def _found(dialect: Dialect, bits: list[_Bit], rows: list[Row]) -> list[Found]:
    columns = (len(bits) + _BITS - 1) // _BITS
    found: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    for row in rows:
        ip_text = str(row["b_ip"] if row["b_ip"] is not None else row["a_ip"])
        port = int(row["b_port"] if row["b_port"] is not None else row["a_port"])
        ip = int(ipaddress.IPv4Address(ip_text))
        before = _listeners(bits, row, "a", columns, ip)
        after = _listeners(bits, row, "b", columns, ip)
        both = row["a_ip"] is not None and row["b_ip"] is not None
        what = exposure_changes(row) if both else []
        detail = {"changes": what} if what else {}
        for target in after - before:
            if target.expired:
                found[(target.watch.name, ip_text, port, "certificate_expired")] = detail
            else:
                kind = "now_matching" if both else "new"
                found[(target.watch.name, ip_text, port, kind)] = detail
        for target in before - after:
            if not target.expired:
                kind = "stopped_matching" if both else "gone"
                found[(target.watch.name, ip_text, port, kind)] = detail
        for target in after:
            days = target.watch.cert_expiry_days
            if days is not None and not target.expired:
                not_after = _expiring(dialect, row, days)
                if not_after is not None:
                    found[(target.watch.name, ip_text, port, "certificate_expiring")] = \
                        {"not_after": not_after, "days": days}
    return [(w, ip, port, kind, detail) for (w, ip, port, kind), detail in found.items()]


async def _deliveries(store: Searcher, now: datetime, *, fresh: str | None = None,
                      sweep_id: str = "", names: Iterable[str] = ()) -> None:
    """A pending delivery on each channel of its watch: for every event of *fresh* (JSON:
    ``id`` and ``watch``, events just inserted), or else for every event of *sweep_id* (of
    the watches *names*) that lacks one, in one statement for the whole sweep (an
    anti-join: a second evaluation, or one stopped between events and deliveries, mends
    exactly what is missing). A delivery's id is its event's and its channel's: the same
    on every try, and ON CONFLICT keeps two evaluators at once from doubling one."""
    dialect = store.dialect
    params = Params(dialect)  # in the order of the text (SQLite's are positional)
    times = params.add(now), params.add(now)
    if fresh is not None:
        source, where = dialect.json_rows(params.add(fresh), _FRESH_COLUMNS), "r.id IS NOT NULL"
    else:
        sweep = params.add(sweep_id)
        watches = ", ".join(params.add(name) for name in sorted(names))
        source = "watch_events AS r"
        where = (f"r.sweep_id = {sweep} AND r.watch IN ({watches}) AND NOT EXISTS (SELECT 1 "
                 "FROM watch_deliveries AS d WHERE d.event_id = r.id AND d.channel = c.channel)")
    await store.fetch(
        "INSERT INTO watch_deliveries (id, event_id, watch, channel, status, attempts, "
        "next_try_at, created_at) SELECT r.id || '.' || c.channel, r.id, r.watch, "
        f"c.channel, 'pending', 0, {times[0]}, {times[1]} FROM {source} "
        "JOIN watches AS w ON w.name = r.watch "
        "JOIN (SELECT 'webhook' AS channel UNION ALL SELECT 'email') AS c "
        "ON (c.channel = 'webhook' AND w.webhook_url IS NOT NULL) "
        "OR (c.channel = 'email' AND w.email IS NOT NULL) "
        f"WHERE {where} ON CONFLICT (event_id, channel) DO NOTHING", params.values)


async def _recorded(store: Searcher, sweep_id: str, names: set[str]) -> set[tuple[Any, ...]]:
    """The keys (watch, ip, port, kind) of the events of *names* recorded for *sweep_id*."""
    params = Params(store.dialect)
    sweep, watches = params.add(sweep_id), ", ".join(params.add(n) for n in sorted(names))
    rows = await store.fetch("SELECT watch, ip, port, kind FROM watch_events WHERE "
                             f"sweep_id = {sweep} AND watch IN ({watches})", params.values)
    return {(str(r["watch"]), str(r["ip"]), int(r["port"]), str(r["kind"])) for r in rows}


async def _record(store: Searcher, watches: list[Watch], sweep_id: str,
                  previous: str | None, found: list[Found]) -> list[Event]:
    """Insert the events not recorded yet (the sweep's recorded keys are read once: an
    evaluation repeated writes nothing), a chunk a statement, each chunk's deliveries right
    after it; then, if the sweep had events already or another evaluator wrote some of
    ours, the deliveries of every event of the sweep that lacks one (:func:`_deliveries`)."""
    dialect = store.dialect
    now = datetime.now(UTC)
    names = {w.name for w in watches}
    known = await _recorded(store, sweep_id, names) if names else set()
    fresh = [item for item in found if item[0] in names and item[:4] not in known]
    recorded: list[Event] = []
    mend = bool(known)
    for low in range(0, len(fresh), _CHUNK):
        chunk = [(secrets.token_hex(12), *item) for item in fresh[low:low + _CHUNK]]
        rows = json.dumps([{"id": i, "watch": w, "ip": ip, "port": port, "kind": kind,
                            "detail": json.dumps(detail)}
                           for i, w, ip, port, kind, detail in chunk])
        params = Params(dialect)
        sweep, before, moment = params.add(sweep_id), params.add(previous), params.add(now)
        source = dialect.json_rows(params.add(rows), _EVENT_COLUMNS)
        # ON CONFLICT: another evaluator of the same sweep may have written some since
        inserted = {str(r["id"]) for r in await store.fetch(
            "INSERT INTO watch_events (id, watch, sweep_id, previous, ip, port, kind, detail, "
            f"created_at) SELECT r.id, r.watch, {sweep}, {before}, r.ip, r.port, r.kind, "
            f"r.detail, {moment} FROM {source} WHERE 1 = 1 ON CONFLICT (watch, sweep_id, ip, "
            "port, kind) DO NOTHING RETURNING id", params.values)}
        recorded += [Event(i, w, sweep_id, previous, ip, port, kind, detail)
                     for i, w, ip, port, kind, detail in chunk if i in inserted]
        if inserted:
            await _deliveries(store, now, fresh=json.dumps(
                [{"id": i, "watch": w} for i, w, *_ in chunk if i in inserted]))
        mend = mend or len(inserted) < len(chunk)
    if mend and names:
        await _deliveries(store, now, sweep_id=sweep_id, names=names)
    return recorded


async def evaluate_sweep(store: Searcher, sweep_id: str, *, previous: str | None = None,
                         watches: list[Watch] | None = None) -> list[Event]:
    """Evaluate every watch (or *watches*) on *sweep_id* against *previous* (default: the
    sweep before it; none: every match is new) and record what is new.

    :returns: the events recorded by this call (none that an earlier call recorded)
    """
    watches = await list_watches(store) if watches is None else watches
    if not watches:
        return []
    if previous is None:
        previous = await previous_sweep(store, sweep_id)
    days = await sweep_days(store, sweep_id)
    if days is None:
        return []  # nothing of the sweep is stored
    before = previous if previous is not None else ""  # a sweep id nothing has
    before_days = await sweep_days(store, before) if previous is not None else None
    bits = _plan(watches)
    horizons = [w.cert_expiry_days for w in watches if w.cert_expiry_days is not None]
    sql, values = _statement(store, bits, sweep_id, days, before, before_days,
                             max(horizons) if horizons else None)
    rows = await store.fetch(sql, values)
    # seconds of Python at 10^6 services: on a thread, so the scheduler's loop goes on
    found = await asyncio.to_thread(_found, store.dialect, bits, rows)
    return await _record(store, watches, sweep_id, previous, found)


async def record_test_event(store: Searcher, watch: Watch) -> Event:
    """A ``test`` event for *watch* (a sweep id of its own), delivered like any other."""
    sweep_id = f"test-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    events = await _record(store, [watch], sweep_id, None, [
        (watch.name, "192.0.2.1", 1883, "test",
         {"note": "a test event from brokerscan watch test"})])
    return events[0]  # a sweep id of its own: recorded now
