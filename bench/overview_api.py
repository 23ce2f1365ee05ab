"""Benchmark: the API answers the overview page asks for (the headline counts, the
report, the CONNACK and AMQP product facets, the countries and networks, the three
trends, the list of sweeps), and the empty query's facets that the facet rollups hold.

    .venv/bin/python bench/overview_api.py --store URL [--requests 10] [--json]

``brokerscan serve --no-auth --rate-limit 0`` of the tree this runs in (run it from that
tree's directory with that tree's venv: ``python -m`` imports from the working directory;
a baseline tree gets a copy of this file) answers from *store*; each request is sent once
to warm up, then *requests* times one after the other; p50 and p95 (nearest rank) of the
client's wall time.

``--rows`` also asks each count and trend once more with ``ip:0.0.0.0/0`` added to its
query: the same rows (every stored address is IPv4), so the same answer (checked), but a
query over another field, which no rollup holds: the row-by-row baseline, in the same run
and the same server, on any store (a tree from before the rollups cannot open a migrated
store).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apiserver import ApiServer  # noqa: E402

#: (label, path, parameters): what overview.js asks for the current view.
REQUESTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("headline: MQTT servers", "count", {"q": "protocol:mqtt"}),
    ("headline: MQTT anonymous", "count", {"q": "protocol:mqtt anonymous:true"}),
    ("report", "report", {}),
    ("AMQP product facet", "count", {"q": "protocol:amqp", "facets": "product:50"}),
    ("CONNACK facet", "count", {"q": "protocol:mqtt", "facets": "mqtt.return_code:20"}),
    ("countries and networks", "count", {"facets": "country:250,asn:10"}),
    ("trend MQTT per sweep", "trends", {"q": "protocol:mqtt", "interval": "sweep"}),
    ("trend AMQP per sweep", "trends", {"q": "protocol:amqp", "interval": "sweep"}),
    ("trend MQTT anonymous per sweep", "trends",
     {"q": "protocol:mqtt anonymous:true", "interval": "sweep"}),
    ("trend MQTT per day", "trends", {"q": "protocol:mqtt", "interval": "day"}),
    ("sweeps", "sweeps", {}),
    ("empty query, six facets", "count",
     {"facets": "product:10,version:10,mqtt.return_code:8,tls.version:5,cert.trusted:2,"
                "cert.self_signed:2"}),
)


def _rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


def _measure(client: httpx.Client, path: str, params: dict[str, str],
             requests: int) -> tuple[dict[str, float], Any]:
    """One warm-up, then *requests* timed; the figures and the last answer (None, and
    the status in the figures, when the server refused it: a 503 is a query past the
    server's statement time limit)."""
    client.get(path, params=params)
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        answer = client.get(path, params=params)
        times.append((time.perf_counter() - began) * 1000)
    figures: dict[str, Any] = {"p50_ms": round(statistics.median(times), 1),
                               "p95_ms": round(_rank(times, 0.95), 1)}
    if answer.is_error:
        figures["status"] = answer.status_code
        return figures, None
    return figures, answer.json()


def _counts(answer: Any) -> Any:
    """An answer without what says how it was answered (the query, the time taken,
    whether a rollup answered)."""
    return {k: v for k, v in answer.items() if k not in ("query", "q", "query_ms", "rollup")} \
        if isinstance(answer, dict) else answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rows", action="store_true",
                        help="also the same answers counted from the rows (see above)")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overview-") as work:
        server = ApiServer(Path(work), args.store, "--no-auth", "--rate-limit", "0")
        try:
            with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
                for label, path, params in REQUESTS:
                    out[label], answer = _measure(client, path, params, args.requests)
                    if answer is None:
                        raise SystemExit(f"{label}: HTTP {out[label]['status']}")
                    if args.rows and path in ("count", "trends"):
                        by_rows = {**params, "q": f"{params.get('q', '')} ip:0.0.0.0/0"}
                        out[f"{label} (rows)"], same = _measure(client, path, by_rows,
                                                                args.requests)
                        if same is not None and _counts(same) != _counts(answer):
                            raise SystemExit(f"{label}: the rows' answer differs")
        finally:
            server.stop()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for label, figures in out.items():
        refused = f"  (HTTP {figures['status']})" if "status" in figures else ""
        print(f"{label:41} p50 {figures['p50_ms']:8.1f} ms  p95 {figures['p95_ms']:8.1f} ms"
              f"{refused}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
