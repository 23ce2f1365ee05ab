"""Benchmark: the API answers the overview page asks for (the headline counts, the
report, the CONNACK and AMQP product facets, the countries and networks, the three
trends, the list of sweeps), and the empty query's facets that the facet rollups hold.

    .venv/bin/python bench/overview_api.py --store URL [--requests 10] [--json]

``brokerscan serve --no-auth --rate-limit 0`` of the tree this runs in (run it from that
tree's directory with that tree's venv: ``python -m`` imports from the working directory;
a baseline tree gets a copy of this file) answers from *store*; each request is sent once
to warm up, then *requests* times one after the other; p50 and p95 (nearest rank) of the
client's wall time.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-overview-") as work:
        server = ApiServer(Path(work), args.store, "--no-auth", "--rate-limit", "0")
        try:
            with httpx.Client(base_url=f"{server.url}/api/v1", timeout=300) as client:
                for label, path, params in REQUESTS:
                    client.get(path, params=params).raise_for_status()
                    times = []
                    for _ in range(args.requests):
                        began = time.perf_counter()
                        client.get(path, params=params).raise_for_status()
                        times.append((time.perf_counter() - began) * 1000)
                    out[label] = {"p50_ms": round(statistics.median(times), 1),
                                  "p95_ms": round(_rank(times, 0.95), 1)}
        finally:
            server.stop()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for label, figures in out.items():
        print(f"{label:34} p50 {figures['p50_ms']:8.1f} ms  p95 {figures['p95_ms']:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
