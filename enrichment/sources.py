"""Range tables for offline ASN/country lookups: the compact file format and raw CSVs.

A :class:`Tables` holds two sorted tables of IPv4 range starts (``array('I')``), one for
ASN and one for country, each with an index per range into a deduplicated value table
(index 0 is "no data", so gaps between ranges are explicit rows). A lookup is one
``bisect`` per table, so it costs the same for 400,000 ranges as for 40.

The compact file (``enrichment/data/ipv4.bin``) is::

    MAGIC  b"BSENRICH1\\n"
    u32    length of the JSON header (little-endian), then the header: name, date,
           sources, counts and the CRC-32 of the body
    body   LZMA of: asn starts (delta-coded u32), asn indices (u32), asn numbers (u32),
           organisation names ("\\n"-joined UTF-8), country starts (delta-coded u32),
           country indices (u8), country codes (2 ASCII letters each)

:class:`TableSource` answers lookups from a :class:`Tables`, read from that file
(``builtin:``) or from the raw ip-location-db CSVs (``csv:///path``).

Why one piece: the compact file's format, its reader and writer and the table source
that answers from it share the :class:`Tables` layout; the format is defined once.
"""

from __future__ import annotations

import bisect
import csv
import functools
import itertools
import json
import lzma
import socket
import struct
import sys
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from brokerscan.model import AsnInfo, GeoInfo

__all__ = [
    "MAGIC",
    "MAX_IP",
    "MEMO_SIZE",
    "RESERVED",
    "AddressError",
    "EnrichmentError",
    "GeoValues",
    "Source",
    "TableSource",
    "Tables",
    "ValuesSource",
    "int_to_ip",
    "ip_to_int",
    "iter_ranges",
    "network_around",
    "read_csv_ranges",
    "remember",
    "shareable",
    "tables_from_csv",
]

MAGIC: Final = b"BSENRICH1\n"
MAX_IP: Final = 0xFFFFFFFF
# Entries in a memo of answer models (AS per network here, merged geo in the enricher):
# a frozen model costs ~1.2 KB, so a full memo ~45 MB.
MEMO_SIZE: Final = 1 << 15
# A network smaller than a /19 is seldom asked again before it would leave the AS memo,
# so only larger ones go in: with random public addresses the memo then answers 73% of
# the AS lookups instead of 64% (making the model costs more than the bisects).
_MEMO_MIN_BITS: Final = 13

_K = TypeVar("_K")
_V = TypeVar("_V")

# IANA IPv4 special-purpose space (the same set as scheduler/blocklist.conf): no owner to
# look up, so these get an explicit reserved answer instead of whatever a dataset says.
RESERVED: Final[tuple[str, ...]] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)


class EnrichmentError(Exception):
    """A source that cannot be used: missing, corrupt or of an unknown kind (one line)."""


class AddressError(EnrichmentError, ValueError):
    """Not an IPv4 address: a bad argument (``ValueError``) that no source can enrich."""


class Source(Protocol):
    """One enrichment dataset: partial answers, ``None`` where it knows nothing."""

    name: str
    date: str

    def lookup(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        """Answer for one address, given as an int (reserved space is handled earlier)."""
        ...


# A geo answer's values: country, city, latitude, longitude.
GeoValues = tuple[str, str | None, float | None, float | None]


@runtime_checkable
class ValuesSource(Source, Protocol):
    """A source that can answer geo with plain values, and make the model when needed.

    Merging values into an earlier source's answer needs no model from this source (a
    model costs ~2 µs to make and ~1.2 KB to keep); the enricher makes one only for a
    merged answer it has not made before.
    """

    def lookup_values(self, ip: int) -> tuple[AsnInfo | None, GeoValues | None]:
        """:meth:`Source.lookup`, with the geo answer's values instead of the model."""
        ...

    def geo_of(self, values: GeoValues) -> GeoInfo:
        """The geo answer (the model) with these values."""
        ...


def shareable(values: GeoValues) -> bool:
    """Whether values may key a memo: not with a zero coordinate (-0.0 == 0.0 as keys,
    yet they print apart)."""
    return values[2] != 0.0 and values[3] != 0.0


def ip_to_int(text: str) -> int:
    """Parse a dotted-quad IPv4 address strictly (no leading zeros, no short forms).

    :param text: an address such as ``"192.0.2.1"``
    :returns: the address as an int in ``0..2**32-1``
    :raises AddressError: (a ``ValueError``) if ``text`` is not a dotted-quad address
    """
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, TypeError, ValueError):
        raise AddressError(f"{text!r} is not an IPv4 address") from None


def int_to_ip(value: int) -> str:
    """Format an int in ``0..2**32-1`` as a dotted quad."""
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def remember(memo: OrderedDict[_K, _V], key: _K, value: _V, size: int = MEMO_SIZE) -> _V:
    """Put ``value`` in ``memo`` under ``key``, dropping the oldest entry at ``size``."""
    if len(memo) >= size:
        memo.popitem(last=False)
    memo[key] = value
    return value


def _block_bits(ip: int, start: int, end: int) -> int:
    """Host bits of the largest CIDR block around ``ip`` inside ``start..end``."""
    bits = 32
    if start > 0:
        bits = min(bits, (ip ^ (start - 1)).bit_length() - 1)
    if end < MAX_IP:
        bits = min(bits, (ip ^ (end + 1)).bit_length() - 1)
    return bits


def network_around(ip: int, start: int, end: int) -> str:
    """The largest CIDR block that contains ``ip`` and lies inside ``start..end``.

    A range in these datasets is not always one prefix; this block is the widest prefix
    around the address that the dataset assigns wholly to the same owner.

    :param ip: the address
    :param start: first address of the range holding ``ip``
    :param end: last address of that range (inclusive)
    :returns: a CIDR such as ``"8.8.8.0/24"``
    """
    bits = _block_bits(ip, start, end)
    return f"{int_to_ip(ip >> bits << bits)}/{32 - bits}"


def _address(field: str) -> int:
    value = ip_to_int(field) if "." in field else int(field)
    if not 0 <= value <= MAX_IP:
        raise ValueError(f"{field!r} is outside IPv4")
    return value


def read_csv_ranges(path: Path) -> tuple[str, list[tuple[int, int, tuple[str, ...]]]]:
    """Read one ip-location-db CSV (dotted or ``-num`` form); IPv6 rows are skipped.

    :param path: ``asn-ipv4.csv`` (start, end, number, organisation) or a country file
        (start, end, country code)
    :returns: the kind (``"asn"`` or ``"country"``) and the rows as (start, end, values)
    :raises EnrichmentError: if the file is missing or a row is malformed
    """
    rows: list[tuple[int, int, tuple[str, ...]]] = []
    kind = ""
    line = 0
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            for row in reader:
                line = reader.line_num
                if not row or ":" in row[0]:
                    continue
                row_kind = {4: "asn", 3: "country"}.get(len(row))
                if row_kind is None or (kind and row_kind != kind):
                    raise ValueError(f"{len(row)} columns")
                kind = row_kind
                start, end = _address(row[0]), _address(row[1])
                if start > end:
                    raise ValueError("range start after its end")
                if kind == "asn":
                    int(row[2])
                rows.append((start, end, tuple(row[2:])))
    except FileNotFoundError:
        raise EnrichmentError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EnrichmentError(f"{path}: unreadable ({exc})") from None
    except ValueError as exc:
        raise EnrichmentError(f"{path}:{line}: not an ip-location-db row ({exc})") from None
    if not kind:
        raise EnrichmentError(f"{path}: no IPv4 rows")
    return kind, rows


def _flatten(rows: Iterable[tuple[int, int, int]]) -> tuple[array[int], array[int], int]:
    """Sorted (start, end, index) ranges to starts + indices with explicit gaps (index 0).

    Where ranges overlap, the one starting first keeps the overlap (ties: the one listed
    first); adjacent ranges with the same index merge.

    :returns: starts, indices and the number of overlapping ranges clipped
    """
    starts, indices = array("I"), array("I")
    covered = -1  # last address covered so far
    overlaps = 0
    for start, end, index in sorted(rows, key=lambda r: r[0]):
        if start <= covered:
            overlaps += 1
            if end <= covered:
                continue
            start = covered + 1
        if start > covered + 1:
            starts.append(covered + 1)
            indices.append(0)
        if not indices or indices[-1] != index or start != covered + 1:
            starts.append(start)
            indices.append(index)
        covered = end
    if covered < MAX_IP:
        starts.append(covered + 1)
        indices.append(0)
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
        indices.insert(0, 0)
    return starts, indices, overlaps


def _first_rows(starts: array[int]) -> array[int]:
    """For each /16 (and one past the last), the row holding its first address.

    The rows of an address then lie between two entries, and its bisect runs over a few
    rows instead of all: fewer steps, and the same few cache lines for neighbours.
    """
    return array("I", (bisect.bisect_right(starts, p << 16) - 1 for p in range(1 << 16 | 1)))


@dataclass(frozen=True)
class Tables:
    """The in-memory lookup tables: see the module docstring."""

    name: str
    date: str
    asn_starts: array[int]
    asn_index: array[int]
    asn_numbers: array[int]  # [0] unused
    orgs: list[str]  # [0] unused
    geo_starts: array[int]
    geo_index: array[int]
    countries: list[str]  # [0] unused
    meta: dict[str, Any]

    @functools.cached_property
    def asn_rows(self) -> array[int]:
        """:func:`_first_rows` of ``asn_starts``."""
        return _first_rows(self.asn_starts)

    @functools.cached_property
    def geo_rows(self) -> array[int]:
        """:func:`_first_rows` of ``geo_starts``."""
        return _first_rows(self.geo_starts)

    def check(self) -> None:
        """Raise :class:`EnrichmentError` unless the tables are consistent."""
        ok = (len(self.asn_starts) == len(self.asn_index) > 0
              and len(self.geo_starts) == len(self.geo_index) > 0
              and len(self.asn_numbers) == len(self.orgs)
              and self.asn_starts[0] == 0 and self.geo_starts[0] == 0
              and max(self.asn_index) < len(self.orgs)
              and max(self.geo_index) < len(self.countries)
              and all(a < b for a, b in itertools.pairwise(self.asn_starts))
              and all(a < b for a, b in itertools.pairwise(self.geo_starts)))
        if not ok:
            raise EnrichmentError(f"{self.name}: inconsistent range tables")

    @classmethod
    def from_ranges(cls, name: str, date: str,
                    asn_rows: Iterable[tuple[int, int, int, str]],
                    geo_rows: Iterable[tuple[int, int, str]],
                    meta: dict[str, Any] | None = None) -> Tables:
        """Build tables from (start, end, asn, org) and (start, end, country) ranges.

        Where ranges overlap, the one starting first keeps the overlap; the number of
        clipped ranges lands in ``meta``.
        """
        pairs: dict[tuple[int, str], int] = {(0, ""): 0}
        keyed = [(s, e, pairs.setdefault((n, o.replace("\n", " ").strip()), len(pairs)))
                 for s, e, n, o in asn_rows]
        codes: dict[str, int] = {"": 0}
        geo_keyed = [(s, e, codes.setdefault(c.strip().upper(), len(codes)))
                     for s, e, c in geo_rows if len(c.strip()) == 2]
        if len(codes) > 256:
            raise EnrichmentError(f"{name}: more than 255 country codes")
        asn_starts, asn_index, asn_overlaps = _flatten(keyed)
        geo_starts, geo_index, geo_overlaps = _flatten(geo_keyed)
        info = dict(meta or {})
        info["overlaps_clipped"] = {"asn": asn_overlaps, "country": geo_overlaps}
        return cls(name, date, asn_starts, asn_index, array("I", (n for n, _ in pairs)),
                   [o for _, o in pairs], geo_starts, array("B", geo_index),
                   list(codes), info)

    def to_bytes(self) -> bytes:
        """Encode as the compact file (see the module docstring)."""
        def deltas(starts: array[int]) -> bytes:
            return _le(array("I", (b - a for a, b in itertools.pairwise([0, *starts]))))
        sections = [deltas(self.asn_starts), _le(self.asn_index), _le(self.asn_numbers),
                    "\n".join(self.orgs).encode(), deltas(self.geo_starts),
                    bytes(self.geo_index), "".join(self.countries[1:]).encode("ascii")]
        body = lzma.compress(b"".join(sections), preset=9)
        header = {"name": self.name, "date": self.date, "meta": self.meta,
                  "sizes": [len(s) for s in sections], "crc32": zlib.crc32(body)}
        blob = json.dumps(header, sort_keys=True).encode()
        return MAGIC + struct.pack("<I", len(blob)) + blob + body

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Tables:
        """Decode the compact file; any damage is one :class:`EnrichmentError`."""
        try:
            if not data.startswith(MAGIC):
                raise ValueError("not a brokerscan enrichment file")
            (size,) = struct.unpack_from("<I", data, len(MAGIC))
            offset = len(MAGIC) + 4 + size
            header = json.loads(data[len(MAGIC) + 4:offset])
            body = data[offset:]
            if zlib.crc32(body) != header["crc32"]:
                raise ValueError("checksum mismatch (truncated or damaged)")
            raw = memoryview(lzma.decompress(body))
            parts, at = [], 0
            for length in header["sizes"]:
                parts.append(raw[at:at + length])
                at += length
            if at != len(raw) or len(parts) != 7:
                raise ValueError("section sizes do not match")
            orgs = bytes(parts[3]).decode().split("\n")
            codes = bytes(parts[6]).decode("ascii")
            tables = cls(str(header["name"]), str(header["date"]),
                         array("I", itertools.accumulate(_from_le(parts[0]))),
                         _from_le(parts[1]), _from_le(parts[2]), orgs,
                         array("I", itertools.accumulate(_from_le(parts[4]))),
                         array("B", bytes(parts[5])),
                         ["", *(codes[i:i + 2] for i in range(0, len(codes), 2))],
                         dict(header.get("meta", {})))
        except (ValueError, KeyError, TypeError, struct.error, lzma.LZMAError,
                UnicodeDecodeError) as exc:
            raise EnrichmentError(f"{where}: corrupt enrichment file ({exc})") from None
        tables.check()
        return tables

    @classmethod
    def from_file(cls, path: Path) -> Tables:
        """Read a compact file, failing with one clear :class:`EnrichmentError`."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EnrichmentError(f"{path}: no such file") from None
        except OSError as exc:
            raise EnrichmentError(f"{path}: unreadable ({exc.strerror})") from None
        return cls.from_bytes(data, str(path))


def _le(values: array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover - the file is little-endian everywhere
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_le(data: memoryview) -> array[int]:
    values = array("I")
    values.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        values.byteswap()
    return values


def tables_from_csv(paths: Iterable[Path], name: str | None = None,
                    date: str | None = None) -> Tables:
    """Build :class:`Tables` from raw ip-location-db CSVs (ASN and/or country files).

    Where ranges overlap, the one starting first keeps the overlap.

    :param paths: CSV files; the kind of each is told by its column count
    :param name: dataset name (default: the file names joined by ``+``)
    :param date: build date (default: the newest file's modification date)
    """
    asn: list[tuple[int, int, int, str]] = []
    geo: list[tuple[int, int, str]] = []
    files = list(paths)
    for path in files:
        kind, rows = read_csv_ranges(path)
        if kind == "asn":
            asn.extend((s, e, int(v[0]), v[1]) for s, e, v in rows)
        else:
            geo.extend((s, e, v[0]) for s, e, v in rows)
    if date is None:
        newest = max(p.stat().st_mtime for p in files)
        date = datetime.fromtimestamp(newest, UTC).date().isoformat()
    return Tables.from_ranges(name or "+".join(p.name for p in files), date, asn, geo,
                              {"files": [p.name for p in files]})


class TableSource:
    """Answers from :class:`Tables`: two short bisects and one small frozen model.

    Country-only geo answers are the same for every address of a country, so they are
    made once per country code (a bounded table, not a cache). An AS answer is the same
    for every address of its network (the block :func:`network_around` finds), so the
    last :data:`MEMO_SIZE` of networks of a /19 or more are kept by network.
    """

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.name = tables.name
        self.date = tables.date
        self._geo: list[GeoInfo | None] = [None] + [
            GeoInfo(country=code, source=self.name, source_date=self.date)
            for code in tables.countries[1:]]
        self._asn: OrderedDict[int, AsnInfo] = OrderedDict()

    def lookup(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        """Answer for ``ip``; ``None`` for a table with no range covering it."""
        t = self.tables
        asn: AsnInfo | None = None
        block = ip >> 16
        starts, rows = t.asn_starts, t.asn_rows
        row = bisect.bisect_right(starts, ip, rows[block], rows[block + 1] + 1) - 1
        index = t.asn_index[row]
        if index:
            end = starts[row + 1] - 1 if row + 1 < len(starts) else MAX_IP
            bits = _block_bits(ip, starts[row], end)
            key = ip >> bits << 6 | bits  # the network: its base and size
            asn = self._asn.get(key)
            if asn is None:
                asn = AsnInfo(
                    number=t.asn_numbers[index], organization=t.orgs[index] or None,
                    network=f"{int_to_ip(ip >> bits << bits)}/{32 - bits}",
                    source=self.name, source_date=self.date)
                if bits >= _MEMO_MIN_BITS:
                    remember(self._asn, key, asn)
        rows = t.geo_rows
        row = bisect.bisect_right(t.geo_starts, ip, rows[block], rows[block + 1] + 1) - 1
        return asn, self._geo[t.geo_index[row]]


def iter_ranges(tables: Tables) -> Iterator[tuple[int, int, int, str, str]]:
    """Every ASN range as (start, end, number, org, country at start): for reports."""
    starts = tables.asn_starts
    for row, start in enumerate(starts):
        index = tables.asn_index[row]
        if not index:
            continue
        end = starts[row + 1] - 1 if row + 1 < len(starts) else MAX_IP
        code = tables.geo_index[bisect.bisect_right(tables.geo_starts, start) - 1]
        yield start, end, tables.asn_numbers[index], tables.orgs[index], tables.countries[code]
