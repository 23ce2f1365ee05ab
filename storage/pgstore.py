"""The PostgreSQL store: binary COPY into a staging table, then one merging statement.

A write, in one transaction:

1. ``copy_records_to_table`` into ``observations_stage`` (a temporary table of the
   connection, emptied at commit);
2. one statement: ``INSERT INTO observations SELECT ... FROM observations_stage ON
   CONFLICT DO NOTHING RETURNING ...``, and in data-modifying CTEs over exactly those
   returned (new) rows, add to ``rollup`` and upsert ``services``.

So a redelivered or re-run observation returns nothing from the insert and touches neither
the rollup nor the current view: the rollup stays exact under duplicates. ``ON CONFLICT DO
UPDATE`` cannot touch one row twice in a statement, so a batch holding a service twice
(two sweeps of the same ip, port and transport) is merged in rounds, one occurrence of each
service per round, in batch order.

Partitions a write needs are made first, in their own short transaction
(:func:`storage.partitions.ensure_partitions`), and remembered for a while.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from brokerscan.model import ScanResult
from storage import partitions
from storage.db import DatabaseError, Pool, create_pool
from storage.queries import (
    Dialect,
    compile_counts,
    compile_hosts,
    compile_services,
    decode_cursor,
    next_cursor,
    sort_counts,
)
from storage.rows import COLUMNS, observation_row
from storage.store import Service, StoreError

__all__ = ["PG", "PgStore"]

PG: Final = Dialect(positional=True, encode_date=lambda d: d, encode_time=lambda t: t)

_STAGE = "observations_stage"
_STAGE_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE observations) ON COMMIT DELETE ROWS"
)
_ROLLUP_KEY = "day, sweep_id, protocol, port, tls, anonymous, country, asn, status"
# Service columns taken from the newest observation: (services column, observations column).
_LATEST = (
    ("sweep_id", "sweep_id"), ("status", "status"), ("protocol", "protocol"),
    ("anonymous", "anonymous"), ("product", "amqp_product"), ("cert_sha256", "cert_sha256"),
    ("country", "country"), ("asn", "asn"), ("latest", "record"),
)
_CHANGE = ("protocol", "status", "anonymous", "product", "cert_sha256")
_NEWER = "excluded.last_seen > s.last_seen"


def _merge_sql() -> str:
    cols = ", ".join(COLUMNS)
    latest_set = ",\n        ".join(
        f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE s.{c} END" for c, _ in _LATEST
    )
    old = ", ".join(f"s.{c}" for c in _CHANGE)
    new = ", ".join(f"excluded.{c}" for c in _CHANGE)
    return f"""
WITH ins AS (
    INSERT INTO observations ({cols}) SELECT {cols} FROM {_STAGE}
    ON CONFLICT DO NOTHING
    RETURNING day, sweep_id, protocol, port, tls, anonymous, country, asn, status,
              ip, transport, observed_at, amqp_product, cert_sha256, record
), roll AS (
    INSERT INTO rollup AS r ({_ROLLUP_KEY}, n)
    SELECT day, sweep_id, coalesce(protocol, ''), port, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, count(*)
    FROM ins GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET n = r.n + excluded.n
), svc AS (
    INSERT INTO services AS s (ip, port, transport, first_seen, last_seen, last_changed,
                               {", ".join(c for c, _ in _LATEST)})
    SELECT ip, port, transport, observed_at, observed_at, observed_at,
           {", ".join(o for _, o in _LATEST)}
    FROM ins
    ON CONFLICT (ip, port, transport) DO UPDATE SET
        first_seen = least(s.first_seen, excluded.first_seen),
        last_seen = greatest(s.last_seen, excluded.last_seen),
        last_changed = CASE WHEN {_NEWER} AND ({old}) IS DISTINCT FROM ({new})
                            THEN excluded.last_seen ELSE s.last_changed END,
        {latest_set}
)
SELECT count(*) FROM ins
"""


_MERGE: Final = _merge_sql()


#: Rows mapped between two yields to the event loop in :meth:`PgStore.prepare`.
_PREPARE_SLICE: Final = 64


def _pg_ip(ip: str) -> int | str:
    """An address for asyncpg's ``inet`` encoder: IPv4 as an integer (encoded without
    parsing text again), IPv6 as text."""
    return ip if ":" in ip else int.from_bytes(socket.inet_aton(ip), "big")


async def _rounds(results: Sequence[ScanResult], records: Sequence[str] | None,
                  ) -> tuple[list[list[tuple[object, ...]]], set[date]]:
    """Rows split into rounds where each service occurs once, and the days they need.

    Exact duplicates within the batch are dropped here (the database would ignore them).
    Yields to the event loop every :data:`_PREPARE_SLICE` rows, so that a write in flight
    keeps moving while the next batch is prepared.
    """
    seen: set[tuple[object, ...]] = set()
    occurrences: dict[tuple[object, ...], int] = {}
    rounds: list[list[tuple[object, ...]]] = []
    days: set[date] = set()
    for position, result in enumerate(results):
        if position and not position % _PREPARE_SLICE:
            await asyncio.sleep(0)
        row = observation_row(result, None if records is None else records[position])
        row = (row[0], row[1], _pg_ip(row[2]), *row[3:])  # type: ignore[arg-type]
        key = row[:4]
        if key in seen:
            continue
        seen.add(key)
        service = row[2:5]  # (ip, port, transport), the ip canonical
        index = occurrences.get(service, 0)
        occurrences[service] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(row)
        days.add(row[6])  # type: ignore[arg-type]
    return rounds, days


@dataclass(frozen=True, slots=True)
class _Prepared:
    rounds: list[list[tuple[object, ...]]]
    days: set[date]


class PgStore:
    """The results store in PostgreSQL (see the module docstring).

    :ivar pool: the asyncpg pool it writes and reads through
    """

    #: How long the list of existing partitions is trusted, in seconds.
    PARTITION_CACHE_SECONDS: Final = 300.0

    def __init__(self, pool: Pool, *, days_ahead: int = 7) -> None:
        self.pool = pool
        self.days_ahead = days_ahead
        self._days: set[date] = set()
        self._days_checked = float("-inf")

    @classmethod
    async def open(
        cls, url: str, *, schema: str | None = None, max_size: int = 4, days_ahead: int = 7,
    ) -> PgStore:
        """Connect (the migrations must be applied) and premake partitions.

        :param url: ``postgresql://user@host/db``
        :param schema: the deployment's namespace (PostgreSQL schema), if any
        :param max_size: most pooled connections
        :param days_ahead: partitions premade after today
        :raises StoreError: the database cannot be reached or is not migrated
        """
        try:
            pool = await create_pool(url, schema=schema, max_size=max_size)
        except DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        store = cls(pool, days_ahead=days_ahead)
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
                      records: Sequence[str] | None = None) -> _Prepared:
        """See :meth:`storage.store.Store.prepare`."""
        return _Prepared(*await _rounds(results, records))

    async def write_prepared(self, prepared: object) -> int:
        """See :meth:`storage.store.Store.write_prepared`."""
        if not isinstance(prepared, _Prepared):
            raise TypeError("write_prepared() takes what this store's prepare() returned")
        rounds, days = prepared.rounds, prepared.days
        if not rounds:
            return 0
        await self._need_days(days)
        new = 0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_STAGE_DDL)
            for index, rows in enumerate(rounds):
                if index:
                    await conn.execute(f"DELETE FROM {_STAGE}")
                await conn.copy_records_to_table(_STAGE, records=rows, columns=COLUMNS)
                new += int(await conn.fetchval(_MERGE))
        return new

    async def counts(
        self, *, by: Sequence[str], since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None,
        where: Mapping[str, object] | None = None, rollup: bool | None = None,
    ) -> list[dict[str, object]]:
        """See :meth:`storage.store.Store.counts`; *rollup* forces the source (tests)."""
        query = compile_counts(PG, by=by, where=where, since=since, until=until,
                               sweep_id=sweep_id, rollup=rollup)
        rows = await self.pool.fetch(query.sql, *query.params)
        return sort_counts([{**{d: r[d] for d in by}, "count": int(r["n"])} for r in rows], by)

    async def hosts(
        self, *, where: Mapping[str, object] | None = None, since: datetime | None = None,
        until: datetime | None = None, sweep_id: str | None = None, limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[ScanResult], str | None]:
        """See :meth:`storage.store.Store.hosts`."""
        after = None
        if cursor is not None:
            after = decode_cursor(cursor, 4)
            try:
                after[0] = datetime.fromisoformat(str(after[0]))
            except ValueError:
                raise ValueError("invalid cursor: not a cursor of this listing") from None
        query = compile_hosts(PG, where=where, since=since, until=until, sweep_id=sweep_id,
                              limit=limit, after=after)
        rows = await self.pool.fetch(query.sql, *query.params)
        results = [ScanResult.model_validate_json(r["record"]) for r in rows[:limit]]
        more = next_cursor(rows, limit, lambda last: [
            last["sweep_started_at"], last["sweep_id"], str(last["ip"]), last["port"]])
        return results, more

    async def services(
        self, *, where: Mapping[str, object] | None = None,
        seen_since: datetime | None = None, limit: int = 100, cursor: str | None = None,
    ) -> tuple[list[Service], str | None]:
        """See :meth:`storage.store.Store.services`."""
        after = None if cursor is None else decode_cursor(cursor, 3)
        query = compile_services(PG, where=where, seen_since=seen_since, limit=limit,
                                 after=after)
        rows = await self.pool.fetch(query.sql, *query.params)
        page = [
            Service(
                ip=str(r["ip"]), port=r["port"], transport=r["transport"],
                first_seen=r["first_seen"], last_seen=r["last_seen"],
                last_changed=r["last_changed"],
                latest=ScanResult.model_validate_json(r["latest"]),
            )
            for r in rows[:limit]
        ]
        return page, next_cursor(rows, limit,
                                 lambda last: [str(last["ip"]), last["port"], last["transport"]])

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
        await self.pool.close()
