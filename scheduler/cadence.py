"""When a recurring sweep runs: its cadence (an interval or a cron expression), its periods
and the jitter of each run. Pure: no I/O, no clock (callers pass the time, the
database's, so that every scheduler agrees on it).

A *period* is named by the time it begins (UTC, whole seconds):

- ``--every 6h``: periods begin at the multiples of the interval since the Unix epoch, so
  ``24h`` begins at 00:00 UTC, ``6h`` at 00, 06, 12 and 18 h, whatever the day the
  schedule was added (a cron expression picks another time of day);
- ``--cron '0 3 * * 1'``: periods begin at the expression's times, in UTC (cronsim: Debian
  cron's rules; a sixth leading field gives seconds).

A period's run is due at its beginning plus a jitter in ``[0, jitter)`` that is a hash of
the schedule's name and the period: pseudo-random, so schedules that share a cadence do
not start together, and the same for every scheduler, so two of them agree on when.

After downtime only the latest period that has begun is run (:func:`latest_start`):
missed periods are not run one after another.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

__all__ = ["MAX_INTERVAL", "Cadence", "CadenceError", "default_jitter",
           "format_duration_spec", "jitter_offset", "parse_duration", "parse_jitter",
           "period_key"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The longest interval accepted (a typo guard: a year).
MAX_INTERVAL = 366 * 86400
#: How many periods ahead a cron expression's gaps are checked against the jitter.
_GAPS_CHECKED = 64


class CadenceError(ValueError):
    """A bad interval, cron expression or jitter; the message is one line."""


def parse_duration(text: str, what: str = "interval") -> int:
    """Whole seconds from ``90s``, ``15m``, ``6h``, ``1d``, ``2w`` or a sum (``1h30m``).

    :raises CadenceError: not such a duration, or zero
    """
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact) != "":
        raise CadenceError(f"bad {what} {text!r} (use e.g. 90s, 15m, 6h, 1d, 2w or 1h30m)")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
    if seconds <= 0:
        raise CadenceError(f"bad {what} {text!r}: it must be longer than zero")
    return seconds


def parse_jitter(text: str) -> int:
    """Whole seconds of jitter: a duration as for :func:`parse_duration`, or ``0``."""
    if text.strip().lower() in ("0", "0s"):
        return 0
    return parse_duration(text, "jitter")


def format_duration_spec(seconds: int) -> str:
    """The shortest ``1d6h``-style text for *seconds* (what :func:`parse_duration` reads)."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a time without a zone")
    return moment.astimezone(UTC).replace(microsecond=0)


def period_key(start: datetime) -> str:
    """A period's short name, ``20261207T030000Z`` (in run names)."""
    return _utc(start).strftime("%Y%m%dT%H%M%SZ")


def jitter_offset(name: str, period: datetime, jitter: float) -> float:
    """Seconds in ``[0, jitter)`` by which *name*'s run of *period* starts late: a hash of
    both, so every scheduler computes the same."""
    if jitter <= 0:
        return 0.0
    digest = hashlib.sha256(f"{name}\0{_utc(period).isoformat()}".encode()).digest()
    return jitter * int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Cadence:
    """Every *every* seconds (epoch-aligned), or at the times of the cron expression *cron*
    (UTC); exactly one of them."""

    every: int | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise CadenceError("give an interval (--every) or a cron expression (--cron)")
        if self.every is not None and not 0 < self.every <= MAX_INTERVAL:
            raise CadenceError(f"interval {format_duration_spec(self.every)} is out of range "
                               f"(1s to {MAX_INTERVAL // 86400}d)")
        if self.cron is not None:
            try:
                next(CronSim(self.cron, _EPOCH))
            except CronSimError as exc:
                raise CadenceError(f"bad cron expression {self.cron!r}: {exc}") from None
            except StopIteration:
                raise CadenceError(f"cron expression {self.cron!r} never fires") from None

    def describe(self) -> str:
        """``every 6h`` or ``cron 0 3 * * *``."""
        return f"every {format_duration_spec(self.every)}" if self.every is not None \
            else f"cron {self.cron}"

    def latest_start(self, now: datetime) -> datetime | None:
        """The beginning of the latest period that has begun at *now* (``<= now``), or
        None if there is none within 50 years (a cron expression)."""
        now = _utc(now)
        if self.every is not None:
            elapsed = int((now - _EPOCH).total_seconds())
            return _EPOCH + timedelta(seconds=elapsed - elapsed % self.every)
        assert self.cron is not None
        try:  # reverse iteration yields times strictly before its start
            return next(CronSim(self.cron, now + timedelta(seconds=1), reverse=True))
        except StopIteration:
            return None

    def next_start(self, after: datetime) -> datetime | None:
        """The beginning of the first period after *after* (``> after``), or None if
        there is none within 50 years."""
        after = _utc(after)
        if self.every is not None:
            latest = self.latest_start(after)
            assert latest is not None
            return latest + timedelta(seconds=self.every)
        assert self.cron is not None
        try:
            return next(CronSim(self.cron, after))
        except StopIteration:
            return None

    def due(self, name: str, jitter: float, period: datetime) -> datetime:
        """When *name*'s run of *period* is due: its beginning plus its jitter."""
        return period + timedelta(seconds=jitter_offset(name, period, jitter))

    def pending(self, name: str, jitter: float, last_period: datetime | None,
                now: datetime) -> tuple[datetime, datetime] | None:
        """The period to run next at *now* and when it is due, or None if there is none
        (the latest period that has begun was handled already, *last_period*).

        Only the latest period that has begun is ever pending: after downtime that spans
        several periods, one run (the latest's), never one per missed period."""
        period = self.latest_start(now)
        if period is None or (last_period is not None and period <= last_period):
            return None
        return period, self.due(name, jitter, period)

    def shortest_gap(self, after: datetime) -> float:
        """The shortest time between two periods (for a cron expression: among the next
        few dozen after *after*)."""
        if self.every is not None:
            return float(self.every)
        assert self.cron is not None
        times = CronSim(self.cron, _utc(after))
        shortest = float("inf")
        try:
            previous = next(times)
            for _ in range(_GAPS_CHECKED):
                current = next(times)
                shortest = min(shortest, (current - previous).total_seconds())
                previous = current
        except StopIteration:
            pass
        return shortest

    def check_jitter(self, jitter: float, now: datetime) -> None:
        """A run must start before the next period begins: refuse a jitter of half the
        shortest gap between periods or more.

        :raises CadenceError: one line saying why
        """
        if jitter < 0:
            raise CadenceError("the jitter must not be negative")
        gap = self.shortest_gap(now)
        if jitter and jitter * 2 > gap:
            raise CadenceError(f"jitter {format_duration_spec(int(jitter))} is more than half "
                               f"the time between two periods ({format_duration_spec(int(gap))})")


def default_jitter(cadence: Cadence, now: datetime) -> int:
    """A tenth of the shortest gap between periods, at most a minute."""
    return int(min(60.0, cadence.shortest_gap(now) / 10))
