"""Benchmark: peak memory of a whole ``brokerscan scan`` for 10^4 and 10^6 targets.

    .venv/bin/python bench/memory.py [--sizes 10000,1000000]

Each size runs the real CLI in a child process over a loopback block of that many
addresses, on a port nothing listens on (so every target is probed and refused), and
reads the child's peak RSS from ``getrusage``. Targets are generated lazily, so the two
peaks should barely differ.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def block_for(size: int) -> str:
    """A loopback range of exactly ``size`` addresses, as an a.b.c.d-e.f.g.h target."""
    first = ipaddress.IPv4Address("127.96.0.0")
    return f"{first}-{first + size - 1}"


def peak_rss_mb(size: int) -> tuple[float, float, int]:
    net = block_for(size)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    began = time.perf_counter()
    env = dict(os.environ, BROKERSCAN_SCOPE="127.0.0.0/8")
    proc = subprocess.run(
        [sys.executable, "-m", "brokerscan.cli", "scan", net, "-p", "1999", "--allow-reserved",
         "--rate", "0", "--format", "json", "--progress", "off"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    import json
    probed = json.loads(proc.stdout)["scan"]["probed"]
    # ru_maxrss of children is the max over all waited-for children: run the sizes in
    # increasing order so that each reading is this child's own peak.
    return max(after, before) / 1024, elapsed, probed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"{'targets':>10}{'probed':>10}{'peak RSS MB':>14}{'seconds':>10}")
    for size in sizes:
        rss, elapsed, probed = peak_rss_mb(size)
        print(f"{size:>10}{probed:>10}{rss:>14.1f}{elapsed:>10.1f}")


if __name__ == "__main__":
    main()
