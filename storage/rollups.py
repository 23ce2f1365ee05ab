"""The census report's rollups in either store: reading them, building them for rows
stored before they existed, and checking them against the rows (``brokerscan db verify``).

Each observation carries its census facts (``observations.census``, from
:func:`brokerscan.report.census_facts`); the stores add them up as rows are written, in the
same transaction (PostgreSQL: migration 0009's triggers; SQLite: schema step 4's):

- ``census_sweep`` (day, sweep_id, fact, n): every observation of a sweep;
- ``census_current`` (fact, n): the facts of each service's latest observation (PostgreSQL
  keeps those in ``services_census``, SQLite in ``services.census``).

A report of the current view or of a sweep reads a few hundred rows; a report of the
view as of a past day adds up the facts of the rows that view selects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from brokerscan.model import ScanResult
from brokerscan.report import census_facts
from storage.dialect import PG, Dialect, Params
from storage.facets import rows_sql as facet_rows
from storage.pgtypes import Conn
from storage.search.compile import View, source
from storage.searcher import Searcher

__all__ = ["backfill_census", "census_counts", "expire_partition", "verify_rollups"]

#: Rows whose facts are computed between two writes of the backfill.
_BACKFILL_CHUNK: Final = 5000


async def census_counts(store: Searcher, view: View) -> dict[str, int]:
    """The count of every census fact in *view*: from the rollups for the current view
    and a sweep, from the rows for the view as of a day."""
    params = Params(store.dialect)
    if view.kind == "current":
        sql = "SELECT fact, n FROM census_current WHERE n <> 0"
    elif view.kind == "sweep":
        sql = (f"SELECT fact, sum(n) AS n FROM census_sweep "
               f"WHERE sweep_id = {params.add(view.sweep_id)} GROUP BY fact")
    else:
        frm = source(store.dialect, params, view)
        facts, fact = store.dialect.census_facts("v")
        sql = f"SELECT {fact} AS fact, count(*) AS n FROM {frm}, {facts} GROUP BY 1"
    return {str(r["fact"]): int(r["n"]) for r in await store.fetch(sql, params.values)}


# -- building them for rows written before they existed (PostgreSQL; SQLite: step 4) ------

async def backfill_census(conn: Conn) -> None:
    """Give every observation without facts its facts (from its record), every service
    its facts, and build ``census_sweep`` and ``census_current`` from them: migration
    0009's second half, in its transaction."""
    await conn.execute(
        "CREATE TEMP TABLE census_fill (sweep_started_at timestamptz, sweep_id text, "
        "ip inet, port integer, census text[]) ON COMMIT DROP")
    rows: list[tuple[object, ...]] = []
    async for r in conn.cursor("SELECT sweep_started_at, sweep_id, ip, port, record::text "
                               "AS record FROM observations WHERE census IS NULL",
                               prefetch=_BACKFILL_CHUNK):
        facts = census_facts(ScanResult.model_validate_json(r["record"]))
        rows.append((r["sweep_started_at"], r["sweep_id"], r["ip"], r["port"], facts))
        if len(rows) == _BACKFILL_CHUNK:
            await conn.copy_records_to_table("census_fill", records=rows)
            rows = []
    await conn.copy_records_to_table("census_fill", records=rows)
    await conn.execute(
        "UPDATE observations AS o SET census = f.census FROM census_fill AS f "
        "WHERE o.sweep_started_at = f.sweep_started_at AND o.sweep_id = f.sweep_id "
        "AND o.ip = f.ip AND o.port = f.port")
    await conn.execute(
        "INSERT INTO census_sweep (day, sweep_id, fact, n) SELECT day, sweep_id, fact, "
        "count(*) FROM observations, unnest(observations.census) AS f(fact) GROUP BY 1, 2, 3")
    # services_census's own trigger counts what lands in it into census_current
    services: list[tuple[object, ...]] = []
    async for r in conn.cursor("SELECT ip, port, transport, seen, latest::text AS latest "
                               "FROM services_records", prefetch=_BACKFILL_CHUNK):
        services.append((r["ip"], r["port"], r["transport"], r["seen"],
                         census_facts(ScanResult.model_validate_json(r["latest"]))))
        if len(services) == _BACKFILL_CHUNK:
            await conn.copy_records_to_table("services_census", records=services)
            services = []
    await conn.copy_records_to_table("services_census", records=services)


# -- checking them against the rows ------------------------------------------------------

def _compare(name: str, kept: Counter[tuple[object, ...]],
             counted: Counter[tuple[object, ...]]) -> list[str]:
    out = []
    for key in sorted(set(kept) | set(counted), key=repr):
        if kept[key] != counted[key]:
            shown = " ".join(str(part) for part in key)
            out.append(f"{name} {shown}: rollup {kept[key]}, rows {counted[key]}")
    return out


async def _counted(store: Searcher, keys: int, sql: str) -> Counter[tuple[object, ...]]:
    """The counts *sql* gives (columns ``k0`` .. ``k<keys - 1>``, then ``n``) by key;
    groups of 0 left out (a rollup may keep a row that came down to 0)."""
    out: Counter[tuple[object, ...]] = Counter()
    for r in await store.fetch(sql, []):
        if int(r["n"]):
            out[tuple(str(r[f"k{i}"]) for i in range(keys))] += int(r["n"])
    return out


def _keys(*exprs: str) -> str:
    return ", ".join(f"{e} AS k{i}" for i, e in enumerate(exprs))


_DIMS: Final = ("coalesce(protocol, '')", "port", "transport", "tls",
                "CASE WHEN anonymous THEN 1 WHEN NOT anonymous THEN 0 ELSE -1 END",
                "coalesce(country, '')", "coalesce(asn, -1)", "status")
_KEPT_DIMS: Final = ("protocol", "port", "transport", "tls", "anonymous", "country", "asn",
                     "status")
_FACET_KEY: Final = ("field", "protocol", "known", "value")


@dataclass(frozen=True, slots=True)
class _SweepRollup:
    """A rollup kept per sweep: its table, its key, and its counts from the rows of a
    table (``observations`` or one of its partitions) as columns ``k0``.., ``n``."""

    name: str
    key: tuple[str, ...]
    rows: Callable[[str], str]

    def kept(self, table: str) -> str:
        return f"SELECT {_keys(*self.key)}, n FROM {table}"


def _sweep_rollups(dialect: Dialect) -> tuple[_SweepRollup, ...]:
    def census(table: str) -> str:
        facts, fact = dialect.census_facts("o")
        return (f"SELECT {_keys('day', 'sweep_id', fact)}, count(*) AS n "
                f"FROM {table} AS o, {facts} GROUP BY 1, 2, 3")

    def rollup(table: str) -> str:
        groups = ", ".join(str(i + 1) for i in range(len(_DIMS) + 2))
        return (f"SELECT {_keys('day', 'sweep_id', *_DIMS)}, count(*) AS n FROM {table} "
                f"GROUP BY {groups}")

    def facets(table: str) -> str:
        names = ("day", "sweep_id", *_FACET_KEY)
        return (f"SELECT {_keys(*names)}, n FROM ({facet_rows(table, names[:2])}) AS c")

    return (_SweepRollup("census_sweep", ("day", "sweep_id", "fact"), census),
            _SweepRollup("rollup", ("day", "sweep_id", *_KEPT_DIMS), rollup),
            _SweepRollup("facet_sweep", ("day", "sweep_id", *_FACET_KEY), facets))


def _current_checks(store: Searcher) -> Sequence[tuple[str, int, str, str]]:
    """(rollup, its key's length, its rows, the same counted from the rows) for every
    rollup of the current view of *store*."""
    dialect = store.dialect
    current = dialect.current_facts_table
    s_facts, s_fact = dialect.census_facts("s")
    width = len(_DIMS)
    return (
        ("census_current", 1, f"SELECT {_keys('fact')}, n FROM census_current",
         f"SELECT {_keys(s_fact)}, count(*) AS n FROM {current} AS s, {s_facts} GROUP BY 1"),
        ("services_rollup", width, f"SELECT {_keys(*_KEPT_DIMS)}, n FROM services_rollup",
         f"SELECT {_keys(*_DIMS)}, count(*) AS n FROM {dialect.services_table} "
         f"GROUP BY {', '.join(str(i + 1) for i in range(width))}"),
        ("facet_current", len(_FACET_KEY), f"SELECT {_keys(*_FACET_KEY)}, n FROM facet_current",
         f"SELECT {_keys(*_FACET_KEY)}, n "
         f"FROM ({facet_rows(dialect.services_table, ())}) AS c"),
    )


async def expire_partition(conn: Conn, partition: str) -> None:
    """Add what *partition* of ``observations`` holds to the retention ledger (each
    per-sweep rollup's ``<name>_expired``), before it is dropped, in the transaction that
    drops it (PostgreSQL: :func:`storage.partitions.drop_expired`)."""
    for rollup in _sweep_rollups(PG):
        key = ", ".join(rollup.key)
        await conn.execute(
            f"INSERT INTO {rollup.name}_expired AS r ({key}, n) {rollup.rows(partition)} "
            f"ON CONFLICT ({key}) DO UPDATE SET n = r.n + excluded.n")


async def verify_rollups(store: Searcher) -> list[str]:
    """Every count of every rollup recomputed from the rows and compared: one line per
    difference (empty: all equal). A per-sweep rollup also counts what partitions
    dropped past retention held (its ledger, PostgreSQL). Also: observations without
    facts, and (PostgreSQL) services whose facts are not those of their latest
    observation's time."""
    problems: list[str] = []
    ledger = store.dialect.retention_ledger
    for rollup in _sweep_rollups(store.dialect):
        keys = len(rollup.key)
        counted = await _counted(store, keys, rollup.rows("observations"))
        if ledger:
            counted += await _counted(store, keys, rollup.kept(f"{rollup.name}_expired"))
        problems += _compare(rollup.name, await _counted(store, keys, rollup.kept(rollup.name)),
                             counted)
    for name, keys, kept_sql, rows_sql in _current_checks(store):
        problems += _compare(name, await _counted(store, keys, kept_sql),
                             await _counted(store, keys, rows_sql))
    missing = await store.fetch("SELECT count(*) AS n FROM observations "
                                "WHERE census IS NULL", [])
    if int(missing[0]["n"]):
        problems.append(f"observations without census facts: {int(missing[0]['n'])}")
    if store.dialect.current_facts_table != store.dialect.services_table:
        stale = await store.fetch(
            "SELECT count(*) AS n FROM services_core AS c FULL JOIN services_census AS s "
            "USING (ip, port, transport) WHERE s.seen IS DISTINCT FROM c.last_seen", [])
        if int(stale[0]["n"]):
            problems.append(f"services_census rows not at their service's last_seen: "
                            f"{int(stale[0]['n'])}")
    return problems
