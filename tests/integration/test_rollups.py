"""The census report's rollups (issue 19): kept at ingest, in either store, equal to the
row-by-row answer through replays and services that change; `brokerscan db verify` finds
a rollup row that is wrong; migration 0009 builds them for rows stored before it."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from brokerscan.model import MqttResult, Protocol, ScanResult, Status
from brokerscan.report import Report
from storage import migrate
from storage.census import census_report
from storage.pgstore import PgStore
from storage.rollups import verify_rollups
from storage.rows import COLUMNS, observation_row
from storage.search.compile import CURRENT, View
from storage.searcher import Searcher
from storage.sqlitestore import SqliteStore, path_of
from storage.store import open_store
from tests.pg import fresh_database
from tests.unit.storage.gen import make_result, make_results, sweeps

pytestmark = pytest.mark.integration


def report_of(results: Iterable[ScanResult]) -> dict[str, Any]:
    report = Report()
    for result in results:
        report.add(result)
    return report.as_dict()


def current(results: Iterable[ScanResult]) -> list[ScanResult]:
    """Each service's latest observation (the first written wins a tie, as the stores)."""
    latest: dict[tuple[str, int, str], ScanResult] = {}
    for r in results:
        key = (r.ip, r.port, r.transport.value)
        if key not in latest or r.observed_at > latest[key].observed_at:
            latest[key] = r
    return list(latest.values())


async def opened(url: str) -> PgStore | SqliteStore:
    store = await open_store(url)
    assert isinstance(store, PgStore | SqliteStore)
    return store


async def report(store: Searcher, view: View = CURRENT) -> dict[str, Any]:
    data = await census_report(store, view)
    data.pop("view")
    return data


async def test_rollups_equal_the_rows_through_replays(store_url: str) -> None:
    plan = sweeps(3)
    results = make_results(600, seed=21, sweep_list=plan)
    store = await opened(store_url)
    try:
        for start in range(0, 600, 150):
            await store.write(results[start:start + 150])
        # the pipeline is at-least-once: whole batches again, a batch half new, a result
        # again with another observed_at
        assert await store.write(results[150:300]) == 0
        extra = [r.model_copy(update={"ip": f"198.51.100.{i}"})
                 for i, r in enumerate(make_results(5, seed=99, sweep_list=plan))]
        assert await store.write(results[:10] + extra) == 5
        later = [r.model_copy(update={"observed_at": r.observed_at + timedelta(hours=1)})
                 for r in results[300:400]]
        assert await store.write(later) == 0
        everything = results + extra
        assert await report(store) == report_of(current(everything))
        for sweep_id, _ in plan:
            assert await report(store, View("sweep", sweep_id=sweep_id)) == report_of(
                r for r in everything if r.sweep_id == sweep_id)
        assert await verify_rollups(store) == []
    finally:
        await store.close()


def _mqtt(result: ScanResult, anonymous: bool) -> ScanResult:
    return result.model_copy(update={
        "status": Status.SUCCESS, "protocol": Protocol.MQTT,
        "mqtt": MqttResult(protocol_level=4, return_code=0 if anonymous else 5,
                           return_code_name="accepted" if anonymous else "not-authorized",
                           session_present=False, anonymous=anonymous)})


async def test_the_current_view_follows_a_service_that_changes(store_url: str) -> None:
    plan = sweeps(3)
    rng = random.Random(3)
    first, second, third = (_mqtt(make_result(rng, sweep, "192.0.2.7", 1883), anonymous)
                            for sweep, anonymous in zip(plan, (True, False, True),
                                                        strict=True))
    store = await opened(store_url)
    try:
        await store.write([first])
        assert (await report(store))["mqtt"]["anonymous_accepted"] == 1
        await store.write([second])  # the next sweep: it asks for a password now
        now = (await report(store))["mqtt"]
        assert (now["anonymous_accepted"], now["auth_required"], now["servers"]) == (0, 1, 1)
        assert now["by_return_code"] == {"not-authorized": 1}
        await store.write([second, first])  # replayed: nothing moves
        assert (await report(store)) == report_of([second])
        await store.write([third, second])  # the last sweep and a replay, in one batch
        assert (await report(store)) == report_of([third])
        # each sweep keeps what it saw
        for result in (first, second, third):
            sweep = View("sweep", sweep_id=str(result.sweep_id))
            assert await report(store, sweep) == report_of([result])
        assert await verify_rollups(store) == []
    finally:
        await store.close()


async def test_a_late_older_observation_does_not_move_the_current_view(
        store_url: str) -> None:
    plan = sweeps(2)
    rng = random.Random(4)
    old, new = (_mqtt(make_result(rng, sweep, "192.0.2.8", 8883), anonymous)
                for sweep, anonymous in zip(plan, (True, False), strict=True))
    store = await opened(store_url)
    try:
        await store.write([new])
        await store.write([old])  # a shard of the older sweep, redelivered late
        assert await report(store) == report_of([new])
        assert await report(store, View("sweep", sweep_id=plan[0][0])) == report_of([old])
        assert await verify_rollups(store) == []
    finally:
        await store.close()


async def test_a_service_that_does_not_move_is_not_rewritten(migrated_url: str) -> None:
    """PostgreSQL (migration 0015): an observation that moves neither end of a service's
    span (another sweep's at the same time, a late one inside the span) leaves its row in
    services_core as it was, not a new version of it; one older than the span moves
    first_seen back, and the rollups stay exact throughout."""
    plan = sweeps(4)
    rng = random.Random(6)
    seen = [make_result(rng, sweep, "192.0.2.9", 1883) for sweep in plan]
    store = await PgStore.open(migrated_url)

    async def version() -> tuple[str, object, object]:
        [row] = await store.fetch("SELECT xmin::text AS v, first_seen, last_seen "
                                  "FROM services_core", [])
        return row["v"], row["first_seen"], row["last_seen"]

    try:
        await store.write([seen[1]])
        await store.write([seen[3]])
        before = await version()
        again = seen[3].model_copy(update={"sweep_id": "sw-rerun"})
        assert await store.write([again, seen[2]]) == 2  # same time; inside the span
        assert await version() == before
        await store.write([seen[0]])
        moved = await version()
        assert moved[0] != before[0]
        assert moved[1:] == (seen[0].observed_at, seen[3].observed_at)
        assert await report(store) == report_of([seen[3]])
        assert await verify_rollups(store) == []
    finally:
        await store.close()


async def _corrupt(url: str, statement: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(path_of(url))
        try:
            conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(url)
    try:
        await pg.execute(statement)
    finally:
        await pg.close()


def _verify_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerscan.cli", "db", "verify", "--store", url],
                          capture_output=True, text=True, timeout=120, check=False)


async def test_verify_names_each_wrong_count(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await store.write(make_results(200, seed=5))
        assert await verify_rollups(store) == []
    finally:
        await store.close()
    done = _verify_cli(store_url)
    assert done.returncode == 0, done.stdout + done.stderr
    await _corrupt(store_url, "UPDATE census_current SET n = n + 2 WHERE fact = 'mqtt.servers'")
    await _corrupt(store_url, "DELETE FROM census_sweep WHERE fact = 'amqp.services' "
                              "AND sweep_id = 'sw-test0001'")
    store = await opened(store_url)
    try:
        problems = await verify_rollups(store)
    finally:
        await store.close()
    assert len(problems) == 2, problems
    assert problems[0].startswith("census_sweep ") and "amqp.services: rollup 0, rows " \
        in problems[0]
    assert problems[1].startswith("census_current mqtt.servers: rollup ")
    done = _verify_cli(store_url)
    assert done.returncode == 1
    assert done.stdout.splitlines() == problems
    await _corrupt(store_url, "UPDATE services_rollup SET n = n + 1 WHERE port = 1883")
    store = await opened(store_url)
    try:
        assert any(p.startswith("services_rollup ") for p in await verify_rollups(store))
    finally:
        await store.close()


async def copy_before(url: str, version: int, results: list[ScanResult]) -> None:
    """*results* stored by a database migrated to before *version* (COPY into
    observations, its triggers of then keeping the rest); before 0009, without facts."""
    files = migrate.migration_files()
    await migrate.migrate(url, migrations=[m for m in files if m.version < version])
    columns = COLUMNS if version > 9 else COLUMNS[:-1]  # no census column before 0009
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE observations_p20260301 PARTITION OF observations "
                           "FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')")
        rows = [observation_row(r)[:len(columns)] for r in results]
        await conn.copy_records_to_table("observations", records=rows, columns=columns)
    finally:
        await conn.close()


async def test_migration_0009_builds_the_rollups_of_rows_stored_before() -> None:
    results = make_results(300, seed=8)
    files = migrate.migration_files()
    async with fresh_database() as url:
        await copy_before(url, 9, results)
        applied = await migrate.migrate(url, migrations=[m for m in files if m.version <= 9])
        assert applied == ["0009_census_rollups"]
        await migrate.migrate(url)  # the later ones
        store = await opened(url)
        try:
            assert await report(store) == report_of(current(results))
            assert await verify_rollups(store) == []
        finally:
            await store.close()


async def test_schema_step_4_builds_the_rollups_of_a_file_written_before(tmp_path: Path,
                                                                         ) -> None:
    results = make_results(300, seed=9)
    url = f"sqlite:///{tmp_path}/old.db"
    store = await opened(url)
    try:
        await store.write(results)
    finally:
        await store.close()
    # the file as brokerscan wrote it before step 4: no facts, no census tables (and none
    # of the later steps' tables)
    conn = sqlite3.connect(path_of(url))
    try:
        for statement in (
                "DROP TABLE optouts", "DROP TABLE watch_deliveries", "DROP TABLE watch_events",
                "DROP TABLE watches",
                "DROP TRIGGER observations_census", "DROP TRIGGER services_census_inserted",
                "DROP TRIGGER services_census_updated", "DROP TABLE census_sweep",
                "DROP TABLE census_current", "ALTER TABLE observations DROP COLUMN census",
                "ALTER TABLE services DROP COLUMN census", "DROP TABLE facet_sweep",
                "DROP TABLE facet_current", "DROP TRIGGER observations_facets",
                "DROP TRIGGER services_facets_inserted", "DROP TRIGGER services_facets_updated",
                "PRAGMA user_version = 3"):
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    store = await opened(url)  # upgraded on opening
    try:
        assert await report(store) == report_of(current(results))
        for sweep_id, _ in sweeps():
            assert await report(store, View("sweep", sweep_id=sweep_id)) == report_of(
                r for r in results if r.sweep_id == sweep_id)
        assert await verify_rollups(store) == []
    finally:
        await store.close()
