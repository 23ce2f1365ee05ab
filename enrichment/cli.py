"""``brokerscan lookup ADDRESS...``: what enrichment attaches to each address.

Wired into ``brokerscan/cli.py`` with :func:`add_lookup_command` and
:func:`run_lookup`; also runnable alone as ``python -m enrichment.cli lookup ...``.
A malformed address, or a source that cannot be opened, is one line on stderr and exit
code 2, before anything is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO, Any

from brokerscan.model import AsnInfo, GeoInfo
from brokerscan.settings import Settings
from enrichment.lookup import open_enricher
from enrichment.sources import EnrichmentError, ip_to_int

__all__ = ["add_lookup_command", "format_text", "main", "run_lookup"]

EXIT_BAD_INPUT = 2


def add_lookup_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``lookup`` sub-command.

    :param subparsers: what ``ArgumentParser.add_subparsers()`` returned
    :returns: the new sub-parser
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lookup", help="show the ASN, organisation and country of addresses (offline)",
        description="Show what enrichment attaches to each IPv4 address: AS number and "
                    "organisation, country (city and coordinates where the source has "
                    "them), and the source's name and build date. No network.")
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS", help="IPv4 address")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: one line per address; json: one object per line")
    parser.add_argument("--source", action="append", dest="sources", metavar="URL",
                        help="enrichment source URL, repeatable (default: the settings' "
                             "enrichment_sources, normally builtin:)")
    return parser


def format_text(ip: str, asn: AsnInfo, geo: GeoInfo) -> str:
    """One human-readable line for one address."""
    if asn.reserved:
        return f"{ip}  reserved ({asn.network})  [{asn.source}, {asn.source_date}]"
    parts = [ip]
    if asn.number is not None:
        parts.append(f"AS{asn.number} {asn.organization or '(no name)'}"
                     + (f" ({asn.network})" if asn.network else ""))
    else:
        parts.append("AS unknown")
    where = geo.country or "country unknown"
    if geo.city:
        where += f", {geo.city}"
    if geo.latitude is not None and geo.longitude is not None:
        where += f" ({geo.latitude:.4f}, {geo.longitude:.4f})"
    parts.append(where)
    sources = {(asn.source, asn.source_date), (geo.source, geo.source_date)}
    parts.append("; ".join(f"[{s}, {d}]" for s, d in sorted(sources, key=str)))
    return "  ".join(parts)


def run_lookup(args: argparse.Namespace, settings: Settings,
               out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run ``lookup``.

    :param args: parsed arguments of the ``lookup`` sub-command
    :param settings: deployment settings (``enrichment_sources`` when no ``--source``)
    :param out: where answers go (default: stdout)
    :param err: where the one-line error goes (default: stderr)
    :returns: 0, or 2 for a malformed address or an unusable source
    """
    out = out or sys.stdout
    err = err or sys.stderr
    addresses: list[str] = args.addresses
    for address in addresses:
        try:
            ip_to_int(address)
        except ValueError as exc:
            err.write(f"brokerscan lookup: error: {exc}\n")
            return EXIT_BAD_INPUT
    try:
        enricher = open_enricher(args.sources or settings.enrichment_sources)
    except EnrichmentError as exc:
        err.write(f"brokerscan lookup: error: {exc}\n")
        return EXIT_BAD_INPUT
    try:
        for address in addresses:
            asn, geo = enricher.lookup(address)
            if args.format == "json":
                record = {"ip": address, "asn": asn.model_dump(mode="json"),
                          "geo": geo.model_dump(mode="json")}
                out.write(json.dumps(record) + "\n")
            else:
                out.write(format_text(address, asn, geo) + "\n")
    finally:
        enricher.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enrichment.cli lookup ADDRESS...`` (the same as ``brokerscan lookup``)."""
    parser = argparse.ArgumentParser(prog="brokerscan")
    add_lookup_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_lookup(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
