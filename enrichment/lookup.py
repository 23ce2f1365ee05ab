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

Addresses in IANA special-purpose space (loopback, RFC 1918, CGNAT, link-local,
documentation, multicast, class E, ...) get ``reserved=True`` answers whose ``network``
is the reserved block; no source is consulted for them.
"""

from __future__ import annotations

import bisect
import functools
from array import array
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
    Source,
    Tables,
    TableSource,
    ip_to_int,
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
            for source in self.sources:
                more_asn, more_geo = source.lookup(n)
                asn = _fill(asn, more_asn, "number", ("organization", "network"))
                geo = _fill(geo, more_geo, "country", ("city", "latitude", "longitude"))
        return asn or self._no_asn, geo or self._no_geo

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
