"""Projection: worker processes for a full-IPv4, four-port sweep in 24 hours.

    .venv/bin/python bench/projection.py [--cpu-rate 38000] [--targets 14809033728]

Arithmetic from measured figures, no packets. ``--cpu-rate`` is what one worker process
sustains when every connect ends at once (bench/pipeline.py, ``celery-1``); ``--targets``
is ``sweep plan 0.0.0.0/0`` with the four default ports. On the Internet most targets do
not end at once: a silent address holds a connection slot until the connect timeout. The
timeout model (stated, not measured):

* silent (no SYN-ACK, no RST): ``--silent`` of targets, each holds a slot for the
  connect timeout (``--connect-timeout``, default 3 s);
* refused (RST): ``--refused`` of targets, one round trip (``--rtt``, default 0.15 s);
* open: the rest, a handshake of ``--open-seconds`` (default 1.5 s, TLS included).

A process then does ``min(cpu_rate, concurrency / E[slot time])`` probes/s; the table
gives processes for 24 h at several concurrency settings (connections in flight per
process: file descriptors are the limit, 65,536 by default on Debian for root).
"""

from __future__ import annotations

import argparse
import math

DAY = 86_400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-rate", type=float, default=38_000.0)
    parser.add_argument("--targets", type=int, default=14_809_033_728)
    parser.add_argument("--silent", type=float, default=0.90)
    parser.add_argument("--refused", type=float, default=0.095)
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    parser.add_argument("--rtt", type=float, default=0.15)
    parser.add_argument("--open-seconds", type=float, default=1.5)
    args = parser.parse_args()
    opened = 1.0 - args.silent - args.refused
    slot = (args.silent * args.connect_timeout + args.refused * args.rtt
            + opened * args.open_seconds)
    need = args.targets / DAY
    print(f"targets {args.targets:,}; 24 h needs {need:,.0f} probes/s for the fleet")
    print(f"mean slot time {slot:.2f} s (silent {args.silent:.0%} x {args.connect_timeout} s, "
          f"refused {args.refused:.1%} x {args.rtt} s, open {opened:.1%} x "
          f"{args.open_seconds} s); CPU ceiling {args.cpu_rate:,.0f} probes/s per process")
    print(f"{'concurrency':>12}{'probes/s/process':>18}{'bound by':>10}{'processes':>11}"
          f"{'2-core machines':>17}")
    for concurrency in (1_000, 5_000, 20_000, 60_000):
        by_slots = concurrency / slot
        rate = min(args.cpu_rate, by_slots)
        processes = math.ceil(need / rate)
        bound = "slots" if by_slots < args.cpu_rate else "CPU"
        print(f"{concurrency:>12,}{rate:>18,.0f}{bound:>10}{processes:>11,}"
              f"{math.ceil(processes / 2):>17,}")


if __name__ == "__main__":
    main()
