"""The dashboard in a real browser (Debian's Chromium through Playwright), served by a real
``brokerscan serve`` from a PostgreSQL store filled by two real scans of a small loopback
fleet: Mosquitto (anonymous, with a password file, with TLS and a two-certificate chain),
amqtt, and the machine's Mosquitto and RabbitMQ on 127.0.0.1.

Between the scans the password-protected Mosquitto stops and another anonymous one
starts, so the second scan has something new and something gone. Every page is watched:
no request may leave the server under test, and no console error may appear
(tests/browser.py). Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import asyncpg
import httpx
import pytest

from tests import servers
from tests.apiserver import ApiServer, make_token
from tests.browser import Browser, Watched, browser, off_loop, screenshot
from tests.certs import Pki
from tests.integration.sweepfleet import Fleet

pytestmark = pytest.mark.integration

PORTS = "1883,8883,5672"


@dataclass
class Stack:
    """The store, its two scans, and which address is which broker."""

    fleet: Fleet
    first: str
    second: str
    anonymous: str
    password: str
    tls: str
    amqtt: str
    started: str
    records: list[dict[str, object]]


def _scan(fleet: Fleet, targets: list[str], output: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "brokerscan.cli", "scan", *targets, "-p", PORTS,
         "--allow-reserved", "--progress", "off", "--connect-timeout", "1", "--io-timeout", "2",
         "--timeout", "4", "--store", fleet.database_url, "-o", str(output)],
        env=fleet.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"scan (scan-[0-9T]+-[0-9a-f]+)", proc.stderr)
    assert match, proc.stderr
    return match.group(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("webstack")
    fleet = Fleet(work)
    fleet.setup()
    brokers: list[servers.ServerProcess] = []
    try:
        def start(name: str, port: int, **options: Any) -> str:
            host, port = servers.allocate("web", port)
            brokers.append(servers.start_mosquitto(work / name, host, port, **options))
            return host

        anonymous = start("anon", 1883)
        password = start("password", 1883, users={"brokerscan": "pw"})
        tls = start("tls", 8883, certfile=pki.chained.cert_path, keyfile=pki.chained.key_path)
        amqtt_host, _ = servers.allocate("web", 1883)
        brokers.append(servers.start_amqtt(work / "amqtt", amqtt_host, 1883))
        hosts = [anonymous, password, tls, amqtt_host, "127.0.0.1"]
        first = _scan(fleet, hosts, work / "first.jsonl")
        brokers[1].stop()
        started = start("started", 1883)
        second = _scan(fleet, [*hosts, started], work / "second.jsonl")
        records = [json.loads(line) for name in ("first", "second")
                   for line in (work / f"{name}.jsonl").read_text().splitlines()]
        yield Stack(fleet, first, second, anonymous, password, tls, amqtt_host, started,
                    records)
    finally:
        for broker in brokers:
            broker.stop()
        fleet.teardown()


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """``brokerscan serve --no-auth`` on the store (one user on loopback: no sign-in)."""
    serve = ApiServer(tmp_path_factory.mktemp("serve"), stack.fleet.database_url, "--no-auth",
                      env=stack.fleet.env)
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def chrome(server: ApiServer) -> Iterator[Browser]:
    with browser(server.url) as b:
        yield b


@pytest.fixture
def api(server: ApiServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _database_counts(url: str) -> dict[str, int]:
    """The census's headline, counted by SQL of our own on the current view."""
    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            one = conn.fetchval
            return {
                "protocol:mqtt": await one("SELECT count(*) FROM services WHERE protocol = 'mqtt'"),
                "protocol:mqtt port:1883 tls:false": await one(
                    "SELECT count(*) FROM services WHERE protocol = 'mqtt' AND port = 1883"
                    " AND transport = 'tcp'"),
                "protocol:mqtt port:8883 tls:true": await one(
                    "SELECT count(*) FROM services WHERE protocol = 'mqtt' AND port = 8883"
                    " AND transport = 'tls'"),
                "protocol:mqtt anonymous:true": await one(
                    "SELECT count(*) FROM services WHERE protocol = 'mqtt' AND anonymous"),
                "protocol:amqp": await one(
                    "SELECT count(*) FROM services WHERE protocol = 'amqp'"),
            }
        finally:
            await conn.close()

    return off_loop(count())


def _headline(page: Watched) -> dict[str, int]:
    links = page.page.locator("#headline a")
    shown = {}
    for i in range(links.count()):
        link = links.nth(i)
        shown[str(link.get_attribute("data-query"))] = int(
            str(link.locator(".n").get_attribute("data-count")))
    return shown


def test_overview_headline_equals_the_report_and_the_database(
        chrome: Browser, api: httpx.Client, stack: Stack) -> None:
    page = chrome.open("/")
    page.page.wait_for_selector(".map svg")
    page.page.wait_for_selector("#headline")
    shown = _headline(page)
    report = api.get("/api/v1/report").json()
    assert shown == {
        "protocol:mqtt": report["mqtt"]["servers"],
        "protocol:mqtt port:1883 tls:false": report["mqtt"]["plaintext_on_1883"],
        "protocol:mqtt port:8883 tls:true": report["mqtt"]["tls_on_8883"],
        "protocol:mqtt anonymous:true": report["mqtt"]["anonymous_accepted"],
        "protocol:amqp": report["amqp"]["services"],
    }
    assert shown == _database_counts(stack.fleet.database_url)
    # our own brokers are in it: 4 Mosquitto (one gone since) and amqtt, and 127.0.0.1's
    assert shown["protocol:mqtt port:8883 tls:true"] >= 1
    assert shown["protocol:mqtt anonymous:true"] >= 3 and shown["protocol:amqp"] >= 1
    # every breakdown drew its chart, the timeline has both scans
    assert page.page.locator("section.card .chart svg").count() >= 8
    page.page.wait_for_function(
        "() => document.querySelectorAll('section[aria-label=\"Across sweeps\"] svg').length > 0")
    screenshot(page, "overview")

    # one sweep's overview: the first scan's report
    page.goto(f"/?sweep={stack.first}")
    first = api.get("/api/v1/report", params={"sweep": stack.first}).json()
    assert _headline(page)["protocol:mqtt"] == first["mqtt"]["servers"]
    assert _headline(page)["protocol:amqp"] == first["amqp"]["services"]

    # a headline number is the total of the search it links to
    page.goto("/")
    page.follow('#headline a[data-query="protocol:mqtt anonymous:true"]')
    assert parse_qs(urlsplit(page.page.url).query)["q"] == ["protocol:mqtt anonymous:true"]
    total = page.page.locator("#total").get_attribute("data-total")
    assert int(str(total)) == shown["protocol:mqtt anonymous:true"]
    page.check()


def test_search_round_trip_facet_paging_and_export(
        chrome: Browser, api: httpx.Client, stack: Stack, tmp_path: Path) -> None:
    page = chrome.open("/search")
    page.page.fill("#q", "protocol:mqtt")
    page.submit("#q")
    page.page.wait_for_selector("#results")
    assert parse_qs(urlsplit(page.page.url).query)["q"] == ["protocol:mqtt"]
    mqtt = api.get("/api/v1/count", params={"q": "protocol:mqtt"}).json()["total"]
    assert int(str(page.page.locator("#total").get_attribute("data-total"))) == mqtt
    assert page.page.locator("#results tbody tr").count() == mqtt

    # a facet adds its filter to the query
    page.follow('a[data-facet="anonymous"][data-value="false"]')
    query = parse_qs(urlsplit(page.page.url).query)["q"][0]
    assert query == "protocol:mqtt anonymous:false"
    refused = api.get("/api/v1/count", params={"q": query}).json()["total"]
    assert refused >= 1  # the password-protected broker, as last seen
    rows = page.page.locator("#results tbody tr")
    assert rows.count() == refused
    assert any(stack.password in text for text in rows.all_inner_texts())
    screenshot(page, "search")

    # pages of two, by cursor, cover every service once
    everything = api.get("/api/v1/count").json()["total"]
    page.goto("/search?limit=2")
    seen: list[str] = []
    while True:
        cells = page.page.locator("#results tbody tr td:nth-child(1)").all_inner_texts()
        ports = page.page.locator("#results tbody tr td:nth-child(2)").all_inner_texts()
        seen += [f"{ip}:{port}" for ip, port in zip(cells, ports, strict=True)]
        following = page.page.locator("#next-page")
        if following.count() == 0:
            break
        page.follow("#next-page")
    assert len(seen) == everything and len(set(seen)) == everything

    # the whole result set as CSV and as JSON lines
    page.goto("/search?q=protocol%3Amqtt")
    for kind in ("csv", "jsonl"):
        with page.page.expect_download() as download:
            page.page.click(f"#export-{kind}")
        saved = tmp_path / f"export.{kind}"
        download.value.save_as(saved)
        text = saved.read_text()
        if kind == "csv":
            rows_out = list(csv.reader(io.StringIO(text)))
            assert len(rows_out) - 1 == mqtt  # a header, then one row per service
        else:
            lines = text.splitlines()
            assert len(lines) == mqtt
            assert {json.loads(line)["protocol"] for line in lines} == {"mqtt"}
    page.check()


def test_a_bad_query_shows_the_message_and_marks_the_place(
        chrome: Browser, api: httpx.Client) -> None:
    query = "protocol:mqtt AND port:[1883 TO"
    answer = api.get("/api/v1/services", params={"q": query})
    assert answer.status_code == 400
    error = answer.json()
    page = chrome.open(f"/search?{urlencode({'q': query})}")
    box = page.page.locator("#query-error")
    box.wait_for()
    assert error["error"] in box.inner_text()
    marked = page.page.locator("#query-error mark").inner_text()
    position = error["position"]
    assert marked == (query[position] if position < len(query) else " ")
    assert page.page.locator("#results").count() == 0

    # while typing, the API's explain says what is wrong before anything is sent
    page.page.fill("#q", "port:abc")
    page.page.locator("#explain .error").wait_for()
    explained = api.get("/api/v1/query/explain", params={"q": "port:abc"}).json()
    assert explained["error"] in page.page.locator("#explain").inner_text()
    screenshot(page, "bad-query", full_page=False, doc=True)
    page.check(allow=frozenset({400}))


def test_host_page_shows_the_certificate_and_its_chain(chrome: Browser, stack: Stack,
                                                       pki: Pki) -> None:
    page = chrome.open(f"/host/{stack.tls}")
    subject = page.page.locator(".cert-subject").first.inner_text()
    record = next(r for r in stack.records if r["ip"] == stack.tls and r["port"] == 8883)
    tls = record["tls"]
    assert isinstance(tls, dict)
    assert subject == tls["certificate"]["subject"] and "CN=chained.test" in subject
    chain = page.page.locator(".tls-chain").first.inner_text()
    assert tls["chain_length"] == 2 and "2 certificates presented" in chain
    assert tls["certificate"]["issuer"] in chain  # the leaf, issued by the intermediate
    text = page.page.locator("details.obs").first.inner_text()
    assert "TLSv1." in text and "MQTT" in text
    assert page.page.locator("details.obs").count() == 2  # both scans saw it
    assert page.page.locator("pre.hex").first.inner_text().startswith("00000000  20 ")
    screenshot(page, "host", doc=True)
    page.check()


def test_changes_between_the_two_scans_link_to_hosts(chrome: Browser, stack: Stack) -> None:
    page = chrome.open(f"/changes?a={stack.first}&b={stack.second}")
    page.page.wait_for_selector("#new")
    assert f"{stack.started}:1883" in page.page.locator("#new").inner_text()
    assert f"{stack.password}:1883" in page.page.locator("#gone").inner_text()
    assert page.page.locator("#count-new").inner_text() == "1"
    assert page.page.locator("#count-gone").inner_text() == "1"
    screenshot(page, "changes", doc=True)
    page.follow(f'#new a:has-text("{stack.started}:1883")')
    assert urlsplit(page.page.url).path == f"/host/{stack.started}"
    assert page.page.locator("details.obs").count() == 1
    page.check()


@pytest.mark.parametrize("path", ["/", "/search?q=protocol%3Amqtt", "/sweeps", "/changes"])
def test_pages_fit_a_phone(chrome: Browser, path: str) -> None:
    page = chrome.open(path, width=390, height=844)
    page.page.wait_for_timeout(300)  # charts lay out on the next frame
    overflow = page.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{path} is {overflow} px wider than a phone"
    if path == "/":
        screenshot(page, "overview-phone")
    page.check()


def test_keyboard_reaches_the_query_and_the_facets(chrome: Browser) -> None:
    page = chrome.open("/search?q=protocol%3Amqtt")
    page.page.keyboard.press("Tab")
    assert page.page.evaluate("document.activeElement.className") == "skip"
    page.page.keyboard.press("Enter")
    assert page.page.evaluate("document.activeElement.id") == "main"
    reached = set()
    for _ in range(60):
        page.page.keyboard.press("Tab")
        reached.add(page.page.evaluate(
            "document.activeElement.id || document.activeElement.dataset.facet || "
            "document.activeElement.tagName"))
    assert {"q", "protocol", "anonymous"} <= reached
    page.check()


def sign_in(page: Watched, token: str) -> None:
    """Sign in through the form (the page must show it)."""
    page.page.locator("#token").wait_for()
    page.page.fill("#token", token)
    page.page.press("#token", "Enter")


def test_sign_in_keeps_the_token_in_an_http_only_cookie_never_in_a_url(
        chrome: Browser, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> None:
    serve = ApiServer(tmp_path_factory.mktemp("serve-auth"), stack.fleet.database_url,
                      env=stack.fleet.env)
    reader = make_token(stack.fleet.database_url, "web-reader", "reader", env=stack.fleet.env)
    try:
        with browser(serve.url, chrome.playwright) as chrome_auth:
            page = chrome_auth.open()
            urls: list[str] = []
            page.page.on("request", lambda request: urls.append(request.url))
            page.page.goto(f"{serve.url}/search?q=protocol%3Amqtt")
            page.page.wait_for_url("**/signin?next=*")
            sign_in(page, "bsk_not-a-token")
            page.page.locator(".error").wait_for()
            assert "not valid" in page.page.locator(".error").inner_text()
            sign_in(page, reader)
            page.page.wait_for_url("**/search?q=protocol%3Amqtt")
            page.ready()
            assert page.page.locator("#results tbody tr").count() >= 1
            assert "web-reader (reader)" in page.page.locator("#who").inner_text()
            assert not [u for u in urls if reader in u]
            cookies = {c["name"]: c for c in chrome_auth.context.cookies()}
            session = cookies["brokerscan_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict"
            assert page.page.evaluate("document.cookie").find(reader) < 0
            page.page.click("#who button")
            page.page.wait_for_url("**/signin")
            page.page.goto(f"{serve.url}/")
            page.page.wait_for_url("**/signin?next=*")
            page.check(allow=frozenset({401}))
    finally:
        serve.stop()
