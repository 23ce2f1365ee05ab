"""The read side on the command line: ``search`` (the hosts behind a query, counts and
facets), ``report`` (the census report from the store), ``diff`` (what changed between two
sweeps) and ``import`` (results written by ``scan -o`` into a store).

A query that cannot be run is one line naming the column and what was expected, with the
query and a caret under it, and exit code 2. Every command says which store it used.

Why one piece: the four commands share how a store is opened and named, how a view and a
query are checked, and how hits, counts and reports are printed in each format; they are
the read side's one face on the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import IO, Any

from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.cli.options import positive_int
from brokerscan.report import render
from brokerscan.settings import Settings
from storage.census import Diff, census_report, diff_sweeps
from storage.db import DatabaseError
from storage.export import cell, csv_chunks, csv_header, hit_cells, jsonl_chunks
from storage.search.compile import View
from storage.search.fields import lookup
from storage.search.parse import parse
from storage.search.tree import Node, QueryError
from storage.searcher import MAX_PAGE, CountResult, Hit, parse_facets
from storage.store import Store, StoreError, describe_store, open_store, store_url

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"search", "report", "diff", "import"})
#: brokerscan.cli.importer.MAX_LINE in MiB, for the help text (a test holds them equal).
_MAX_LINE_MIB = 1
_TABLE = ("ip", "port", "transport", "protocol", "status", "product", "version", "anonymous",
          "asn", "country", "last_seen")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``search``, ``report``, ``diff`` and ``import``."""
    search = sub.add_parser(
        "search", help="the hosts behind a query, counts and facets",
        description="Search the store, e.g. 'tags:amqp AND autonomous_system.asn:36375'. "
                    "Fields and syntax: docs/search.md.")
    search.add_argument("query", nargs="?", default="", help="the query (empty: everything)")
    search.add_argument("--count", action="store_true", help="print counts, not hosts")
    search.add_argument("--facets", default=None, metavar="FIELD[:N],...",
                        help="top values of these fields, e.g. country:10,asn:10,port")
    search.add_argument("--limit", type=positive_int, default=20,
                        help=f"hosts in a page (most {MAX_PAGE}; default %(default)s)")
    search.add_argument("--cursor", default=None, help="the page after this cursor")
    search.add_argument("--all", dest="everything", action="store_true",
                        help="every host, not one page (streamed)")
    search.add_argument("--format", choices=("table", "json", "jsonl", "csv"), default="table")
    _add_view_options(search)

    report = sub.add_parser("report", help="the census report from the store")
    report.add_argument("--format", choices=("text", "json"), default="text")
    _add_view_options(report)

    diff = sub.add_parser("diff", help="what changed between two sweeps")
    diff.add_argument("sweep_a", metavar="SWEEP_A")
    diff.add_argument("sweep_b", metavar="SWEEP_B")
    diff.add_argument("query", nargs="?", default="", help="only services matching this")
    diff.add_argument("--limit", type=positive_int, default=1000,
                      help="most services listed per kind of change (default %(default)s)")
    diff.add_argument("--format", choices=("text", "json"), default="text")
    diff.add_argument("--store", metavar="URL", help="the store (default: settings)")

    imp = sub.add_parser(
        "import", help="load results written by `scan -o` into a store",
        description="Load a JSON-lines file of results into a store, streamed (memory does "
                    "not grow with the file), enriching those without asn or geo. Importing "
                    "a file again adds nothing, and neither does importing the whole of a "
                    "file whose first part was imported. A bad line (not UTF-8, not a "
                    f"result, longer than {_MAX_LINE_MIB} MiB) is skipped and "
                    "reported with its line number; the good lines are stored and the "
                    "command exits with code 2: mend the lines and import the file again.")
    imp.add_argument("file", metavar="FILE.jsonl", help="one JSON result per line (- = stdin)")
    imp.add_argument("--store", metavar="URL", help="the store (default: settings)")
    imp.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                     help="live progress on stderr (auto: when stderr is a terminal)")


def _add_view_options(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--sweep", metavar="ID", help="what this sweep observed")
    when.add_argument("--at", metavar="DATE", type=_day,
                      help="the current view as it was at the end of this day (YYYY-MM-DD)")
    parser.add_argument("--store", metavar="URL", help="the store (default: settings)")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of the read-side commands."""
    command = {"search": _search, "report": _report, "diff": _diff, "import": _import}
    return asyncio.run(command[args.command](args, settings))


# --------------------------------------------------------------------------- helpers


def _query_error(exc: QueryError, query: str, what: str = "query") -> CliError:
    return CliError(f"{what}: {exc}", context=exc.caret(query))


async def _open(settings: Settings, explicit: str | None) -> tuple[Store, str]:
    url = store_url(settings, explicit)
    try:
        return await open_store(url), url
    except (StoreError, DatabaseError) as exc:
        raise CliError(f"store {describe_store(url)}: {exc}", EXIT_UNAVAILABLE) from None


def _view(args: argparse.Namespace) -> View:
    if getattr(args, "sweep", None):
        return View("sweep", sweep_id=args.sweep)
    if getattr(args, "at", None):
        return View("at", at=args.at)
    return View()


async def _known_sweep(store: Store, sweep_id: str, url: str) -> None:
    seen = {s["id"] for s in await store.sweeps_seen(limit=100_000)}
    if sweep_id not in seen:
        raise CliError(f"no sweep {sweep_id!r} in {describe_store(url)} "
                       f"(brokerscan report lists what the store holds)")


def _note(text: str) -> None:
    sys.stderr.write(f"brokerscan: {text}\n")


# --------------------------------------------------------------------------- search


async def _search(args: argparse.Namespace, settings: Settings) -> int:
    try:
        node = parse(args.query)
    except QueryError as exc:
        raise _query_error(exc, args.query) from None
    try:
        facets = parse_facets(args.facets)
    except QueryError as exc:
        raise _query_error(exc, args.facets or "", "facets") from None
    if args.limit > MAX_PAGE:
        raise CliError(f"--limit must be at most {MAX_PAGE} (use --all for everything)")
    view = _view(args)
    store, url = await _open(settings, args.store)
    try:
        if view.kind == "sweep":
            assert view.sweep_id is not None
            await _known_sweep(store, view.sweep_id, url)
        if args.count or facets:
            counted = await store.count(node, view=view, facets=facets)
            _print_counts(counted, args.format, sys.stdout)
            return 0
        if args.everything:
            if args.format in ("csv", "jsonl"):
                await _print_export(store, node, view, args.format, sys.stdout)
            else:
                await _print_hits(store.export(node, view=view), args.format, sys.stdout)
            return 0
        try:
            page = await store.search(node, view=view, limit=args.limit, cursor=args.cursor)
        except ValueError as exc:  # a bad cursor
            raise CliError(f"--cursor: {exc}") from None

        async def one_page() -> AsyncIterator[list[Hit]]:
            yield page.hits

        await _print_hits(one_page(), args.format, sys.stdout)
        if page.cursor is not None:
            _note(f"more: --cursor {page.cursor}")
    finally:
        await store.close()
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _print_counts(counted: CountResult, fmt: str, out: IO[str]) -> None:
    if fmt in ("json", "jsonl"):
        data = {"total": counted.total, "facets": {
            name: [{"value": _plain(v), "count": c} for v, c in values]
            for name, values in counted.facets.items()}, "other": counted.other}
        out.write(json.dumps(data, indent=2 if fmt == "json" else None) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["facet", "value", "count"])
        writer.writerow(["total", "", counted.total])
        for name, values in counted.facets.items():
            writer.writerows([name, cell(lookup(name).column, v), c] for v, c in values)
        return
    out.write(f"total {counted.total:,}\n")
    for name, values in counted.facets.items():
        out.write(f"\n{name}\n")
        for value, count in values:
            out.write(f"  {str(_plain(value)):<40}{count:>12,}\n")
        if counted.other.get(name):
            out.write(f"  {'(other)':<40}{counted.other[name]:>12,}\n")


async def _print_export(store: Store, node: Node, view: View, fmt: str, out: IO[str],
                        ) -> None:
    """Everything, as CSV or JSON lines: what the API's export writes (no decoding)."""
    chunks = jsonl_chunks if fmt == "jsonl" else csv_chunks
    async for text in chunks(store, node, view=view):
        out.write(text)


async def _print_hits(chunks: AsyncIterator[list[Hit]], fmt: str, out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        out.write(csv_header())
    if fmt == "json":
        out.write("[")
    first = True
    async for chunk in chunks:
        for hit in chunk:
            if fmt == "jsonl":
                out.write(hit.record.replace("\n", " ") + "\n")
            elif fmt == "json":
                out.write(("" if first else ",\n") + hit.record)
            elif writer is not None:
                writer.writerow(hit_cells(hit))
            else:
                out.write(_table_row(hit) + "\n")
            first = False
    if fmt == "json":
        out.write("]\n")
    elif fmt == "table" and first:
        out.write("(no hosts)\n")


def _table_row(hit: Hit) -> str:
    v = hit.values
    product = " ".join(p for p in (v["product"], v["version"]) if p) or "-"
    anonymous = {True: "anon", False: "auth", None: "-"}[v["anonymous"]]
    asn = f"AS{v['asn']}" if v["asn"] is not None else "-"
    seen = v["last_seen"].strftime("%Y-%m-%d %H:%M") if v["last_seen"] else "-"
    return (f"{v['ip']:<15} {v['port']:>5}/{v['transport']:<4} {v['protocol'] or '-':<5} "
            f"{v['status']:<18} {product[:28]:<28} {anonymous:<5} {asn:<9} "
            f"{v['country'] or '--':<3} {seen}")


# --------------------------------------------------------------------------- report, diff


async def _report(args: argparse.Namespace, settings: Settings) -> int:
    view = _view(args)
    store, url = await _open(settings, args.store)
    try:
        if view.kind == "sweep":
            assert view.sweep_id is not None
            await _known_sweep(store, view.sweep_id, url)
        data = await census_report(store, view)
    finally:
        await store.close()
    if args.format == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(render(data))
    _note(f"read {describe_store(url)}")
    return 0


async def _diff(args: argparse.Namespace, settings: Settings) -> int:
    try:
        node = parse(args.query)
    except QueryError as exc:
        raise _query_error(exc, args.query) from None
    store, url = await _open(settings, args.store)
    try:
        for sweep in (args.sweep_a, args.sweep_b):
            await _known_sweep(store, sweep, url)
        result = await diff_sweeps(store, args.sweep_a, args.sweep_b, node,
                                   limit=args.limit)
    finally:
        await store.close()
    if args.format == "json":
        sys.stdout.write(json.dumps(diff_dict(result), indent=2) + "\n")
    else:
        sys.stdout.write(render_diff(result))
    return 0


def diff_dict(result: Diff) -> dict[str, Any]:
    """A diff as JSON-ready data."""
    return {"a": result.a, "b": result.b, "counts": result.counts,
            "new": [{"ip": ip, "port": port} for ip, port in result.new],
            "gone": [{"ip": ip, "port": port} for ip, port in result.gone],
            "changed": [{"ip": c.ip, "port": c.port, "changes": c.changes}
                        for c in result.changed]}


def render_diff(result: Diff) -> str:
    """A diff as text: counts, then the services of each kind."""
    c = result.counts
    lines = [f"from {result.a} to {result.b}",
             f"newly exposed {c['new']:>8,}", f"gone          {c['gone']:>8,}",
             f"changed       {c['changed']:>8,}"]
    for kind in ("anonymous_granted", "anonymous_withdrawn", "tls_added", "tls_removed",
                 "certificate_replaced", "product_changed", "version_changed"):
        if c[kind]:
            lines.append(f"  {kind.replace('_', ' '):<22}{c[kind]:>8,}")
    for title, keys in (("newly exposed", result.new), ("gone", result.gone)):
        if keys:
            lines += ["", title] + [f"  {ip}:{port}" for ip, port in keys]
    if result.changed:
        lines += ["", "changed"] + [f"  {ch.ip}:{ch.port}  {', '.join(ch.changes)}"
                                    for ch in result.changed]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- import


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    # imported here: the scan's and the stream's modules (redis, aio-pika, the engine)
    # would otherwise make every `report` and `search` start seconds slower
    from brokerscan.cli.importer import Importer, ResultReader, input_size, open_input
    from brokerscan.cli.scan import want_progress
    from brokerscan.stream.consumer import tune_gc
    from enrichment.lookup import EnrichmentError, open_enricher

    async with contextlib.AsyncExitStack() as stack:
        source, name = await asyncio.to_thread(open_input, args.file)
        if source is not sys.stdin.buffer:
            stack.callback(source.close)
        try:
            enricher = open_enricher(settings.enrichment_sources)
        except EnrichmentError as exc:
            raise CliError(f"enrichment: {exc}") from None
        stack.callback(enricher.close)
        store, url = await _open(settings, args.store)
        stack.push_async_callback(store.close)
        tune_gc()  # as the store writer does: ~a third of the CPU a result otherwise
        importer = Importer(store, ResultReader(source, enricher), name,
                            progress=want_progress(args.progress), size=input_size(source))
        await importer.run()
    text, code = importer.summary(describe_store(url))
    _note(text)
    return code
