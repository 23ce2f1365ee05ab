"""The PostgreSQL store: binary COPY straight into ``observations``; the database keeps the
rollup and the current view.

The rollup and ``services`` are maintained by a statement-level trigger on
``observations`` (migration 0003) from exactly the rows each INSERT or COPY added (its
transition table). A write, in one transaction on the store's writer connection (kept out
of the pool, so a write is begin, copy, commit):

1. fast path: ``copy_records_to_table("observations", ...)``; the trigger adds to the
   rollup and upserts ``services`` from the same rows;
2. if some observation of the batch is stored already (a redelivery, a re-run shard), that
   COPY fails on the unique key and the transaction is rolled back; the batch is then
   merged instead: COPY into ``observations_stage`` (a temporary table of the connection,
   made once, emptied at commit), then ``INSERT INTO observations SELECT ... FROM
   observations_stage ON CONFLICT DO NOTHING``, and the trigger sees only the rows that
   insert really added.

So a redelivered or re-run observation touches neither the rollup nor the current view:
the rollup stays exact under duplicates. A batch holding a service twice (two sweeps of
the same ip, port and transport) is one statement too: the trigger upserts services in
rounds, in the order the observations were made. A failed write terminates the writer
connection (its state is unknown); the next write opens another.

Partitions a write needs are made first, in their own short transaction
(:func:`storage.partitions.ensure_partitions`), and remembered for a while.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

import asyncpg

from brokerscan.model import ScanResult
from storage import partitions
from storage.db import DatabaseError, Pool, PooledConn, create_pool
from storage.dialect import PG
from storage.reader import Row
from storage.rows import COLUMNS, observation_row
from storage.sqlsearcher import SqlSearcher
from storage.store import StatementTimeout, StoreError

__all__ = ["PgStore"]

_STAGE = "observations_stage"
_STAGE_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE observations) ON COMMIT DELETE ROWS"
)
_INSERT_NEW: Final = (
    f"INSERT INTO observations ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
    f"FROM {_STAGE} ON CONFLICT DO NOTHING"
)


#: Attempts of a write that PostgreSQL chose as a deadlock victim. Concurrent writers can
#: deadlock only on batches holding one service twice (the trigger's rounds lock services
#: rows round by round); the victim's transaction is rolled back whole, so it is retried.
_DEADLOCK_ATTEMPTS: Final = 5

#: Rows mapped between two yields to the event loop in :meth:`PgStore.prepare`.
_PREPARE_SLICE: Final = 16


def _pg_ip(ip: str) -> int | str:
    """An address for asyncpg's ``inet`` encoder: IPv4 as an integer (encoded without
    parsing text again), IPv6 as text."""
    return ip if ":" in ip else int.from_bytes(socket.inet_aton(ip), "big")


async def _rows(results: Sequence[ScanResult], records: Sequence[str | None] | None,
                ) -> list[tuple[object, ...]]:
    """The rows of a batch, each observation once (an exact duplicate inside the batch would
    fail the COPY on the unique key; the database would ignore it anyway).

    Yields to the event loop every :data:`_PREPARE_SLICE` rows, so that a write in flight
    keeps moving while the next batch is prepared.
    """
    seen: set[tuple[object, ...]] = set()
    rows: list[tuple[object, ...]] = []
    for position, result in enumerate(results):
        if position and not position % _PREPARE_SLICE:
            await asyncio.sleep(0)
        row = observation_row(result, None if records is None else records[position])
        row = (row[0], row[1], _pg_ip(row[2]), *row[3:])  # type: ignore[arg-type]
        key = row[:4]
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def _usable(conn: PooledConn) -> bool:
    """False once the connection is closed, or was handed back to the pool (asyncpg does
    that by itself when the server side goes away)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


#: Bytes of COPY data a writer connection may queue before asyncpg waits for the socket.
_COPY_AHEAD: Final = 64 * 1024 * 1024


def _let_copy_run_ahead(conn: PooledConn) -> None:
    """Raise the writer connection's transport buffer limit (asyncio's default: 64 KiB).

    With the default, ``copy_records_to_table`` stops every 64 KiB until the socket
    drains, and resumes only when the event loop gets round to it; while the next batch is
    being prepared on the same loop that is every few hundred microseconds, so a COPY of a
    few MB crawls. With room for a whole batch, the COPY data is encoded and queued in one
    go, and PostgreSQL takes it while the loop prepares the next batch. (asyncpg has no
    public setting for this: reached through its private ``_transport``, skipped if that
    ever goes away.)
    """
    raw = getattr(conn, "_con", conn)
    transport = getattr(raw, "_transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=_COPY_AHEAD)


@dataclass(frozen=True, slots=True)
class _Prepared:
    rows: list[tuple[object, ...]]
    days: set[date]


class PgStore(SqlSearcher):
    """The results store in PostgreSQL (see the module docstring).

    :ivar pool: the asyncpg pool it writes and reads through
    """

    dialect = PG
    #: How long the list of existing partitions is trusted, in seconds.
    PARTITION_CACHE_SECONDS: Final = 300.0

    def __init__(self, pool: Pool, *, days_ahead: int = 7) -> None:
        self.pool = pool
        self.days_ahead = days_ahead
        self._days: set[date] = set()
        self._days_checked = float("-inf")
        self._writer: PooledConn | None = None
        self._writing = asyncio.Lock()  # one write at a time on the writer connection

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, max_size: int = 4, days_ahead: int = 7,
        read_only: bool = False, statement_timeout: float | None = None,
    ) -> PgStore:
        """Connect (the migrations must be applied) and premake partitions.

        :param url: ``postgresql://user@host/db``
        :param schema: the deployment's namespace (PostgreSQL schema), if any
        :param max_size: most pooled connections
        :param days_ahead: partitions premade after today
        :param read_only: only reads will follow: premake nothing (a role that may only
            SELECT can open the store)
        :param statement_timeout: seconds any statement may run (None: no limit); a
            statement past it is cancelled by the server (:class:`StatementTimeout`)
        :raises StoreError: the database cannot be reached or is not migrated
        """
        try:
            pool = await create_pool(url, schema=schema, max_size=max_size,
                                     statement_timeout=statement_timeout)
        except DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        store = cls(pool, days_ahead=days_ahead)
        if not read_only:
            await store._need_days(set())
        return store

    async def _need_days(self, days: set[date]) -> None:
        fresh = time.monotonic() - self._days_checked < self.PARTITION_CACHE_SECONDS
        if fresh and days <= self._days:
            return
        async with self.pool.acquire() as conn:
            await partitions.ensure_partitions(conn, self.days_ahead, around=days)
            self._days = set(await partitions.list_partitions(conn))
        self._days_checked = time.monotonic()

    async def write(self, results: Sequence[ScanResult]) -> int:
        """See :meth:`storage.store.Store.write`."""
        return await self.write_prepared(await self.prepare(results))

    async def prepare(self, results: Sequence[ScanResult],
                      records: Sequence[str | None] | None = None) -> _Prepared:
        """See :meth:`storage.store.Store.prepare`."""
        rows = await _rows(results, records)
        return _Prepared(rows, {row[6] for row in rows})  # type: ignore[misc]

    async def write_prepared(self, prepared: object) -> int:
        """See :meth:`storage.store.Store.write_prepared`."""
        if not isinstance(prepared, _Prepared):
            raise TypeError("write_prepared() takes what this store's prepare() returned")
        rows = prepared.rows
        if not rows:
            return 0
        await self._need_days(prepared.days)
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                return await self._write_rows(rows)
            except asyncpg.DeadlockDetectedError:
                if attempt == _DEADLOCK_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.01, 0.1) * attempt)
        raise AssertionError("unreachable")

    async def _write_rows(self, rows: list[tuple[object, ...]]) -> int:
        async with self._writing:
            conn = await self._writer_connection()
            try:
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table("observations", records=rows,
                                                         columns=COLUMNS)
                    return len(rows)
                except asyncpg.UniqueViolationError:
                    pass  # some of it is stored already: merge, adding only what is new
                async with conn.transaction():
                    await conn.copy_records_to_table(_STAGE, records=rows, columns=COLUMNS)
                    status = await conn.execute(_INSERT_NEW)  # "INSERT 0 <added>"
                return int(status.rsplit(" ", 1)[-1])
            except BaseException:
                self._drop_writer()  # a fresh connection next time, whatever broke
                raise

    async def _writer_connection(self) -> PooledConn:
        """The connection writes go through: kept out of the pool between writes (no reset
        round trip after each), its staging table made once."""
        if self._writer is not None and not _usable(self._writer):
            self._writer = None  # lost with its server; the pool took it back already
        if self._writer is None:
            conn = await self.pool.acquire()
            try:
                await conn.execute(_STAGE_DDL)
            except BaseException:
                await self.pool.release(conn)
                raise
            _let_copy_run_ahead(conn)
            self._writer = conn
        return self._writer

    def _drop_writer(self) -> None:
        """Close the writer connection at once (after a failure its state is unknown: an
        operation may still be in progress, and handing it back to the pool could wait for
        ever); the pool notices and replaces it."""
        conn, self._writer = self._writer, None
        if conn is not None and _usable(conn):
            conn.terminate()

    async def _release_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None and _usable(conn):
            await self.pool.release(conn, timeout=5.0)

    async def fetch(self, sql: str, params: Sequence[object]) -> list[Row]:
        """See :meth:`storage.reader.StoreReader.fetch` (through the pool). A task that is
        cancelled (the client went away) cancels its statement on the server (asyncpg)."""
        try:
            return list(await self.pool.fetch(sql, *params))
        except asyncpg.QueryCanceledError as exc:
            raise StatementTimeout(str(exc)) from exc

    async def maintain(self, *, retention_days: int | None = None) -> partitions.PartitionHealth:
        """Premake partitions, drop those past *retention_days* (if given), report health.

        :returns: the state of the partitions after upkeep
        """
        async with self.pool.acquire() as conn:
            await partitions.ensure_partitions(conn, self.days_ahead)
            if retention_days is not None:
                await partitions.drop_expired(conn, retention_days)
            self._days = set(await partitions.list_partitions(conn))
            self._days_checked = time.monotonic()
            return await partitions.partition_health(conn)

    async def close(self) -> None:
        """Close the pool."""
        await self._release_writer()
        await self.pool.close()
