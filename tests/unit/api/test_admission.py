"""The costly lane (:class:`brokerscan.api.ratelimit.Admission`): which requests it judges
costly, and that it runs no more of them at once than its slots. The server-level proof
(normal clients stay fast beside costly ones) is tests/integration/test_api_hostile.py and
bench/hostile.py."""

from __future__ import annotations

import asyncio

from brokerscan.api.ratelimit import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_shape_is_costly_once_its_runs_average_past_the_threshold() -> None:
    lane = Admission(1, threshold=0.5, clock=Clock())
    assert lane.judge("/api/v1/diff now f0 -", "t1") == "unknown"  # at once, low priority
    lane.ran("/api/v1/diff now f0 -", "t1", 2.0)
    assert lane.judge("/api/v1/diff now f0 -", "t2") == "costly"  # any token, that shape
    lane.ran("/api/v1/services now f0 q", "t2", 0.02)
    assert lane.judge("/api/v1/services now f0 q", "t2") == "cheap"
    for _ in range(10):  # it became cheap (an index, a smaller store): the average follows
        lane.ran("/api/v1/diff now f0 -", "t3", 0.01)
    assert lane.judge("/api/v1/diff now f0 -", "t2") == "cheap"


def test_a_token_whose_request_ran_long_is_hot_for_a_while_but_not_for_cheap_shapes() -> None:
    clock = Clock()
    lane = Admission(1, threshold=0.5, memory=10.0, clock=clock)
    for _ in range(3):
        lane.ran("/api/v1/hosts/{ip} now f0 -", "dashboard", 0.01)
    lane.ran("/api/v1/report now f0 -", "dashboard", 3.0)
    lane.ran("/api/v1/count at f5 q", "someone", 0.3)  # cheapish on average
    # a middling shape from the hot token: through the lane (a hostile client that
    # varies its costly requests is caught)
    assert lane.judge("/api/v1/count at f5 q", "dashboard") == "costly"
    # a shape known to be cheap stays quick for the same token
    assert lane.judge("/api/v1/hosts/{ip} now f0 -", "dashboard") == "cheap"
    assert lane.judge("/api/v1/count at f5 q", "someone-else") == "cheap"
    clock.now += 10.5
    assert lane.judge("/api/v1/count at f5 q", "dashboard") == "cheap"


def test_no_slots_is_no_lane() -> None:
    lane = Admission(0)
    lane.ran("/api/v1/diff now f0 -", "t1", 99.0)
    assert lane.judge("/api/v1/diff now f0 -", "t1") == "cheap"
    assert lane.judge("/api/v1/report now f0 -", "t1") == "cheap"  # not even unknown


def test_costly_requests_run_no_more_than_the_slots_at_once_and_in_turn() -> None:
    async def main() -> tuple[int, list[int], int]:
        lane = Admission(2)
        running = most = 0
        order: list[int] = []

        async def request(n: int, costly: bool) -> None:
            nonlocal running, most
            async with lane.admit(costly) as refused:
                assert refused is None
                running += costly
                most = max(most, running)
                order.append(n)
                await asyncio.sleep(0.01)
                running -= costly

        await asyncio.gather(*(request(n, True) for n in range(8)),
                             *(request(100 + n, False) for n in range(4)))
        return most, order, lane.admitted

    most, order, admitted = asyncio.run(main())
    assert most == 2
    assert admitted == 8
    costly = [n for n in order if n < 100]
    assert costly == sorted(costly)  # first come, first served
    # the cheap ones never waited behind the costly ones
    assert all(order.index(100 + n) < order.index(2) for n in range(4))


def test_a_request_that_waits_past_its_patience_is_refused_and_frees_nothing() -> None:
    async def main() -> tuple[str | None, str | None, int, int]:
        lane = Admission(1, patience=0.05)
        hold, holding = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with lane.admit(True):
                holding.set()
                await hold.wait()

        task = asyncio.create_task(holder())
        await holding.wait()
        async with lane.admit(True) as refused:
            first = refused
        hold.set()
        await task
        async with lane.admit(True) as refused:  # the slot came back
            second = refused
        return first, second, lane.refused, lane.waiting

    first, second, refused, waiting = asyncio.run(main())
    assert first is not None and "busy with costly queries" in first
    assert second is None
    assert (refused, waiting) == (1, 0)
