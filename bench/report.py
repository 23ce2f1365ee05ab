"""Benchmark: the census report (issue 19), this tree against a baseline tree, in one run.

    .venv/bin/python bench/report.py --store postgresql://127.0.0.1/brokerscan_bench_rollup6 \\
        --baseline-tree /tmp/oldtree --baseline-store postgresql://127.0.0.1/bench_old6

Both stores are made by ``bench/readside_data.py`` (a fixed seed: the same data), each by
its own tree (``git archive <commit> | tar -x -C DIR`` gives a baseline tree; run its
``bench/readside_data.py`` with this .venv's Python). For each tree, with its store:

* ``GET /api/v1/report`` (the current view, and the first sweep) against a real
  ``brokerscan serve`` of that tree (no rate limit, a reader token checked on every
  request): one warm-up, then ``--runs`` requests; p50 and p95;
* ``brokerscan report`` (the current view): the whole command, process start included,
  ``--cli-runs`` times; median and worst. Twice: with the bytecode ``scripts/bootstrap.sh``
  compiles, and from source as every command ran before it did (``PYTHONDONTWRITEBYTECODE``
  set, as in containers and CI, and an empty ``pycache_prefix``: each module compiled
  again in every process).

The baseline half runs this file as a subprocess from inside the baseline tree (copied
there), so each half imports its own tree's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.api import start_server
from storage.store import open_store
from storage.tokens import create_token


def quantile(samples: list[float], q: float) -> float:
    """The *q* quantile (nearest rank), in milliseconds."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


async def measure(url: str, runs: int, cli_runs: int) -> dict[str, object]:
    """This tree's figures on the store *url*."""
    store = await open_store(url)
    try:
        _, token = await create_token(store, "bench-report", "reader")
        rows = await store.fetch("SELECT count(*) AS n FROM observations", [])
        observations = int(rows[0]["n"])
        sweep = (await store.fetch("SELECT min(sweep_id) AS s FROM rollup", []))[0]["s"]
    finally:
        await store.close()
    out: dict[str, object] = {"observations": observations}
    proc, base = start_server(url)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            for name, params in (("current", {}), ("sweep", {"sweep": sweep})):
                times = []
                for run in range(runs + 1):
                    began = time.perf_counter()
                    answer = await client.get("/api/v1/report", params=params)
                    elapsed = time.perf_counter() - began
                    assert answer.status_code == 200, answer.text
                    if run:  # the first is the warm-up
                        times.append(elapsed)
                out[f"api_{name}"] = (quantile(times, 0.5), quantile(times, 0.95))
                out[f"mqtt_servers_{name}"] = answer.json()["mqtt"]["servers"]
    finally:
        proc.terminate()
        proc.wait()
    with tempfile.TemporaryDirectory() as empty:
        for key, options in (("cli", ()), ("cli_source", ("-X", f"pycache_prefix={empty}"))):
            cli = []
            for _ in range(cli_runs):
                began = time.perf_counter()
                await asyncio.to_thread(
                    subprocess.run, [sys.executable, *options, "-m", "brokerscan.cli",
                                     "report", "--store", url],
                    check=True, capture_output=True,
                    env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
                cli.append(time.perf_counter() - began)
            out[key] = (statistics.median(cli) * 1000, max(cli) * 1000)
    return out


def baseline(tree: Path, url: str, runs: int, cli_runs: int) -> dict[str, object]:
    """The baseline tree's figures: this file run from inside that tree."""
    shutil.copy(__file__, tree / "bench" / "report.py")
    done = subprocess.run([sys.executable, "bench/report.py", "--store", url, "--json",
                           "--runs", str(runs), "--cli-runs", str(cli_runs)],
                          cwd=tree, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    figures: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="made by bench/readside_data.py")
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--baseline-store", default=None)
    parser.add_argument("--runs", type=int, default=20, help="API requests a case")
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one line of JSON (internal)")
    args = parser.parse_args()
    halves: list[tuple[str, dict[str, object]]] = []
    if args.baseline_tree is not None:
        halves.append(("baseline", baseline(args.baseline_tree,
                                            args.baseline_store or args.store,
                                            args.runs, args.cli_runs)))
    mine = asyncio.run(measure(args.store, args.runs, args.cli_runs))
    if args.json:
        print(json.dumps(mine))
        return
    halves.append(("this tree", mine))
    print(f"{args.runs} API requests a case after one warm-up; {args.cli_runs} CLI runs; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}\n")
    print("| tree | observations | API current p50 / p95 ms | API sweep p50 / p95 ms | "
          "`brokerscan report` median / worst ms | the same from source | MQTT servers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, f in halves:
        cur, swp, cli = f["api_current"], f["api_sweep"], f["cli"]
        source = f.get("cli_source", (math.nan, math.nan))
        assert isinstance(cur, list | tuple) and isinstance(swp, list | tuple)
        assert isinstance(cli, list | tuple) and isinstance(source, list | tuple)
        print(f"| {name} | {f['observations']:,} | {cur[0]:.1f} / {cur[1]:.1f} | "
              f"{swp[0]:.1f} / {swp[1]:.1f} | {cli[0]:.0f} / {cli[1]:.0f} | "
              f"{source[0]:.0f} / {source[1]:.0f} | {f['mqtt_servers_current']:,} |")


if __name__ == "__main__":
    main()
