"""Store conformance: every backend (PostgreSQL and SQLite) passes the same tests."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest

from brokerscan.model import Protocol, ScanResult, Status
from storage.pgstore import PgStore
from storage.queries import DIMENSIONS
from storage.rows import dimension_values
from storage.sqlitestore import SqliteStore
from storage.store import Store, open_store
from tests.pg import migrated_database
from tests.unit.storage.gen import make_result, make_results, sweeps

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await open_store(f"sqlite:///{tmp_path}/store.db")
        assert isinstance(s, SqliteStore)
        yield s
        await s.close()
        return
    async with migrated_database() as url:
        s = await open_store(url)
        assert isinstance(s, PgStore)
        yield s
        await s.close()


def python_counts(results: list[ScanResult], by: list[str], **where: object):
    counter: Counter[tuple[object, ...]] = Counter()
    for r in results:
        dims = dimension_values(r)
        if all(dims[k] == v for k, v in where.items()):
            counter[tuple(dims[d] for d in by)] += 1
    return sorted(counter.items(), key=repr)


def as_pairs(rows: list[dict[str, object]], by: list[str]):
    return sorted(((tuple(r[d] for d in by), r["count"]) for r in rows), key=repr)


async def all_hosts(store: Store, limit: int, **kw: object) -> list[ScanResult]:
    out: list[ScanResult] = []
    cursor = None
    while True:
        page, cursor = await store.hosts(limit=limit, cursor=cursor, **kw)  # type: ignore[arg-type]
        assert len(page) <= limit
        out.extend(page)
        if cursor is None:
            return out


async def test_write_and_read_back(store: Store) -> None:
    results = make_results(300)
    assert await store.write(results[:200]) == 200
    assert await store.write(results[100:]) == 100  # half of it already there
    back = await all_hosts(store, 1000)
    assert sorted(r.to_json() for r in back) == sorted(r.to_json() for r in results)


async def test_rewrite_with_another_observed_at_adds_nothing(store: Store) -> None:
    results = make_results(200, seed=2)
    await store.write(results)
    before = {src: await store.counts(by=list(DIMENSIONS), rollup=src)  # type: ignore[call-arg]
              for src in (True, False)}
    later = [r.model_copy(update={"observed_at": r.observed_at + timedelta(hours=5)})
             for r in results]
    assert await store.write(later) == 0
    assert await store.write(results[:50] + results[:50]) == 0
    for src in (True, False):
        assert await store.counts(by=list(DIMENSIONS), rollup=src) == before[src]  # type: ignore[call-arg]
    back = await all_hosts(store, 500)
    assert sorted(r.to_json() for r in back) == sorted(r.to_json() for r in results)


async def test_duplicates_inside_one_batch_count_once(store: Store) -> None:
    results = make_results(50, seed=3)
    assert await store.write(results + results[::-1]) == 50
    assert (await store.counts(by=[]))[0]["count"] == 50
    assert (await store.counts(by=[], rollup=False))[0]["count"] == 50  # type: ignore[call-arg]


async def test_counts_agree_with_python(store: Store) -> None:
    results = make_results(600, seed=4)
    for start in range(0, 600, 150):
        await store.write(results[start:start + 150])
    rng = random.Random(5)
    groupings = [[d] for d in DIMENSIONS] + [list(DIMENSIONS), []]
    groupings += [rng.sample(DIMENSIONS, 3) for _ in range(5)]
    for by in groupings:
        expected = python_counts(results, by)
        for src in (None, True, False):
            got = await store.counts(by=by, rollup=src)  # type: ignore[call-arg]
            if not by:
                assert got == [{"count": len(results)}]
            else:
                assert as_pairs(got, by) == expected, (by, src)
                assert list(got[0]) == [*by, "count"]
    # Equality filters, unknown values included, from both sources.
    for where in ({"anonymous": None}, {"anonymous": True, "tls": True}, {"country": None},
                  {"asn": 3320, "status": "success"}, {"transport": "tls"},
                  {"protocol": None}, {"day": results[0].sweep_started_at.date()}):  # type: ignore[union-attr]
        expected = python_counts(results, ["port"], **where)
        for src in (True, False):
            got = await store.counts(by=["port"], where=where, rollup=src)  # type: ignore[call-arg]
            assert as_pairs(got, ["port"]) == expected, (where, src)


async def test_time_ranges_on_sweep_start(store: Store) -> None:
    sw = sweeps(3)
    results = make_results(300, seed=6, sweep_list=sw)
    await store.write(results)
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    ranges: list[tuple[datetime | None, datetime | None]] = [
              (midnight, None), (None, midnight), (midnight, midnight + timedelta(days=1)),
              (sw[1][1], None), (sw[1][1] + timedelta(seconds=1), None)]
    for since, until in ranges:
        starts = [r.sweep_started_at for r in results if r.sweep_started_at is not None]
        expected = sum(1 for s in starts
                       if (since is None or s >= since) and (until is None or s < until))
        got = await store.counts(by=[], since=since, until=until)
        assert got == [{"count": expected}], (since, until)
        hosts = await all_hosts(store, 50, since=since, until=until)
        assert len(hosts) == expected


async def test_hosts_pages_cover_every_host_once(store: Store) -> None:
    results = make_results(257, seed=7)
    await store.write(results)
    for limit in (1, 10, 256, 257, 1000):
        back = await all_hosts(store, limit)
        keys = [r.key for r in back]
        assert len(keys) == len(set(keys)) == 257
    where = {"status": "success", "tls": True}
    behind = await all_hosts(store, 7, where=where)
    count = await store.counts(by=[], where=where)
    assert len(behind) == count[0]["count"]
    assert behind
    assert all(r.status is Status.SUCCESS and r.transport.value == "tls" for r in behind)
    with pytest.raises(ValueError, match="cursor"):
        await store.hosts(cursor="not-a-cursor")


async def test_sweep_filter(store: Store) -> None:
    sw = sweeps(3)
    results = make_results(200, seed=8, sweep_list=sw)
    await store.write(results)
    for sweep_id, _ in sw:
        mine = [r for r in results if r.sweep_id == sweep_id]
        got = await store.counts(by=["status"], sweep_id=sweep_id)
        assert as_pairs(got, ["status"]) == python_counts(mine, ["status"])
        hosts = await all_hosts(store, 30, sweep_id=sweep_id)
        assert sorted(h.to_json() for h in hosts) == sorted(r.to_json() for r in mine)
    assert await store.counts(by=["port"], sweep_id="sw-none") == []


async def test_services_first_last_changed(store: Store) -> None:
    rng = random.Random(9)
    t0 = datetime(2026, 4, 1, tzinfo=UTC)
    sw = [(f"sw-svc{i}", t0 + timedelta(days=i)) for i in range(5)]

    def obs(i: int, **update: object) -> ScanResult:
        base = make_result(rng, sw[i], "192.0.2.1", 1883, observed_at=sw[i][1])
        return base.model_copy(update={"status": Status.SUCCESS, "protocol": Protocol.MQTT,
                                       "mqtt": None, "tls": None, **update})

    await store.write([obs(1)])
    await store.write([obs(2)])  # same state: seen again, not changed
    [svc], _ = await store.services()
    assert (svc.first_seen, svc.last_seen, svc.last_changed) == (sw[1][1], sw[2][1], sw[1][1])
    await store.write([obs(3, status=Status.CONNECTION_REFUSED, protocol=None)])
    [svc], _ = await store.services()
    assert (svc.last_seen, svc.last_changed) == (sw[3][1], sw[3][1])
    assert svc.latest.status is Status.CONNECTION_REFUSED and svc.latest.sweep_id == "sw-svc3"
    # A late, older observation moves first_seen back and changes nothing else.
    await store.write([obs(0, status=Status.IO_TIMEOUT)])
    [svc], _ = await store.services()
    assert (svc.first_seen, svc.last_seen, svc.last_changed) == (sw[0][1], sw[3][1], sw[3][1])
    assert svc.latest.sweep_id == "sw-svc3"
    # Redelivering an old observation changes nothing at all.
    await store.write([obs(1, observed_at=sw[4][1])])
    assert (await store.services())[0] == [svc]
    # Two sweeps of one service in one batch: both observations count, the newer wins.
    assert await store.write([obs(4), obs(4, sweep_id="sw-svc4b",
                                          observed_at=sw[4][1] + timedelta(hours=1))]) == 2
    [svc], _ = await store.services(where={"status": "success"})
    assert svc.latest.sweep_id == "sw-svc4b" and svc.last_changed == sw[4][1]
    assert (await store.services(where={"status": "io-timeout"}))[0] == []


async def test_services_pages(store: Store) -> None:
    results = make_results(300, seed=10, hosts=40)
    await store.write(results)
    expected = {(str(ip_address(r.ip)), r.port, r.transport.value) for r in results}
    seen, cursor = [], None
    while True:
        page, cursor = await store.services(limit=13, cursor=cursor)
        seen += [(s.ip, s.port, s.transport) for s in page]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(seen) == expected
    tls, _ = await store.services(where={"tls": True}, limit=1000)
    assert {s.transport for s in tls} == {"tls"}
    for s in tls:
        mine = [r for r in results if (str(ip_address(r.ip)), r.port) == (s.ip, s.port)]
        assert s.first_seen == min(r.observed_at for r in mine)
        assert s.last_seen == max(r.observed_at for r in mine)


async def test_bad_input_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match=r"unknown dimension 'contry' \(did you mean 'country'"):
        await store.counts(by=["contry"])
    with pytest.raises(ValueError, match="unknown dimension"):
        await store.hosts(where={"ipaddr": "1.2.3.4"})
    with pytest.raises(ValueError, match="unknown dimension"):
        await store.services(where={"day": "2026-01-01"})
    good = make_results(3, seed=11)
    bad = good[1].model_copy(update={"sweep_id": None})
    with pytest.raises(ValueError, match="no sweep_id"):
        await store.write([good[0], bad])
    assert await store.counts(by=[]) == [{"count": 0}]


async def test_concurrent_writers_with_overlapping_batches_count_once(migrated_url: str) -> None:
    """Two PostgreSQL stores (two connections) write overlapping batches at the same time:
    one of them meets the other's keys (its COPY waits, then fails on the unique key and
    the batch is merged; a deadlock victim is written again), yet every observation,
    rollup count and service counts once."""
    results = make_results(3000, seed=21)
    one, two = await PgStore.open(migrated_url), await PgStore.open(migrated_url)
    try:
        batches = [results[i:i + 500] for i in range(0, 3000, 250)]  # each row twice
        added = await asyncio.gather(*(
            (one if n % 2 else two).write(batch) for n, batch in enumerate(batches)))
        assert sum(added) == 3000
        assert (await one.counts(by=[]))[0]["count"] == 3000
        assert (await one.counts(by=[], rollup=False))[0]["count"] == 3000
        assert as_pairs(await one.counts(by=["port", "status"]), ["port", "status"]) == \
            python_counts(results, ["port", "status"])
        services, _ = await one.services(limit=5000)
        assert len(services) == len({(r.ip, r.port, r.transport.value) for r in results})
    finally:
        await one.close()
        await two.close()
