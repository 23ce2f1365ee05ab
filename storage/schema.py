"""Which schema this brokerscan needs and which one a database has: the migration files
shipped in ``storage/migrations/`` (``NNNN_name.sql``), what ``schema_migrations`` says was
applied, and the check every new connection makes (:func:`require_current`). Applying
migrations is :mod:`storage.migrate`'s job.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from storage.pgtypes import Conn, MigrationError

__all__ = [
    "Migration",
    "applied_migrations",
    "current_version",
    "latest_version",
    "migration_files",
    "pending",
    "require_current",
    "verify",
]

PACKAGE = "storage.migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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
    # Numbers are handed out per branch (0004 read side, 0005 operations, ...), so one may
    # land before the other: a gap is allowed, a duplicate is not. Each file is independent
    # of the numbers it skips, and a skipped one that lands later is simply applied then.
    for before, migration in zip(found, found[1:], strict=False):
        if migration.version == before.version:
            raise MigrationError(
                f"two migration files have number {migration.version:04d}: "
                f"{before.name} and {migration.name}"
            )
    return tuple(found)


def migration_files() -> list[Migration]:
    """The migrations this brokerscan ships, in order.

    :returns: one :class:`Migration` per ``.sql`` file of ``storage.migrations``
    :raises MigrationError: a file is misnamed, or two files have one number
    """
    return list(_load())


def latest_version() -> int:
    """The schema version this brokerscan needs (that of its last migration)."""
    files = _load()
    return files[-1].version if files else 0


async def applied_migrations(conn: Conn) -> dict[int, tuple[str, str]]:
    """Applied migrations as ``{version: (name, checksum)}``; empty before the first."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return {}
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    return {int(r["version"]): (str(r["name"]), str(r["checksum"])) for r in rows}


def verify(applied: Mapping[int, tuple[str, str]], files: Sequence[Migration]) -> None:
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


async def pending(conn: Conn, *, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Names of the migrations not yet applied, in order.

    :param conn: an open connection (its ``search_path`` picks the schema)
    :param migrations: as for :func:`migrate`
    :raises MigrationError: an applied file changed, or the database is newer
    """
    files = list(migration_files() if migrations is None else migrations)
    applied = await applied_migrations(conn)
    verify(applied, files)
    return [m.name for m in files if m.version not in applied]


async def current_version(conn: Conn) -> int:
    """The highest applied version; 0 for a database that was never migrated."""
    applied = await applied_migrations(conn)
    return max(applied, default=0)


async def require_current(
    conn: Conn, *, migrations: Sequence[Migration] | None = None
) -> None:
    """Check that the database is exactly at the version this brokerscan needs.

    :raises MigrationError: behind (``run brokerscan db migrate``), ahead, or edited
    """
    files = list(migration_files() if migrations is None else migrations)
    applied = await applied_migrations(conn)
    verify(applied, files)
    have = max(applied, default=0)
    need = files[-1].version if files else 0
    if len(applied) < len(files):
        raise MigrationError(
            f"database is at version {have}, brokerscan needs {need}: run brokerscan db migrate"
        )
