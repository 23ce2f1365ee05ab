"""What every PostgreSQL module of brokerscan shares: the connection types its functions
accept, and the two errors (one line each, for the operator)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# What the storage and state functions accept: a connection, or one taken from a pool.
if TYPE_CHECKING:
    from typing import TypeAlias

    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    PooledConn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:  # asyncpg's classes are not generic at run time
    Conn = asyncpg.Connection | PoolConnectionProxy
    Pool = asyncpg.Pool
    PooledConn = PoolConnectionProxy

__all__ = ["Conn", "DatabaseError", "MigrationError", "Pool", "PooledConn"]


class DatabaseError(Exception):
    """The database cannot be used; the message is one line meant for the operator."""


class MigrationError(DatabaseError):
    """The schema is not the one this brokerscan needs (or a migration was edited)."""
