"""Query compilation (storage/queries.py) and store selection: pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from storage import queries
from storage.pgstore import PG
from storage.sqlitestore import SQLITE, path_of
from storage.store import StoreError, open_store


def test_rollup_is_used_only_when_exact() -> None:
    midnight = datetime(2026, 1, 2, tzinfo=UTC)
    assert queries.use_rollup(["port", "transport"], {"asn": 1}, midnight, None)
    assert not queries.use_rollup(["port"], {}, midnight.replace(hour=1), None)
    q = queries.compile_counts(PG, by=["port"], since=midnight)
    assert q.rollup and "FROM rollup" in q.sql and q.params == (date(2026, 1, 2),)
    q = queries.compile_counts(SQLITE, by=["port"], since=midnight.replace(second=1))
    assert not q.rollup and "FROM observations" in q.sql
    assert q.params == ("2026-01-02T00:00:01.000000Z",)


def test_filters_map_unknown_values_to_sentinels_in_the_rollup() -> None:
    q = queries.compile_counts(PG, by=[], where={"asn": None, "anonymous": None,
                                                 "transport": "tls"})
    # the rollup keeps the transport itself (issue 12: ws and wss are not tcp and tls)
    assert "asn = $1" in q.sql and "transport = $3" in q.sql and q.params == (-1, -1, "tls")
    q = queries.compile_counts(PG, by=[], where={"asn": None}, rollup=False)
    assert "asn IS NULL" in q.sql and q.params == ()


def test_unknown_dimension_is_one_line_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r"^unknown dimension 'prot' \(did you mean "
                                         r"'port'\?\); dimensions: day, ") as info:
        queries.compile_counts(PG, by=["prot"])
    assert "\n" not in str(info.value)


def test_cursors_round_trip_and_bad_ones_are_refused() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = queries.encode_cursor([when, "sw", "192.0.2.1", 80])
    assert queries.decode_cursor(cursor, 4) == [when.isoformat(), "sw", "192.0.2.1", 80]
    for bad in ("!!", queries.encode_cursor([1, 2])):
        with pytest.raises(ValueError, match="invalid cursor"):
            queries.decode_cursor(bad, 4)
    with pytest.raises(ValueError, match="limit"):
        queries.compile_hosts(PG, limit=0)


def test_counts_sort_with_unknown_last() -> None:
    rows: list[dict[str, object]] = [{"asn": None, "count": 1}, {"asn": 10, "count": 2},
                                     {"asn": 9, "count": 3}]
    assert [r["asn"] for r in queries.sort_counts(rows, ["asn"])] == [9, 10, None]


async def test_unknown_scheme_names_the_right_one() -> None:
    with pytest.raises(StoreError, match=r"did you mean sqlite://\?"):
        await open_store("sqlit:///x.db")
    with pytest.raises(StoreError, match="unknown store URL scheme"):
        await open_store("/just/a/path")


def test_sqlite_paths() -> None:
    assert path_of("sqlite:///rel/x.db") == "rel/x.db"
    assert path_of("sqlite:////abs/x.db") == "/abs/x.db"
    assert path_of("sqlite:///:memory:") == ":memory:"
    with pytest.raises(StoreError, match="invalid SQLite store URL"):
        path_of("sqlite://host/x.db")
