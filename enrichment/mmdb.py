"""MaxMind DB (``.mmdb``) files as an enrichment source, read with ``maxminddb``.

Understands GeoLite2/GeoIP2 ASN, Country and City files (``autonomous_system_number``,
``country.iso_code``, ``city.names.en``, ``location.latitude``) and the flat records of
ip-location-db's mmdb builds (``country_code``, ``city``, ``latitude``). The file is
opened, and its metadata checked, when the source is made, so a missing or corrupt file
fails at start-up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from brokerscan.model import AsnInfo, GeoInfo
from enrichment.sources import EnrichmentError, int_to_ip

__all__ = ["MmdbSource"]


_COUNTRY = (("country", "iso_code"), ("country_code",))
_CITY = (("city", "names", "en"), ("city",))
_LATITUDE = (("location", "latitude"), ("latitude",))
_LONGITUDE = (("location", "longitude"), ("longitude",))


def _get(record: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> Any:
    """The first value found at any of ``paths`` (GeoLite2 nesting, then flat), or None."""
    for path in paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            return value
    return None


class MmdbSource:
    """A ``.mmdb`` file: ASN and/or geolocation answers, whichever it holds."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` and read its metadata.

        :raises EnrichmentError: if ``maxminddb`` is missing or the file is unusable
        """
        try:
            import maxminddb
        except ImportError:
            raise EnrichmentError(
                f"{path}: reading .mmdb files needs the maxminddb package "
                "(pip install maxminddb)") from None
        if not path.is_file():
            raise EnrichmentError(f"{path}: no such file")
        try:
            self._reader = maxminddb.open_database(str(path))
            meta = self._reader.metadata()
            if meta.ip_version not in (4, 6):
                raise ValueError(f"IP version {meta.ip_version}")
            # One lookup now, so a damaged search tree or data section fails here too.
            self._reader.get("8.8.8.8")
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise EnrichmentError(f"{path}: not a usable MaxMind DB file ({exc})") from None
        self.path = path
        self.name = str(meta.database_type or path.name)
        self.date = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()

    def close(self) -> None:
        """Release the file."""
        self._reader.close()

    def lookup(self, ip: int) -> tuple[AsnInfo | None, GeoInfo | None]:
        """Answer for ``ip``; ``None`` for what the file does not hold."""
        found, prefix = self._reader.get_with_prefix_len(int_to_ip(ip))
        if not isinstance(found, dict):
            return None, None
        record: dict[str, Any] = found
        asn: AsnInfo | None = None
        geo: GeoInfo | None = None
        number = record.get("autonomous_system_number")
        if isinstance(number, int):
            org = record.get("autonomous_system_organization")
            base = (ip >> (32 - prefix) << (32 - prefix)) if prefix else 0
            asn = AsnInfo(number=number, organization=org if isinstance(org, str) else None,
                          network=f"{int_to_ip(base)}/{prefix}",
                          source=self.name, source_date=self.date)
        country = _get(record, _COUNTRY)
        if isinstance(country, str) and country:
            city = _get(record, _CITY)
            lat = _get(record, _LATITUDE)
            lon = _get(record, _LONGITUDE)
            geo = GeoInfo(
                country=country, city=city if isinstance(city, str) and city else None,
                latitude=float(lat) if isinstance(lat, int | float) else None,
                longitude=float(lon) if isinstance(lon, int | float) else None,
                source=self.name, source_date=self.date)
        return asn, geo
