"""PostgreSQL only: daily partitions, retention, the default partition, a killed writer."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from storage import partitions
from storage.pgstore import PgStore
from tests.unit.storage.gen import make_results, sweeps
from tests.waiting import HANG, wait_for_async

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[PgStore]:
    s = await PgStore.open(migrated_url)
    yield s
    await s.close()


async def observations(store: PgStore) -> int:
    """Rows in ``observations`` (the rollup keeps counting what retention drops)."""
    [row] = await store.fetch("SELECT count(*) AS n FROM observations", [])
    return int(row["n"])


async def rows_per_partition(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT tableoid::regclass::text AS p, count(*) AS n FROM observations GROUP BY 1")
    return {r["p"]: r["n"] for r in rows}


async def test_rollover_across_midnight(store: PgStore, migrated_url: str) -> None:
    before = datetime(2026, 5, 1, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 5, 2, 0, 0, 1, tzinfo=UTC)
    results = (make_results(20, seed=1, sweep_list=[("sw-late", before)])
               + make_results(30, seed=2, sweep_list=[("sw-early", after)]))
    assert await store.write(results) == 50
    conn = await asyncpg.connect(migrated_url)
    try:
        assert await rows_per_partition(conn) == {
            "observations_p20260501": 20, "observations_p20260502": 30}
    finally:
        await conn.close()
    assert await store.trends("") == [("2026-05-01", 20), ("2026-05-02", 30)]


async def test_premake_is_idempotent_and_race_safe(migrated_url: str) -> None:
    conns = [await asyncpg.connect(migrated_url) for _ in range(4)]
    try:
        made = await asyncio.gather(*(partitions.ensure_partitions(c, 3) for c in conns))
        today = datetime.now(UTC).date()
        expected = [partitions.partition_name(today + timedelta(days=i)) for i in range(4)]
        assert sorted(sum(made, [])) == expected  # each made exactly once
        assert await partitions.ensure_partitions(conns[0], 3) == []
        health = await partitions.partition_health(conns[0])
        assert health.ok and health.days_ahead == 3 and health.default_rows == 0
    finally:
        for c in conns:
            await c.close()


async def test_retention_detaches_and_drops_old_partitions(store: PgStore,
                                                           migrated_url: str) -> None:
    sw = sweeps(5, start=datetime(2026, 1, 10, 12, tzinfo=UTC))  # Jan 10 .. Jan 14
    await store.write(make_results(100, seed=3, sweep_list=sw))
    conn = await asyncpg.connect(migrated_url)
    try:
        before = await rows_per_partition(conn)
        dropped = await partitions.drop_expired(conn, 3, today=date(2026, 1, 15))
        assert dropped == ["observations_p20260110", "observations_p20260111"]
        after = await rows_per_partition(conn)
        assert after == {k: v for k, v in before.items() if k not in dropped}
        for name in dropped:  # gone entirely, not emptied
            assert await conn.fetchval("SELECT to_regclass($1)", name) is None
        # The dashboards' history is kept: the rollup still counts the dropped days.
        assert sum(n for _, n in await store.trends("")) == 100
        assert await observations(store) == sum(after.values())
        assert await partitions.drop_expired(conn, 3, today=date(2026, 1, 15)) == []
        with pytest.raises(ValueError):
            await partitions.drop_expired(conn, 0)
    finally:
        await conn.close()


async def test_default_partition_is_watched(store: PgStore, migrated_url: str) -> None:
    conn = await asyncpg.connect(migrated_url)
    try:
        # A day no partition covers: a row written around the store lands in the default.
        await conn.execute(
            """INSERT INTO observations (sweep_started_at, sweep_id, ip, port, transport,
                   observed_at, day, status, tls, duration_ms, record)
               VALUES ('2020-01-01T05:00Z', 'sw-x', '192.0.2.9', 1883, 'tcp',
                   '2020-01-01T05:00Z', '2020-01-01', 'success', false, 1, '{}')""")
        health = await partitions.partition_health(conn)
        assert health.default_rows == 1 and not health.ok
        # That day cannot get a partition now; the others still do.
        made = await partitions.ensure_partitions(
            conn, 0, around=[date(2020, 1, 1), date(2020, 1, 2)])
        assert "observations_p20200101" not in made and "observations_p20200102" in made
    finally:
        await conn.close()
    assert (await store.maintain()).default_rows == 1


_WRITER = """
import asyncio, sys
from storage.pgstore import PgStore
from tests.unit.storage.gen import make_results

async def main():
    store = await PgStore.open(sys.argv[1])
    print("ready", flush=True)
    await store.write(make_results(int(sys.argv[2]), seed=42))
    print("committed", flush=True)

asyncio.run(main())
"""


async def test_writer_killed_mid_batch_leaves_nothing(store: PgStore, migrated_url: str) -> None:
    n = 40_000
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, migrated_url, str(n), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    conn = await asyncpg.connect(migrated_url)
    try:
        assert (await proc.stdout.readline()).strip() == b"ready"
        pid = await wait_for_async(  # until the COPY (and its trigger) runs in its transaction
            lambda: conn.fetchval(
                """SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'brokerscan' AND state = 'active'
                   AND query LIKE 'COPY %observations%'"""),
            3 * HANG, "the writer's COPY to be active", every=0.005)  # the COPY is brief
        assert pid is not None, "the writer never reached its COPY"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert b"committed" not in await proc.stdout.read()  # killed before the commit

        async def ended() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

        await wait_for_async(ended, 20, "the server to end the killed writer's transaction")
        for table in ("observations", "rollup", "services"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    finally:
        await conn.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    results = make_results(n, seed=42)
    assert await store.write(results) == n
    assert await store.write(results) == 0
    assert sum(n for _, n in await store.trends("")) == n
