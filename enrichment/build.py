"""Build the compact ASN/country file shipped in ``enrichment/data/`` from open CSVs.

Rebuild from newer files (ip-location-db ``asn-ipv4.csv`` and a country CSV such as
``dbip-country-ipv4.csv``, fetched with ``npm pack @ip-location-db/asn`` ...)::

    python -m enrichment.build asn-ipv4.csv dbip-country-ipv4.csv \\
        -o enrichment/data/ipv4.bin --name "ip-location-db asn + dbip-country" \\
        --date 2026-06-17 --crosscheck enrichment/data/CROSSCHECK.md

Besides the file itself this writes ``OUT.json`` (name, date, source files, counts,
SHA-256) next to it. ``--crosscheck`` compares the result with the GeoLite2-derived data
that the ``geoip2fast`` package ships (country, and AS names without numbers) and with
itself (one AS number with several names, data inside reserved space, private AS
numbers) and writes a Markdown report.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enrichment.sources import (
    RESERVED,
    EnrichmentError,
    Tables,
    int_to_ip,
    ip_to_int,
    iter_ranges,
    tables_from_csv,
)

__all__ = ["KNOWN_ADDRESSES", "build", "crosscheck", "main", "similar_names"]

# Well-known public addresses used as data (never dialled) for the known-answer sample.
KNOWN_ADDRESSES = (
    "8.8.8.8", "1.1.1.1", "9.9.9.9", "208.67.222.222", "193.0.6.139", "17.253.144.10",
    "13.107.42.14", "151.101.1.69", "31.13.71.36", "140.82.112.3", "202.12.27.33",
    "199.7.83.42", "77.88.8.8", "114.114.114.114", "180.76.76.76", "94.140.14.14",
)


def build(sources: Sequence[Path], out: Path, name: str | None = None,
          date: str | None = None) -> Tables:
    """Read ip-location-db CSVs, write the compact file ``out`` and ``out.json``.

    :param sources: CSV files (ASN and country); where ranges overlap, the one
        starting first keeps the overlap
    :param out: the compact file to write
    :param name: dataset name recorded in every answer (default: the file names)
    :param date: build date recorded in every answer, ``YYYY-MM-DD`` (default: newest
        file's modification date)
    :returns: the tables written
    :raises EnrichmentError: if a source is missing or malformed
    """
    tables = tables_from_csv(sources, name, date)
    data = tables.to_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    sidecar = {
        "name": tables.name, "date": tables.date, "file": out.name, "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "sources": [p.name for p in sources],
        "asn_rows": len(tables.asn_starts), "country_rows": len(tables.geo_starts),
        "organisations": len(tables.orgs) - 1, "countries": len(tables.countries) - 1,
        "overlaps_clipped": tables.meta.get("overlaps_clipped", {}),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return tables


_SUFFIXES = re.compile(
    r"\b(inc|llc|ltd|limited|corp|corporation|co|company|gmbh|ag|sa|sas|srl|bv|nv|ab|as|"
    r"oy|plc|pte|pty|kg|spa|sro|jsc|ooo|the|of|and|net|network|networks|asn|as\d*)\b")


def _tokens(name: str) -> set[str]:
    words = _SUFFIXES.sub(" ", re.sub(r"[^a-z0-9]+", " ", name.lower())).split()
    return {w for w in words if len(w) >= 3}


def similar_names(ours: str, theirs: str) -> bool:
    """Loose match of two AS organisation spellings ("Google LLC" ~ "GOOGLE")."""
    a, b = _tokens(ours), _tokens(theirs)
    if a & b:
        return True
    flat_a, flat_b = "".join(sorted(a)), "".join(sorted(b))
    return any(len(w) >= 4 and w in flat_b for w in a) or any(
        len(w) >= 4 and w in flat_a for w in b)


def crosscheck(tables: Tables) -> str:
    """Compare ``tables`` with geoip2fast's GeoLite2 data and with itself (Markdown).

    :raises EnrichmentError: if ``geoip2fast`` is not installed
    """
    try:
        import geoip2fast  # type: ignore[import-untyped]
    except ImportError:
        raise EnrichmentError("--crosscheck needs the geoip2fast package") from None
    data_file = Path(geoip2fast.__file__).with_name("geoip2fast-asn.dat.gz")
    g = geoip2fast.GeoIP2Fast(geoip2fast_data_file=str(data_file))
    other = g.get_database_info().get("source_info", "geoip2fast")

    ranges = country_diff = org_diff = org_missing = 0
    weight = country_weight = org_weight = 0
    org_samples: list[str] = []
    numbers_to_names: dict[int, set[str]] = {}
    private_asn = Counter[int]()
    for start, end, number, org, country in iter_ranges(tables):
        ranges += 1
        size = end - start + 1
        weight += size
        numbers_to_names.setdefault(number, set()).add(org)
        if 64512 <= number <= 65534 or number >= 4200000000 or number in (0, 23456):
            private_asn[number] += 1
        mid = start + (end - start) // 2
        theirs = g.lookup(int_to_ip(mid))
        if country and theirs.country_code and theirs.country_code != country:
            country_diff += 1
            country_weight += size
        if not theirs.asn_name:
            org_missing += 1
        elif not similar_names(org, theirs.asn_name):
            org_diff += 1
            org_weight += size
            if len(org_samples) < 25 and size >= 4096:
                org_samples.append(f"| {int_to_ip(start)}-{int_to_ip(end)} | AS{number} "
                                   f"{org} | {theirs.asn_name} |")
    reserved_hits = []
    for cidr in RESERVED:
        base, bits = cidr.split("/")
        first = ip_to_int(base)
        last = first + (1 << (32 - int(bits))) - 1
        hits = iter_ranges_between(tables, first, last)
        if hits:
            reserved_hits.append(f"{cidr}: {len(hits)} ASN range(s), e.g. AS{hits[0][1]} "
                                 f"{hits[0][2]}")
    multi = sum(1 for names in numbers_to_names.values() if len(names) > 1)

    lines = [
        f"# Cross-check of `{tables.name}` ({tables.date})", "",
        f"Compared with `{other}` (geoip2fast's GeoLite2 data: country, AS names without "
        "numbers), one lookup at the middle of every ASN range of ours.", "",
        f"- ASN ranges: {ranges:,} covering {weight:,} addresses",
        f"- country differs: {country_diff:,} ranges ({country_diff / ranges:.1%}), "
        f"{country_weight / weight:.1%} of addresses",
        f"- organisation name not similar: {org_diff:,} ranges ({org_diff / ranges:.1%}), "
        f"{org_weight / weight:.1%} of addresses; GeoLite2 has no AS there: "
        f"{org_missing:,} ranges",
        f"- AS numbers with more than one organisation name: {multi:,} of "
        f"{len(numbers_to_names):,}",
        f"- ranges with a private/reserved AS number (0, 23456, 64512-65534, 4.2e9+): "
        f"{sum(private_asn.values()):,}",
        f"- overlapping input ranges clipped: {tables.meta.get('overlaps_clipped')}",
        "- data inside reserved space (answered as reserved at lookup time anyway): "
        + ("; ".join(reserved_hits) or "none"), "",
        "## Known answers", "", "| address | ours | GeoLite2 (geoip2fast) |", "|---|---|---|",
    ]
    from enrichment.sources import TableSource
    source = TableSource(tables)
    for address in KNOWN_ADDRESSES:
        asn, geo = source.lookup(ip_to_int(address))
        theirs = g.lookup(address)
        ours = (f"AS{asn.number} {asn.organization}" if asn else "-") + \
            f", {geo.country if geo else '-'}"
        lines.append(f"| {address} | {ours} | {theirs.asn_name}, {theirs.country_code} |")
    lines += ["", "## Organisation names that differ (ranges of 4096+ addresses, first 25)", "",
              "| range | ours | GeoLite2 |", "|---|---|---|", *org_samples, ""]
    return "\n".join(lines)


def iter_ranges_between(tables: Tables, first: int, last: int) -> list[tuple[Any, ...]]:
    """ASN ranges of ``tables`` (with data) that overlap ``first..last``."""
    starts, found = tables.asn_starts, []
    row = bisect.bisect_right(starts, first) - 1
    while row < len(starts) and starts[row] <= last:
        index = tables.asn_index[row]
        if index:
            found.append((starts[row], tables.asn_numbers[index], tables.orgs[index]))
        row += 1
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enrichment.build SRC... -o OUT``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m enrichment.build",
                                     description="Build the compact enrichment file.")
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC",
                        help="ip-location-db IPv4 CSV (ASN or country)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT")
    parser.add_argument("--name", help="dataset name recorded in every answer")
    parser.add_argument("--date", help="build date YYYY-MM-DD recorded in every answer")
    parser.add_argument("--crosscheck", type=Path, metavar="REPORT.md",
                        help="also compare with geoip2fast's GeoLite2 data")
    args = parser.parse_args(argv)
    try:
        tables = build(args.sources, args.output, args.name, args.date)
        if args.crosscheck:
            args.crosscheck.write_text(crosscheck(tables))
    except EnrichmentError as exc:
        sys.stderr.write(f"enrichment.build: {exc}\n")
        return 2
    size = args.output.stat().st_size
    sys.stderr.write(f"wrote {args.output} ({size:,} bytes): {len(tables.asn_starts):,} ASN "
                     f"rows, {len(tables.geo_starts):,} country rows\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
