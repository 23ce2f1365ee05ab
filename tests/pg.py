"""Throwaway PostgreSQL databases for tests.

``fresh_database()`` creates ``brokerscan_test_<random>`` on the local server, yields its
URL and drops it afterwards (terminating connections a failed test left open). It never
touches any other database. ``pg_url`` is the same as a module-scoped pytest fixture:
each test module gets its own database. Import it into a test module
(``from tests.pg import pg_url``) or register it in conftest.py.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

__all__ = ["BASE_URL", "fresh_database", "pg_url"]

#: The maintenance database of the test server (scripts/services.sh starts it).
BASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@asynccontextmanager
async def fresh_database(base_url: str = BASE_URL) -> AsyncIterator[str]:
    """Create an empty database, yield its URL, drop it on exit.

    :param base_url: URL of an existing database on the server, used only to run
        ``CREATE DATABASE`` and ``DROP DATABASE``
    :returns: (yields) the URL of the new database, same server and user
    """
    name = f"brokerscan_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(base_url, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(base_url)
        try:
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            # FORCE (PostgreSQL 13+) closes connections a failed test left open.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pg_url() -> AsyncIterator[str]:
    """URL of an empty database of the test module's own (dropped after the module)."""
    async with fresh_database() as url:
        yield url
