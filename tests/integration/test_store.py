"""Store conformance: every backend (PostgreSQL and SQLite) passes the same tests, through
what the product calls: ``write`` (what the stream's store writer and a local scan's sink
call) and the search operations (what the CLI and the API call: ``search``, ``count``,
``export``, ``trends``, ``host``, ``sweeps_seen``, ``grouped``). Answers are checked against
the reference evaluator over the JSON records (tests/searchref.py)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from brokerscan.model import Protocol, ScanResult, Status
from storage.pgstore import PgStore
from storage.search.compile import CURRENT, View
from storage.search.fields import FIELDS
from storage.search.parse import QueryError, parse
from storage.searcher import Searcher, parse_facets
from storage.sqlitestore import SqliteStore
from storage.store import Store, open_store
from tests.pg import migrated_database
from tests.searchref import (
    evaluate,
    items_of,
    make_search_results,
    reference_counts,
    reference_keys,
    view_items,
)
from tests.unit.storage.gen import make_result

pytestmark = pytest.mark.integration

#: Matches every IPv4 observation, but no rollup holds addresses: a count of it reads the
#: rows, where a count of "" reads the rollups.
ROWS = "ip:0.0.0.0/0"
#: Every field a count can be faceted by, each with room for all its values.
FACETS = [(f.name, 1000) for f in FIELDS if f.name != "ip"]


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path}/store.db")
        assert type(s) is SqliteStore  # the scheme picks the backend
        yield s
        await s.close()
        return
    async with migrated_database() as url:
        s = await open_store(url)
        assert type(s) is PgStore
        yield s
        await s.close()


def records(results: Sequence[ScanResult]) -> list[str]:
    return [r.to_json() for r in results]


def views(results: Sequence[ScanResult]) -> list[View]:
    """The current view, every sweep, and the current view as of each sweep's day."""
    sweeps = sorted({(r.sweep_started_at, r.sweep_id) for r in results},
                    key=lambda s: (s[0], s[1]))
    out = [CURRENT]
    for started, sweep_id in sweeps:
        assert started is not None and sweep_id is not None
        out += [View("sweep", sweep_id=sweep_id), View("at", at=started.date())]
    return out


async def exported(store: Searcher, view: View = CURRENT, query: str = "") -> list[str]:
    """Every record of *query* in *view*, as ``to_json`` writes it."""
    out: list[str] = []
    async for chunk in store.export(query, view=view, chunk=97):
        out += [ScanResult.model_validate_json(h.record).to_json() for h in chunk]
    return out


async def all_keys(store: Searcher, query: str, view: View, limit: int,
                   ) -> list[tuple[str, int, str]]:
    keys: list[tuple[str, int, str]] = []
    cursor = None
    while True:
        page = await store.search(query, view=view, limit=limit, cursor=cursor)
        assert len(page.hits) <= limit
        keys += [h.key for h in page.hits]
        if page.cursor is None:
            return keys
        cursor = page.cursor


def reference_facets(items: list[Any], query: str) -> dict[str, dict[Any, int]]:
    node = parse(query)
    levels = {"3": "3.1", "4": "3.1.1", "5": "5.0"}
    out = {}
    for name, _ in FACETS:
        column = next(f.column for f in FIELDS if f.name == name)
        counted = reference_counts(items, node, column)
        counted.pop(None, None)
        out[name] = {levels.get(v, v) if name == "mqtt.level" else v: n
                     for v, n in counted.items()}
    return out


async def check_counts(store: Searcher, results: Sequence[ScanResult], view: View,
                       query: str) -> None:
    """count() and its facets equal the reference, from the rollups and from the rows."""
    items = view_items(records(results), view)
    expected = reference_facets(items, query)
    total = len(reference_keys(items, parse(query)))
    both = (query, f"({query}) AND {ROWS}" if query else ROWS)
    for text in both:
        got = await store.count(text, view=view, facets=FACETS)
        assert got.total == total, (text, view)
        assert {name: dict(values) for name, values in got.facets.items()} == expected, \
            (text, view)


async def snapshot(store: Searcher, results: Sequence[ScanResult]) -> list[object]:
    """Everything the read side says about *results*' views."""
    out: list[object] = [await store.sweeps_seen(), await store.trends(""),
                         await store.trends("", interval="sweep")]
    for view in views(results):
        for query in ("", ROWS):
            got = await store.count(query, view=view, facets=FACETS)
            out.append((got.total, got.facets, got.rollup))
        out.append(await exported(store, view))
    return out


async def test_write_and_read_back(store: Store) -> None:
    results = make_search_results(300, seed=1)
    assert await store.write(results[:200]) == 200
    assert await store.write(results[100:]) == 100  # half of it already there
    sweeps = {r.sweep_id for r in results}
    seen = await store.sweeps_seen()
    assert {s["id"] for s in seen} == sweeps
    assert sum(s["observations"] for s in seen) == 300
    back = [record for sweep in sweeps
            for record in await exported(store, View("sweep", sweep_id=sweep))]
    assert sorted(back) == sorted(records(results))
    for ip in {r.ip for r in results[:20]}:
        mine = sorted((r for r in results if r.ip == ip),
                      key=lambda r: (r.observed_at, -r.port), reverse=True)
        history = await store.host(ip)
        assert [ScanResult.model_validate_json(h).to_json() for h in history] == records(mine)


async def test_rewrite_with_another_observed_at_adds_nothing(store: Store) -> None:
    results = make_search_results(200, seed=2)
    await store.write(results)
    before = await snapshot(store, results)
    later = [r.model_copy(update={"observed_at": r.observed_at + timedelta(hours=5)})
             for r in results]
    assert await store.write(later) == 0
    assert await store.write(results[:50] + results[:50]) == 0
    assert await snapshot(store, results) == before


async def test_duplicates_inside_one_batch_count_once(store: Store) -> None:
    results = make_search_results(50, seed=3)
    assert await store.write(results + results[::-1]) == 50
    assert sum(s["observations"] for s in await store.sweeps_seen()) == 50
    for view in views(results):
        expected = len(view_items(records(results), view))
        assert (await store.count("", view=view)).total == expected
        assert (await store.count(ROWS, view=view)).total == expected


@pytest.mark.parametrize("query", ["", "anonymous:true tls:true", "NOT country:*",
                                   "asn:36375 status:success", "transport:tls",
                                   "NOT protocol:*"])
async def test_counts_and_facets_agree_with_the_reference(store: Store, query: str) -> None:
    results = make_search_results(600, seed=4)
    for start in range(0, 600, 150):
        await store.write(results[start:start + 150])
    for view in views(results):
        await check_counts(store, results, view, query)


async def test_grouped_counts_agree_with_the_reference(store: Store) -> None:
    results = make_search_results(400, seed=5)
    await store.write(results)
    for view in views(results):
        items = view_items(records(results), view)
        for query in ("", "protocol:mqtt", ROWS):
            node = parse(query)
            expected = Counter((i.values["port"], i.values["status"]) for i in items
                               if not query or query == ROWS
                               or i.values["protocol"] == "mqtt")
            got = await store.grouped(view, node, ["port", "status"])
            assert {(port, status): n for port, status, n in got} == expected, (query, view)
            assert [n for *_, n in got] == sorted((n for *_, n in got), reverse=True)


async def test_trends_count_by_the_day_and_the_sweep_a_sweep_started(store: Store) -> None:
    # sweeps a day and an hour apart, the first starting a second before midnight
    first = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    results = []
    for r in make_search_results(300, seed=6):
        n = int(str(r.sweep_id)[-2:])
        results.append(r.model_copy(update={
            "sweep_started_at": first + timedelta(days=n, hours=n),
            "observed_at": first + timedelta(days=n, hours=n, seconds=1)}))
    await store.write(results)
    for query in ("", "status:success", "product:*"):
        node = parse(query)
        matching = [r for r in results if evaluate(node, items_of([r.to_json()])[0])]
        assert matching
        by_day = Counter(str(r.sweep_started_at)[:10] for r in matching)
        assert await store.trends(query) == sorted(by_day.items()), query
        by_sweep = Counter(str(r.sweep_id) for r in matching)
        assert await store.trends(query, interval="sweep") == sorted(by_sweep.items()), query


@pytest.mark.parametrize("limit", [1, 10, 256, 257, 1000])
async def test_search_pages_cover_every_service_once(store: Store, limit: int) -> None:
    results = make_search_results(257, seed=7)
    await store.write(results)
    for view in views(results)[:3]:
        expected = reference_keys(view_items(records(results), view), parse(""))
        assert await all_keys(store, "", view, limit) == expected
    query = "status:success tls:true"
    expected = reference_keys(view_items(records(results), CURRENT), parse(query))
    assert expected
    assert await all_keys(store, query, CURRENT, limit) == expected
    assert (await store.count(query)).total == len(expected)
    with pytest.raises(ValueError, match="cursor"):
        await store.search("", cursor="not-a-cursor")


async def test_a_sweeps_view_holds_its_observations_only(store: Store) -> None:
    results = make_search_results(200, seed=8)
    await store.write(results)
    for sweep_id in {r.sweep_id for r in results}:
        assert sweep_id is not None
        view = View("sweep", sweep_id=sweep_id)
        mine = [r for r in results if r.sweep_id == sweep_id]
        got = await store.count("", view=view, facets=parse_facets("status:20"))
        assert dict(got.facets["status"]) == Counter(r.status.value for r in mine)
        assert sorted(await exported(store, view)) == sorted(records(mine))
    nothing = View("sweep", sweep_id="sw-none")
    assert (await store.count("", view=nothing, facets=[("port", 5)])).facets == {"port": []}
    assert (await store.search("", view=nothing)).hits == []


async def test_current_view_first_last_seen_and_last_changed(store: Store) -> None:
    rng = random.Random(9)
    t0 = datetime(2026, 4, 1, tzinfo=UTC)
    sw = [(f"sw-svc{i}", t0 + timedelta(days=i)) for i in range(5)]

    def obs(i: int, **update: object) -> ScanResult:
        base = make_result(rng, sw[i], "192.0.2.1", 1883, observed_at=sw[i][1])
        return base.model_copy(update={"status": Status.SUCCESS, "protocol": Protocol.MQTT,
                                       "mqtt": None, "tls": None, **update})

    async def service(query: str = "") -> tuple[datetime, datetime, datetime, ScanResult]:
        [hit] = (await store.search(query)).hits
        [row] = await store.fetch("SELECT last_changed FROM services", [])
        return (hit.values["first_seen"], hit.values["last_seen"],
                store.decode("last_changed", row["last_changed"]),
                ScanResult.model_validate_json(hit.record))

    await store.write([obs(1)])
    await store.write([obs(2)])  # same state: seen again, not changed
    assert (await service())[:3] == (sw[1][1], sw[2][1], sw[1][1])
    await store.write([obs(3, status=Status.CONNECTION_REFUSED, protocol=None)])
    first, last, changed, latest = await service()
    assert (last, changed) == (sw[3][1], sw[3][1])
    assert latest.status is Status.CONNECTION_REFUSED and latest.sweep_id == "sw-svc3"
    # A late, older observation moves first_seen back and changes nothing else.
    await store.write([obs(0, status=Status.IO_TIMEOUT)])
    now = await service()
    assert now[:3] == (sw[0][1], sw[3][1], sw[3][1]) and now[3].sweep_id == "sw-svc3"
    # Redelivering an old observation changes nothing at all.
    await store.write([obs(1, observed_at=sw[4][1])])
    assert await service() == now
    # Two sweeps of one service in one batch: both observations count, the newer wins.
    assert await store.write([obs(4), obs(4, sweep_id="sw-svc4b",
                                          observed_at=sw[4][1] + timedelta(hours=1))]) == 2
    first, last, changed, latest = await service("status:success")
    assert latest.sweep_id == "sw-svc4b" and changed == sw[4][1]
    assert (await store.search("status:io-timeout")).hits == []
    assert [json.loads(r)["sweep_id"] for r in await store.host("192.0.2.1")] == \
        ["sw-svc4b", "sw-svc4", "sw-svc3", "sw-svc2", "sw-svc1", "sw-svc0"]


async def test_bad_input_is_refused(store: Store) -> None:
    with pytest.raises(QueryError, match=r"unknown field 'contry' \(did you mean 'country'"):
        await store.count("contry:DE")
    with pytest.raises(QueryError, match="unknown field"):
        parse_facets("ipaddr")
    with pytest.raises(ValueError, match="limit"):
        await store.search("", limit=0)
    with pytest.raises(ValueError, match="IPv4"):
        await store.host("not-an-address")
    good = make_search_results(3, seed=11)
    bad = good[1].model_copy(update={"sweep_id": None})
    with pytest.raises(ValueError, match="no sweep_id"):
        await store.write([good[0], bad])
    assert (await store.count("")).total == 0
    assert await store.sweeps_seen() == []


async def test_concurrent_writers_with_overlapping_batches_count_once(migrated_url: str) -> None:
    """Two PostgreSQL stores (two connections) write overlapping batches at the same time:
    one of them meets the other's keys (its COPY waits, then fails on the unique key and
    the batch is merged; a deadlock victim is written again), yet every observation,
    rollup count and service counts once."""
    results = make_search_results(3000, seed=21)
    one, two = await PgStore.open(migrated_url), await PgStore.open(migrated_url)
    try:
        batches = [results[i:i + 500] for i in range(0, 3000, 250)]  # each row twice
        added = await asyncio.gather(*(
            (one if n % 2 else two).write(batch) for n, batch in enumerate(batches)))
        assert sum(added) == 3000
        assert sum(s["observations"] for s in await one.sweeps_seen()) == 3000
        for view in views(results)[:3]:
            await check_counts(one, results, view, "")
        services = {(r.ip, r.port, r.transport.value) for r in results}
        assert (await one.count("")).total == (await one.count(ROWS)).total == len(services)
    finally:
        await one.close()
        await two.close()


def test_views_cover_each_sweep_and_day() -> None:
    results = make_search_results(30, seed=12)
    names = [v.describe() for v in views(results)]
    assert names[0] == "the current view" and len(names) == 1 + 2 * 3
    assert View("at", at=date(2026, 3, 1)).describe() in names
