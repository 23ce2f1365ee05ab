"""Partition names, bounds, DDL and retention maths (storage/partitions.py): pure."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import partitions


@given(st.dates(min_value=date(1970, 1, 1), max_value=date(9998, 12, 31)))
def test_names_round_trip_and_bounds_cover_the_day(day: date) -> None:
    name = partitions.partition_name(day)
    assert name == f"observations_p{day:%Y%m%d}" and partitions.parse_name(name) == day
    start, end = partitions.bounds(day)
    assert start == datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert end - start == timedelta(days=1)
    assert partitions.bounds(day + timedelta(days=1))[0] == end  # no gap, no overlap


def test_other_names_are_not_partitions() -> None:
    for name in ("observations_default", "observations_p2026011", "observations_p20261340",
                 "x_p20260101"):
        assert partitions.parse_name(name) is None


def test_create_sql() -> None:
    assert partitions.create_sql(date(2026, 1, 31)) == (
        "CREATE TABLE IF NOT EXISTS observations_p20260131 PARTITION OF observations "
        "FOR VALUES FROM ('2026-01-31T00:00:00+00:00') TO ('2026-02-01T00:00:00+00:00')")


def test_expired_keeps_retention_days() -> None:
    days = partitions.days_between(date(2026, 1, 1), date(2026, 1, 10))
    assert len(days) == 10
    assert partitions.expired(days, 7, date(2026, 1, 10)) == [date(2026, 1, 1), date(2026, 1, 2)]
    assert partitions.expired(days, 30, date(2026, 1, 10)) == []
    with pytest.raises(ValueError):
        partitions.expired(days, 0, date(2026, 1, 10))
