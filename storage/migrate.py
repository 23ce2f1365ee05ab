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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from storage.db import Conn, MigrationError, connect

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

#: The advisory lock every migration transaction holds ("brksmigr" as a 64-bit integer).
LOCK_KEY = int.from_bytes(b"brksmigr", "big")
PACKAGE = "storage.migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    checksum   text        NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    :ivar version: the number in front of the file name
    :ivar name: the file name without ``.sql`` (``0001_sweeps``)
    :ivar sql: the statements, run as one script
    :ivar checksum: SHA-256 of the file's bytes, in hex
    """

    version: int
    name: str
    sql: str
    checksum: str

    @classmethod
    def from_bytes(cls, file_name: str, data: bytes) -> Migration:
        """Build a migration from a file's name and contents.

        :raises MigrationError: if the name is not ``NNNN_name.sql``
        """
        match = _FILE_NAME.match(file_name)
        if match is None:
            raise MigrationError(
                f"migration file {file_name!r} is not named NNNN_name.sql (lower case)"
            )
        return cls(
            version=int(match.group(1)),
            name=file_name.removesuffix(".sql"),
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )


@lru_cache(maxsize=1)
def _load() -> tuple[Migration, ...]:
    # importlib.resources finds the files in an editable install (the source directory)
    # and in a wheel, provided package-data lists migrations/*.sql.
    folder = resources.files(PACKAGE)
    found = sorted(
        (
            Migration.from_bytes(entry.name, entry.read_bytes())
            for entry in folder.iterdir()
            if entry.name.endswith(".sql")
        ),
        key=lambda m: m.version,
    )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration files must be numbered 0001, 0002, ... without gaps or "
                f"duplicates: found {migration.name} where {expected:04d} was expected"
            )
    return tuple(found)


def migration_files() -> list[Migration]:
    """The migrations this brokerscan ships, in order.

    :returns: one :class:`Migration` per ``.sql`` file of ``storage.migrations``
    :raises MigrationError: a file is misnamed, or the versions are not 1, 2, 3, ...
    """
    return list(_load())


def latest_version() -> int:
    """The schema version this brokerscan needs (that of its last migration)."""
    files = _load()
    return files[-1].version if files else 0


async def _applied(conn: Conn) -> dict[int, tuple[str, str]]:
    """Applied migrations as ``{version: (name, checksum)}``; empty before the first."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {int(r["version"]): (str(r["name"]), str(r["checksum"])) for r in rows}


def _verify(applied: Mapping[int, tuple[str, str]], files: Sequence[Migration]) -> None:
    """Refuse a database whose applied migrations differ from the files."""
    by_version = {m.version: m for m in files}
    for version in sorted(applied):
        name, checksum = applied[version]
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {name}, which this brokerscan does not know: "
                "upgrade brokerscan"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.name} was changed after it was applied (sha256 "
                f"{checksum[:12]} in the database, {migration.checksum[:12]} on disk): "
                "restore the file and put the change in a new migration"
            )


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
            applied = await _applied(conn)
            _verify(applied, files)
            if migration is None or migration.version in applied:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        done.append(migration.name)
    return done


async def pending(conn: Conn, *, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Names of the migrations not yet applied, in order.

    :param conn: an open connection (its ``search_path`` picks the schema)
    :param migrations: as for :func:`migrate`
    :raises MigrationError: an applied file changed, or the database is newer
    """
    files = list(migration_files() if migrations is None else migrations)
    applied = await _applied(conn)
    _verify(applied, files)
    return [m.name for m in files if m.version not in applied]


async def current_version(conn: Conn) -> int:
    """The highest applied version; 0 for a database that was never migrated."""
    applied = await _applied(conn)
    return max(applied, default=0)


async def require_current(
    conn: Conn, *, migrations: Sequence[Migration] | None = None
) -> None:
    """Check that the database is exactly at the version this brokerscan needs.

    :raises MigrationError: behind (``run brokerscan db migrate``), ahead, or edited
    """
    files = list(migration_files() if migrations is None else migrations)
    applied = await _applied(conn)
    _verify(applied, files)
    have = max(applied, default=0)
    need = files[-1].version if files else 0
    if len(applied) < len(files):
        raise MigrationError(
            f"database is at version {have}, brokerscan needs {need}: run brokerscan db migrate"
        )
