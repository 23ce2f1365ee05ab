"""How the command line writes numbers people read: durations, rates, live lines."""

from __future__ import annotations

import math
from typing import IO

__all__ = ["format_duration", "format_rate", "redraw"]


def format_duration(seconds: float | None) -> str:
    """``HH:MM:SS``, with whole days in front past 24 hours (``3 d 01:00:00``); ``--:--:--``
    when unknown or not finite."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--:--"
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days:,} d {clock}" if days else clock


def format_rate(per_second: float) -> str:
    """A rate for people: thousands separated, decimals only where they matter
    (``12,500/s``, ``2.5/s``, ``0.25/s``); ``0`` reads ``no limit``."""
    if per_second <= 0:
        return "no limit"
    if per_second >= 100 or per_second == int(per_second):
        return f"{per_second:,.0f}/s"
    return f"{per_second:.3g}/s"


def redraw(stream: IO[str], line: str) -> None:
    """Write *line* over the previous one on a terminal: carriage return, the line, and an
    erase to the end of the line so that a shorter line leaves no old characters behind."""
    stream.write(f"\r{line}\033[K")
    stream.flush()
