"""Benchmark: ASN/country lookups per second, ours against baselines, in one process.

    .venv/bin/python bench/lookup.py [--count 200000] [--repeat 5] [--mmdb PATH] [--json]

Pure computation, no sockets. Random public addresses (reserved space excluded, fixed
seed) are looked up with:

* ``Enricher.lookup(str)`` and ``Enricher.lookup(int)`` over ``builtin:`` (what an
  enrichment worker does: parse, reserved check, two bisects, two frozen models);
* ``Enricher.enrich(ScanResult)`` (the above plus ``model_copy``);
* baseline ``geoip2fast`` (GeoLite2 country + AS name, its own bisect), if installed;
* baseline ``ipaddress`` + linear scan of a :class:`~ipaddress.IPv4Network` list (the
  naive way; over 2,000 of the builtin's ranges only, or it would take all day; its rate
  falls linearly with the table size, ours does not).

With ``--mmdb PATH`` (e.g. a GeoLite2 City file), also ``builtin:`` followed by that file
(two sources merged: the cost of a City file on top), and the file alone both ways:
``MmdbSource.lookup`` (tree walk, each record decoded once) and ``lookup_direct`` (the
reader decodes the whole record every time).

Sources remember answers (AS per network, mmdb record per pointer, merged answers), so
no address is looked up twice: each of the ``--repeat`` runs has addresses of its own,
and the sources stay open across runs, as in a worker. For the chained sources also: the
first run alone (memos empty), and the last run's addresses looked up again (what a
stream whose addresses share networks and records gets; the only protocol before memos).
Also printed: the time to open ``builtin:`` (load and check the shipped file). Best and
median of the runs; the machine may be shared, so trust the best.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from brokerscan.model import ScanResult, Status, Transport
from enrichment.lookup import open_enricher
from enrichment.mmdb import MmdbSource
from enrichment.sources import RESERVED, int_to_ip, iter_ranges

SEED = 20261125
_T = TypeVar("_T")


def public_addresses(count: int) -> list[int]:
    """``count`` random addresses outside reserved space (fixed seed)."""
    nets = sorted((int(n[0]), int(n[-1])) for n in map(ipaddress.IPv4Network, RESERVED))
    firsts = [first for first, _ in nets]
    rng = random.Random(SEED)
    found: list[int] = []
    while len(found) < count:
        n = rng.getrandbits(32)
        row = bisect.bisect_right(firsts, n) - 1
        if row < 0 or n > nets[row][1]:
            found.append(n)
    return found


def split(items: Sequence[_T], count: int, repeat: int, per_run: int) -> list[Sequence[_T]]:
    """``repeat`` disjoint runs of ``per_run`` items, run ``i`` from ``items[i * count:]``."""
    return [items[i * count:i * count + per_run] for i in range(repeat)]


def rates(fn: Callable[[int], object], n: int, repeat: int) -> list[float]:
    """Lookups/s of ``fn(run)`` for each run (``fn`` does ``n`` lookups)."""
    found = []
    for run in range(repeat):
        start = time.perf_counter()
        fn(run)
        found.append(n / (time.perf_counter() - start))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="lookups per run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mmdb", metavar="PATH",
                        help="also measure builtin: followed by this .mmdb (e.g. a City file)")
    args = parser.parse_args(argv)
    count, repeat = args.count, args.repeat

    start = time.perf_counter()
    enricher = open_enricher(["builtin:"])
    open_s = time.perf_counter() - start
    ints = public_addresses(count * repeat)
    texts = [int_to_ip(n) for n in ints]
    few = min(count, 50_000)  # for the slower paths

    def runs(items: Sequence[_T], per_run: int) -> list[Sequence[_T]]:
        return split(items, count, repeat, per_run)

    results = [[ScanResult(ip=t, port=1883, transport=Transport.TCP, status=Status.SUCCESS,
                           observed_at=datetime(2026, 1, 1, tzinfo=UTC)) for t in part]
               for part in runs(texts, few)]

    figures: dict[str, tuple[float, float, int]] = {}

    def run(name: str, fn: Callable[[Any], object], parts: Sequence[Sequence[Any]],
            first_alone: str | None = None) -> None:
        # Answers are dropped as they come (a worker sends each one on): keeping them all
        # in a list would measure the garbage collector walking a growing heap instead.
        def loop(i: int) -> None:
            for item in parts[i]:
                fn(item)
        found = rates(loop, len(parts[0]), repeat)
        figures[name] = (max(found), statistics.median(found), len(parts[0]))
        if first_alone:
            figures[first_alone] = (found[0], found[0], len(parts[0]))

    lookup = enricher.lookup
    run("enricher.lookup(str)", lookup, runs(texts, count))
    run("enricher.lookup(int)", lookup, runs(ints, count))
    run("enricher.enrich(ScanResult)", enricher.enrich, results)

    reader = ""
    if args.mmdb:
        path = Path(args.mmdb).resolve()
        both = open_enricher(["builtin:", f"mmdb://{path}"])
        parts = runs(texts, count)
        run("enricher.lookup(str), builtin: + mmdb", both.lookup, parts,
            first_alone="  the same, first run (memos empty)")
        run("  the same, the last run's addresses again", both.lookup, [parts[-1]] * repeat)
        alone = MmdbSource(path)
        reader = alone.reader
        run("MmdbSource.lookup(int) alone", alone.lookup, runs(ints, count))
        run(f"MmdbSource.lookup_direct(int) alone ({reader} reader)", alone.lookup_direct,
            runs(ints, few))

    try:
        import geoip2fast as g2f  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        data_file = Path(g2f.__file__).with_name("geoip2fast-asn.dat.gz")
        g = g2f.GeoIP2Fast(geoip2fast_data_file=str(data_file))
        run("baseline geoip2fast.lookup(str) (country+AS name)", g.lookup, runs(texts, few))

    tables = enricher.sources[0].tables  # type: ignore[attr-defined]
    naive = [(s, e, number) for s, e, number, _, _ in iter_ranges(tables)][::200][:2000]

    def linear(text: str) -> object:
        a = int(ipaddress.IPv4Address(text))
        for s, e, number in naive:
            if s <= a <= e:
                return number
        return None

    run(f"baseline ipaddress + linear scan ({len(naive)} ranges)", linear, runs(texts, 2000))

    if args.json:
        print(json.dumps({"open_builtin_s": open_s, "mmdb_reader": reader,
                          "rates": {k: {"best": b, "median": m, "n": n}
                                    for k, (b, m, n) in figures.items()}}, indent=2))
        return 0
    print(f"open builtin: {open_s * 1000:.0f} ms "
          f"({len(tables.asn_starts):,} ASN rows, {len(tables.geo_starts):,} country rows)")
    for name, (best, median, n) in figures.items():
        print(f"{name:58s} best {best:12,.0f}/s  median {median:12,.0f}/s  (n={n:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
