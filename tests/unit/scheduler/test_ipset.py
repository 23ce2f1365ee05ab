"""IPSet: set algebra against Python sets, nth/index_of, construction and display."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.blocklist import MAX_IP, IPSet, format_ip, parse_ipv4

# Small universes make overlaps, adjacency and gaps likely; the offset moves them around.
UNIVERSE = 64


@st.composite
def small_sets(draw: st.DrawFn) -> tuple[IPSet, set[int]]:
    base = draw(st.sampled_from([0, 2**31 - 32, MAX_IP - UNIVERSE + 1]))
    pairs = draw(st.lists(st.tuples(st.integers(0, UNIVERSE - 1), st.integers(0, 8)),
                          max_size=8))
    ranges = [(base + a, base + min(a + n, UNIVERSE - 1)) for a, n in pairs]
    members = {ip for first, last in ranges for ip in range(first, last + 1)}
    return IPSet(ranges), members


def _same(ipset: IPSet, members: set[int]) -> None:
    assert list(ipset) == sorted(members)
    assert ipset.size == len(ipset) == len(members)
    assert bool(ipset) == bool(members)
    # canonical: disjoint, sorted, non-adjacent
    ranges = ipset.ranges
    assert all(a[1] + 1 < b[0] for a, b in zip(ranges, ranges[1:], strict=False))


@given(small_sets(), small_sets())
def test_set_algebra_agrees_with_python_sets(a: tuple[IPSet, set[int]],
                                             b: tuple[IPSet, set[int]]) -> None:
    (sa, pa), (sb, pb) = a, b
    _same(sa, pa)
    _same(sa.union(sb), pa | pb)
    _same(sa.intersection(sb), pa & pb)
    _same(sa.difference(sb), pa - pb)
    _same(sa | sb, pa | pb)
    _same(sa & sb, pa & pb)
    _same(sa - sb, pa - pb)
    assert (sa == sb) == (pa == pb)
    if pa == pb:
        assert hash(sa) == hash(sb)


@given(small_sets(), st.integers(-2, MAX_IP + 2))
def test_contains_agrees(a: tuple[IPSet, set[int]], probe: int) -> None:
    ipset, members = a
    for ip in [probe, *members]:
        assert (ip in ipset) == (ip in members)


@given(small_sets())
def test_nth_and_index_of_are_inverse_and_monotone(a: tuple[IPSet, set[int]]) -> None:
    ipset, members = a
    ordered = sorted(members)
    got = [ipset.nth(i) for i in range(ipset.size)]
    assert got == ordered
    assert all(x < y for x, y in zip(got, got[1:], strict=False))
    for i, ip in enumerate(ordered):
        assert ipset.index_of(ip) == i
    with pytest.raises(IndexError):
        ipset.nth(ipset.size)
    with pytest.raises(IndexError):
        ipset.nth(-1)


@given(st.lists(st.tuples(st.integers(0, MAX_IP), st.integers(0, 2**20)), max_size=20),
       st.data())
def test_nth_index_of_on_large_sets(pairs: list[tuple[int, int]], data: st.DataObject) -> None:
    ipset = IPSet([(a, min(a + n, MAX_IP)) for a, n in pairs])
    if not ipset:
        return
    indices = data.draw(st.lists(st.integers(0, ipset.size - 1), min_size=1, max_size=20))
    for i in indices:
        ip = ipset.nth(i)
        assert ip in ipset
        assert ipset.index_of(ip) == i
    for i, j in zip(sorted(indices), sorted(indices)[1:], strict=False):
        assert (ipset.nth(i) < ipset.nth(j)) == (i < j)


@given(small_sets())
def test_complement(a: tuple[IPSet, set[int]]) -> None:
    ipset, members = a
    comp = ipset.complement()
    assert comp.size == 2**32 - len(members)
    assert not (comp & ipset)
    assert comp | ipset == IPSet.all()


def test_index_of_missing_raises_keyerror() -> None:
    ipset = IPSet([(10, 20)])
    for ip in (9, 21, -1):
        with pytest.raises(KeyError):
            ipset.index_of(ip)
    with pytest.raises(KeyError):
        IPSet.empty().index_of(0)


def test_constructor_rejects_bad_ranges() -> None:
    for bad in [(5, 4), (-1, 3), (0, MAX_IP + 1)]:
        with pytest.raises(ValueError, match="bad IPv4 range"):
            IPSet([bad])


def test_merges_adjacent_and_overlapping() -> None:
    assert IPSet([(1, 3), (4, 6), (5, 9), (20, 20)]).ranges == ((1, 9), (20, 20))


def test_from_networks_and_describe() -> None:
    ipset = IPSet.from_networks(["127.0.0.0/8", ipaddress.IPv4Network("10.1.2.3/32"),
                                 "192.168.1.7/24"])
    assert ipset.describe_ranges() == ["10.1.2.3", "127.0.0.0/8", "192.168.1.0/24"]
    assert ipset.describe_ranges(limit=1) == ["10.1.2.3", "+2 more"]
    assert IPSet([(parse_ipv4("127.0.0.1"), parse_ipv4("127.0.0.20"))]).describe_ranges() == [
        "127.0.0.1-127.0.0.20"]
    assert IPSet.all().describe_ranges() == ["0.0.0.0/0"]
    assert "size=16777473" in repr(ipset)


def test_contains_non_int_is_false() -> None:
    assert "127.0.0.1" not in IPSet.all()


def test_iteration_is_lazy() -> None:
    it = iter(IPSet.all())
    assert [next(it) for _ in range(3)] == [0, 1, 2]


@given(st.integers(0, MAX_IP))
def test_format_and_parse_roundtrip(ip: int) -> None:
    text = format_ip(ip)
    assert text == str(ipaddress.IPv4Address(ip))
    assert parse_ipv4(text) == ip
