"""``brokerscan lookup ADDRESS...``: what enrichment attaches to each address.

A malformed address, or a source that cannot be opened, is a
:class:`~brokerscan.cli.errors.CliError` (one line, exit 2) before anything is printed on
stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import IO

from brokerscan.cli.errors import CliError
from brokerscan.model import AsnInfo, GeoInfo
from brokerscan.settings import Settings
from enrichment.lookup import open_enricher
from enrichment.sources import EnrichmentError, ip_to_int

__all__ = ["COMMANDS", "add_commands", "format_text", "run"]

COMMANDS = frozenset({"lookup"})


_AS_NUMBER = re.compile(r"(?i)^(?:AS)?(\d{1,10})$")


def _search_hint(text: str) -> str:
    """Point a question lookup cannot answer (an AS number, a field) to ``search``."""
    match = _AS_NUMBER.match(text)
    if match and "." not in text:
        return (f"; lookup answers for addresses: for AS {match.group(1)} use "
                f"brokerscan search 'asn:{match.group(1)}'")
    if ":" in text:
        return f"; lookup answers for addresses: for a question use brokerscan search {text!r}"
    return ""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                 ) -> argparse.ArgumentParser:
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


def run(args: argparse.Namespace, settings: Settings, out: IO[str] | None = None) -> int:
    """Run ``lookup``.

    :param args: parsed arguments of the ``lookup`` sub-command
    :param settings: deployment settings (``enrichment_sources`` when no ``--source``)
    :param out: where answers go (default: stdout)
    :returns: 0
    :raises CliError: a malformed address or an unusable source (exit 2)
    """
    out = out or sys.stdout
    addresses: list[str] = args.addresses
    for address in addresses:
        try:
            ip_to_int(address)
        except ValueError as exc:
            raise CliError(f"{exc}{_search_hint(address)}") from None
    try:
        enricher = open_enricher(args.sources or settings.enrichment_sources)
    except EnrichmentError as exc:
        raise CliError(str(exc)) from None
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
