"""Building the compact file from CSVs, and the ``csv:`` source over the same files."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrichment.build import build, main, similar_names
from enrichment.lookup import open_enricher
from enrichment.sources import EnrichmentError, Tables, network_around, tables_from_csv

ASN_CSV = """\
11.0.0.0,11.0.0.255,64500,"Example, Inc."
11.0.1.0,11.0.1.255,64500,"Example, Inc."
184549888,184550143,64501,Other Net
11.0.2.128,11.0.2.255,64502,Overlapping Ltd
11.0.4.0,11.0.4.255,64503,Gap After Ltd
2001:db8::,2001:db8::ffff,64504,IPv6 Only
"""
COUNTRY_CSV = """\
11.0.0.0,11.0.1.255,DE
11.0.2.0,11.0.3.255,fr
"""


@pytest.fixture
def csvs(tmp_path: Path) -> tuple[Path, Path]:
    asn, country = tmp_path / "asn-ipv4.csv", tmp_path / "country-ipv4.csv"
    asn.write_text(ASN_CSV)
    country.write_text(COUNTRY_CSV)
    return asn, country


def test_build_round_trip(tmp_path: Path, csvs: tuple[Path, Path]) -> None:
    out = tmp_path / "data" / "ipv4.bin"
    built = build(list(csvs), out, name="test-set", date="2026-01-02")
    read = Tables.from_file(out)
    assert read == built
    sidecar = json.loads(out.with_name("ipv4.bin.json").read_text())
    assert sidecar["name"] == "test-set" and sidecar["bytes"] == out.stat().st_size
    assert sidecar["overlaps_clipped"] == {"asn": 1, "country": 0}

    enricher = open_enricher([f"builtin://{out}"])
    asn, geo = enricher.lookup("11.0.0.7")
    assert (asn.number, asn.organization, geo.country) == (64500, "Example, Inc.", "DE")
    assert asn.network == "11.0.0.0/23"  # two adjacent rows of one AS merged
    assert (asn.source, asn.source_date) == ("test-set", "2026-01-02")
    assert enricher.lookup("11.0.2.1")[0].number == 64501  # dotted and -num forms
    # Overlap: the range starting first keeps it.
    assert enricher.lookup("11.0.2.200")[0].number == 64501
    assert enricher.lookup("11.0.3.1")[1].country == "FR"
    gap_asn, gap_geo = enricher.lookup("11.0.3.1")
    assert gap_asn.number is None and gap_asn.source == "test-set"  # a gap: no data
    assert enricher.lookup("11.0.4.9")[1].country is None
    assert enricher.lookup("8.8.8.8")[0].number is None


def test_csv_source_answers_like_the_built_file(tmp_path: Path,
                                                csvs: tuple[Path, Path]) -> None:
    out = tmp_path / "ipv4.bin"
    build(list(csvs), out, name="x", date="2026-01-02")
    built = open_enricher([f"builtin://{out}"])
    raw = open_enricher([f"csv://{p}" for p in csvs])
    for ip in ("11.0.0.7", "11.0.2.1", "11.0.2.200", "11.0.3.1", "11.0.4.9", "12.0.0.0"):
        b_asn, b_geo = built.lookup(ip)
        r_asn, r_geo = raw.lookup(ip)
        assert (b_asn.number, b_asn.organization, b_asn.network, b_geo.country) == (
            r_asn.number, r_asn.organization, r_asn.network, r_geo.country)
    asn, geo = raw.lookup("11.0.0.7")
    assert asn.source == "asn-ipv4.csv"
    assert geo.source == "country-ipv4.csv"


def test_cli_builds_and_reports(tmp_path: Path, csvs: tuple[Path, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ipv4.bin"
    assert main([str(p) for p in csvs] + ["-o", str(out), "--date", "2026-01-02"]) == 0
    assert out.exists()
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "needle"), [
    ("1.0.0.0,1.0.0.255\n", "2 columns"),
    ("1.0.0.9,1.0.0.1,AU\n", "after its end"),
    ("1.0.0.0,1.0.0.255,AU\n1.0.1.0,1.0.1.255,1,Org\n", "4 columns"),
    ("1.0.0.0,1.0.0.256,AU\n", "not an IPv4"),
    ("1.0.0.0,99999999999,AU\n", "outside IPv4"),
    ("1.0.0.0,1.0.0.255,AS1,Org\n", "invalid literal"),
    ("", "no IPv4 rows"),
])
def test_malformed_csv(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(EnrichmentError, match=needle) as info:
        tables_from_csv([path])
    assert "\n" not in str(info.value)
    assert main([str(path), "-o", str(tmp_path / "out.bin")]) == 2


def test_missing_csv_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.csv"), "-o", str(tmp_path / "o.bin")]) == 2
    assert "no such file" in capsys.readouterr().err


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_network_around_is_the_widest_block_inside_the_range(a: int, b: int, c: int) -> None:
    start, ip, end = sorted((a, b, c))
    net = ipaddress.IPv4Network(network_around(ip, start, end))
    assert int(net[0]) >= start and int(net[-1]) <= end
    assert ipaddress.IPv4Address(ip) in net
    if net.prefixlen > 0:
        wider = net.supernet()
        assert int(wider[0]) < start or int(wider[-1]) > end


@pytest.mark.parametrize(("ours", "theirs", "same"), [
    ("Google LLC", "GOOGLE", True), ("Cloudflare, Inc.", "CLOUDFLARENET", True),
    ("Quad9", "QUAD9-AS-1", True), ("Hetzner Online GmbH", "EE Limited", False),
])
def test_similar_names(ours: str, theirs: str, same: bool) -> None:
    assert similar_names(ours, theirs) is same
