"""Target specs, target files, eligibility and lazy iteration.

Addresses outside 127/8 appear here only as data for pure functions; nothing dials.
"""

from __future__ import annotations

import io
import ipaddress
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.blocklist import MAX_IP, IPSet, default_blocklist, format_ip
from scheduler.ports import parse_ports
from scheduler.targets import (
    Exclusions,
    TargetError,
    eligible,
    iter_targets,
    parse_target,
    read_targets,
)


def _ips(*nets: str) -> IPSet:
    return IPSet.from_networks(nets)


# -- parse_target ------------------------------------------------------------------------------

@given(st.integers(0, MAX_IP), st.integers(0, 32))
def test_cidr_matches_ipaddress(ip: int, prefix: int) -> None:
    spec = f"{format_ip(ip)}/{prefix}"
    net = ipaddress.IPv4Network(spec, strict=False)
    got = parse_target(spec)
    assert got.ranges == ((int(net.network_address), int(net.broadcast_address)),)


@given(st.integers(0, MAX_IP), st.integers(0, MAX_IP))
def test_range_matches_ipaddress(a: int, b: int) -> None:
    first, last = min(a, b), max(a, b)
    got = parse_target(f"{format_ip(first)}-{format_ip(last)}")
    want = sum(n.num_addresses for n in ipaddress.summarize_address_range(
        ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)))
    assert got.size == want == last - first + 1
    assert got.nth(0) == first and got.nth(got.size - 1) == last


@pytest.mark.parametrize(("spec", "want"), [
    ("127.10.0.0/24", [("127.10.0.0", "127.10.0.255")]),
    ("127.10.0.9/24", [("127.10.0.0", "127.10.0.255")]),
    ("127.0.0.1", [("127.0.0.1", "127.0.0.1")]),
    ("  127.0.0.1\n", [("127.0.0.1", "127.0.0.1")]),
    ("127.0.0.1-20", [("127.0.0.1", "127.0.0.20")]),
    ("127.0.0.7-7", [("127.0.0.7", "127.0.0.7")]),
    ("127.0.0.250-127.0.1.3", [("127.0.0.250", "127.0.1.3")]),
    ("0.0.0.0/0", [("0.0.0.0", "255.255.255.255")]),
])
def test_valid_specs(spec: str, want: list[tuple[str, str]]) -> None:
    assert parse_target(spec) == IPSet(
        (int(ipaddress.IPv4Address(a)), int(ipaddress.IPv4Address(b))) for a, b in want)


@pytest.mark.parametrize(("spec", "message"), [
    ("300.1.1.1/24", "bad target '300.1.1.1/24': octet 300 out of range"),
    ("localhost", "bad target 'localhost': hostnames are not supported"),
    ("broker.example.com", "bad target 'broker.example.com': hostnames are not supported"),
    ("::1", "bad target '::1': IPv6 is not supported"),
    ("127.0.0.5-1", "bad target '127.0.0.5-1': range start 127.0.0.5 is after its end "
                    "127.0.0.1"),
    ("127.0.0.1-256", "bad target '127.0.0.1-256': octet 256 out of range"),
    ("127.0.0.1/33", "bad target '127.0.0.1/33': prefix length 33 out of range (0-32)"),
    ("127.0.0.1/", "bad target '127.0.0.1/': bad prefix length '' (expected 0-32)"),
    ("127.0.0", "bad target '127.0.0': not an IPv4 address: '127.0.0' (need four octets "
                "a.b.c.d)"),
    ("127.0.0.01", "bad target '127.0.0.01': octet 01 has a leading zero (ambiguous: octal?)"),
    ("0x7f.0.0.1", "bad target '0x7f.0.0.1': hex octets are not supported"),
    ("127..0.1", "bad target '127..0.1': empty octet in '127..0.1'"),
    ("", "bad target '': empty"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(spec)
    assert str(info.value) == message


@given(st.text(max_size=40))
def test_fuzz_parse_target_raises_only_target_error(text: str) -> None:
    try:
        parse_target(text)
    except TargetError as exc:
        assert "\n" not in str(exc) and str(exc)


@given(st.text(alphabet="0123456789./- x:", max_size=30))
def test_fuzz_parse_target_near_valid(text: str) -> None:
    try:
        got = parse_target(text)
    except TargetError as exc:
        assert "\n" not in str(exc)
    else:
        assert got.size >= 1


def test_huge_octet_is_a_target_error() -> None:
    with pytest.raises(TargetError, match="out of range"):
        parse_target("1" * 5000 + ".0.0.1")


# -- read_targets ------------------------------------------------------------------------------

def test_read_targets_merges_args_files_and_stdin(tmp_path: Path) -> None:
    listing = tmp_path / "targets.txt"
    listing.write_text("# hosts\n127.0.0.1   # first\n\n127.0.0.2 127.0.0.3-5\n",
                       encoding="utf-8")
    stdin = io.StringIO("127.0.1.0/30\n# done\n")
    got = read_targets(["127.0.0.1", "-", "127.0.0.4"], [str(listing)], stdin=stdin)
    assert got == _ips("127.0.0.1/32", "127.0.0.2/31", "127.0.0.4/31", "127.0.1.0/30")
    assert got.size == 9  # 127.0.0.1-5 and 127.0.1.0-3, repeats once


def test_read_targets_file_errors_name_file_and_line(tmp_path: Path) -> None:
    listing = tmp_path / "t.txt"
    listing.write_text("127.0.0.1\n\n127.0.0.1 localhost\n", encoding="utf-8")
    with pytest.raises(TargetError) as info:
        read_targets([], [str(listing)])
    assert str(info.value) == f"{listing}:3: bad target 'localhost': hostnames are not supported"


def test_read_targets_stdin_errors() -> None:
    with pytest.raises(TargetError, match=r"^<stdin>:2: bad target '1\.2\.3': "):
        read_targets(["-"], stdin=io.StringIO("127.0.0.1\n1.2.3\n"))


def test_read_targets_unreadable(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match=r"^cannot read .*missing\.txt: No such file"):
        read_targets([], [str(tmp_path / "missing.txt")])


def test_read_targets_empty() -> None:
    with pytest.raises(TargetError, match="^no targets$"):
        read_targets([])
    with pytest.raises(TargetError, match="^no targets$"):
        read_targets(["-"], stdin=io.StringIO("# nothing\n\n"))


def test_read_targets_many_lines_is_linear(tmp_path: Path) -> None:
    listing = tmp_path / "many.txt"
    listing.write_text("".join(f"127.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n"
                               for i in range(0, 200_000, 2)), encoding="utf-8")
    assert read_targets([], [str(listing)]).size == 100_000


# -- eligible ----------------------------------------------------------------------------------

nets = st.builds(lambda ip, p: f"{format_ip(ip)}/{p}", st.integers(0, MAX_IP),
                 st.integers(8, 32))
ipsets = st.lists(nets, max_size=5).map(lambda ns: IPSet.from_networks(ns))


@given(ipsets, ipsets, ipsets, st.booleans())
def test_eligible_counts_add_up(targets: IPSet, optout: IPSet, scope: IPSet,
                                allow_reserved: bool) -> None:
    blocklist = default_blocklist()
    kept, excl = eligible(targets, blocklist=blocklist, optout=optout, scope=scope,
                          allow_reserved=allow_reserved)
    assert kept.size + excl.total == targets.size
    assert excl.total == excl.blocklisted + excl.opted_out + excl.out_of_scope
    assert not (kept & optout)
    assert kept.difference(scope).size == 0
    assert kept.difference(targets).size == 0
    if allow_reserved:
        assert excl.blocklisted == 0
    else:
        assert not (kept & blocklist)
    assert len(excl.examples) <= 3
    assert "\n" not in excl.describe()


def test_eligible_loopback_needs_allow_reserved() -> None:
    targets = _ips("127.0.0.0/30")
    scope = _ips("127.0.0.0/8")
    kept, excl = eligible(targets, blocklist=default_blocklist(), optout=IPSet.empty(),
                          scope=scope, allow_reserved=False)
    assert kept.size == 0
    assert excl == Exclusions(blocklisted=4, examples=("127.0.0.0/30 (reserved)",))
    assert excl.describe() == "4 reserved (IANA blocklist) (e.g. 127.0.0.0/30 (reserved))"
    kept, excl = eligible(targets, blocklist=default_blocklist(), optout=_ips("127.0.0.2/32"),
                          scope=scope, allow_reserved=True)
    assert list(kept) == [0x7F000000, 0x7F000001, 0x7F000003]
    assert (excl.blocklisted, excl.opted_out, excl.out_of_scope) == (0, 1, 0)


def test_eligible_scope_and_describe() -> None:
    targets = _ips("127.0.0.0/24", "8.8.8.0/24")
    kept, excl = eligible(targets, blocklist=default_blocklist(), optout=IPSet.empty(),
                          scope=_ips("127.0.0.0/8"), allow_reserved=True)
    assert kept == _ips("127.0.0.0/24")
    assert excl.out_of_scope == 256
    assert excl.describe() == "256 out of scope (e.g. 8.8.8.0/24 (out of scope))"
    assert Exclusions().describe() == "nothing excluded"


# -- iter_targets ------------------------------------------------------------------------------

def test_iter_targets_ports_outer_ascending() -> None:
    ports = parse_ports("1883,5672")
    got = [(format_ip(ip), spec.port) for ip, spec in iter_targets(_ips("127.0.0.1/32",
                                                                         "127.0.0.2/32"), ports)]
    assert got == [("127.0.0.1", 1883), ("127.0.0.2", 1883),
                   ("127.0.0.1", 5672), ("127.0.0.2", 5672)]


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1, max_size=6),
       st.integers(0, 2**64), st.sampled_from(["1883", "1883,5672,8883"]))
def test_iter_targets_scattered_is_a_permutation(pairs: list[tuple[int, int]], seed: int,
                                                 port_text: str) -> None:
    ips = IPSet([(0x7F000000 + a, 0x7F000000 + a + n) for a, n in pairs])
    ports = parse_ports(port_text)
    got = list(iter_targets(ips, ports, seed=seed))
    assert len(got) == ips.size * len(ports)
    assert set(got) == {(ip, spec) for spec in ports for ip in ips}
    for k, spec in enumerate(ports):  # ports outer: each block is one port
        block = got[k * ips.size:(k + 1) * ips.size]
        assert {s for _, s in block} == {spec}
    assert list(iter_targets(ips, ports, seed=seed)) == got  # deterministic


def test_iter_targets_is_lazy() -> None:
    ips = IPSet.all()  # 2^32 addresses: only works if nothing is materialised
    ports = parse_ports("1883,5672")
    tracemalloc.start()
    try:
        for seed in (None, 7):
            it = iter_targets(ips, ports, seed=seed)
            first = [next(it) for _ in range(30_000)]
            assert len({ip for ip, _ in first}) == 30_000
            del first
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000
