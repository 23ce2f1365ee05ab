"""Benchmark: the dashboard in Chromium over a large store: the overview's first meaningful
paint, the search page's results, and what each page weighs on the wire.

    .venv/bin/python bench/web_paint.py [--store URL] [--runs 5] [--query Q] [--json]
        [--without-diffs]

``brokerscan serve --no-auth --rate-limit 0`` answers from *store* (default: the read-side
benchmark database, ``brokerscan_bench_readside``, built by ``bench/readside_data.py``)
on a loopback address; Debian's Chromium (through Playwright, as in the tests) loads each
page *runs* times, each time with a fresh profile (nothing cached). From the browser's own
timing API (``performance``), measured from the start of navigation:

* overview, **first meaningful paint**: the mark ``brokerscan:headline`` (the census's
  headline numbers are in the page) and the first contentful paint (the page's frame);
  **complete**: ``brokerscan:ready`` (every chart, the map, the timeline and the top
  networks' names);
* search, **results**: ``brokerscan:results`` (a page of 50 results in the table), and
  **complete** (the total and the facets);
* **weight**: bytes transferred (``transferSize`` of the document and of every resource,
  API answers included; the server gzips static files) and the same uncompressed.

Also the slowest API requests of the last run. Best and median of the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.apiserver import ApiServer  # noqa: E402
from tests.browser import browser  # noqa: E402

DEFAULT_STORE = "postgresql://postgres@127.0.0.1:5432/brokerscan_bench_readside"

MEASURE = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const mark = (name) => {
    const found = performance.getEntriesByName(name, "mark");
    return found.length ? found[0].startTime : null;
  };
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  return {
    marks: {
      headline: mark("brokerscan:headline"), results: mark("brokerscan:results"),
      ready: mark("brokerscan:ready"), fcp: fcp ? fcp.startTime : null,
      dom: nav.domContentLoadedEventEnd,
      // every API answer in, but the timeline's diffs of whole sweeps (below 10^6
      // observations they start by themselves, one at a time)
      cards: Math.max(0, ...resources.filter((r) => r.name.includes("/api/v1/")
        && !r.name.includes("/api/v1/diff")).map((r) => r.responseEnd)),
    },
    transferred: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
    decoded: nav.decodedBodySize + resources.reduce((n, r) => n + r.decodedBodySize, 0),
    requests: 1 + resources.length,
    api: resources.filter((r) => r.name.includes("/api/v1/"))
      .map((r) => ({ url: r.name.replace(location.origin, ""), ms: r.duration }))
      .sort((a, b) => b.ms - a.ms),
  };
}"""


def measure(origin: str, path: str, wait_for: str, *, complete: bool = True,
            without_diffs: bool = False) -> dict[str, Any]:
    """One cold load of *path* (a fresh profile), waiting until the page is ready (or,
    without *complete*, only until the mark *wait_for*); *without_diffs*: every diff of
    two sweeps answered at once with nothing (the page then shows no "newly exposed")."""
    with browser(origin) as chrome:
        page = chrome.open()
        if without_diffs:
            page.page.route("**/api/v1/diff?*", lambda route: route.fulfill(
                status=200, content_type="application/json", body="{}"))
        page.page.goto(origin + path)
        if complete:
            page.ready(timeout=120_000)
        page.page.wait_for_function(
            f"() => performance.getEntriesByName('{wait_for}', 'mark').length > 0",
            timeout=120_000)
        result: dict[str, Any] = page.page.evaluate(MEASURE)
        page.check()
        return result


def shoot(origin: str, folder: Path, query: str) -> None:
    """Screenshots of the overview (desktop and phone) and the search (the host, sweep
    and changes pages in docs/screenshots/ come from the browser tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    with browser(origin) as chrome:
        page = chrome.open("/")
        page.page.screenshot(path=str(folder / "overview.png"), full_page=True)
        phone = chrome.open("/", width=390, height=844)
        phone.page.screenshot(path=str(folder / "overview-phone.png"), full_page=False)
        page.goto(f"/search?{urlencode({'q': query})}")
        page.page.screenshot(path=str(folder / "search.png"), full_page=False)
        page.check()


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r["marks"][key] for r in runs if r["marks"][key] is not None]
    if not values:
        return {"best_ms": None, "median_ms": None}
    return {"best_ms": round(min(values), 1), "median_ms": round(statistics.median(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE, help="default: %(default)s")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--query", default="protocol:mqtt anonymous:true",
                        help="the search page's query (default: %(default)s)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--first-only", action="store_true",
                        help="measure the first meaningful paint and the results only (do "
                             "not wait for the rest of each page)")
    parser.add_argument("--without-diffs", action="store_true",
                        help="answer the timeline's diffs of whole sweeps with nothing, at "
                             "once (below 10^6 observations the overview starts them by "
                             "itself and they outlast every other answer)")
    parser.add_argument("--screenshots", metavar="DIR", type=Path,
                        help="also save the overview and the search page there "
                             "(docs/screenshots/ for the README)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-web-") as work:
        try:
            server = ApiServer(Path(work), args.store, "--no-auth", "--rate-limit", "0")
        except AssertionError as exc:  # serve did not come up: its own one-line reason
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise SystemExit(f"web_paint: {lines[-1] if lines else exc}") from None
        try:
            # one warm-up load each: the server's first answers open its pool and caches
            measure(server.url, "/", "brokerscan:headline")
            pages = {
                "overview": ("/", "brokerscan:headline"),
                "search": (f"/search?{urlencode({'q': args.query})}", "brokerscan:results"),
            }
            out: dict[str, Any] = {"store": args.store.rsplit("/", 1)[-1], "runs": args.runs,
                                   "query": args.query}
            for name, (path, mark) in pages.items():
                runs = [measure(server.url, path, mark, complete=not args.first_only,
                                without_diffs=args.without_diffs)
                        for _ in range(args.runs)]
                first = "headline" if name == "overview" else "results"
                out[name] = {
                    first: summary(runs, first), "first_contentful_paint": summary(runs, "fcp"),
                    "complete": summary(runs, "ready"),
                    "answers_but_diffs": summary(runs, "cards"),
                    "transferred_bytes": runs[-1]["transferred"],
                    "decoded_bytes": runs[-1]["decoded"], "requests": runs[-1]["requests"],
                    "slowest_api": [{"url": a["url"], "ms": round(a["ms"], 1)}
                                    for a in runs[-1]["api"][:5]],
                }
            if args.screenshots:
                shoot(server.url, args.screenshots, args.query)
        finally:
            server.stop()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"store {out['store']}, {args.runs} cold loads each, search: {args.query!r}")
    for name in ("overview", "search"):
        data = out[name]
        first = "headline" if name == "overview" else "results"
        print(f"{name:9} {first:9} best {data[first]['best_ms']:7.0f} ms  median "
              f"{data[first]['median_ms']:7.0f} ms | first paint "
              f"{data['first_contentful_paint']['median_ms']:5.0f} ms | complete median "
              f"{data['complete']['median_ms'] or 0:7.0f} ms (every answer but the diffs "
              f"{data['answers_but_diffs']['median_ms'] or 0:.0f} ms) | "
              f"{data['transferred_bytes']:,} B on "
              f"the wire ({data['decoded_bytes']:,} B decoded), {data['requests']} requests")
        for api in data["slowest_api"]:
            print(f"          {api['ms']:8.1f} ms  {api['url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
