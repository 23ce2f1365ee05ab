"""MaxMind DB (``.mmdb``) files as an enrichment source, read with ``maxminddb``.

Understands GeoLite2/GeoIP2 ASN, Country and City files (``autonomous_system_number``,
``country.iso_code``, ``city.names.en``, ``location.latitude``) and the flat records of
ip-location-db's mmdb builds (``country_code``, ``city``, ``latitude``). The file is
opened, and its metadata checked, when the source is made, so a missing or corrupt file
fails at start-up.

Speed. ``maxminddb`` reads with its C extension when it can (``MODE_AUTO``; its wheels
ship it), with pure Python otherwise; :attr:`MmdbSource.reader` says which. Either way a
lookup decodes a whole record, and a GeoLite2 City record (names in eight languages for
continent, country, registered country and city) takes the C reader ~10 µs: under
100,000 lookups/s before any answer is made. A City file has a few hundred thousand
records for millions of networks, but the reader neither says which record it found nor
decodes part of one. So for IPv4 :class:`MmdbSource` walks the search tree itself (a
table of its top 16 levels made at open, then a few nodes read from the mapped file) to
the record's pointer, and has the reader decode a record only when its pointer is not
among the last ``RECORD_MEMO_SIZE`` seen; what the record says is kept as plain values.
Geo models are made from values (:meth:`MmdbSource.geo_of`, a few remembered): an
enricher merging this file into an earlier source's answer takes the values
(:meth:`MmdbSource.lookup_values`) and makes no model of this file's own.
:meth:`MmdbSource.lookup_direct` is the plain way, the reader then the answers: the
reference the fast path is tested against, and the fallback where the tree is not
walked.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from brokerscan.model import AsnInfo, GeoInfo
from enrichment.sources import EnrichmentError, GeoValues, int_to_ip, remember, shareable

__all__ = ["MmdbSource"]

_TOP_BITS: Final = 16  # tree levels flattened into a table at open (2**16 entries)

_COUNTRY = (("country", "iso_code"), ("country_code",))
_CITY = (("city", "names", "en"), ("city",))
_LATITUDE = (("location", "latitude"), ("latitude",))
_LONGITUDE = (("location", "longitude"), ("longitude",))

# Records remembered (values, ~450 bytes each, ~30 MB in all). With random public
# addresses and a GeoLite2 City file: 2**16 ~86% hits, 2**17 ~89%.
RECORD_MEMO_SIZE: Final = 1 << 16
GEO_MEMO_SIZE: Final = 1 << 12  # geo models by value, for lookup() (~5 MB)

# What a record holds, as used: AS number and organisation, and the geo answer's values.
_Answers = tuple[int | None, str | None, GeoValues | None]
# An address to (record pointer, prefix length); a pointer of -1 means "ask the reader".
_Finder = Callable[[int], tuple[int, int]]


def _get(record: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> Any:
    """The first value found at any of ``paths`` (GeoLite2 nesting, then flat), or None."""
    for path in paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


def _tree_finder(data: mmap.mmap, node_count: int, record_size: int,
                 ip_version: int) -> _Finder | None:
    """A function from an IPv4 address to its record pointer and prefix length.

    The search tree is ``node_count`` nodes of two big-endian records each (24, 28 or 32
    bits; at 28 the middle byte's high nibble belongs to the left record). A record below
    ``node_count`` is a node, equal to it "no data", above it a data pointer. IPv4 in an
    IPv6 tree starts after 96 zero bits.

    :returns: None for a tree this does not walk (IPv4 space inside a leaf): the caller
        asks the reader instead
    :raises ValueError: if the tree does not fit in the file
    """
    width = record_size // 4  # bytes per node
    if record_size not in (24, 28, 32):
        raise ValueError(f"record size {record_size}")
    if len(data) < node_count * width + 16:
        raise ValueError("search tree larger than the file")
    # left = (first 4 bytes >> shift) | (their nibble bits << 20); right = 4 bytes at
    # right_at, masked: one formula for the three record sizes.
    shift, nibble, right_at, mask = {24: (8, 0, 2, 0xFFFFFF), 28: (8, 0xF0, 3, 0x0FFFFFFF),
                                     32: (0, 0, 4, 0xFFFFFFFF)}[record_size]

    word = struct.Struct(">I").unpack_from  # no slice made: the cheapest read of a record

    def child(node: int, bit: int) -> int:
        at = node * width
        if bit:
            return int(word(data, at + right_at)[0] & mask)
        value = int(word(data, at)[0])
        return value >> shift | (value & nibble) << 20

    start = 0
    if ip_version == 6:
        for _ in range(96):
            if start >= node_count:
                return None
            start = child(start, 0)
        if start >= node_count:
            return None
    # Breadth first down _TOP_BITS levels: entry i is where the first _TOP_BITS bits of
    # the address lead, a node or a record, and how many bits that took.
    nodes, depths = [start], [0]
    for level in range(1, _TOP_BITS + 1):
        next_nodes: list[int] = []
        next_depths: list[int] = []
        for node, depth in zip(nodes, depths, strict=True):
            if node < node_count:
                next_nodes += (child(node, 0), child(node, 1))
                next_depths += (level, level)
            else:
                next_nodes += (node, node)
                next_depths += (depth, depth)
        nodes, depths = next_nodes, next_depths
    top, top_depth = array("Q", nodes), bytes(depths)
    low_bits = 32 - _TOP_BITS

    def find(ip: int) -> tuple[int, int]:
        node = top[ip >> low_bits]
        if node >= node_count:
            return node, top_depth[ip >> low_bits]
        for depth in range(_TOP_BITS, 32):
            at = node * width
            if ip >> (31 - depth) & 1:
                node = word(data, at + right_at)[0] & mask
            else:
                value = word(data, at)[0]
                node = value >> shift | (value & nibble) << 20
            if node >= node_count:
                return node, depth + 1
        return -1, 32  # still a node after 32 bits: a broken tree, let the reader say so

    return find


class MmdbSource:
    """A ``.mmdb`` file: ASN and/or geolocation answers, whichever it holds."""

    def __init__(self, path: Path, pure_python: bool = False) -> None:
        """Open ``path`` and read its metadata.

        :param pure_python: decode with maxminddb's pure-Python reader even where its C
            reader is available (what a machine without the C reader gets)
        :raises EnrichmentError: if ``maxminddb`` is missing or the file is unusable
        """
        try:
            import maxminddb
            import maxminddb.reader
        except ImportError:
            raise EnrichmentError(
                f"{path}: reading .mmdb files needs the maxminddb package "
                "(pip install maxminddb)") from None
        if not path.is_file():
            raise EnrichmentError(f"{path}: no such file")
        try:
            mode = maxminddb.MODE_MMAP if pure_python else maxminddb.MODE_AUTO
            self._reader = maxminddb.open_database(str(path), mode)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise EnrichmentError(f"{path}: not a usable MaxMind DB file ({exc})") from None
        self._map: mmap.mmap | None = None
        try:
            meta = self._reader.metadata()
            if meta.ip_version not in (4, 6):
                raise ValueError(f"IP version {meta.ip_version}")
            # One lookup now, so a damaged search tree or data section fails here too.
            self._reader.get("8.8.8.8")
            with path.open("rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._find = _tree_finder(self._map, meta.node_count, meta.record_size,
                                      meta.ip_version)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self.close()
            raise EnrichmentError(f"{path}: not a usable MaxMind DB file ({exc})") from None
        self.path = path
        self.name = str(meta.database_type or path.name)
        self.date = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
        #: ``"C"`` (maxminddb.extension) or ``"Python"``: which reader decodes records. Asked
        #: of the pure-Python class: the C class's ``__module__`` is "builtins" before 2.6.
        self.reader = "Python" if isinstance(self._reader, maxminddb.reader.Reader) else "C"
        self._empty = meta.node_count
        self._memo: OrderedDict[int, _Answers] = OrderedDict()
        self._geos: OrderedDict[GeoValues, GeoInfo] = OrderedDict()

    def close(self) -> None:
        """Release the file."""
        self._reader.close()
        if self._map is not None:
            self._map.close()

    def lookup(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        """Answer for ``ip``; ``None`` for what the file does not hold.

        The same answers as :meth:`lookup_direct`, with each record decoded once.
        """
        asn, values = self.lookup_values(ip)
        return asn, None if values is None else self.geo_of(values)

    def lookup_values(self, ip: int) -> tuple[AsnInfo | None, GeoValues | None]:
        """:meth:`lookup`, with the values of the geo answer instead of the model."""
        if self._find is None:
            pointer, prefix = -1, 0
        else:
            pointer, prefix = self._find(ip)
            if pointer == self._empty:
                return None, None
        answers = self._memo.get(pointer)
        if answers is None:
            found, prefix = self._reader.get_with_prefix_len(int_to_ip(ip))
            answers = self._answers(found)
            if pointer >= 0:
                remember(self._memo, pointer, answers, RECORD_MEMO_SIZE)
        number, org, values = answers
        return (None if number is None else self._asn(ip, prefix, number, org)), values

    def geo_of(self, values: GeoValues) -> GeoInfo:
        """The geo answer (the model) with these values."""
        geo = self._geos.get(values)
        if geo is None:
            geo = self._geo(values)
            if shareable(values):
                remember(self._geos, values, geo, GEO_MEMO_SIZE)
        return geo

    def locate(self, ip: int) -> tuple[int, int] | None:
        """Where the tree walk leads for ``ip``: (record value, prefix length).

        The record value is ``node_count`` for "no data", else the data pointer (-1 for a
        broken tree); None where this file's tree is not walked (see :func:`_tree_finder`).
        """
        return None if self._find is None else self._find(ip)

    def lookup_direct(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        """Answer for ``ip`` straight from the reader: no tree walk, no memo."""
        found, prefix = self._reader.get_with_prefix_len(int_to_ip(ip))
        number, org, values = self._answers(found)
        asn = None if number is None else self._asn(ip, prefix, number, org)
        return asn, None if values is None else self._geo(values)

    def _geo(self, values: GeoValues) -> GeoInfo:
        country, city, lat, lon = values
        return GeoInfo(country=country, city=city, latitude=lat, longitude=lon,
                       source=self.name, source_date=self.date)

    def _asn(self, ip: int, prefix: int, number: int, org: str | None) -> AsnInfo:
        base = (ip >> (32 - prefix) << (32 - prefix)) if prefix else 0
        return AsnInfo(number=number, organization=org, network=f"{int_to_ip(base)}/{prefix}",
                       source=self.name, source_date=self.date)

    @staticmethod
    def _answers(found: Any) -> _Answers:
        """What ``found`` (a decoded record, or None) says: see :data:`_Answers`."""
        if not isinstance(found, dict):
            return None, None, None
        record: dict[str, Any] = found
        number = record.get("autonomous_system_number")
        org = record.get("autonomous_system_organization")
        values: GeoValues | None = None
        country = _get(record, _COUNTRY)
        if isinstance(country, str) and country:
            city = _get(record, _CITY)
            lat = _get(record, _LATITUDE)
            lon = _get(record, _LONGITUDE)
            values = (country, city if isinstance(city, str) and city else None,
                      float(lat) if isinstance(lat, int | float) else None,
                      float(lon) if isinstance(lon, int | float) else None)
        return (number if isinstance(number, int) else None,
                org if isinstance(org, str) else None, values)
