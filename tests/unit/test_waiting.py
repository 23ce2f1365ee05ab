"""tests/waiting.py: polling returns the value it waited for, and a timeout names what was
awaited (no network; each case takes milliseconds)."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import WaitTimeout, holds_for, holds_for_async, wait_for, wait_for_async


def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_for(lambda: max(0, next(calls) - 3), 5, "the fourth call") == 1


def test_wait_for_names_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0\.05 s waiting for the moon "
                                          r"\(last value: 0\)\nlog tail"):
        wait_for(lambda: 0, 0.05, "the moon", detail=lambda: "log tail")
    assert time.monotonic() - started >= 0.05


async def test_wait_for_async_awaits_a_coroutine_predicate() -> None:
    calls = itertools.count()

    async def ready() -> str:
        return "ready" if next(calls) >= 2 else ""

    assert await wait_for_async(ready, 5, "ready") == "ready"
    with pytest.raises(WaitTimeout, match="waiting for never"):
        await wait_for_async(lambda: None, 0.02, "never")


def test_holds_for_fails_as_soon_as_the_state_breaks() -> None:
    holds_for(lambda: True, 0.02, "truth")
    calls = itertools.count()
    started = time.monotonic()
    with pytest.raises(AssertionError, match="the calm stopped holding"):
        holds_for(lambda: next(calls) < 2, 60, "the calm")
    assert time.monotonic() - started < 30  # a failure does not wait out the window


async def test_holds_for_async() -> None:
    async def calm() -> bool:
        return True

    await holds_for_async(calm, 0.02, "the calm")
    with pytest.raises(AssertionError, match="a storm stopped holding"):
        await holds_for_async(lambda: False, 60, "a storm")
