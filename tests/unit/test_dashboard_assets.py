"""The dashboard's pages and assets without a browser (the browser tests are
tests/integration/test_dashboard*.py): every page renders with its module and the modules it
imports, assets come gzipped with an ETag, nothing names another host, the vendored files
carry their licences, and the tables the JavaScript keeps agree with the Python ones."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from brokerscan.report import Report
from brokerscan.web.app import CSP, PAGES, dashboard_routes
from brokerscan.web.assets import load_assets
from storage.search.fields import FIELDS, Kind
from storage.search.parse import parse
from tests.searchref import evaluate, items_of, make_search_results
from workers.protocols.mqtt import REASON_CODES_5, RETURN_CODES_3

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "brokerscan" / "web" / "static"
JS = STATIC / "js"


class Client:
    """Requests straight to the ASGI app (no socket): httpx's ASGI transport."""

    def __init__(self) -> None:
        self.app = Starlette(routes=dashboard_routes())

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                ) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://web") as c:
                return await c.request(method, path, headers=headers)

        return asyncio.run(send())

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def head(self, path: str) -> httpx.Response:
        return self.request("HEAD", path)


@pytest.fixture(scope="module")
def client() -> Client:
    return Client()


def _paths() -> list[str]:
    return [p.replace("{ip}", "192.0.2.1").replace("{sweep}", "scan-1") for p in PAGES]


@pytest.mark.parametrize("path", _paths())
def test_every_page_loads_its_module_and_preloads_what_it_imports(client: Client,
                                                                  path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    html = answer.text
    module = re.search(r'<script type="module" src="(/assets/js/\w+\.js)">', html)
    assert module, html
    preloads = re.findall(r'<link rel="modulepreload" href="([^"]+)">', html)
    assert "/assets/js/ui.js" in preloads and "/assets/js/api.js" in preloads
    for asset in [module.group(1), *preloads, "/assets/app.css", "/assets/icon.svg"]:
        assert client.get(asset).status_code == 200, asset
    assert "{{" not in html


def test_no_page_waits_for_the_chart_library_before_its_first_paint(client: Client) -> None:
    """The overview imports its charts (and so ECharts, 675 kB) dynamically, after the
    headline; no page preloads them."""
    for path in _paths():
        assert "echarts" not in client.get(path).text and "charts.js" not in client.get(path).text
    assert 'import("./charts.js")' in (JS / "overview.js").read_text()


def test_assets_are_gzipped_revalidated_and_typed(client: Client) -> None:
    plain = client.get("/assets/vendor/echarts.js", headers={"Accept-Encoding": "identity"})
    packed = client.get("/assets/vendor/echarts.js", headers={"Accept-Encoding": "gzip"})
    assert plain.headers.get("content-encoding") is None
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.content == plain.content  # the client undid the gzip
    assert packed.headers["content-type"] == "text/javascript; charset=utf-8"
    assert packed.headers["cache-control"] == "no-cache"
    again = client.get("/assets/vendor/echarts.js",
                       headers={"If-None-Match": plain.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.head("/assets/app.css").status_code == 200
    assert client.get("/assets/vendor/world.json").headers["content-type"] == "application/json"
    missing = client.get("/assets/nothing.js")
    assert missing.status_code == 404 and "nothing.js" in missing.text


def test_the_dashboards_own_files_name_no_other_host() -> None:
    for path in STATIC.rglob("*"):
        if path.is_file() and "vendor" not in path.parts and path.suffix != ".svg":
            text = path.read_text()
            assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}", text), path
    assert not re.search(r"https?:", (ROOT / "brokerscan" / "web" / "page.html").read_text())


def test_the_chart_library_calls_no_other_host() -> None:
    """ECharts holds URLs only as XML namespace names and in its licence comment."""
    text = (STATIC / "vendor" / "echarts.js").read_text()
    urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
    assert urls <= {"http://www.w3.org/1999/xlink", "http://www.w3.org/2000/svg",
                    "http://www.w3.org/2000/xmlns/", "http://www.w3.org/XML/1998/namespace",
                    "https://github.com/ecomfe/zrender/blob/master/LICENSE"}, urls


def test_every_import_of_every_module_is_shipped() -> None:
    assets = load_assets()
    imports = 0
    for name in assets:
        if not name.endswith(".js") or name.startswith("vendor/"):
            continue
        text = assets[name].body.decode()
        for target in re.findall(r'^import\b[^;]*?from "([^"]+)";', text, re.M):
            path = target.removeprefix("/assets/") if target.startswith("/assets/") \
                else f"js/{target.removeprefix('./')}"
            assert path in assets, f"{name} imports {target}"
            imports += 1
        for target in re.findall(r'import\("(\./[^"]+)"\)', text):
            assert f"js/{target.removeprefix('./')}" in assets, f"{name} imports {target}"
        for fetched in re.findall(r'fetch\("(/assets/[^"]+)"\)', text):
            assert fetched.removeprefix("/assets/") in assets, f"{name} fetches {fetched}"
    assert imports > 15  # the pattern sees them


def test_vendored_packages_are_listed_with_their_licences() -> None:
    listing = (STATIC / "vendor" / "LICENSES.md").read_text()
    lock = json.loads((ROOT / "frontend" / "package-lock.json").read_text())["packages"]
    for name in ("echarts", "zrender", "tslib", "world-atlas", "topojson-client",
                 "i18n-iso-countries"):
        version = lock[f"node_modules/{name}"]["version"]
        assert f"| {name} | {version} |" in listing, name
        assert list((STATIC / "vendor" / "licenses").glob(f"{name}-*")), name


def test_the_world_map_is_named_by_the_codes_enrichment_gives() -> None:
    world = json.loads((STATIC / "vendor" / "world.json").read_text())
    names = json.loads((STATIC / "vendor" / "countries.json").read_text())
    codes = [f["properties"]["name"] for f in world["features"]]
    assert len(codes) > 170
    for code in codes:
        assert code in names or (code.startswith("(") and code.endswith(")")), code
    assert {"US", "DE", "CN", "BR", "NO", "FR", "XK"} <= set(codes)
    for feature in world["features"]:  # no band across the map (antimeridian)
        rings = feature["geometry"]["coordinates"]
        if feature["geometry"]["type"] == "Polygon":
            rings = [rings]
        for polygon in rings:
            for ring in polygon:
                jumps = [b for a, b in zip(ring, ring[1:], strict=False) if abs(b[0] - a[0]) > 180]
                assert not jumps or feature["properties"]["name"] == "AQ", feature["properties"]


def test_connack_names_are_the_probes() -> None:
    text = (JS / "ui.js").read_text()
    table = text[text.index("export const CONNACK = {"):]
    table = table[:table.index("};")]
    shown = {int(code): name for code, name in re.findall(r'(\d+): "([^"]+)"', table)}
    expected = dict(RETURN_CODES_3)
    expected.update({code: name for code, name in REASON_CODES_5.items() if code >= 0x80})
    assert shown == expected


#: What each headline query counts in the census report.
_HEADLINE_NUMBERS = {
    "protocol:mqtt": ("mqtt", "servers"),
    "protocol:mqtt port:1883 tls:false": ("mqtt", "plaintext_on_1883"),
    "protocol:mqtt port:8883 tls:true": ("mqtt", "tls_on_8883"),
    "protocol:mqtt anonymous:true": ("mqtt", "anonymous_accepted"),
    "protocol:amqp": ("amqp", "services"),
}


def test_the_headline_counts_the_census_reports_numbers() -> None:
    """Each headline number is the total of the search it links to, and that total is
    the census report's number (counted over the same records by the reference
    evaluator of the search and by the report's facts)."""
    text = (JS / "overview.js").read_text()
    block = text[text.index("const HEADLINE = ["):]
    queries = re.findall(r'\["[^"]+", "([^"]+)"\]', block[:block.index("];")])
    assert sorted(queries) == sorted(_HEADLINE_NUMBERS)
    results = make_search_results(400, seed=3)
    items = items_of(r.to_json() for r in results)
    report = Report()
    for result in results:
        report.add(result)
    counted = report.as_dict()
    for query in queries:
        section, name = _HEADLINE_NUMBERS[query]
        assert counted[section][name] > 0, query
        assert sum(evaluate(parse(query), item) for item in items) == counted[section][name]


def test_search_facets_are_fields_that_can_be_facets() -> None:
    text = (JS / "search.js").read_text()
    block = text[text.index("const FACETS = ["):]
    facets = re.findall(r'\["([\w.]+)", \d+\]', block[:block.index("];")])
    usable = {f.name for f in FIELDS if f.kind is not Kind.IP}
    assert facets and set(facets) <= usable
