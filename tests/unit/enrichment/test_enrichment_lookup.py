"""Lookups over the shipped data: known answers, reserved space, bad input, any address.

The known answers were checked in both the shipped data (ip-location-db) and GeoLite2
(geoip2fast); see enrichment/data/CROSSCHECK.md. The addresses are data, never dialled.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerscan.model import AsnInfo, GeoInfo, ScanResult, Status, Transport
from enrichment.lookup import BUILTIN_PATH, RESERVED_SOURCE, Enricher, open_enricher
from enrichment.sources import (
    MEMO_SIZE,
    RESERVED,
    EnrichmentError,
    TableSource,
    remember,
)

BUILTIN = open_enricher(["builtin:"])

KNOWN = [
    ("8.8.8.8", 15169, "Google", "US"),
    ("1.1.1.1", 13335, "Cloudflare", "AU"),
    ("9.9.9.9", 19281, "Quad9", "US"),
    ("193.0.6.139", 3333, "RIPE NCC", "NL"),
    ("202.12.27.33", 7500, "WIDE", "JP"),
    ("77.88.8.8", 13238, "YANDEX", "RU"),
    ("180.76.76.76", 55967, "Baidu", "CN"),
    ("94.140.14.14", 212772, "AdGuard", "CY"),
]


@pytest.mark.parametrize(("ip", "number", "org", "country"), KNOWN)
def test_known_answers(ip: str, number: int, org: str, country: str) -> None:
    asn, geo = BUILTIN.lookup(ip)
    assert asn.number == number
    assert org in (asn.organization or "")
    assert geo.country == country
    assert not asn.reserved and not geo.reserved
    assert asn.network is not None
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(asn.network)
    for info in (asn, geo):
        assert info.source == "ip-location-db asn+dbip-country"
        assert info.source_date == "2026-06-17"


def test_int_and_str_agree() -> None:
    assert BUILTIN.lookup("8.8.8.8") == BUILTIN.lookup(0x08080808)


def test_network_is_the_widest_block_of_the_same_as() -> None:
    asn, _ = BUILTIN.lookup("8.8.8.8")
    assert asn.network == "8.8.8.0/24"


@pytest.mark.parametrize("cidr", [*RESERVED, "255.255.255.255/32"])
def test_reserved_space_is_answered_as_reserved(cidr: str) -> None:
    net = ipaddress.IPv4Network(cidr)
    for ip in (net[0], net[-1], net[net.num_addresses // 2]):
        asn, geo = BUILTIN.lookup(str(ip))
        assert asn.reserved and geo.reserved
        assert asn.number is None and geo.country is None
        assert asn.source == geo.source == RESERVED_SOURCE and asn.source_date
        assert ip in ipaddress.IPv4Network(asn.network or "")


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.1", "192.168.1.1", "172.16.0.1",
                                "100.64.0.1", "169.254.169.254", "224.0.0.1",
                                "192.0.2.10", "198.51.100.7", "203.0.113.99", "0.0.0.0"])
def test_well_known_reserved_addresses(ip: str) -> None:
    assert BUILTIN.lookup(ip)[0].reserved


@pytest.mark.parametrize("ip", ["100.63.255.255", "100.128.0.0", "11.0.0.0", "172.32.0.0",
                                "9.255.255.255", "223.255.255.255"])
def test_just_outside_reserved_space_is_not_reserved(ip: str) -> None:
    asn, geo = BUILTIN.lookup(ip)
    assert not asn.reserved and not geo.reserved


@pytest.mark.parametrize("bad", ["1.2.3", "01.2.3.4", "256.0.0.1", "", "::1", " 1.2.3.4",
                                 "1.2.3.4/32", "example.org", -1, 2**32, True, 1.5, None])
def test_malformed_addresses_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError):
        BUILTIN.lookup(bad)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_any_address_looks_up(n: int) -> None:
    asn, geo = BUILTIN.lookup(n)
    assert isinstance(asn, AsnInfo) and isinstance(geo, GeoInfo)
    assert asn.reserved == geo.reserved
    assert asn.source and asn.source_date and geo.source and geo.source_date
    assert AsnInfo.model_validate(asn.model_dump()) == asn
    assert GeoInfo.model_validate(geo.model_dump()) == geo
    if asn.network is not None:
        assert ipaddress.IPv4Address(n) in ipaddress.IPv4Network(asn.network)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_remembered_as_answers_are_the_answers_for_the_address(n: int) -> None:
    """The shared source has answered many neighbours before; a new one has not."""
    warm: TableSource = BUILTIN.sources[0]  # type: ignore[assignment]
    for near in (n ^ 1, n ^ 0xFF, n ^ 0xFFFF, n):
        warm.lookup(near)
    asn, geo = warm.lookup(n)
    assert (asn, geo) == TableSource(warm.tables).lookup(n)
    if asn is not None:
        assert ipaddress.IPv4Address(n) in ipaddress.IPv4Network(asn.network or "")


def test_remember_drops_the_oldest_at_the_bound() -> None:
    memo: OrderedDict[int, str] = OrderedDict()
    for key in range(MEMO_SIZE + 10):
        assert remember(memo, key, str(key)) == str(key)
    assert len(memo) == MEMO_SIZE
    assert next(iter(memo)) == 10 and memo[MEMO_SIZE + 9] == str(MEMO_SIZE + 9)


def test_edges_of_the_address_space() -> None:
    for n in (0, 1, 2**32 - 1, 2**32 - 2):
        BUILTIN.lookup(n)


def test_enrich_output_validates_as_scan_result() -> None:
    result = ScanResult(ip="8.8.8.8", port=1883, transport=Transport.TCP,
                        status=Status.SUCCESS, observed_at=datetime(2026, 1, 1, tzinfo=UTC))
    enriched = BUILTIN.enrich(result)
    assert enriched is not result and result.asn is None
    assert enriched.asn is not None and enriched.asn.number == 15169
    assert enriched.geo is not None and enriched.geo.country == "US"
    assert ScanResult.model_validate_json(enriched.to_json()) == enriched
    assert ScanResult.model_validate(enriched.model_dump()) == enriched


def test_enrich_reserved_result() -> None:
    result = ScanResult(ip="127.0.0.1", port=5672, transport=Transport.TLS,
                        status=Status.CONNECTION_REFUSED,
                        observed_at=datetime(2026, 1, 1, tzinfo=UTC))
    enriched = BUILTIN.enrich(result)
    assert enriched.asn is not None and enriched.asn.reserved
    assert ScanResult.model_validate_json(enriched.to_json()) == enriched


def test_no_source_is_an_error() -> None:
    with pytest.raises(EnrichmentError, match="no enrichment source"):
        Enricher([])


@pytest.mark.parametrize("url", ["geoip:///x", "http://127.0.0.1/x.mmdb", "nonsense"])
def test_unknown_scheme_is_one_line(url: str) -> None:
    with pytest.raises(EnrichmentError, match="unknown enrichment source") as info:
        open_enricher([url])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["builtin:///nonexistent/ipv4.bin", "csv:///nonexistent.csv",
                                 "mmdb:///nonexistent.mmdb"])
def test_missing_file_fails_at_start_up(url: str) -> None:
    with pytest.raises(EnrichmentError, match="no such file") as info:
        open_enricher(["builtin:", url])
    assert "\n" not in str(info.value)


def _corrupt(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "ipv4.bin"
    path.write_bytes(data)
    return f"builtin://{path}"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "empty", "header"])
def test_corrupt_builtin_file_fails_at_start_up(tmp_path: Path, damage: str) -> None:
    real = BUILTIN_PATH.read_bytes()
    data = {
        "garbage": b"\x00not an enrichment file" * 10,
        "truncated": real[: len(real) // 2],
        "flipped": real[:-100] + bytes([real[-100] ^ 0xFF]) + real[-99:],
        "empty": b"",
        "header": real[:10] + b"\xff\xff\xff\x00" + real[14:],
    }[damage]
    with pytest.raises(EnrichmentError, match="corrupt enrichment file") as info:
        open_enricher([_corrupt(tmp_path, data)])
    assert "\n" not in str(info.value)


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EnrichmentError, match="unreadable"):
        open_enricher([f"builtin://{tmp_path}"])  # a directory


def test_shipped_file_is_small() -> None:
    assert BUILTIN_PATH.stat().st_size < 5 * 1024 * 1024
    assert (BUILTIN_PATH.parent / "README.md").read_text().count("CC BY 4.0") >= 3


def test_enrich_ipv6_result_is_an_enrichment_error() -> None:
    result = ScanResult(ip="2001:db8::1", port=1883, transport=Transport.TCP,
                        status=Status.SUCCESS, observed_at=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(EnrichmentError, match="not an IPv4 address"):
        BUILTIN.enrich(result)
