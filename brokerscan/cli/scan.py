"""``brokerscan scan``: probe addresses and ports now, in this process.

Targets, ports, blocklists and scope are resolved and checked before any packet
(:func:`plan_scan`); a mistake is a :class:`~brokerscan.cli.errors.CliError` (exit 2). The
engine's results are enriched, written as JSONL (``-o``), stored (the embedded SQLite store
by default) and counted into the census report, which ends the run. A store that fails
during the scan is one line and exit 1; the ``-o`` file keeps every result.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

import asyncpg

from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.cli.options import (
    add_depth_options,
    add_discovery_options,
    add_rate_option,
    add_target_options,
    mqtt_levels,
    non_negative,
)
from brokerscan.cli.text import format_duration, redraw
from brokerscan.model import ScanResult
from brokerscan.report import Report
from brokerscan.settings import Settings
from enrichment.lookup import Enricher, EnrichmentError, open_enricher
from scheduler.blocklist import IPSet, default_blocklist, load_blocklist
from scheduler.ports import PortError, PortSpec, parse_ports
from scheduler.targets import TargetError, eligible, iter_targets, parse_target, read_targets
from storage.db import DatabaseError
from storage.sink import StoreSink
from storage.store import Store, StoreError, describe_store, open_store, store_url
from workers.discovery import Discovery, ZmapError, blocked_for
from workers.engine import Engine, ScanConfig, ScanStats
from workers.probes.base import ProbeOptions
from workers.transport import Scope

__all__ = ["COMMANDS", "ScanPlan", "add_commands", "open_output", "plan_discovery",
           "plan_scan", "print_report", "progress_line", "run", "run_scan", "want_progress"]

COMMANDS = frozenset({"scan"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scan``."""
    scan = sub.add_parser("scan", help="scan addresses and ports now, in this process")
    scan.add_argument("targets", nargs="*", metavar="TARGET",
                      help="CIDR, address, range (a.b.c.d-e.f.g.h or a.b.c.d-N), or - for stdin")
    _add_scan_options(scan)


def _add_scan_options(scan: argparse.ArgumentParser) -> None:
    add_target_options(scan)
    scan.add_argument("-o", "--output", metavar="FILE", help="write results as JSONL (- = stdout)")
    scan.add_argument("--store", metavar="URL",
                      help="where results are stored: postgresql://... or sqlite:///FILE "
                           "(default: BROKERSCAN_STORE_URL, else sqlite:///brokerscan.db)")
    scan.add_argument("--no-store", action="store_true", help="do not store results")
    scan.add_argument("--all", dest="emit_failures", action="store_true",
                      help="also write results for closed and silent ports")
    scan.add_argument("--format", choices=("text", "json"), default="text",
                      help="report format")
    add_rate_option(scan, "this scan")
    scan.add_argument("-c", "--concurrency", type=non_negative(int), default=1000,
                      help="connections in flight (default: %(default)s)")
    scan.add_argument("--connect-timeout", type=non_negative(float), default=3.0)
    scan.add_argument("--io-timeout", type=non_negative(float), default=5.0)
    scan.add_argument("--timeout", type=non_negative(float), default=20.0,
                      help="total seconds per target, fall-backs included")
    scan.add_argument("--mqtt-levels", type=mqtt_levels, default=(5, 4, 3),
                      help="MQTT levels to try in order (default: 5.0,3.1.1,3.1)")
    scan.add_argument("--mqtt-all-levels", action="store_true",
                      help="try every MQTT level, not just until one answers")
    add_depth_options(scan)
    add_discovery_options(scan)
    scan.add_argument("--client-id-prefix", default=None,
                      help="prefix of the random MQTT client id (default: from settings)")
    scan.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                      help="live progress on stderr (auto: when stderr is a terminal)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``scan``."""
    return asyncio.run(_scan(args, settings))


class ScanPlan:
    """What a scan will do, resolved and validated before any packet."""

    def __init__(self, ips: IPSet, ports: list[PortSpec], notes: list[str],
                 blocked: IPSet | None = None) -> None:
        """:param blocked: what must never be sent to (outside the scope, opted out,
            reserved unless allowed): a discovery stage's blocklist."""
        self.ips = ips
        self.ports = ports
        self.notes = notes
        self.blocked = blocked if blocked is not None else ips.complement()

    @property
    def total(self) -> int:
        return self.ips.size * len(self.ports)


def plan_scan(args: argparse.Namespace, settings: Settings) -> ScanPlan:
    """Parse and check targets, ports, blocklists and scope.

    :raises CliError: anything wrong, as one line.
    """
    try:
        ports = parse_ports(args.ports, args.probe)
        if not args.targets and not args.target_files:
            raise CliError("no targets given (a CIDR, an address, a range, -iL FILE or -)")
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
                raise CliError(_why_excluded(spec, parse_target(spec), blocklist, optout,
                                               scope, args.allow_reserved))
    except (TargetError, PortError) as exc:
        raise CliError(str(exc)) from None
    if ips.size == 0:
        raise CliError(f"nothing to scan: {excluded.describe()}")
    notes = [f"excluded: {excluded.describe()}"] if excluded.total else []
    blocked = blocked_for(scope, optout, None if args.allow_reserved else blocklist)
    return ScanPlan(ips, ports, notes, blocked)


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
                           mqtt_all_levels=args.mqtt_all_levels,
                           sys_version=args.sys_version, amqp_versions=args.amqp_versions,
                           ws_paths=args.ws_paths))


def plan_discovery(args: argparse.Namespace, plan: ScanPlan, scope: Scope,
                   ) -> tuple[Discovery, dict[int, IPSet]] | None:
    """The discovery stage of a scan (``--discovery``), checked before any packet: its
    allowlist is the plan's own targets, its blocklist the plan's exclusions.

    :raises CliError: ZMap cannot run here (missing binary, no CAP_NET_RAW, no route)
    """
    if args.discovery is None:
        return None
    discovery = Discovery(lambda: iter_targets(plan.ips, plan.ports), scope=scope,
                          blocked=plan.blocked, rate=args.rate, seed=secrets.randbits(32),
                          cooldown=args.discovery_cooldown)
    try:  # every address of the plan on every port (iter_targets' walk, without walking)
        ports = discovery.checked({spec.port: plan.ips for spec in plan.ports})
        discovery.check(ports)
    except ZmapError as exc:
        raise CliError(str(exc)) from None
    return discovery, ports


async def _scan(args: argparse.Namespace, settings: Settings) -> int:
    plan = plan_scan(args, settings)
    discovery = plan_discovery(args, plan, Scope(settings.scope))
    try:
        enricher = open_enricher(settings.enrichment_sources)
    except EnrichmentError as exc:
        raise CliError(f"enrichment: {exc}") from None
    store: Store | None = None
    url = ""
    if not args.no_store:
        url = store_url(settings, args.store, fleet=False)
        try:
            store = await open_store(url)
        except (StoreError, DatabaseError) as exc:
            raise CliError(f"store: {exc}") from None
    out = open_output(args.output)
    report_stream = sys.stderr if out is sys.stdout else sys.stdout
    for note in plan.notes:
        print(f"brokerscan: {note}", file=sys.stderr)
    # Every local scan is a sweep of its own for storage: an id and a start time.
    started = datetime.now(UTC)
    config = dataclasses.replace(
        scan_config(args, settings), sweep_started_at=started,
        sweep_id=f"scan-{started:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}",
        discovered_by=args.discovery)
    sink = StoreSink(store) if store is not None else None
    try:
        stats = await run_scan(plan, config, Scope(settings.scope), out,
                               progress=want_progress(args.progress), enricher=enricher,
                               store=sink, discovery=discovery)
    except (StoreError, DatabaseError, asyncpg.PostgresError) as exc:
        assert sink is not None  # nothing else raises these
        kept = f"; all {sink.added} are in {args.output}" \
            if args.output and args.output != "-" else ""
        why = str(exc) if isinstance(exc, StoreError | DatabaseError) \
            else f"{type(exc).__name__}: {exc}"
        raise CliError(f"store: {why}; {sink.written} of {sink.added} results stored "
                       f"(scan {config.sweep_id}){kept}", EXIT_UNAVAILABLE) from None
    except ZmapError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        if out is not None and out is not sys.stdout:
            out.close()
        if store is not None:
            await store.close()
    print_report(args.format, stats.report, stats.stats, report_stream)
    if sink is not None:
        print(f"brokerscan: stored {sink.written} results in {describe_store(url)} "
              f"({sink.new} new observations, scan {config.sweep_id})", file=sys.stderr)
    return 0


class ScanRun:
    """What :func:`run_scan` ends with: the census report and the engine's counters."""

    def __init__(self, report: Report, stats: ScanStats) -> None:
        self.report = report
        self.stats = stats


async def run_scan(plan: ScanPlan, config: ScanConfig, scope: Scope, out: IO[str] | None,
                   *, progress: bool, enricher: Enricher | None = None,
                   store: StoreSink | None = None,
                   discovery: tuple[Discovery, dict[int, IPSet]] | None = None) -> ScanRun:
    """Run the engine over a plan: enrich each result, write it as JSONL to ``out`` and to
    ``store``, and count it in the report. With ``discovery`` (from
    :func:`plan_discovery`), ZMap runs first and the engine probes what answered."""
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
        began = time.monotonic()
        targets: Iterator[tuple[int, PortSpec]] = iter_targets(plan.ips, plan.ports)
        if discovery is not None:
            stage, ports = discovery
            await stage.discover(ports)
            targets = stage.narrowed(engine)
        stats = await engine.run(targets, sink, total=plan.total)
        stats.began = began  # the rate and duration include the discovery stage
    finally:
        if ticker is not None:
            ticker.cancel()
            print(file=sys.stderr)
        if store is not None:
            await store.close()
    if out is not None:
        out.flush()
    return ScanRun(report, stats)


def open_output(path: str | None) -> IO[str] | None:
    """The ``-o`` file (``-``: standard output; None: no file).

    :raises CliError: it cannot be written
    """
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", buffering=1 << 16)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def want_progress(choice: str) -> bool:
    """Whether to draw live progress for ``--progress auto|on|off``."""
    return choice == "on" or (choice == "auto" and sys.stderr.isatty())


async def _progress(engine: Engine) -> None:
    while True:
        await asyncio.sleep(0.5)
        redraw(sys.stderr, progress_line(engine.stats))


def progress_line(stats: ScanStats) -> str:
    """One line of live progress: rate, done/total, hits, ETA."""
    rate = stats.rate
    total = stats.total or 0
    hits = sum(stats.hits.values())
    eta = (total - stats.done) / rate if rate > 0 and total else None
    pct = 100.0 * stats.done / total if total else 0.0
    return (f"{rate:8.0f} probes/s  {stats.done}/{total} ({pct:5.1f}%)  "
            f"open {stats.open}  hits {hits} "
            f"(mqtt {stats.hits.get('mqtt', 0)}, amqp {stats.hits.get('amqp', 0)})  "
            f"ETA {format_duration(eta)}")


def print_report(fmt: str, report: Report, stats: ScanStats, stream: IO[str]) -> None:
    """The census report as text or JSON."""
    if fmt == "json":
        stream.write(json.dumps(report.as_dict(stats), indent=2) + "\n")
    else:
        stream.write(report.render(stats))
    stream.flush()

