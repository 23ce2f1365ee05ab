"""ASN and geolocation for IPv4 addresses, offline: the :class:`Enricher`.

Sources are chosen by URL (``Settings.enrichment_sources``), one kind per scheme:

============================  ====================================================
``builtin:``                  the compact file shipped in ``enrichment/data/``
``builtin:///path/ipv4.bin``  a compact file made by ``python -m enrichment.build``
``mmdb:///path/File.mmdb``    a MaxMind DB (GeoLite2/GeoIP2 ASN, Country, City)
``csv:///path/file.csv``      a raw ip-location-db IPv4 CSV (ASN or country)
============================  ====================================================

Sources are asked in order and later ones fill what earlier ones left empty: the AS
organisation/network only for the same AS number, the city and coordinates only for
the same country (so ``builtin:`` + a GeoLite2 City file gives AS numbers from the first
and cities from the second). A field filled from a later source joins both names and
dates with ``+`` in ``source``/``source_date``. Every source is opened and checked when
the enricher is made, so a missing or corrupt file fails at start-up.

Answers are frozen models, and making one costs more than finding it, so sources keep the
models they made (``builtin:`` its AS answer per network, ``mmdb:`` what each record says)
and the enricher its merged geo answers, each memo bounded (about 130 MB in all when
full); :mod:`enrichment.mmdb` says what a City file behind ``builtin:`` costs.

Addresses in IANA special-purpose space (loopback, RFC 1918, CGNAT, link-local,
documentation, multicast, class E, ...) get ``reserved=True`` answers whose ``network``
is the reserved block; no source is consulted for them.
"""

from __future__ import annotations

import bisect
import functools
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import unquote, urlsplit

from brokerscan.model import AsnInfo, GeoInfo, ScanResult
from enrichment.mmdb import MmdbSource
from enrichment.sources import (
    MAX_IP,
    RESERVED,
    AddressError,
    EnrichmentError,
    GeoValues,
    Source,
    Tables,
    TableSource,
    ValuesSource,
    ip_to_int,
    remember,
    shareable,
    tables_from_csv,
)

__all__ = [
    "BUILTIN_PATH",
    "RESERVED_SOURCE",
    "AddressError",
    "EnrichmentError",
    "Enricher",
    "open_enricher",
    "open_source",
]

BUILTIN_PATH: Final = Path(__file__).with_name("data") / "ipv4.bin"
RESERVED_SOURCE: Final = "iana-special-purpose"
RESERVED_DATE: Final = "2026-11-25"  # when RESERVED was last checked against the registry

_Info = TypeVar("_Info", AsnInfo, GeoInfo)
# _fill's key and fields, for each kind of answer
_ASN_FILL: Final = ("number", ("organization", "network"))
_GEO_FILL: Final = ("country", ("city", "latitude", "longitude"))


def _reserved_table() -> tuple[array[int], array[int], list[str]]:
    blocks = []
    for cidr in RESERVED:
        base, bits = cidr.split("/")
        first = ip_to_int(base)
        blocks.append((first, first + (1 << (32 - int(bits))) - 1, cidr))
    blocks.sort()
    return (array("I", (b[0] for b in blocks)), array("I", (b[1] for b in blocks)),
            [b[2] for b in blocks])


_RES_STARTS, _RES_ENDS, _RES_CIDRS = _reserved_table()


def _fill(current: _Info | None, new: _Info | None, key: str,
          fields: tuple[str, ...]) -> _Info | None:
    """``current`` with its empty ``fields`` taken from ``new`` when both agree on ``key``."""
    if current is None:
        return new
    if new is None:
        return current
    ours, theirs = current.__dict__, new.__dict__
    if ours[key] != theirs[key]:
        return current
    update = {f: theirs[f] for f in fields if ours[f] is None and theirs[f] is not None}
    if not update:
        return current
    if new.source != current.source:
        update["source"] = f"{current.source}+{new.source}"
        update["source_date"] = f"{current.source_date}+{new.source_date}"
    # A fresh (validated) model is cheaper than model_copy() here.
    return type(current)(**(ours | update))


class Enricher:
    """Looks addresses up in its sources, in order; see the module docstring."""

    def __init__(self, sources: Sequence[Source]) -> None:
        """:param sources: opened sources, first asked first
        :raises EnrichmentError: if there are none
        """
        if not sources:
            raise EnrichmentError("no enrichment source configured")
        self.sources = tuple(sources)
        first = self.sources[0]
        self._single = first if len(self.sources) == 1 else None
        self._no_asn = AsnInfo(source=first.name, source_date=first.date)
        self._no_geo = GeoInfo(source=first.name, source_date=first.date)
        # Sources that answer geo with values (ValuesSource) are merged from those.
        self._plan: tuple[tuple[Source, ValuesSource | None], ...] = tuple(
            (source, source if isinstance(source, ValuesSource) else None)
            for source in self.sources)
        # Merged geo answers by the identity of the earlier answer and the values merged
        # into it. An entry keeps that answer, so while it lives no other object can
        # have its id; the earlier answers are few (one per country for builtin:).
        self._merged: OrderedDict[tuple[int, GeoValues], tuple[GeoInfo, GeoInfo]] = \
            OrderedDict()

    def lookup(self, ip: str | int) -> tuple[AsnInfo, GeoInfo]:
        """ASN and geolocation for one IPv4 address.

        :param ip: dotted quad (``"192.0.2.1"``) or int in ``0..2**32-1``
        :returns: always two answers; fields the sources do not know are ``None``
        :raises AddressError: (a ``ValueError`` and an :class:`EnrichmentError`) if
            ``ip`` is not an IPv4 address
        """
        if isinstance(ip, str):
            n = ip_to_int(ip)
        elif isinstance(ip, int) and not isinstance(ip, bool) and 0 <= ip <= MAX_IP:
            n = ip
        else:
            raise AddressError(f"{ip!r} is not an IPv4 address")
        row = bisect.bisect_right(_RES_STARTS, n) - 1
        if row >= 0 and n <= _RES_ENDS[row]:
            return self._reserved(_RES_CIDRS[row])
        if self._single is not None:
            asn, geo = self._single.lookup(n)
        else:
            asn = geo = None
            for source, by_values in self._plan:
                if by_values is not None and geo is not None:
                    more_asn, values = by_values.lookup_values(n)
                    if values is not None and values[0] == geo.country:
                        geo = self._fill_geo(geo, values, by_values)
                else:
                    more_asn, more_geo = source.lookup(n)
                    if more_geo is not None:
                        geo = more_geo if geo is None else _fill(geo, more_geo, *_GEO_FILL)
                if more_asn is not None:
                    asn = more_asn if asn is None else _fill(asn, more_asn, *_ASN_FILL)
        return asn or self._no_asn, geo or self._no_geo

    def _fill_geo(self, geo: GeoInfo, values: GeoValues, source: ValuesSource) -> GeoInfo:
        """:func:`_fill` of ``geo`` from ``source``'s answer with ``values``, remembered
        (see ``_merged``): the same answer, without making ``source``'s model each time."""
        key = (id(geo), values)
        hit = self._merged.get(key)
        if hit is not None:
            return hit[1]
        merged = _fill(geo, source.geo_of(values), *_GEO_FILL) or geo
        if shareable(values):
            remember(self._merged, key, (geo, merged))
        return merged

    @staticmethod
    @functools.lru_cache(maxsize=len(RESERVED))
    def _reserved(cidr: str) -> tuple[AsnInfo, GeoInfo]:
        return (AsnInfo(network=cidr, reserved=True, source=RESERVED_SOURCE,
                        source_date=RESERVED_DATE),
                GeoInfo(reserved=True, source=RESERVED_SOURCE, source_date=RESERVED_DATE))

    def enrich(self, result: ScanResult) -> ScanResult:
        """``result`` with ``asn`` and ``geo`` filled in (a copy: results are frozen).

        :raises AddressError: (an :class:`EnrichmentError`) if ``result.ip`` is not an
            IPv4 address, e.g. IPv6: such a result can be dead-lettered, not enriched
        """
        asn, geo = self.lookup(result.ip)
        return result.model_copy(update={"asn": asn, "geo": geo})

    def close(self) -> None:
        """Release open files (mmdb readers)."""
        for source in self.sources:
            if isinstance(source, MmdbSource):
                source.close()


@functools.cache
def _tables(path: Path) -> Tables:
    # Bounded in practice: one entry per configured compact file (normally one).
    return Tables.from_file(path)


def _path_of(url: str) -> Path:
    path = unquote(urlsplit(url).path)
    if not path:
        raise EnrichmentError(f"{url}: no file path (use scheme:///absolute/path)")
    return Path(path)


def _open_builtin(url: str) -> Source:
    path = _path_of(url) if urlsplit(url).path else BUILTIN_PATH
    return TableSource(_tables(path))


def _open_csv(url: str) -> Source:
    return TableSource(tables_from_csv([_path_of(url)]))


def _open_mmdb(url: str) -> Source:
    return MmdbSource(_path_of(url))


_SCHEMES: Final[dict[str, Callable[[str], Source]]] = {
    "builtin": _open_builtin,
    "csv": _open_csv,
    "mmdb": _open_mmdb,
}


def open_source(url: str) -> Source:
    """Open one source by URL (see the module docstring).

    :raises EnrichmentError: unknown scheme, or a missing or corrupt file
    """
    scheme = urlsplit(url).scheme
    opener = _SCHEMES.get(scheme)
    if opener is None:
        raise EnrichmentError(f"{url!r}: unknown enrichment source (use builtin:, "
                              "mmdb:///path/file.mmdb or csv:///path/file.csv)")
    return opener(url)


def open_enricher(sources: Sequence[str]) -> Enricher:
    """Open every source URL now and return an :class:`Enricher` over them, in order.

    :param sources: URLs such as ``Settings.enrichment_sources``
    :raises EnrichmentError: one line naming the first source that cannot be used
    """
    return Enricher([open_source(url) for url in sources])
