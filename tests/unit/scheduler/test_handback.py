"""Handing a shard back mid-run (graceful shutdown): the resume point and the unfinished
targets kept with it make every target probed by exactly one run, whatever was abandoned.

Pure: a run is simulated as what the worker does (the unfinished targets first, then the
walk from the position; some started targets abandoned), with no engine and no network.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.ports import PortSpec
from scheduler.shards import Shard
from scheduler.sweeps import (
    HandBack,
    PortGroup,
    SweepPlan,
    SweepSpec,
    exponent_after,
    hand_back,
    plan_sweep,
)

Target = tuple[int, PortSpec]


def small_plan(seed: int = 0, ports: str = "1883,5672") -> SweepPlan:
    # two ranges and two ports: the element -> (ip, port) layout is exercised both ways
    return plan_sweep(SweepSpec(targets=["127.10.0.0/25", "127.10.1.16/28"], ports=ports,
                                allow_reserved=True, shards=3, seed=seed,
                                scope=["127.0.0.0/8"]))


def run_once(plan: SweepPlan, group: PortGroup, shard: Shard, back: HandBack,
             launched: int, abandon: set[int]) -> tuple[list[Target], HandBack]:
    """One run: start ``launched`` targets (unfinished first, then the walk), abandon the
    ``abandon``-th of them (by launch order), hand back. Returns the targets finished."""
    todo = [*plan.targets_at(group, back.unfinished),
            *plan.targets_of(group, shard, back.position)]
    started = todo[:launched]
    finished = [t for i, t in enumerate(started) if i not in abandon]
    lost = {plan.element_of(group, ip, spec)
            for i, (ip, spec) in enumerate(started) if i in abandon}
    return finished, hand_back(shard, back.position, back.unfinished, len(started), lost)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 5), shard_no=st.integers(0, 2), runs=st.lists(
    st.tuples(st.floats(0, 1), st.floats(0, 0.5), st.integers(0, 2**32)), max_size=6))
def test_every_target_finished_exactly_once_across_hand_backs(seed, shard_no, runs):
    plan = small_plan(seed)
    group, shard = plan.groups[0], plan.groups[0].shards[shard_no]
    everything = list(plan.targets_of(group, shard))
    back = HandBack(shard.first_exponent, ())
    done: Counter[Target] = Counter()
    for share, abandon_share, rng_seed in runs:  # runs stopped early, some abandoning
        left = len(back.unfinished) + len(list(plan.targets_of(group, shard, back.position)))
        launched = round(share * left)
        rng = random.Random(rng_seed)
        abandon = {i for i in range(launched) if rng.random() < abandon_share}
        finished, after = run_once(plan, group, shard, back, launched, abandon)
        done.update(finished)
        assert back.position <= after.position <= shard.end_exponent
        assert all(shard.first_exponent <= e < after.position for e in after.unfinished)
        assert len(after.unfinished) <= len(back.unfinished) + len(abandon)
        back = after
    # the last run finishes all that is left
    finished, _ = run_once(plan, group, shard, back, len(everything), set())
    done.update(finished)
    assert sorted(done, key=everything.index) == everything
    assert set(done.values()) <= {1}


def test_the_abandoned_targets_of_the_walk_are_kept_and_the_walk_resumes_after_the_last():
    plan = small_plan(1)
    group, shard = plan.groups[0], plan.groups[0].shards[0]
    walk = list(plan.targets_of(group, shard))
    exponents = [e for e in range(shard.first_exponent, shard.end_exponent)
                 if list(plan.targets_at(group, [e]))]
    # 10 started; the 3rd and the 7th still in flight when the grace ran out
    lost = {plan.element_of(group, *walk[2]), plan.element_of(group, *walk[6])}
    back = hand_back(shard, shard.first_exponent, (), 10, lost)
    assert back == HandBack(exponents[9] + 1, (exponents[2], exponents[6]))
    assert list(plan.targets_of(group, shard, back.position)) == walk[10:]
    assert list(plan.targets_at(group, back.unfinished)) == [walk[2], walk[6]]
    # the next run abandons one of those two again, and one of the walk
    again = hand_back(shard, back.position, back.unfinished, 4,
                      {plan.element_of(group, *walk[6]), plan.element_of(group, *walk[11])})
    assert again.unfinished == (exponents[6], exponents[11])
    assert list(plan.targets_of(group, shard, again.position)) == walk[12:]
    # a run that did not even reach its unfinished targets keeps them
    assert hand_back(shard, again.position, again.unfinished, 1, set()) == \
        HandBack(again.position, (exponents[11],))
    assert hand_back(shard, again.position, again.unfinished, 0, set()) == again


def test_nothing_abandoned_is_the_old_resume_point():
    plan = small_plan(2)
    shard = plan.groups[0].shards[1]
    for launched in (0, 1, 17, 10_000):
        assert hand_back(shard, shard.first_exponent, (), launched, set()) == HandBack(
            exponent_after(shard, shard.first_exponent, launched), ())


def test_an_abandoned_target_that_was_never_started_is_refused():
    plan = small_plan(3)
    group, shard = plan.groups[0], plan.groups[0].shards[0]
    walk = list(plan.targets_of(group, shard))
    with pytest.raises(ValueError, match="1 abandoned target"):
        hand_back(shard, shard.first_exponent, (), 5, {plan.element_of(group, *walk[5])})


def test_targets_at_and_element_of_follow_the_walk():
    plan = small_plan(4, ports="1883,5672,8883/tls")
    for group in plan.groups:
        perm = group.shards[0].permutation
        for shard in group.shards:
            span = range(shard.first_exponent, shard.end_exponent)
            assert list(plan.targets_at(group, span)) == list(plan.targets_of(group, shard))
            for e in span:
                for ip, spec in plan.targets_at(group, [e]):
                    assert plan.element_of(group, ip, spec) == perm.element_at(e)
