"""The period maths of recurring sweeps (scheduler/cadence.py): intervals and cron
expressions, the jitter's bounds, and catching up after downtime (one run for the latest
period, never one per missed period)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.cadence import (
    Cadence,
    CadenceError,
    default_jitter,
    format_duration_spec,
    jitter_offset,
    parse_duration,
    parse_jitter,
    period_key,
)

NOW = datetime(2026, 12, 7, 14, 30, 12, 345, tzinfo=UTC)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1),
                       timezones=st.just(UTC))


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("6h", 21600), ("1d", 86400), ("2w", 1209600),
    ("1h30m", 5400), ("24H", 86400), ("1d 12h", 129600),
])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration_spec(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "24", "1x", "h", "1.5h", "-1h", "0s", "0h0m", "1h-"])
def test_bad_durations_are_one_line(text: str) -> None:
    with pytest.raises(CadenceError, match="bad interval") as info:
        parse_duration(text)
    assert "\n" not in str(info.value)


def test_jitter_may_be_zero_and_not_too_long() -> None:
    assert parse_jitter("0") == 0 and parse_jitter("30s") == 30
    daily = Cadence(every=86400)
    daily.check_jitter(3600, NOW)
    with pytest.raises(CadenceError, match="more than half"):
        Cadence(every=60).check_jitter(31, NOW)
    with pytest.raises(CadenceError, match="more than half"):
        Cadence(cron="*/5 * * * *").check_jitter(200, NOW)  # 5 min between periods
    assert default_jitter(daily, NOW) == 60 and default_jitter(Cadence(every=100), NOW) == 10


@pytest.mark.parametrize(("cron", "says"), [
    ("61 * * * *", "Bad minute"), ("* * *", "Wrong number of fields"),
    ("0 0 31 2 *", "day-of-month"), ("banana", "Wrong number"),
])
def test_bad_cron_is_one_line(cron: str, says: str) -> None:
    with pytest.raises(CadenceError, match=says) as info:
        Cadence(cron=cron)
    assert cron in str(info.value) and "\n" not in str(info.value)


def test_exactly_one_of_interval_and_cron() -> None:
    with pytest.raises(CadenceError):
        Cadence()
    with pytest.raises(CadenceError):
        Cadence(every=60, cron="* * * * *")
    with pytest.raises(CadenceError, match="out of range"):
        Cadence(every=400 * 86400)


def test_intervals_are_aligned_to_the_epoch() -> None:
    six = Cadence(every=6 * 3600)
    assert six.latest_start(NOW) == datetime(2026, 12, 7, 12, tzinfo=UTC)
    assert six.next_start(NOW) == datetime(2026, 12, 7, 18, tzinfo=UTC)
    assert Cadence(every=86400).latest_start(NOW) == datetime(2026, 12, 7, tzinfo=UTC)
    boundary = datetime(2026, 12, 7, 18, tzinfo=UTC)
    assert six.latest_start(boundary) == boundary  # a period has begun at its start
    assert six.next_start(boundary) == boundary + timedelta(hours=6)


def test_cron_periods_in_utc() -> None:
    nightly = Cadence(cron="0 3 * * *")
    assert nightly.latest_start(NOW) == datetime(2026, 12, 7, 3, tzinfo=UTC)
    assert nightly.next_start(NOW) == datetime(2026, 12, 8, 3, tzinfo=UTC)
    at = datetime(2026, 12, 8, 3, tzinfo=UTC)
    following = nightly.next_start(at)
    assert nightly.latest_start(at) == at and following is not None and following > at
    seconds = Cadence(cron="*/5 * * * * *")  # six fields: seconds first
    assert seconds.latest_start(NOW) == datetime(2026, 12, 7, 14, 30, 10, tzinfo=UTC)
    assert seconds.shortest_gap(NOW) == 5
    assert nightly.describe() == "cron 0 3 * * *" and Cadence(every=5400).describe() == \
        "every 1h30m"


@given(moments, st.sampled_from([5, 60, 3600, 6 * 3600, 86400, 7 * 86400, 5400]))
def test_interval_periods_bracket_now(now: datetime, every: int) -> None:
    cadence = Cadence(every=every)
    latest = cadence.latest_start(now)
    following = cadence.next_start(now)
    assert latest is not None and following is not None
    assert latest <= now < following and following - latest == timedelta(seconds=every)
    assert int(latest.timestamp()) % every == 0


@given(moments, st.sampled_from(["0 3 * * *", "*/15 * * * *", "0 0 * * 1", "30 2 1 * *",
                                 "*/7 * * * * *"]))
def test_cron_periods_bracket_now(now: datetime, cron: str) -> None:
    cadence = Cadence(cron=cron)
    latest = cadence.latest_start(now)
    following = cadence.next_start(now)
    assert latest is not None and following is not None
    assert latest <= now < following
    assert cadence.next_start(latest) == following  # nothing between them


@given(st.text(min_size=1, max_size=20), moments, st.integers(0, 3600))
def test_jitter_is_within_bounds_and_the_same_for_everyone(name: str, period: datetime,
                                                          jitter: int) -> None:
    offset = jitter_offset(name, period, jitter)
    assert (0 <= offset < jitter) if jitter else offset == 0
    assert jitter_offset(name, period, jitter) == offset  # deterministic


def test_jitter_spreads_schedules_and_periods() -> None:
    period = datetime(2026, 12, 7, tzinfo=UTC)
    offsets = {jitter_offset(f"s{i}", period, 60) for i in range(50)}
    assert len(offsets) == 50 and max(offsets) - min(offsets) > 30
    days = {jitter_offset("nightly", period + timedelta(days=d), 60) for d in range(20)}
    assert len(days) == 20


def simulate(cadence: Cadence, name: str, jitter: int, ticks: list[datetime]) -> list[
        tuple[datetime, datetime]]:
    """What the scheduler does at each tick (scheduler.schedules, without the database):
    (period, tick at which its run started)."""
    last: datetime | None = None
    runs = []
    for now in ticks:
        found = cadence.pending(name, jitter, last, now)
        if found is not None and now >= found[1]:
            runs.append((found[0], now))
            last = found[0]
    return runs


def test_every_period_runs_once_on_time_with_its_jitter() -> None:
    cadence = Cadence(every=60)
    start = datetime(2026, 12, 7, tzinfo=UTC)
    ticks = [start + timedelta(seconds=s / 5) for s in range(10 * 60 * 5)]  # 10 min, 0.2 s
    runs = simulate(cadence, "minutely", 10, ticks)
    assert [p for p, _ in runs] == [start + timedelta(minutes=m) for m in range(10)]
    for period, began in runs:
        late = (began - period).total_seconds()
        assert late == pytest.approx(jitter_offset("minutely", period, 10), abs=0.2)
        assert 0 <= late < 10.2


def test_after_downtime_one_run_for_the_latest_period_only() -> None:
    cadence = Cadence(cron="0 * * * *")  # hourly
    start = datetime(2026, 12, 7, tzinfo=UTC)
    before = [start + timedelta(minutes=m) for m in range(0, 61, 1)]  # runs 00:00, 01:00
    # down from 01:00:30 until 05:40: the periods 02:00 .. 05:00 were missed
    after = [datetime(2026, 12, 7, 5, 40, tzinfo=UTC) + timedelta(seconds=s)
             for s in range(0, 3600, 5)]
    runs = simulate(cadence, "hourly", 0, before + after)
    assert [p.hour for p, _ in runs] == [0, 1, 5, 6]
    assert runs[2][1] == after[0]  # the latest missed period starts at once, late


def test_nothing_before_the_first_period_and_keys() -> None:
    cadence = Cadence(every=3600)
    last = cadence.latest_start(NOW)
    assert cadence.pending("x", 0, last, NOW) is None  # handled already
    assert period_key(datetime(2026, 12, 7, 3, tzinfo=UTC)) == "20261207T030000Z"
