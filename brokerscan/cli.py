"""The ``brokerscan`` command line: ``scan`` and ``demo`` (sweeps come with the scheduler).

Bad input (a malformed target, an unknown port name, an unreadable file, a target that is
blocklisted or out of scope) ends in one line on stderr and exit code 2, before any packet.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import IO, NoReturn

import asyncpg
from pydantic import ValidationError

from brokerscan import __version__
from brokerscan.localsink import StoreSink
from brokerscan.model import ScanResult
from brokerscan.report import Report
from brokerscan.settings import Settings
from enrichment.lookup import Enricher, EnrichmentError, open_enricher
from scheduler.blocklist import IPSet, default_blocklist, load_blocklist
from scheduler.ports import PortError, PortSpec, parse_ports
from scheduler.targets import TargetError, eligible, iter_targets, parse_target, read_targets
from storage.db import DatabaseError
from storage.store import Store, StoreError, open_store
from workers.engine import Engine, ScanConfig, ScanStats
from workers.probes.base import ProbeOptions
from workers.transport import Scope

__all__ = ["main"]

EXIT_BAD_INPUT = 2
DEFAULT_STORE = "sqlite:///brokerscan.db"  # the embedded store, in the working directory


class UsageError(Exception):
    """A mistake in what the user asked for: one line, exit 2."""


class StoreFailed(Exception):
    """The store failed during a scan (a full disk, the database gone): one line, exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    convert.__name__ = kind.__name__
    return convert


def _levels(text: str) -> tuple[int, ...]:
    names = {"3": 3, "3.1": 3, "4": 4, "3.1.1": 4, "5": 5, "5.0": 5}
    try:
        levels = tuple(names[item.strip()] for item in text.split(",") if item.strip())
    except KeyError as exc:
        raise argparse.ArgumentTypeError(
            f"unknown MQTT level {exc.args[0]!r} (use 3.1, 3.1.1, 5.0)") from None
    if not levels:
        raise argparse.ArgumentTypeError("no MQTT level given")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="brokerscan",
                     description="Find and measure exposed MQTT and AMQP brokers.")
    parser.add_argument("--version", action="version", version=f"brokerscan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    scan = sub.add_parser("scan", help="scan addresses and ports now, in this process")
    scan.add_argument("targets", nargs="*", metavar="TARGET",
                      help="CIDR, address, range (a.b.c.d-e.f.g.h or a.b.c.d-N), or - for stdin")
    _add_scan_options(scan)

    demo = sub.add_parser("demo", help="start local brokers on 127.x, scan them, report")
    demo.add_argument("--format", choices=("text", "json"), default="text")
    demo.add_argument("-o", "--output", metavar="FILE", help="also write results as JSONL")
    from brokerscan import streamcli
    from brokerscan.sweepcli import add_commands

    add_commands(sub, add_target_options)
    streamcli.add_commands(sub)
    from enrichment.cli import add_lookup_command

    add_lookup_command(sub)
    return parser


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """What to probe: shared by ``scan`` and ``sweep plan/start``."""
    parser.add_argument("-iL", dest="target_files", action="append", default=[],
                        metavar="FILE", help="read targets from FILE, one per line")
    parser.add_argument("-p", "--ports", default="1883,8883,5672,5671",
                        help="ports: numbers or mqtt, mqtts, amqp, amqps; PORT/tls or "
                             "PORT/tcp picks the transport (default: %(default)s)")
    parser.add_argument("--probe", choices=("mqtt", "amqp"),
                        help="use only this probe (default: by port; both on other ports)")
    parser.add_argument("--allow-reserved", action="store_true",
                        help="lift the built-in IANA blocklist (loopback, private, ...)")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="an extra opt-out list in ZMap format (always applied)")


def _add_scan_options(scan: argparse.ArgumentParser) -> None:
    add_target_options(scan)
    scan.add_argument("-o", "--output", metavar="FILE", help="write results as JSONL (- = stdout)")
    scan.add_argument("--store", metavar="URL",
                      help="where results are stored: postgresql://... or sqlite:///FILE "
                           f"(default: settings, else {DEFAULT_STORE})")
    scan.add_argument("--no-store", action="store_true", help="do not store results")
    scan.add_argument("--all", dest="emit_failures", action="store_true",
                      help="also write results for closed and silent ports")
    scan.add_argument("--format", choices=("text", "json"), default="text",
                      help="report format")
    scan.add_argument("-r", "--rate", type=_positive(float), default=10_000.0,
                      help="new connections per second, 0 = unlimited (default: %(default)s)")
    scan.add_argument("-c", "--concurrency", type=_positive(int), default=1000,
                      help="connections in flight (default: %(default)s)")
    scan.add_argument("--connect-timeout", type=_positive(float), default=3.0)
    scan.add_argument("--io-timeout", type=_positive(float), default=5.0)
    scan.add_argument("--timeout", type=_positive(float), default=20.0,
                      help="total seconds per target, fall-backs included")
    scan.add_argument("--mqtt-levels", type=_levels, default=(5, 4, 3),
                      help="MQTT levels to try in order (default: 5.0,3.1.1,3.1)")
    scan.add_argument("--mqtt-all-levels", action="store_true",
                      help="try every MQTT level, not just until one answers")
    scan.add_argument("--client-id-prefix", default=None,
                      help="prefix of the random MQTT client id (default: from settings)")
    scan.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                      help="live progress on stderr (auto: when stderr is a terminal)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"brokerscan: error: settings: {first['loc'][0]}: {first['msg']}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.command == "scan":
            return asyncio.run(_scan(args, settings))
        if args.command == "demo":
            from brokerscan.demo import run_demo
            return run_demo(args, settings)
        if args.command == "lookup":
            from enrichment.cli import run_lookup

            return run_lookup(args, settings)
        from brokerscan import streamcli
        from brokerscan.sweepcli import run_command

        if args.command in streamcli.COMMANDS:
            return streamcli.run_command(args, settings)
        return run_command(args, settings)
    except UsageError as exc:
        print(f"brokerscan: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreFailed as exc:
        print(f"brokerscan: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("brokerscan: interrupted", file=sys.stderr)
        return 130


class ScanPlan:
    """What a scan will do, resolved and validated before any packet."""

    def __init__(self, ips: IPSet, ports: list[PortSpec], notes: list[str]) -> None:
        self.ips = ips
        self.ports = ports
        self.notes = notes

    @property
    def total(self) -> int:
        return self.ips.size * len(self.ports)


def plan_scan(args: argparse.Namespace, settings: Settings) -> ScanPlan:
    """Parse and check targets, ports, blocklists and scope.

    :raises UsageError: anything wrong, as one line.
    """
    try:
        ports = parse_ports(args.ports, args.probe)
        if not args.targets and not args.target_files:
            raise UsageError("no targets given (a CIDR, an address, a range, -iL FILE or -)")
        stdin = sys.stdin if "-" in args.targets else None
        targets = read_targets(args.targets, args.target_files, stdin=stdin)
        optout = IPSet.empty()
        for path in [*settings.blocklist_files, *args.blocklist]:
            optout = optout.union(load_blocklist(path))
        scope = IPSet.from_networks(settings.scope_networks())
        blocklist = default_blocklist()
        ips, excluded = eligible(targets, blocklist=blocklist, optout=optout, scope=scope,
                                 allow_reserved=args.allow_reserved)
        # A target named on its own that cannot be scanned at all is a mistake, not a no-op.
        for spec in args.targets:
            if spec == "-":
                continue
            single, _ = eligible(parse_target(spec), blocklist=blocklist, optout=optout,
                                 scope=scope, allow_reserved=args.allow_reserved)
            if single.size == 0:
                raise UsageError(_why_excluded(spec, parse_target(spec), blocklist, optout,
                                               scope, args.allow_reserved))
    except (TargetError, PortError) as exc:
        raise UsageError(str(exc)) from None
    if ips.size == 0:
        raise UsageError(f"nothing to scan: {excluded.describe()}")
    notes = [f"excluded: {excluded.describe()}"] if excluded.total else []
    return ScanPlan(ips, ports, notes)


def _why_excluded(spec: str, ips: IPSet, blocklist: IPSet, optout: IPSet, scope: IPSet,
                  allow_reserved: bool) -> str:
    if ips.difference(scope).size == ips.size:
        return f"target {spec} is outside the scope ({', '.join(scope.describe_ranges())})"
    if ips.difference(optout).size == 0:
        return f"target {spec} is on an opt-out blocklist"
    if not allow_reserved and ips.difference(blocklist).size == 0:
        return (f"target {spec} is reserved address space (IANA blocklist); "
                "add --allow-reserved to scan it")
    return f"target {spec} is excluded by the blocklist and scope together"


def scan_config(args: argparse.Namespace, settings: Settings) -> ScanConfig:
    prefix = args.client_id_prefix if args.client_id_prefix is not None \
        else settings.client_id_prefix
    return ScanConfig(
        connect_timeout=args.connect_timeout, io_timeout=args.io_timeout,
        total_timeout=args.timeout, tls_handshake_timeout=min(args.io_timeout, args.timeout),
        concurrency=max(1, args.concurrency), rate=args.rate,
        emit_failures=args.emit_failures,
        probe=ProbeOptions(client_id_prefix=prefix, mqtt_levels=args.mqtt_levels,
                           mqtt_all_levels=args.mqtt_all_levels))


async def _scan(args: argparse.Namespace, settings: Settings) -> int:
    plan = plan_scan(args, settings)
    try:
        enricher = open_enricher(settings.enrichment_sources)
    except EnrichmentError as exc:
        raise UsageError(f"enrichment: {exc}") from None
    store: Store | None = None
    if not args.no_store:
        url = args.store or settings.store_url or settings.database_url or DEFAULT_STORE
        try:
            store = await open_store(url)
        except (StoreError, DatabaseError) as exc:
            raise UsageError(f"store: {exc}") from None
    out = _open_output(args.output)
    report_stream = sys.stderr if out is sys.stdout else sys.stdout
    for note in plan.notes:
        print(f"brokerscan: {note}", file=sys.stderr)
    # Every local scan is a sweep of its own for storage: an id and a start time.
    started = datetime.now(UTC)
    config = dataclasses.replace(
        scan_config(args, settings), sweep_started_at=started,
        sweep_id=f"scan-{started:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    sink = StoreSink(store) if store is not None else None
    try:
        stats = await run_scan(plan, config, Scope(settings.scope), out,
                               progress=_want_progress(args.progress), enricher=enricher,
                               store=sink)
    except (StoreError, DatabaseError, asyncpg.PostgresError) as exc:
        assert sink is not None  # nothing else raises these
        kept = f"; all {sink.added} are in {args.output}" \
            if args.output and args.output != "-" else ""
        why = str(exc) if isinstance(exc, StoreError | DatabaseError) \
            else f"{type(exc).__name__}: {exc}"
        raise StoreFailed(f"store: {' '.join(why.split())}; {sink.written} of {sink.added} "
                          f"results stored (scan {config.sweep_id}){kept}") from None
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
        if store is not None:
            await store.close()
    _print_report(args.format, stats.report, stats.stats, report_stream)
    if sink is not None:
        print(f"brokerscan: {sink.new} new observations in the store (scan {config.sweep_id})",
              file=sys.stderr)
    return 0


class ScanRun:
    def __init__(self, report: Report, stats: ScanStats) -> None:
        self.report = report
        self.stats = stats


async def run_scan(plan: ScanPlan, config: ScanConfig, scope: Scope, out: IO[str] | None,
                   *, progress: bool, enricher: Enricher | None = None,
                   store: StoreSink | None = None) -> ScanRun:
    """Run the engine over a plan: enrich each result, write it as JSONL to ``out`` and to
    ``store``, and count it in the report."""
    report = Report()
    engine = Engine(config, scope, ready=store.ready if store is not None else None)

    def sink(result: ScanResult) -> None:
        if enricher is not None:
            result = enricher.enrich(result)
        report.add(result)
        if out is not None:
            out.write(result.model_dump_json())
            out.write("\n")
        if store is not None:
            store.add(result)

    ticker = asyncio.create_task(_progress(engine)) if progress else None
    if store is not None:
        store.start()
    try:
        stats = await engine.run(iter_targets(plan.ips, plan.ports), sink, total=plan.total)
    finally:
        if ticker is not None:
            ticker.cancel()
            print(file=sys.stderr)
        if store is not None:
            await store.close()
    if out is not None:
        out.flush()
    return ScanRun(report, stats)


def _open_output(path: str | None) -> IO[str] | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", buffering=1 << 16)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _want_progress(choice: str) -> bool:
    return choice == "on" or (choice == "auto" and sys.stderr.isatty())


async def _progress(engine: Engine) -> None:
    while True:
        await asyncio.sleep(0.5)
        print(f"\r{progress_line(engine.stats)}", end="", file=sys.stderr, flush=True)


def progress_line(stats: ScanStats) -> str:
    """One line of live progress: rate, done/total, hits, ETA."""
    rate = stats.rate
    total = stats.total or 0
    hits = sum(stats.hits.values())
    eta = (total - stats.done) / rate if rate > 0 and total else float("nan")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
    pct = 100.0 * stats.done / total if total else 0.0
    return (f"{rate:8.0f} probes/s  {stats.done}/{total} ({pct:5.1f}%)  "
            f"open {stats.open}  hits {hits} "
            f"(mqtt {stats.hits.get('mqtt', 0)}, amqp {stats.hits.get('amqp', 0)})  "
            f"ETA {eta_text}")


def _print_report(fmt: str, report: Report, stats: ScanStats, stream: IO[str]) -> None:
    if fmt == "json":
        stream.write(json.dumps(report.as_dict(stats), indent=2) + "\n")
    else:
        stream.write(report.render(stats))
    stream.flush()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
