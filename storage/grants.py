"""A PostgreSQL role that may only read: what ``brokerscan serve`` needs (searches, counts,
reports, the sweep record, token checks), and nothing it could change.

``brokerscan db grant-readonly ROLE`` makes the role (``LOGIN``, no password: set one with
``ALTER ROLE ... PASSWORD`` where connections need it) if it does not exist, and grants it
``CONNECT`` on the database, ``USAGE`` on the schema and ``SELECT`` on :data:`READ_TABLES`.
Daily partitions need no grant of their own: PostgreSQL checks the privileges of the
partitioned table a query names. Run it again after a migration that adds a read table.
"""

from __future__ import annotations

import re
from typing import Final

from storage.pgtypes import Conn

__all__ = ["READ_TABLES", "ROLE_NAME", "grant_readonly"]

#: The tables the read side reads (partitions of ``observations`` included through it;
#: ``optouts`` so that operators can list the requests on a server that may only read).
READ_TABLES: Final = ("observations", "services", "rollup", "services_rollup", "census_sweep",
                      "census_current", "services_census", "facet_sweep", "facet_current",
                      "rollup_expired", "census_sweep_expired", "facet_sweep_expired",
                      "api_tokens", "sweeps", "sweep_shards", "schedules", "optouts",
                      "schema_migrations")

#: A role name that needs no quoting anywhere (PostgreSQL folds unquoted names to lower
#: case; 63 bytes at most).
ROLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def grant_readonly(conn: Conn, role: str) -> bool:
    """Make *role* (if needed) and let it read :data:`READ_TABLES` of the connection's
    database and schema, in one transaction.

    :returns: whether the role was created (False: it existed and was granted again)
    :raises ValueError: *role* is not a plain lower-case name
    """
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"role {role!r}: use lower-case letters, digits and _ (at most 63, "
                         "not starting with a digit)")
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            await conn.execute(f"CREATE ROLE {_ident(role)} LOGIN")
        database = await conn.fetchval("SELECT current_database()")
        schema = await conn.fetchval("SELECT current_schema()")
        await conn.execute(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)}")
        tables = ", ".join(_ident(t) for t in READ_TABLES)
        await conn.execute(f"GRANT SELECT ON TABLE {tables} TO {_ident(role)}")
    return not exists
