"""Cursors (storage/cursor.py) and store selection: pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage.cursor import decode_cursor, encode_cursor
from storage.sqlitestore import path_of
from storage.store import StoreError, open_store


def test_cursors_round_trip_and_bad_ones_are_refused() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = encode_cursor([when, "sw", "192.0.2.1", 80])
    assert decode_cursor(cursor, 4) == [when.isoformat(), "sw", "192.0.2.1", 80]
    for bad in ("!!", encode_cursor([1, 2])):
        with pytest.raises(ValueError, match="invalid cursor"):
            decode_cursor(bad, 4)


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
