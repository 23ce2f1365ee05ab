"""Versioned SQL migrations: ``storage/migrations/NNNN_name.sql``, applied in order.

- Each migration runs in its own transaction, together with its row in
  ``schema_migrations(version, name, applied_at, checksum)``: it is applied whole or not
  at all.
- Every transaction first takes one ``pg_advisory_xact_lock``, so any number of processes
  may run :func:`migrate` at once: one applies, the others wait and then find nothing to do.
- The SHA-256 of each applied file is recorded; if a file changed after it was applied,
  or the database has a migration this brokerscan does not know, nothing runs and
  :class:`~storage.db.MigrationError` says so in one line.
- Running it again applies nothing.

New tables (issue 4's results store, ...) come as new files ``0002_...sql``; a file that
was applied anywhere is never edited.

A migration whose rows need what only Python computes (0009: the census facts of rows
stored before, from their records) names a function in :data:`AFTER`, run after its SQL
in the same transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from storage.db import connect
from storage.pgtypes import Conn
from storage.rollups import backfill_census
from storage.schema import (
    Migration,
    applied_migrations,
    current_version,
    latest_version,
    migration_files,
    pending,
    require_current,
    verify,
)

__all__ = [
    "LOCK_KEY",
    "Migration",
    "current_version",
    "latest_version",
    "migrate",
    "migration_files",
    "pending",
    "require_current",
]

#: Python run after a migration's SQL, in its transaction, by the migration's name.
AFTER: Final[dict[str, Callable[[Conn], Awaitable[None]]]] = {
    "0009_census_rollups": backfill_census,
}

#: The advisory lock every migration transaction holds ("brksmigr" as a 64-bit integer).
LOCK_KEY = int.from_bytes(b"brksmigr", "big")
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    checksum   text        NOT NULL
)
"""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate(
    conn_or_url: Conn | str,
    *,
    schema: str | None = None,
    migrations: Sequence[Migration] | None = None,
) -> list[str]:
    """Apply every pending migration, in order, each in its own transaction.

    :param conn_or_url: an open connection, or a URL to open (and close) one
    :param schema: create this PostgreSQL schema if needed and migrate inside it (the
        deployment's namespace); default: the connection's ``search_path``
    :param migrations: the migrations to apply (default: :func:`migration_files`)
    :returns: names of the migrations applied by this call (empty if none were pending)
    :raises MigrationError: an applied file changed, or the database is newer
    :raises DatabaseError: the database cannot be reached (URL form)
    """
    files = list(migration_files() if migrations is None else migrations)
    if isinstance(conn_or_url, str):
        conn = await connect(conn_or_url, schema=schema, check=False)
        try:
            return await _migrate(conn, files, schema)
        finally:
            await conn.close()
    return await _migrate(conn_or_url, files, schema)


async def _migrate(conn: Conn, files: Sequence[Migration], schema: str | None) -> list[str]:
    done: list[str] = []
    # The first round only creates the bookkeeping table, so that an empty list of files
    # still leaves a database that says "version 0".
    for migration in [None, *files]:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            if schema is not None:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote_ident(schema)}")
                await conn.execute("SELECT set_config('search_path', $1, true)", schema)
            await conn.execute(_CREATE_TABLE)
            applied = await applied_migrations(conn)
            verify(applied, files)
            if migration is None or migration.version in applied:
                continue
            await conn.execute(migration.sql)
            if migration.name in AFTER:
                await AFTER[migration.name](conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.name)
    return done
