"""Waiting for a condition instead of sleeping for a guess.

A test that needs some state to be reached polls for it: ``wait_for(predicate, timeout,
what)`` (or ``await wait_for_async(...)``) calls ``predicate`` until it returns something
truthy and returns that; after ``timeout`` seconds it fails with a message naming ``what``
was awaited, the last value seen and, if given, ``detail()`` (logs, counters). A test that
needs some state to *last* (nothing probes while paused) uses ``holds_for``, which fails as
soon as the predicate turns false.

Timeouts here are hang bounds, not speed claims: a loaded machine may be slow, so they are
generous. :data:`HANG` is the slack added to a deadline a test expects to be met
("``io_timeout`` plus HANG"): past it, the code under test is stuck, not slow.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["HANG", "WaitTimeout", "holds_for", "holds_for_async", "wait_for", "wait_for_async"]

T = TypeVar("T")

#: Seconds past an expected deadline after which the code under test has hung.
HANG = 10.0

_FIRST_PAUSE = 0.005
_LONGEST_PAUSE = 0.1


class WaitTimeout(AssertionError):
    """A condition a test waited for was not reached in time."""


def _message(what: str, timeout: float, last: object,
             detail: Callable[[], str] | None) -> str:
    text = f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})"
    return f"{text}\n{detail()}" if detail is not None else text


def wait_for(predicate: Callable[[], T], timeout: float, what: str,
             detail: Callable[[], str] | None = None, every: float = _LONGEST_PAUSE) -> T:
    """Call ``predicate`` until its value is truthy; return that value.

    :param timeout: seconds before giving up (a hang bound: be generous)
    :param what: what is awaited, for the failure message ("3 workers beating")
    :param detail: called once on failure, its text appended to the message
    :param every: the longest pause between two calls (they start 5 ms apart, then double)
    :raises WaitTimeout: if ``predicate`` stayed falsy for ``timeout`` seconds
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(_message(what, timeout, value, detail))
        time.sleep(pause)
        pause = min(pause * 2, every)


@overload
async def wait_for_async(
    predicate: Callable[[], Awaitable[T]], timeout: float, what: str,  # noqa: ASYNC109
    detail: Callable[[], str] | None = None, every: float = ...) -> T: ...
@overload
async def wait_for_async(
    predicate: Callable[[], T], timeout: float, what: str,  # noqa: ASYNC109
    detail: Callable[[], str] | None = None, every: float = ...) -> T: ...


async def wait_for_async(
    predicate: Callable[[], Any], timeout: float, what: str,  # noqa: ASYNC109
    detail: Callable[[], str] | None = None, every: float = _LONGEST_PAUSE) -> Any:
    """:func:`wait_for` inside an event loop; ``predicate`` may be a coroutine function.

    (``timeout`` is a polling deadline that goes into the failure message, which
    ``asyncio.timeout`` would not give.)
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(_message(what, timeout, value, detail))
        await asyncio.sleep(pause)
        pause = min(pause * 2, every)


def holds_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Check ``predicate`` stays truthy for ``seconds``; fail the moment it does not.

    For a state that must last (a paused sweep makes no progress): the window is part of
    the scenario, and a failure comes as soon as the state breaks.
    """
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        assert value, f"{what} stopped holding (value: {value!r})"
        if time.monotonic() >= end:
            return
        time.sleep(min(_LONGEST_PAUSE, max(0.0, end - time.monotonic())))


async def holds_for_async(predicate: Callable[[], object | Awaitable[object]], seconds: float,
                          what: str) -> None:
    """:func:`holds_for` inside an event loop; ``predicate`` may be a coroutine function."""
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        assert value, f"{what} stopped holding (value: {value!r})"
        if time.monotonic() >= end:
            return
        await asyncio.sleep(min(_LONGEST_PAUSE, max(0.0, end - time.monotonic())))
