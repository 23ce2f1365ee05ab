"""Opening PostgreSQL connections and pools, with one clear line when that fails.

Every way of failing to reach the database (a malformed URL, a name that does not resolve,
a refused port, a server that does not answer, a missing database, a refused login) becomes
a :class:`DatabaseError` whose message names the server and the cause, never the password.
By default a new connection also checks that the migrations of this brokerscan are applied
(:class:`MigrationError` otherwise).

The namespace of a deployment (``Settings.namespace``) can be given as *schema*: the
connection's ``search_path`` is set to it, so two deployments can share one database.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import unquote, urlsplit

import asyncpg

from storage.pgtypes import Conn, DatabaseError, MigrationError, Pool, PooledConn
from storage.schema import require_current

__all__ = ["SERVER_AWAY", "Conn", "DatabaseError", "MigrationError", "Pool", "PooledConn",
           "connect", "create_pool"]

CONNECT_TIMEOUT = 10.0
_SCHEMES = ("postgresql", "postgres")

#: What PostgreSQL and the way to it fail with while the server cannot work for now, as
#: opposed to a verdict on one statement: not reachable (connect errors, a connection
#: lost), shutting down (57P01, a restart), restarting its sessions after another
#: backend crashed (57P02: a PANIC, such as WAL on a full disk), starting up or
#: recovering (57P03), out of a resource (class 53: disk full, memory, connections) or
#: failing I/O (class 58). Every role waits and retries on these; none gives up a shard
#: or a result for one. (Issue 17's chaos cases ``postgres-restart`` and
#: ``postgres-disk-full`` are their test.)
SERVER_AWAY: tuple[type[BaseException], ...] = (
    DatabaseError, OSError, TimeoutError, asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError, asyncpg.InsufficientResourcesError,
    asyncpg.PostgresSystemError)


def _where(url: str) -> tuple[str, str, str]:
    """Check *url* and say where it points.

    :param url: a ``postgresql://`` URL
    :returns: ``(host:port, database, user)`` for messages (no password)
    :raises DatabaseError: if the URL is not a PostgreSQL URL
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 5432
    except ValueError as exc:
        raise DatabaseError(f"invalid database URL: {exc}") from None
    if parts.scheme not in _SCHEMES:
        shown = parts.scheme or url.split(":", 1)[0][:20]
        raise DatabaseError(
            f"invalid database URL: scheme {shown!r} is not postgresql:// (e.g. "
            "postgresql://user@127.0.0.1:5432/brokerscan)"
        )
    host = parts.hostname or "local socket"
    database = unquote(parts.path.lstrip("/")) or (parts.username or "")
    return f"{host}:{port}", database, parts.username or ""


def _explain(exc: BaseException, url: str) -> DatabaseError:
    """Turn whatever asyncpg or the OS raised while connecting into one line."""
    at, database, user = _where(url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseError(
            f'database "{database}" does not exist on the PostgreSQL server at {at}: '
            f"create it (createdb {database}) or fix the URL"
        )
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return DatabaseError(f'PostgreSQL at {at} refused user "{user}": {exc}')
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseError(f"PostgreSQL at {at} refused the connection: {exc}")
    if isinstance(exc, socket.gaierror):
        return DatabaseError(f"cannot reach PostgreSQL at {at}: unknown host ({exc.strerror})")
    if isinstance(exc, ConnectionRefusedError):
        return DatabaseError(f"cannot reach PostgreSQL at {at}: connection refused")
    if isinstance(exc, TimeoutError):
        return DatabaseError(
            f"cannot reach PostgreSQL at {at}: no answer within {CONNECT_TIMEOUT:g} s"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return DatabaseError(f"cannot reach PostgreSQL at {at}: {reason}")
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError | OverflowError):
        return DatabaseError(f"invalid database URL for {at}: {exc}")
    return DatabaseError(f"cannot connect to PostgreSQL at {at}: {exc}")


_CONNECT_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
    OverflowError,
)


def _server_settings(schema: str | None,
                     statement_timeout: float | None = None) -> dict[str, str]:
    settings = {"application_name": "brokerscan"}
    if schema is not None:
        settings["search_path"] = schema
    if statement_timeout:
        settings["statement_timeout"] = str(max(1, round(statement_timeout * 1000)))
    return settings


async def connect(
    url: str, *, schema: str | None = None, check: bool = True
) -> asyncpg.Connection[asyncpg.Record]:
    """Open one connection.

    :param url: ``postgresql://user[:password]@host[:port]/database``
    :param schema: PostgreSQL schema to work in (the deployment's namespace); default: the
        server's ``search_path`` (normally ``public``)
    :param check: also require that every migration of this brokerscan is applied
    :returns: the open connection (jsonb values travel as text: no codecs are installed)
    :raises DatabaseError: the server cannot be reached or refuses the connection
    :raises MigrationError: *check* is set and the schema is behind or ahead
    """
    _where(url)
    try:
        conn = await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT, server_settings=_server_settings(schema)
        )
    except _CONNECT_ERRORS as exc:
        raise _explain(exc, url) from exc
    if check:
        try:
            await require_current(conn)
        except BaseException:
            await conn.close()
            raise
    return conn


async def create_pool(
    url: str,
    *,
    schema: str | None = None,
    check: bool = True,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout: float | None = None,
) -> Pool:
    """Open a connection pool (bound to the running event loop).

    :param url: as for :func:`connect`
    :param schema: as for :func:`connect`
    :param check: as for :func:`connect`, checked once on a pooled connection
    :param min_size: connections opened at once (and the failure surfaces here)
    :param max_size: most connections; processes x max_size must fit max_connections
    :param statement_timeout: seconds any statement may run (PostgreSQL's
        ``statement_timeout``); None or 0: the server's default
    :returns: the pool
    :raises DatabaseError: the server cannot be reached or refuses the connection
    :raises MigrationError: *check* is set and the schema is behind or ahead
    """
    _where(url)
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            server_settings=_server_settings(schema, statement_timeout),
        )
    except _CONNECT_ERRORS as exc:
        raise _explain(exc, url) from exc
    if check:
        try:
            async with pool.acquire() as conn:
                await require_current(conn)
        except BaseException:
            await pool.close()
            raise
    return pool
