"""Benchmark: ASN/country lookups per second, ours against baselines, in one process.

    .venv/bin/python bench/lookup.py [--count 200000] [--repeat 3] [--json]

Pure computation, no sockets. Random public addresses (reserved space excluded, fixed
seed) are looked up with:

* ``Enricher.lookup(str)`` and ``Enricher.lookup(int)`` over ``builtin:`` (what an
  enrichment worker does: parse, reserved check, two bisects, two frozen models);
* ``Enricher.enrich(ScanResult)`` (the above plus ``model_copy``);
* baseline ``geoip2fast`` (GeoLite2 country + AS name, its own bisect), if installed;
* baseline ``ipaddress`` + linear scan of a :class:`~ipaddress.IPv4Network` list (the
  naive way; over 2,000 of the builtin's ranges only, or it would take all day; its rate
  falls linearly with the table size, ours does not).

With ``--mmdb PATH``, also ``builtin:`` followed by that MaxMind file (two sources
merged: the cost of a City file on top). Also printed: the time to open ``builtin:``
(load and check the shipped file). Best and median of ``--repeat`` runs; the machine may
be shared, so trust the best.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from brokerscan.model import ScanResult, Status, Transport
from enrichment.lookup import open_enricher
from enrichment.sources import RESERVED, int_to_ip, iter_ranges

SEED = 20261125


def public_addresses(count: int) -> list[int]:
    """``count`` random addresses outside reserved space (fixed seed)."""
    nets = [ipaddress.IPv4Network(c) for c in RESERVED]
    rng = random.Random(SEED)
    found: list[int] = []
    while len(found) < count:
        n = rng.getrandbits(32)
        if not any(ipaddress.IPv4Address(n) in net for net in nets):
            found.append(n)
    return found


def rate(fn: Callable[[], object], n: int, repeat: int) -> tuple[float, float]:
    """Best and median lookups/s of ``fn`` (which does ``n`` lookups)."""
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - start))
    return max(rates), statistics.median(rates)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mmdb", metavar="PATH",
                        help="also measure builtin: followed by this .mmdb (e.g. a City file)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    enricher = open_enricher(["builtin:"])
    open_s = time.perf_counter() - start
    ints = public_addresses(args.count)
    texts = [int_to_ip(n) for n in ints]
    results = [ScanResult(ip=t, port=1883, transport=Transport.TCP, status=Status.SUCCESS,
                          observed_at=datetime(2026, 1, 1, tzinfo=UTC)) for t in texts[:50_000]]

    figures: dict[str, tuple[float, float, int]] = {}

    def run(name: str, fn: Callable[[], object], n: int) -> None:
        best, median = rate(fn, n, args.repeat)
        figures[name] = (best, median, n)

    # Answers are dropped as they come (a worker sends each one on): keeping them all in
    # a list would measure the garbage collector walking a growing heap instead.
    def each(fn: Callable[[object], object], items: Sequence[object]) -> Callable[[], None]:
        def loop() -> None:
            for item in items:
                fn(item)
        return loop

    lookup = enricher.lookup
    run("enricher.lookup(str)", each(lookup, texts), len(texts))  # type: ignore[arg-type]
    run("enricher.lookup(int)", each(lookup, ints), len(ints))  # type: ignore[arg-type]
    run("enricher.enrich(ScanResult)", each(enricher.enrich, results),  # type: ignore[arg-type]
        len(results))

    if args.mmdb:
        both = open_enricher(["builtin:", f"mmdb://{Path(args.mmdb).resolve()}"])
        run("enricher.lookup(str), builtin: + mmdb", each(both.lookup, texts),  # type: ignore[arg-type]
            len(texts))

    try:
        import geoip2fast as g2f  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        data_file = Path(g2f.__file__).with_name("geoip2fast-asn.dat.gz")
        g = g2f.GeoIP2Fast(geoip2fast_data_file=str(data_file))
        some = texts[:50_000]
        run("baseline geoip2fast.lookup(str) (country+AS name)",
            each(g.lookup, some), len(some))

    tables = enricher.sources[0].tables  # type: ignore[attr-defined]
    naive = [(s, e, number) for s, e, number, _, _ in iter_ranges(tables)][::200][:2000]
    few = texts[:2000]

    def linear() -> object:
        found = None
        for t in few:
            a = int(ipaddress.IPv4Address(t))
            for s, e, number in naive:
                if s <= a <= e:
                    found = number
                    break
        return found

    run(f"baseline ipaddress + linear scan ({len(naive)} ranges)", linear, len(few))

    if args.json:
        print(json.dumps({"open_builtin_s": open_s,
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
