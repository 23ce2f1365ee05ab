"""Daily partitions of ``observations``: names, bounds and DDL (pure), and their upkeep.

``observations`` is ``PARTITION BY RANGE (sweep_started_at)``; the partition of UTC day D
is ``observations_pYYYYMMDD`` covering ``[D 00:00 UTC, D+1 00:00 UTC)``. Rows no partition
covers go to ``observations_default``, which should stay empty: :func:`partition_health`
counts them.

- :func:`ensure_partitions` premakes the partitions of the next days (run it from a timer
  or at start-up) and makes those a write needs on the fly. Creation is race-safe: it
  takes an advisory lock and creates only what is missing.
- :func:`drop_expired` removes partitions past retention with ``DETACH PARTITION`` then
  ``DROP TABLE``, never ``DELETE``. (``DETACH ... CONCURRENTLY`` is not allowed while a
  default partition exists, so the detach briefly locks the parent.)

Rollup counts and the current view outlive retention on purpose: dropping history does
not rewrite the dashboards' past. What a dropped partition held is added to the retention
ledger (:func:`storage.rollups.expire_partition`) in the transaction that drops it, so
``brokerscan db verify`` still finds every rollup equal to rows + ledger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

import asyncpg

from storage.db import Conn
from storage.rollups import expire_partition

__all__ = [
    "DEFAULT_PARTITION",
    "LOCK_KEY",
    "PARENT",
    "PartitionHealth",
    "bounds",
    "create_sql",
    "days_between",
    "drop_expired",
    "ensure_partitions",
    "expired",
    "list_partitions",
    "parse_name",
    "partition_health",
    "partition_name",
]

PARENT: Final = "observations"
DEFAULT_PARTITION: Final = "observations_default"
#: The advisory lock partition DDL holds ("brkspart" as a 64-bit integer).
LOCK_KEY: Final = int.from_bytes(b"brkspart", "big")
_NAME = re.compile(r"^observations_p(\d{8})$")


def partition_name(day: date) -> str:
    """``observations_pYYYYMMDD``, the partition of UTC *day*."""
    return f"{PARENT}_p{day:%Y%m%d}"


def parse_name(name: str) -> date | None:
    """The day of a partition name, or ``None`` if *name* is not a daily partition."""
    match = _NAME.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def bounds(day: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of the partition of *day*: UTC midnight to the next."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def create_sql(day: date) -> str:
    """``CREATE TABLE IF NOT EXISTS ... PARTITION OF observations FOR VALUES ...``."""
    start, end = bounds(day)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {PARENT} "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )


def days_between(first: date, last: date) -> list[date]:
    """Every day from *first* to *last*, both included."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def expired(days: Iterable[date], retention_days: int, today: date) -> list[date]:
    """The days whose partitions are past retention: all of the day is older than
    *retention_days* days before *today* (UTC).

    :raises ValueError: *retention_days* below 1
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, not {retention_days}")
    cutoff = today - timedelta(days=retention_days)
    return sorted(d for d in days if d < cutoff)


def _today() -> date:
    return datetime.now(UTC).date()


async def list_partitions(conn: Conn) -> dict[date, str]:
    """The daily partitions that exist, ``{day: name}`` (the default one excluded)."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass($1)""",
        PARENT,
    )
    found = {}
    for row in rows:
        day = parse_name(str(row["relname"]))
        if day is not None:
            found[day] = str(row["relname"])
    return found


async def ensure_partitions(
    conn: Conn, days_ahead: int = 7, around: date | Iterable[date] | None = None,
) -> list[str]:
    """Create missing daily partitions: today's and *days_ahead* days after it, plus every
    day in *around* (the days a write needs).

    Runs in its own transaction (call it outside one): partition DDL locks the parent, so
    it is kept out of the writers' transactions. A day whose rows already sit in the
    default partition cannot get a partition and is skipped (see :func:`partition_health`).

    :returns: names of the partitions this call created
    """
    today = _today()
    wanted = set(days_between(today, today + timedelta(days=days_ahead)))
    if isinstance(around, date):
        wanted.add(around)
    elif around is not None:
        wanted.update(around)
    created: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        have = await list_partitions(conn)
        for day in sorted(wanted - set(have)):
            try:
                async with conn.transaction():  # a savepoint: one failure skips one day
                    await conn.execute(create_sql(day))
            except asyncpg.CheckViolationError:
                # The default partition holds rows of that day; partition_health reports
                # them, and until they are moved, writes of that day land there too.
                continue
            created.append(partition_name(day))
    return created


async def drop_expired(
    conn: Conn, retention_days: int, *, today: date | None = None,
) -> list[str]:
    """Detach and drop the partitions past retention (see :func:`expired`), each in one
    transaction with its counts added to the retention ledger.

    :returns: names of the partitions dropped
    :raises ValueError: *retention_days* below 1
    """
    have = await list_partitions(conn)
    old = expired(have, retention_days, today or _today())
    dropped: list[str] = []
    for day in old:
        name = have[day]
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name}")
            await expire_partition(conn, name)
            await conn.execute(f"DROP TABLE {name}")
        dropped.append(name)
    return dropped


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    """What an operator should know about the partitions.

    :ivar default_rows: rows in the default partition (should be 0: each is a warning, and
        a partition for their day cannot be created until they are moved)
    :ivar partitions: how many daily partitions exist
    :ivar first_day: the oldest partition's day
    :ivar last_day: the newest partition's day
    :ivar days_ahead: how many days after today are premade (negative: today is missing)
    """

    default_rows: int
    partitions: int
    first_day: date | None
    last_day: date | None
    days_ahead: int

    @property
    def ok(self) -> bool:
        """No rows in the default partition, and today's partition exists."""
        return self.default_rows == 0 and self.days_ahead >= 0


async def partition_health(conn: Conn, *, today: date | None = None) -> PartitionHealth:
    """Check the default partition and how far ahead partitions exist."""
    have = await list_partitions(conn)
    default_rows = int(await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}"))
    today = today or _today()
    ahead = -1
    while today + timedelta(days=ahead + 1) in have:
        ahead += 1
    return PartitionHealth(
        default_rows=default_rows,
        partitions=len(have),
        first_day=min(have, default=None),
        last_day=max(have, default=None),
        days_ahead=ahead,
    )
