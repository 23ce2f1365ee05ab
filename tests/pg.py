"""Throwaway PostgreSQL databases for tests.

``fresh_database()`` creates ``brokerscan_test_<random>`` on the local server, yields its
URL and drops it afterwards (terminating connections a failed test left open); it never
touches any other database. ``migrated_database()`` is the same with brokerscan's
migrations applied. ``new_database_url()``, ``create_database()`` and ``drop_database()``
are the pieces, for synchronous harnesses that hold a database across calls
(tests/integration/sweepfleet.py).

Fixtures (registered in tests/conftest.py, so every test module can ask for them):

- ``pg_url``: an empty database of the test module's own (dropped after the module);
- ``migrated_module_url``: a migrated database of the test module's own;
- ``migrated_url``: a migrated database of the test's own;
- ``store_url``: a fresh store of the test's own, SQLite then PostgreSQL (parametrised).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from storage import migrate

__all__ = [
    "BASE_URL",
    "create_database",
    "drop_database",
    "fresh_database",
    "migrated_database",
    "new_database_url",
    "migrated_module_url",
    "migrated_url",
    "pg_url",
    "store_url",
]

#: The maintenance database of the test server (scripts/services.sh starts it).
BASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def new_database_url(base_url: str = BASE_URL) -> str:
    """The URL of a database yet to be made, ``brokerscan_test_<random>`` on the server of
    ``base_url`` (same user)."""
    name = f"brokerscan_test_{secrets.token_hex(6)}"
    return urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))


async def _on_server(url: str, statement: str) -> None:
    """Run ``statement`` (``{name}``: the test database's name, quoted) on the maintenance
    database of ``url``'s server; refuses any database but a test one."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.startswith("brokerscan_test_"):
        raise ValueError(f"{name!r} is not a test database")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=10)
    try:
        await admin.execute(statement.format(name=f'"{name}"'))
    finally:
        await admin.close()


async def create_database(url: str) -> None:
    """Create the empty database of ``url`` (from :func:`new_database_url`)."""
    await _on_server(url, "CREATE DATABASE {name}")


async def drop_database(url: str) -> None:
    """Drop the database of ``url`` (a test database), even if connections are left."""
    # FORCE (PostgreSQL 13+) closes connections a failed test left open.
    await _on_server(url, "DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@asynccontextmanager
async def fresh_database(base_url: str = BASE_URL) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it on exit.

    :param base_url: URL of a database on the server (its server and user are used)
    :returns: (yields) the URL of the new database, same server and user
    """
    url = new_database_url(base_url)
    await create_database(url)
    try:
        yield url
    finally:
        await drop_database(url)


@asynccontextmanager
async def migrated_database(base_url: str = BASE_URL) -> AsyncIterator[str]:
    """:func:`fresh_database` with every brokerscan migration applied."""
    async with fresh_database(base_url) as url:
        await migrate.migrate(url)
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pg_url() -> AsyncIterator[str]:
    """URL of an empty database of the test module's own (dropped after the module)."""
    async with fresh_database() as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def migrated_module_url() -> AsyncIterator[str]:
    """URL of a migrated database of the test module's own (dropped after the module)."""
    async with migrated_database() as url:
        yield url


@pytest_asyncio.fixture
async def migrated_url() -> AsyncIterator[str]:
    """URL of a migrated database of the test's own (dropped after the test)."""
    async with migrated_database() as url:
        yield url


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store of the test's own, once of each kind: a SQLite file in its temporary
    directory, then a migrated PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    async with migrated_database() as url:
        yield url
