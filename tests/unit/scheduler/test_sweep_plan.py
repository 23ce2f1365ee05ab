"""Sweep plans: port groups by transport, every target in exactly one shard, resumes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from brokerscan.names import Names
from scheduler.ports import PortError
from scheduler.sweeps import SweepSpec, describe_plan, exponent_after, plan_sweep
from scheduler.targets import TargetError


def all_targets(plan):
    for group, shard, _ in plan.shard_ids():
        yield from plan.targets_of(group, shard)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 300), shards=st.integers(1, 12), seed=st.integers(-5, 5))
def test_every_target_once_across_groups_and_shards(size, shards, seed):
    last = 0x7F0A0000 + size - 1
    spec = SweepSpec(targets=[f"127.10.0.0-{last >> 24}.{last >> 16 & 255}.{last >> 8 & 255}."
                              f"{last & 255}"],
                     ports="1883,8883,5672,9000/tls", allow_reserved=True, shards=shards,
                     seed=seed, scope=["127.0.0.0/8"])
    plan = plan_sweep(spec)
    seen = [(ip, p.port, p.tls) for ip, p in all_targets(plan)]
    assert len(seen) == len(set(seen)) == plan.targets == size * 4
    assert {g.key for g in plan.groups} == {"tcp", "tls"}
    assert all(p.tls == g.tls for g in plan.groups for p in g.ports)


@settings(max_examples=25, deadline=None)
@given(launched=st.integers(0, 400), seed=st.integers(0, 3))
def test_resume_after_n_launched_yields_exactly_the_rest(launched, seed):
    plan = plan_sweep(SweepSpec(targets=["127.10.0.0/24"], ports="1883", allow_reserved=True,
                                shards=2, seed=seed, scope=["127.0.0.0/8"]))
    group, shard, _ = next(plan.shard_ids())
    everything = list(plan.targets_of(group, shard))
    resume_at = exponent_after(shard, shard.first_exponent, launched)
    rest = list(plan.targets_of(group, shard, from_exponent=resume_at))
    assert rest == everything[launched:]


def test_same_seed_same_order_other_seed_other_order():
    def order(seed):
        plan = plan_sweep(SweepSpec(targets=["127.10.0.0/22"], ports="1883", shards=1,
                                    allow_reserved=True, seed=seed, scope=["127.0.0.0/8"]))
        return list(itertools.islice(all_targets(plan), 50))

    assert order(7) == order(7)
    assert order(7) != order(8)


def test_full_ipv4_plan_counts():
    plan = plan_sweep(SweepSpec(targets=["0.0.0.0/0"], rate=50_000))
    assert plan.addresses == 2**32 - 592_708_864  # the IANA list removes 592.7M
    assert plan.targets == plan.addresses * 4
    described = describe_plan(plan, Names("x"))
    assert described["queues"] == {"x.probe": plan.groups[0].shards.__len__(),
                                   "x.probe-tls": plan.groups[1].shards.__len__()}
    assert described["seconds"] == pytest.approx(plan.targets / 50_000, rel=1e-6)
    assert plan.shard_count <= 65_536 * 2


def test_opt_out_and_scope_apply():
    plan = plan_sweep(SweepSpec(targets=["127.10.0.0/24"], allow_reserved=True,
                                optout=["127.10.0.0/25"], scope=["127.10.0.0/26",
                                                                 "127.10.0.128/26"]))
    assert plan.addresses == 64


@pytest.mark.parametrize(("change", "error"), [
    ({"targets": ["300.0.0.0/8"]}, TargetError),
    ({"ports": "mqqt"}, PortError),
    ({"optout": ["not-a-net"]}, TargetError),
])
def test_bad_specs_fail_with_our_errors(change, error):
    with pytest.raises(error):
        plan_sweep(SweepSpec(**{"targets": ["127.10.0.0/24"], **change}))


def test_rate_zero_is_no_limit():
    spec = SweepSpec(targets=["127.10.0.0/24"], allow_reserved=True, rate=0)
    assert plan_sweep(spec).seconds is None
    assert plan_sweep(spec.model_copy(update={"rate": 256.0})).seconds == 4.0


@pytest.mark.parametrize("change", [{"rate": -5}, {"shards": 0},
                                    {"shards": 10**6}, {"surprise": 1}])
def test_impossible_specs_are_refused(change):
    with pytest.raises(ValidationError):
        SweepSpec(**{"targets": ["127.10.0.0/24"], **change})
