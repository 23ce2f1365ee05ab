"""The facet rollups (issue 19: the overview from rollups): in either store, a count's
facets, the trends and the list of sweeps read from ``facet_sweep`` / ``facet_current``
give exactly what the rows give, through replays and services that change; and
retention keeps ``brokerscan db verify`` exact (the ledger of dropped partitions)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from brokerscan.model import MqttResult, Protocol, ScanResult, Status
from storage import migrate, partitions
from storage.facets import FIELDS
from storage.pgstore import PgStore
from storage.rollups import verify_rollups
from storage.search.compile import CURRENT, View
from storage.sqlitestore import SqliteStore
from storage.store import open_store
from tests.integration.test_rollups import _corrupt, _verify_cli, copy_before
from tests.pg import fresh_database, migrated_database
from tests.unit.storage.gen import make_result, make_results, sweeps

pytestmark = pytest.mark.integration

#: Queries the facet rollups answer (protocol alone, or with the one field counted by).
QUERIES = ("", "protocol:mqtt", "protocol:amqp", "NOT protocol:mqtt", "protocol:*",
           "protocol:mqtt OR protocol:amqp")
#: "first_seen:*" holds for every row and no rollup holds it: the row-by-row answer.
ROWS = "first_seen:*"


def _rows(query: str) -> str:
    return f"({query}) AND {ROWS}" if query else ROWS


async def opened(url: str) -> PgStore | SqliteStore:
    store = await open_store(url)
    assert isinstance(store, PgStore | SqliteStore)
    return store


def _changing(plan: list[tuple[str, datetime]]) -> list[ScanResult]:
    """One service per sweep whose answers change (anonymous, return code, product)."""
    rng = random.Random(5)
    out = []
    for (sweep, anonymous) in zip(plan, (True, False, None), strict=False):
        r = make_result(rng, sweep, "192.0.2.9", 1883)
        out.append(r.model_copy(update={
            "status": Status.SUCCESS, "protocol": Protocol.MQTT,
            "mqtt": MqttResult(protocol_level=4, return_code=0 if anonymous else 5,
                               return_code_name="x", session_present=False,
                               anonymous=anonymous)}))
    return out


async def _written(store: PgStore | SqliteStore) -> list[tuple[str, datetime]]:
    plan = sweeps(3)
    results = make_results(500, seed=31, sweep_list=plan)
    for start in range(0, 500, 125):
        await store.write(results[start:start + 125])
    assert await store.write(results[100:200]) == 0  # replayed
    later = [r.model_copy(update={"observed_at": r.observed_at + timedelta(hours=2)})
             for r in results[:50]]
    assert await store.write(later) == 0
    changing = _changing(plan)
    await store.write(changing[:1])
    await store.write(changing[1:])
    await store.write(changing)  # replayed, in one batch
    return plan


async def test_facets_trends_and_sweeps_equal_the_rows(store_url: str) -> None:
    store = await opened(store_url)
    try:
        plan = await _written(store)
        views = [CURRENT, *(View("sweep", sweep_id=s) for s, _ in plan)]
        wanted = [(name, 1000) for name in FIELDS] + [("country", 10), ("asn", 2)]
        for view in views:
            for query in QUERIES:
                rolled = await store.count(query, view=view, facets=wanted)
                rows = await store.count(_rows(query), view=view, facets=wanted)
                assert rolled.rollup and not rows.rollup
                assert (rolled.total, rolled.facets, rolled.other) == (
                    rows.total, rows.facets, rows.other), (view, query)
            # a query on the field counted by, and the smallest sizes (ties cut alike)
            for name, query in (("product", "product:rabbitmq"),
                                ("anonymous", "protocol:mqtt anonymous:true"),
                                ("mqtt.return_code", "NOT mqtt.return_code:0")):
                for size in (1, 2):
                    rolled = await store.count(query, view=view, facets=[(name, size)])
                    rows = await store.count(_rows(query), view=view, facets=[(name, size)])
                    assert rolled.facets == rows.facets, (view, query, size)
        for query in (*QUERIES, "protocol:mqtt anonymous:true", "product:activemq",
                      "protocol:amqp version:3.12"):
            for interval in ("day", "sweep"):
                assert await store.trends(query, interval=interval) == await store.trends(
                    _rows(query), interval=interval), (query, interval)
        seen = await store.sweeps_seen()
        assert {s["id"]: s["observations"] for s in seen} == {
            s: (await store.count(ROWS, view=View("sweep", sweep_id=s))).total
            for s, _ in plan}
        assert await verify_rollups(store) == []
    finally:
        await store.close()


async def test_verify_names_a_wrong_facet_count(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await _written(store)
        assert await verify_rollups(store) == []
    finally:
        await store.close()
    await _corrupt(store_url, "UPDATE facet_current SET n = n + 1 WHERE field = 'product'")
    await _corrupt(store_url, "DELETE FROM facet_sweep WHERE field = 'anonymous' "
                              "AND sweep_id = 'sw-test0001'")
    done = _verify_cli(store_url)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("facet_sweep ") and " sw-test0001 anonymous " in line
               for line in lines), lines
    assert any(line.startswith("facet_current product ") for line in lines), lines
    assert "Traceback" not in done.stderr


async def test_retention_keeps_verify_exact() -> None:
    """Two sweeps over two days; the older day's partition dropped: the rollups keep its
    counts (the ledger too), verify exits 0; a rollup corrupted by hand is named."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    plan = [("sw-old", today - timedelta(days=40) + timedelta(hours=1)),
            ("sw-new", today - timedelta(days=1) + timedelta(hours=1))]
    results = make_results(300, seed=41, sweep_list=plan)
    async with migrated_database() as url:
        store = await opened(url)
        try:
            await store.write(results)
            before = await store.trends("protocol:mqtt", interval="sweep")
            conn = await asyncpg.connect(url)
            try:
                dropped = await partitions.drop_expired(conn, 30)
                ledger = await conn.fetchval("SELECT sum(n) FROM rollup_expired")
            finally:
                await conn.close()
            assert [d[-8:] for d in dropped] == [f"{plan[0][1]:%Y%m%d}"]
            assert ledger == sum(1 for r in results if r.sweep_id == "sw-old")
            # history counts outlive retention; the rows of the old day are gone
            assert await store.trends("protocol:mqtt", interval="sweep") == before
            assert [b for b, _ in await store.trends(_rows("protocol:mqtt"),
                                                     interval="sweep")] == ["sw-new"]
            assert await verify_rollups(store) == []
        finally:
            await store.close()
        done = _verify_cli(url)
        assert done.returncode == 0, done.stdout + done.stderr
        await _corrupt(url, "UPDATE rollup SET n = n + 1 WHERE sweep_id = 'sw-old' "
                            "AND protocol = 'amqp'")
        done = _verify_cli(url)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.startswith("rollup ") and " sw-old amqp " in done.stdout


async def test_the_facet_migration_builds_the_facet_rollups_of_rows_stored_before() -> None:
    results = make_results(300, seed=43)
    (facets,) = (m for m in migrate.migration_files() if m.name.endswith("_facet_rollups"))
    async with fresh_database() as url:
        await copy_before(url, facets.version, results)
        applied = await migrate.migrate(url)
        assert applied[0] == facets.name
        store = await opened(url)
        try:
            assert await verify_rollups(store) == []
            assert (await store.count("protocol:amqp", facets=[("product", 5)])).facets == (
                await store.count(_rows("protocol:amqp"), facets=[("product", 5)])).facets
        finally:
            await store.close()
