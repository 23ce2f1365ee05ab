"""MaxMind DB sources: tiny .mmdb files written with mmdb-writer, and source merging."""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from collections.abc import Callable
from pathlib import Path

import maxminddb
import mmdb_writer  # test extras: never skipped silently
import netaddr  # type: ignore[import-untyped]
import pytest

from brokerscan.model import AsnInfo, GeoInfo
from enrichment.lookup import Enricher, open_enricher, open_source
from enrichment.mmdb import MmdbSource
from enrichment.sources import MAX_IP, EnrichmentError, int_to_ip, ip_to_int


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


# --- The fast path (tree walk + record memo) against the reader, on a bigger file ---------

class _SizedTreeWriter(mmdb_writer.TreeWriter):
    """mmdb-writer's tree writer with a chosen record size (it picks the smallest)."""

    record_size_wanted = 24

    def _adjust_record_size(self) -> None:
        super()._adjust_record_size()
        self.record_size = max(self.record_size, self.record_size_wanted)


def _record(rng: random.Random, country: str) -> dict[str, object]:
    """A record in one of the shapes MmdbSource reads (country from the builtin mostly)."""
    shape = rng.randrange(6)
    if shape == 0:  # country only
        return {"country": {"iso_code": country, "names": {"en": country}}}
    if shape == 1:  # ip-location-db flat
        return {"country_code": country, "city": f"Flat {rng.randrange(50)}",
                "latitude": rng.randrange(-90, 90) / 3, "longitude": rng.randrange(180)}
    if shape == 2:  # AS answers (and no geo)
        return {"autonomous_system_number": rng.randrange(1, 70000),
                "autonomous_system_organization": f"AS org {rng.randrange(30)}"}
    return {"continent": {"code": "EU", "names": {"en": "Europe", "de": "Europa"}},
            "country": {"iso_code": country if shape < 5 else "ZZ",
                        "names": {"en": country, "fr": country}},
            "city": {"geoname_id": rng.randrange(10**6),
                     "names": {"en": f"City {rng.randrange(300)}", "ja": "都市"}},
            "location": {"latitude": rng.randrange(-900, 900) / 10,
                         "longitude": rng.randrange(-1800, 1800) / 10,
                         "accuracy_radius": 100}}


def write_city_file(path: Path, ip_version: int, record_size: int) -> tuple[Path, list[int]]:
    """A City-like file of ~1,500 nested networks and ~300 shared records.

    With 28- or 32-bit records, 16 MiB of data comes first, so that record values need
    more than 24 bits (at 28 bits, the nibble shared by a node's two records).

    :returns: the file and the first address of every network written
    """
    rng = random.Random(record_size * 10 + ip_version)
    builtin = open_enricher(["builtin:"])
    writer = mmdb_writer.MMDBWriter(ip_version=ip_version, database_type="Test-City",
                                    languages=["en"], description="brokerscan test",
                                    ipv4_compatible=ip_version == 6)
    if record_size > 24:  # reserved space: never looked up, only walked past
        writer.insert_network(netaddr.IPSet(["0.0.0.0/8"]), b"\0" * (1 << 24))
    records: list[dict[str, object]] = []
    firsts = []
    for prefix in [8] * 20 + [rng.randrange(9, 33) for _ in range(1500)] + [32] * 5:
        base = rng.getrandbits(32) >> (32 - prefix) << (32 - prefix)
        if rng.random() < 0.7 or not records:  # new record, else one already used
            country = builtin.lookup(base)[1].country or "NL"
            records.append(_record(rng, country))
        record = records[-1] if rng.random() < 0.5 else rng.choice(records)
        writer.insert_network(netaddr.IPSet([f"{ipaddress.IPv4Address(base)}/{prefix}"]),
                              record)
        firsts.append(base)
    writer.insert_network(netaddr.IPSet(["8.8.8.0/24"]), records[0])
    tree = _SizedTreeWriter(writer.tree, writer._build_meta())
    tree.record_size_wanted = record_size
    tree.write(str(path))
    return path, firsts


@pytest.fixture(scope="module", params=[(4, 24), (6, 24), (6, 28), (4, 28), (6, 32)],
                ids=lambda p: f"ipv{p[0]}-{p[1]}bit")
def big_city(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    ip_version, record_size = request.param
    return write_city_file(tmp_path_factory.mktemp("mmdb") / "City.mmdb", ip_version,
                           record_size)


def _addresses(firsts: list[int]) -> list[int]:
    """Every network's edges and neighbours, the ends of the space, and random ones.

    Not 0.0.0.0/8 (reserved, so never asked of a source), where the padding may be.
    """
    rng = random.Random(7)
    edges = {n for base in firsts for n in (base - 1, base, base + 1, base + 255)}
    edges |= {1 << 24, MAX_IP - 1, MAX_IP}
    found = sorted(n for n in edges if 1 << 24 <= n <= MAX_IP)
    return found + [rng.randrange(1 << 24, MAX_IP + 1) for _ in range(5000)]


def test_fast_path_answers_as_the_reader_does(big_city: tuple[Path, list[int]]) -> None:
    path, firsts = big_city
    source = MmdbSource(path)
    assert source.reader == "C"  # the wheels ship it: the fast reader must not go missing
    addresses = _addresses(firsts)
    seen = 0
    for _ in range(2):  # the second time every record is remembered
        for n in addresses:
            assert source.lookup(n) == source.lookup_direct(n), int_to_ip(n)
            seen += source.lookup(n) != (None, None)
    assert seen > len(addresses) // 2  # many addresses are inside a network of the file
    source.close()


def test_pure_python_reader_gives_the_same_answers(big_city: tuple[Path, list[int]]) -> None:
    path, firsts = big_city
    fast, slow = MmdbSource(path), MmdbSource(path, pure_python=True)
    assert slow.reader == "Python"
    for n in _addresses(firsts)[:3000]:
        assert fast.lookup(n) == slow.lookup(n) == slow.lookup_direct(n)


def test_merged_answers_are_the_same_remembered_or_not(
        big_city: tuple[Path, list[int]]) -> None:
    """builtin: + the file, with every memo, against merging each plain answer afresh."""
    path, firsts = big_city
    source = MmdbSource(path)

    builtin = open_source("builtin:")
    fast, plain = Enricher([builtin, source]), Enricher([builtin, _Direct(source)])
    merged = 0
    for _ in range(2):
        for n in _addresses(firsts):
            answer = fast.lookup(n)
            assert answer == plain.lookup(n), int_to_ip(n)
            merged += "+Test-City" in (answer[1].source or "")
    assert merged > 1000  # cities joined to the builtin's countries: the merge memo works


class _Direct:
    """An mmdb source answered the plain way (fresh models every time): the reference."""

    def __init__(self, source: MmdbSource) -> None:
        self.name, self.date, self._source = source.name, source.date, source

    def lookup(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        return self._source.lookup_direct(ip)


def test_ipv4_inside_an_ipv6_leaf_still_answers(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "wide.mmdb", "Test-City", {
        "::/8": {"country": {"iso_code": "SE"}},
        "2001:db8::/32": {"country": {"iso_code": "NO"}},
    }, ip_version=6)
    source = MmdbSource(path)
    assert source.lookup(ip_to_int("8.8.8.8"))[1] == source.lookup_direct(0x08080808)[1]
    assert source.lookup(0x08080808)[1] is not None


def test_ipv6_only_file_has_no_ipv4_answers(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "v6.mmdb", "Test-City", {
        "2001:db8::/32": {"country": {"iso_code": "NO"}}}, ip_version=6)
    source = MmdbSource(path)
    assert source.lookup(0x08080808) == source.lookup_direct(0x08080808) == (None, None)


def test_damaged_tree_answers_or_fails_as_the_reader_does(tmp_path: Path) -> None:
    """Flip bytes of the search tree: the fast path may not answer where the reader fails."""
    path, firsts = write_city_file(tmp_path / "City.mmdb", 4, 24)
    good = path.read_bytes()
    rng = random.Random(3)
    for attempt in range(20):
        data = bytearray(good)
        for _ in range(5):
            data[rng.randrange(6 * 1000)] ^= 1 << rng.randrange(8)
        damaged = tmp_path / f"damaged{attempt}.mmdb"
        damaged.write_bytes(data)
        try:
            source = MmdbSource(damaged)
        except EnrichmentError:
            continue
        for n in _addresses(firsts)[:2000]:
            assert _outcome(source.lookup, n) == _outcome(source.lookup_direct, n)


def _outcome(lookup: Callable[[int], object], n: int) -> object:
    try:
        return lookup(n)
    except Exception as exc:  # which error it is, is what we compare
        return type(exc)


def test_tree_walk_finds_the_reader_s_pointer(big_city: tuple[Path, list[int]]) -> None:
    """The walk against maxminddb's own pure-Python one (private, but it is the reference:
    a wrong pointer would still give right answers, by a memo under the wrong key)."""
    path, firsts = big_city
    source = MmdbSource(path)
    reference = maxminddb.reader.Reader(str(path), maxminddb.MODE_MMAP)
    pointers = set()
    for n in _addresses(firsts):
        packed = bytearray(ipaddress.IPv4Address(n).packed)
        pointer, prefix = reference._find_address_in_tree(packed)  # IPv4 bits
        assert source.locate(n) == (pointer or reference.metadata().node_count, prefix)
        pointers.add(pointer)
    assert len(pointers) > 100
    if reference.metadata().record_size > 24:  # the values that need the upper bits
        assert max(pointers) >= 1 << 24


def test_negative_zero_is_not_taken_for_zero(tmp_path: Path) -> None:
    """Remembered answers are keyed by value, and -0.0 == 0.0: the sign must survive."""
    place = {"country": {"iso_code": "GB"}, "city": {"names": {"en": "Greenwich"}}}
    path = write_mmdb(tmp_path / "zero.mmdb", "Test-City", {
        "81.2.69.0/24": {**place, "location": {"latitude": 51.48, "longitude": 0.0}},
        "81.2.70.0/24": {**place, "location": {"latitude": 51.48, "longitude": 123.25}},
    })
    # The writer folds -0.0 into 0.0 (equal values), so put it in by hand.
    data = path.read_bytes()
    assert data.count(struct.pack(">d", 123.25)) == 1
    path.write_bytes(data.replace(struct.pack(">d", 123.25), struct.pack(">d", -0.0)))
    enricher = open_enricher(["builtin:", f"mmdb://{path}"])
    for _ in range(2):
        longitudes = [enricher.lookup(ip)[1].longitude for ip in ("81.2.69.1", "81.2.70.1")]
        assert [math.copysign(1, x) for x in longitudes if x is not None] == [1.0, -1.0]
