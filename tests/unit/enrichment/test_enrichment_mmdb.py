"""MaxMind DB sources: tiny .mmdb files written with mmdb-writer, and source merging."""

from __future__ import annotations

from pathlib import Path

import mmdb_writer  # test extras: never skipped silently
import netaddr  # type: ignore[import-untyped]
import pytest

from enrichment.lookup import open_enricher
from enrichment.sources import EnrichmentError


def write_mmdb(path: Path, database_type: str, networks: dict[str, dict[str, object]],
               ip_version: int = 4) -> Path:
    writer = mmdb_writer.MMDBWriter(ip_version=ip_version, database_type=database_type,
                                    languages=["en"], description="brokerscan test",
                                    ipv4_compatible=ip_version == 6)
    for cidr, record in networks.items():
        writer.insert_network(netaddr.IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "City.mmdb", "GeoLite2-City", {
        "8.8.8.0/24": {"country": {"iso_code": "US"}, "city": {"names": {"en": "Mountain View"}},
                       "location": {"latitude": 37.386, "longitude": -122.0838}},
        "1.1.1.0/24": {"country": {"iso_code": "US"}, "city": {"names": {"en": "Elsewhere"}},
                       "location": {"latitude": 1.0, "longitude": 2.0}},
        "11.0.0.0/8": {"country": {"iso_code": "DE"}},
    })


@pytest.fixture
def asn_db(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "ASN.mmdb", "GeoLite2-ASN", {
        "8.8.8.0/24": {"autonomous_system_number": 15169,
                       "autonomous_system_organization": "GOOGLE"},
    }, ip_version=6)


def test_city_file_alone(city_db: Path) -> None:
    enricher = open_enricher([f"mmdb://{city_db}"])
    asn, geo = enricher.lookup("8.8.8.8")
    assert asn.number is None
    assert (geo.country, geo.city, geo.latitude, geo.longitude) == (
        "US", "Mountain View", 37.386, -122.0838)
    assert geo.source == "GeoLite2-City" and geo.source_date
    assert enricher.lookup("11.2.3.4")[1].city is None
    assert enricher.lookup("12.0.0.1")[1].country is None
    assert enricher.lookup("127.0.0.1")[1].reserved
    enricher.close()


def test_asn_file_in_an_ipv6_tree(asn_db: Path) -> None:
    asn, geo = open_enricher([f"mmdb://{asn_db}"]).lookup("8.8.8.8")
    assert (asn.number, asn.organization, asn.network) == (15169, "GOOGLE", "8.8.8.0/24")
    assert asn.source == "GeoLite2-ASN"
    assert geo.country is None


def test_builtin_asn_plus_city(city_db: Path) -> None:
    enricher = open_enricher(["builtin:", f"mmdb://{city_db}"])
    asn, geo = enricher.lookup("8.8.8.8")
    assert asn.number == 15169 and asn.source == "ip-location-db asn+dbip-country"
    assert (geo.country, geo.city) == ("US", "Mountain View")
    assert geo.source == "ip-location-db asn+dbip-country+GeoLite2-City"
    assert geo.source_date is not None and geo.source_date.startswith("2026-06-17+")
    # The city file says US, the builtin AU: a city of another country is not mixed in.
    _, geo = enricher.lookup("1.1.1.1")
    assert (geo.country, geo.city, geo.source) == ("AU", None,
                                                  "ip-location-db asn+dbip-country")


def test_later_asn_source_only_fills_the_same_as(asn_db: Path) -> None:
    asn, _ = open_enricher([f"mmdb://{asn_db}", "builtin:"]).lookup("8.8.8.8")
    assert (asn.number, asn.organization, asn.source) == (15169, "GOOGLE", "GeoLite2-ASN")


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not a maxmind db" * 100])
def test_corrupt_mmdb_fails_at_start_up(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mmdb"
    path.write_bytes(content)
    with pytest.raises(EnrichmentError, match="not a usable MaxMind DB") as info:
        open_enricher([f"mmdb://{path}"])
    assert "\n" not in str(info.value)


def test_truncated_mmdb_fails_at_start_up(tmp_path: Path, city_db: Path) -> None:
    path = tmp_path / "cut.mmdb"
    path.write_bytes(city_db.read_bytes()[:40])
    with pytest.raises(EnrichmentError):
        open_enricher([f"mmdb://{path}"])
