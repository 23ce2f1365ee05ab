"""Shards: disjoint and covering, serialisable, and mapping only to eligible targets."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import islice, pairwise, product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import shards as shards_module
from scheduler.blocklist import IPSet, default_blocklist, parse_ipv4
from scheduler.cyclic import Permutation
from scheduler.ports import DEFAULT_PORTS, PortSpec, parse_ports
from scheduler.shards import (
    SHARD_FORMAT,
    Shard,
    expected_targets,
    iter_shard,
    plan_shards,
    shard_targets,
)


def check_plan(n: int, n_shards: int, seed: int) -> None:
    plan = plan_shards(n, n_shards, seed)
    perm = plan[0].permutation
    assert [s.index for s in plan] == list(range(n_shards))
    assert all(s.count == n_shards and s.permutation is perm for s in plan)
    # contiguous, covering every exponent, spans as even as possible
    assert plan[0].first_exponent == 0 and plan[-1].end_exponent == perm.order
    assert all(a.end_exponent == b.first_exponent for a, b in pairwise(plan))
    assert max(s.span for s in plan) - min(s.span for s in plan) <= 1
    # each target exactly once, and the shards in order are the whole walk
    per_shard = [list(iter_shard(s)) for s in plan]
    joined = [t for targets in per_shard for t in targets]
    assert sorted(joined) == list(range(n))
    assert joined == list(perm)
    for shard, targets in zip(plan, per_shard, strict=True):
        assert shard.span - (perm.order - n) <= len(targets) <= shard.span
        assert abs(expected_targets(shard) - len(targets)) <= perm.order - n


def test_exhaustive_small_plans() -> None:
    for n in range(0, 40):
        for n_shards in range(1, n + 4):
            for seed in (0, 1, -1):
                check_plan(n, n_shards, seed)


@pytest.mark.parametrize("n", [996, 1000, 2048, 4099])
def test_a_few_thousand_targets(n: int) -> None:
    for n_shards in (1, 2, 7, 64, n - 1, n, n + 3):
        check_plan(n, n_shards, n_shards)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(0, 3000), st.integers())
def test_shards_are_disjoint_and_cover(data: st.DataObject, n: int, seed: int) -> None:
    n_shards = data.draw(st.integers(1, n + 3), label="n_shards")
    check_plan(n, n_shards, seed)


def test_same_seed_same_shards_different_seed_different_order() -> None:
    a, b = plan_shards(2000, 7, 99), plan_shards(2000, 7, 99)
    assert a == b
    assert [list(iter_shard(s)) for s in a] == [list(iter_shard(s)) for s in b]
    orders = {tuple(t for s in plan_shards(2000, 7, seed) for t in iter_shard(s))
              for seed in range(30)}
    assert len(orders) == 30


def test_plan_is_cheap_for_a_full_sweep() -> None:
    ips = IPSet.all() - default_blocklist()
    plan = plan_shards(ips.size * 4, 65_536, 5)
    assert len(plan) == 65_536 and plan[-1].end_exponent == plan[0].permutation.order
    assert sum(expected_targets(s) for s in plan) == pytest.approx(ips.size * 4)


def test_bad_shard_counts() -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="shard count"):
            plan_shards(10, bad, 1)  # type: ignore[arg-type]


# -- serialisation ---------------------------------------------------------------------------


@given(st.integers(0, 2**34), st.integers(1, 5000), st.integers(), st.data())
def test_dict_round_trip(n: int, n_shards: int, seed: int, data: st.DataObject) -> None:
    perm = Permutation.from_seed(n, seed)
    index = data.draw(st.integers(0, n_shards - 1))
    order = perm.order
    shard = Shard(index=index, count=n_shards, first_exponent=index * order // n_shards,
                  end_exponent=(index + 1) * order // n_shards, permutation=perm)
    message = shard.to_dict()
    assert message["format"] == SHARD_FORMAT
    assert all(isinstance(v, int | str) and not isinstance(v, bool) for v in message.values())
    assert Shard.from_dict(message) == shard
    assert Shard.from_dict(json.loads(json.dumps(message))) == shard


def _message() -> dict[str, int | str]:
    return plan_shards(1000, 4, 3)[1].to_dict()


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "brokerscan.shard/0"}, "not a shard"),
    ({"index": 4}, "index 4 out of range"),
    ({"index": -1}, "out of range"),
    ({"end_exponent": 10**6}, "exponents"),
    ({"first_exponent": 900, "end_exponent": 800}, "exponents"),
    ({"start": 0}, "start"),
    ({"prime": 1013}, "does not generate|not a prime"),
    ({"prime": 1011}, "not a prime"),
    ({"generator": 1}, "does not generate"),
    ({"n": 2000}, "not a prime greater"),
    ({"count": "4"}, "count must be an int"),
    ({"index": True}, "index must be an int"),
    ({"start": 5.0}, "start must be an int"),
    ({"extra": 1}, "unknown \\['extra'\\]"),
])
def test_bad_dicts_are_refused(change: dict[str, object], message: str) -> None:
    data: dict[str, object] = {**_message(), **change}
    with pytest.raises(ValueError, match=message):
        Shard.from_dict(data)


def test_missing_key_is_named() -> None:
    data = _message()
    del data["generator"]
    with pytest.raises(ValueError, match="missing \\['generator'\\]"):
        Shard.from_dict(data)


def test_a_shard_cannot_be_walked_with_another_plans_permutation() -> None:
    shard = plan_shards(1000, 4, 3)[0]
    other = Permutation.from_seed(1000, 4)
    assert list(iter_shard(shard, shard.permutation)) == list(iter_shard(shard))
    with pytest.raises(ValueError, match="another permutation"):
        list(iter_shard(shard, other))
    with pytest.raises(ValueError, match="another permutation"):
        shard_targets(shard, other, IPSet([(0, 499)]), parse_ports("1883,5672"))


# -- mapping to (ip, port) -------------------------------------------------------------------

HOLEY = IPSet([(parse_ipv4("127.10.0.0"), parse_ipv4("127.10.0.40")),
               (parse_ipv4("127.10.0.50"), parse_ipv4("127.10.0.50")),
               (parse_ipv4("127.10.1.0"), parse_ipv4("127.10.1.99")),
               (parse_ipv4("127.200.0.7"), parse_ipv4("127.200.0.9"))])
TWO_PORTS = parse_ports("1883,9000/tls")


@pytest.fixture(params=["segments", "by-port"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "by-port":
        monkeypatch.setattr(shards_module, "_MAX_SEGMENTS", 0)
    return str(request.param)


def check_mapping(ips: IPSet, ports: list[PortSpec], plan: list[Shard]) -> None:
    """Each yielded pair is the port-major image of the index walked in lockstep."""
    for shard in plan:
        indices = list(iter_shard(shard))
        pairs = list(shard_targets(shard, None, ips, ports))
        assert len(pairs) == len(indices)
        for t, (ip, spec) in zip(indices, pairs, strict=True):
            assert ip == ips.nth(t % ips.size) and spec is ports[t // ips.size]


@pytest.mark.parametrize("n_shards", [1, 3, 17, 500, 1000])
def test_small_set_with_holes(path: str, n_shards: int) -> None:
    plan = plan_shards(HOLEY.size * 2, n_shards, 11)
    pairs = [pair for s in plan for pair in shard_targets(s, s.permutation, HOLEY, TWO_PORTS)]
    assert all(ip in HOLEY for ip, _ in pairs)
    counts = Counter((ip, spec.name) for ip, spec in pairs)
    assert set(counts) == {(ip, spec.name) for ip, spec in product(HOLEY, TWO_PORTS)}
    assert set(counts.values()) == {1}
    check_mapping(HOLEY, TWO_PORTS, plan)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), max_size=12),
       st.integers(1, 3), st.integers(1, 40), st.integers())
def test_random_sets_both_paths_agree(ranges: list[tuple[int, int]], n_ports: int,
                                      n_shards: int, seed: int) -> None:
    base = parse_ipv4("127.0.0.0")
    ips = IPSet([(base + a, base + a + k) for a, k in ranges])
    ports = parse_ports(",".join(str(2000 + i) for i in range(n_ports)))
    plan = plan_shards(ips.size * n_ports, n_shards, seed)
    fast = [list(shard_targets(s, None, ips, ports)) for s in plan]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards_module, "_MAX_SEGMENTS", 0)
        slow = [list(shard_targets(s, None, ips, ports)) for s in plan]
    assert fast == slow
    assert sorted((ip, p.port) for pairs in fast for ip, p in pairs) == sorted(
        (ip, p.port) for ip, p in product(ips, ports))


def test_targets_must_match_the_plan() -> None:
    shard = plan_shards(HOLEY.size * 2, 4, 1)[0]
    with pytest.raises(ValueError, match="planned for"):
        shard_targets(shard, None, HOLEY, TWO_PORTS[:1])
    with pytest.raises(ValueError, match="planned for"):
        shard_targets(shard, None, HOLEY - IPSet([(parse_ipv4("127.10.0.50"),) * 2]), TWO_PORTS)


def test_empty_target_space() -> None:
    plan = plan_shards(0, 3, 1)
    assert [list(shard_targets(s, None, IPSet.empty(), TWO_PORTS)) for s in plan] == [[], [], []]


def test_full_ipv4_sample(path: str) -> None:
    blocked = default_blocklist()
    ips = IPSet.all() - blocked
    ports = parse_ports(DEFAULT_PORTS)
    plan = plan_shards(ips.size * len(ports), 1024, 2024)
    chosen = random.Random(path).sample(plan, 4)
    samples = {s.index: list(islice(shard_targets(s, None, ips, ports), 3000)) for s in chosen}
    seen: set[tuple[int, int]] = set()
    for pairs in samples.values():
        assert len(pairs) == 3000
        keys = {(ip, spec.port) for ip, spec in pairs}
        assert len(keys) == 3000  # distinct within the shard
        assert not keys & seen  # and in no other shard's sample
        seen |= keys
        assert all(ip in ips and ip not in blocked for ip, _ in pairs)
        assert {spec.port for _, spec in pairs} == {1883, 8883, 5672, 5671}
    check_mapping(ips, ports, [Shard(index=s.index, count=s.count,
                                     first_exponent=s.first_exponent,
                                     end_exponent=s.first_exponent + 2000,
                                     permutation=s.permutation) for s in chosen])
