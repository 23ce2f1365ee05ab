"""Migrations and connections against the real PostgreSQL (each test in its own database)."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import asyncpg
import pytest

from storage import db, migrate
from storage.migrate import Migration
from tests.pg import BASE_URL, fresh_database

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_migration_files_are_numbered_and_checksummed() -> None:
    files = migrate.migration_files()
    versions = [m.version for m in files]
    # numbered per branch (0004 read side, 0005 operations, 0006 protocol depth): a gap
    # may exist until every branch has landed; a duplicate never
    assert versions == sorted(set(versions)) and versions[:3] == [1, 2, 3]
    first = files[0]
    assert first.name == "0001_sweeps"
    assert first.checksum == hashlib.sha256(first.sql.encode()).hexdigest()
    assert migrate.latest_version() == files[-1].version


def test_misnamed_migration_file_is_refused() -> None:
    with pytest.raises(db.MigrationError, match="NNNN_name.sql"):
        Migration.from_bytes("1_sweeps.sql", b"")


async def test_fresh_database_is_created_and_dropped() -> None:
    async with fresh_database() as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("brokerscan_test_")
        conn = await asyncpg.connect(url)  # left open on purpose: the drop must still work
        assert await conn.fetchval("SELECT current_database()") == name
    await conn.close()
    admin = await asyncpg.connect(BASE_URL)
    try:
        assert await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) is None
    finally:
        await admin.close()


ALL = [m.name for m in migrate.migration_files()]
LATEST = migrate.latest_version()


async def test_applies_once_then_nothing() -> None:
    async with fresh_database() as url:
        assert await migrate.migrate(url) == ALL
        assert await migrate.migrate(url) == []
        conn = await db.connect(url)
        try:
            assert await migrate.pending(conn) == []
            assert await migrate.current_version(conn) == LATEST
            row = await conn.fetchrow("SELECT * FROM schema_migrations WHERE version = 1")
            assert row is not None
            assert (row["version"], row["name"]) == (1, "0001_sweeps")
            assert row["checksum"] == migrate.migration_files()[0].checksum
            assert await conn.fetchval("SELECT to_regclass('sweep_shards')") is not None
        finally:
            await conn.close()


async def test_concurrent_runs_apply_each_migration_once() -> None:
    async with fresh_database() as url:
        conns = [await db.connect(url, check=False) for _ in range(4)]
        try:
            results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
            assert sorted(name for r in results for name in r) == ALL
            assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(ALL)
        finally:
            for c in conns:
                await c.close()


async def test_later_migration_applies_and_a_failing_one_rolls_back() -> None:
    files = migrate.migration_files()
    extra = Migration.from_bytes(f"{LATEST + 1:04d}_extra.sql", b"CREATE TABLE extra (x int);")
    broken = Migration.from_bytes(f"{LATEST + 2:04d}_broken.sql",
                                  b"CREATE TABLE half (x int); SELECT 1/0;")
    async with fresh_database() as url:
        assert await migrate.migrate(url) == ALL
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate.migrate(url, migrations=[*files, extra, broken])
        conn = await db.connect(url, check=False)
        try:
            assert await migrate.pending(conn, migrations=[*files, extra, broken]) == [
                broken.name
            ]
            assert await conn.fetchval("SELECT to_regclass('extra')") is not None
            assert await conn.fetchval("SELECT to_regclass('half')") is None
            # The database is now ahead of the shipped files: refused in one line.
            with pytest.raises(db.MigrationError, match=f"{extra.name}, which this brokerscan"):
                await migrate.migrate(conn)
        finally:
            await conn.close()


async def test_changed_checksum_is_refused() -> None:
    async with fresh_database() as url:
        await migrate.migrate(url)
        conn = await db.connect(url)
        try:
            await conn.execute("UPDATE schema_migrations SET checksum = 'f00' WHERE version = 1")
            expected = r"migration 0001_sweeps was changed after it was applied \(sha256 f00 in"
            with pytest.raises(db.MigrationError, match=expected) as info:
                await migrate.migrate(conn)
            assert "\n" not in str(info.value)
            with pytest.raises(db.MigrationError, match="changed after it was applied"):
                await migrate.pending(conn)
            with pytest.raises(db.MigrationError, match="changed after it was applied"):
                await db.connect(url)
        finally:
            await conn.close()


async def test_connect_requires_migrations() -> None:
    async with fresh_database() as url:
        with pytest.raises(db.MigrationError) as info:
            await db.connect(url)
        assert str(info.value) == (
            f"database is at version 0, brokerscan needs {LATEST}: run brokerscan db migrate"
        )
        with pytest.raises(db.MigrationError, match="run brokerscan db migrate"):
            await db.create_pool(url)
        await migrate.migrate(url)
        pool = await db.create_pool(url, max_size=2)
        try:
            async with pool.acquire() as conn:
                assert await migrate.pending(conn) == []
        finally:
            await pool.close()


async def test_schema_keeps_namespaces_apart() -> None:
    async with fresh_database() as url:
        assert await migrate.migrate(url, schema="ns_a") == ALL
        conn = await db.connect(url, schema="ns_a")
        try:
            assert await conn.fetchval("SELECT to_regclass('ns_a.sweeps')") is not None
        finally:
            await conn.close()
        with pytest.raises(db.MigrationError, match="at version 0"):
            await db.connect(url, schema="ns_b")
        with pytest.raises(db.MigrationError, match="at version 0"):
            await db.connect(url)  # public was not touched


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@127.0.0.1/x", r"^invalid database URL: scheme 'mysql' is not postgres"),
        ("127.0.0.1:5432", r"^invalid database URL: scheme"),
        ("postgresql://u@127.0.0.1:99999/x", r"^invalid database URL: Port out of range"),
        (
            "postgresql://postgres@127.0.0.1:5432/brokerscan_no_such_db",
            r'^database "brokerscan_no_such_db" does not exist on the PostgreSQL server at '
            r"127.0.0.1:5432: create it",
        ),
        (
            "postgresql://brokerscan_no_such_user@127.0.0.1:5432/postgres",
            r'^PostgreSQL at 127.0.0.1:5432 refused user "brokerscan_no_such_user": role',
        ),
        (
            "postgresql://postgres@no-such-host.invalid:5432/postgres",
            r"^cannot reach PostgreSQL at no-such-host.invalid:5432: unknown host",
        ),
    ],
)
async def test_connect_errors_are_one_line(url: str, message: str) -> None:
    with pytest.raises(db.DatabaseError, match=message) as info:
        await db.connect(url)
    assert "\n" not in str(info.value)


async def test_refused_port_is_one_line() -> None:
    port = free_port()
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/postgres"
    for opener in (db.connect, db.create_pool):
        with pytest.raises(db.DatabaseError) as info:
            await opener(url)
        assert str(info.value) == f"cannot reach PostgreSQL at 127.0.0.1:{port}: connection refused"
        assert "secret" not in str(info.value)
