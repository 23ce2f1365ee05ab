"""``brokerscan serve`` against hostile clients (issue 18): each attack of the security
review, replayed against a real server process over a real SQLite store and a real
PostgreSQL store (where the finding concerns the store), and in Chromium for the
cross-site form and the open redirect.

Bad input is a 4xx with a message (year-9999 dates, integers outside a column, cursors
nested 1,400 deep, an export that would fail after its 200); Host names and other sites
are refused; bodies, slow connections and stalled exports are bounded; forwarded headers
are believed only from the proxies named; no redirect is built from the Host header.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from brokerscan.model import AsnInfo
from storage import migrate
from storage.priority import NICE
from storage.search.parse import QueryError, parse
from storage.store import open_store
from tests import servers
from tests.apiserver import ApiServer, make_token
from tests.browser import ARGS, browser, chromium
from tests.pg import fresh_database
from tests.searchref import make_search_results
from tests.waiting import HANG, wait_for

pytestmark = pytest.mark.integration

#: Each with a 12 KB organisation name: a 7 MB export, more than a socket's buffers hold,
#: so a client that reads nothing really stalls the server's sends.
RESULTS = [r.model_copy(update={"asn": AsnInfo(number=r.asn.number if r.asn else 64500,
                                               organization=f"org {i} " + "x" * 12_000)})
           for i, r in enumerate(make_search_results(600, seed=18))]
SIDES = ["sqlite", "pg"]
#: Short limits, so that a test waits seconds, not the defaults' tens of seconds.
LIMITS = ("--head-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1",
          "--send-timeout", "2")


@dataclass
class Side:
    url: str
    server: ApiServer
    reader: str
    operator: str


@dataclass
class World:
    sides: dict[str, Side]
    workdir: Path
    started: list[ApiServer]

    def serve(self, side: str, *args: str) -> ApiServer:
        server = ApiServer(self.workdir, self.sides[side].url, "--rate-limit", "0", *args)
        self.started.append(server)
        return server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("hostile")
    loop = asyncio.new_event_loop()
    database = fresh_database()
    pg_url = loop.run_until_complete(database.__aenter__())
    started: list[ApiServer] = []
    try:
        loop.run_until_complete(migrate.migrate(pg_url))
        sides: dict[str, Side] = {}
        for name, url in (("sqlite", f"sqlite:///{workdir}/store.db"), ("pg", pg_url)):
            store = loop.run_until_complete(open_store(url))
            loop.run_until_complete(store.write(RESULTS))
            loop.run_until_complete(store.close())
            reader = make_token(url, f"{name} reader")
            operator = make_token(url, f"{name} operator", "operator")
            server = ApiServer(workdir, url, "--rate-limit", "0", *LIMITS)
            started.append(server)
            sides[name] = Side(url, server, reader, operator)
        yield World(sides, workdir, started)
    finally:
        for server in started:
            server.stop()
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


def _error(response: httpx.Response, status: int, needle: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert needle in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]


# --------------------------------------------------------------------------- 500 -> 400

OUT_OF_RANGE = [
    ("last_seen:9999-12-31", "0001 to 9998"),
    ("first_seen:[2026-01-01 TO 9999-12-31]", "0001 to 9998"),
    ("last_seen:[9999-12-31T23:59:59 TO *]", "0001 to 9998"),
    ("first_seen:0001-01-01T00:00:00+01:00", "0001 to 9998"),
    ("mqtt.return_code:40000", "0 to 255"),
    ("mqtt.return_code:[0 TO 40000]", "0 to 255"),
    ("asn:99999999999", "out of range"),
    ("port:70000", "not a port"),
]


@pytest.mark.parametrize("side", SIDES)
def test_out_of_range_values_are_400s_everywhere_the_query_goes(world: World,
                                                                side: str) -> None:
    s = world.sides[side]
    with s.server.client(s.reader) as client:
        for query, needle in OUT_OF_RANGE:
            with pytest.raises(QueryError):
                parse(query)
            for path, extra in (("/api/v1/services", {}), ("/api/v1/count", {}),
                                ("/api/v1/export", {"format": "jsonl"}),
                                ("/api/v1/export", {"format": "csv"}),
                                ("/api/v1/trends", {}),
                                ("/api/v1/diff", {"a": "sw-00", "b": "sw-01"})):
                response = client.get(path, params={"q": query, **extra})
                _error(response, 400, needle)
                assert "position" in response.json()
            explained = client.get("/api/v1/query/explain", params={"q": query})
            assert explained.status_code == 200, explained.text  # documented: always 200
            assert explained.json()["valid"] is False and needle in explained.json()["error"]
        for path in ("/api/v1/services", "/api/v1/count", "/api/v1/report"):
            _error(client.get(path, params={"at": "9999-12-31"}), 400, "0001 to 9998")
        # the same values inside the range are answers, not errors
        for query in ("last_seen:9998-12-31", "mqtt.return_code:255", "port:65535",
                      "first_seen:0001-01-01"):
            assert client.get("/api/v1/count", params={"q": query}).status_code == 200


@pytest.mark.parametrize("side", SIDES)
def test_a_cursor_of_any_depth_is_a_400(world: World, side: str) -> None:
    s = world.sides[side]
    deep = [base64.urlsafe_b64encode(b"[" * n).decode() for n in (1_400, 20_000)]
    deep.append("[" * 1_400)
    with s.server.client(s.reader) as client:
        for cursor in deep:
            _error(client.get("/api/v1/services", params={"cursor": cursor}), 400, "cursor")


@pytest.mark.parametrize("side", SIDES)
def test_an_export_that_cannot_run_fails_before_its_200(world: World, side: str) -> None:
    """The store's first answer is read before the status is sent: an unknown sweep in
    the query is a 200 with no rows, a query the store refuses would be its 4xx/503."""
    s = world.sides[side]
    with s.server.client(s.reader) as client:
        with client.stream("GET", "/api/v1/export",
                           params={"q": "sweep:none-such", "format": "csv"}) as response:
            assert response.status_code == 200
            lines = response.read().decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ip,")  # the header, no rows
        response = client.get("/api/v1/export", params={"q": "mqtt.return_code:40000"})
        _error(response, 400, "0 to 255")


# --------------------------------------------------------------------------- redirects


def test_no_redirect_is_built_from_the_host_header(world: World) -> None:
    s = world.sides["sqlite"]
    with s.server.client(s.reader) as client:
        for path in ("/api/v1/services/", "/api/v1/count/", "/sweeps/", "/docs/"):
            response = client.get(path, headers={"Host": "attacker.example"})
            assert "location" not in response.headers, (path, response.headers)
            assert "attacker.example" not in response.text
            assert response.status_code == 404, (path, response.status_code)


def _raw(server: ApiServer, request: bytes, *, timeout: float = 10.0) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_forwarded_for_is_believed_only_from_the_proxies_named(world: World) -> None:
    """Rotating X-Forwarded-For with bad tokens does not escape the bad-token limit,
    from loopback (once trusted by default) or with a proxy list that does not name the
    client; naming the client's address makes the header count."""
    url = world.sides["sqlite"].url
    for extra in ((), ("--forwarded-allow-ips", "127.250.0.9")):
        server = world.serve("sqlite", "--rate-limit", "1", "--burst", "3", *extra)
        with server.client("bsk_bad") as client:
            statuses = [client.get("/api/v1/count",
                                   headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                        for i in range(8)]
        assert statuses[:3] == [401, 401, 401] and 429 in statuses, (extra, statuses)
        server.stop()
    server = world.serve("sqlite", "--rate-limit", "1", "--burst", "3",
                         "--forwarded-allow-ips", "127.0.0.0/8")
    with server.client("bsk_bad") as client:
        statuses = [client.get("/api/v1/count",
                               headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                    for i in range(8)]
    assert statuses == [401] * 8, statuses  # each forwarded address has its own bucket
    server.stop()
    assert url


# --------------------------------------------------------------------------- hosts, sites


def test_no_auth_answers_only_loopback_host_names(world: World) -> None:
    server = world.serve("sqlite", "--no-auth")
    with server.client() as client:
        for host in ("attacker.example", f"attacker.example:{server.port}", "10.0.0.1",
                     "[2001:db8::1]:80", "127.0.0.1.attacker.example"):
            for path in ("/api/v1/count", "/", "/api/v1/session"):
                response = client.get(path, headers={"Host": host})
                _error(response, 421, "host name")
        for host in (f"localhost:{server.port}", f"{server.host}:{server.port}",
                     "127.0.0.1", f"[::1]:{server.port}"):
            assert client.get("/api/v1/count", headers={"Host": host}).status_code == 200
    allowed = world.serve("sqlite", "--no-auth", "--allowed-host", "scanner.internal")
    with allowed.client() as client:
        assert client.get("/api/v1/count",
                          headers={"Host": "scanner.internal:8080"}).status_code == 200
        _error(client.get("/api/v1/count", headers={"Host": "other.internal"}), 421, "host")


def test_allowed_hosts_with_tokens(world: World) -> None:
    s = world.sides["pg"]
    server = world.serve("pg", "--allowed-host", "brokerscan.example.org")
    with server.client(s.reader) as client:
        assert client.get("/api/v1/count",
                          headers={"Host": "brokerscan.example.org"}).status_code == 200
        _error(client.get("/api/v1/count", headers={"Host": "attacker.example"}), 421,
               "attacker.example")
    with s.server.client(s.reader) as client:  # no --allowed-host: any name, as before
        assert client.get("/api/v1/count", headers={"Host": "any.example"}).status_code == 200


@pytest.mark.parametrize("side", SIDES)
def test_unsafe_methods_refuse_other_sites_in_every_mode(world: World, side: str) -> None:
    s = world.sides[side]
    local = world.serve(side, "--no-auth")
    for server, token in ((s.server, s.operator), (local, None)):
        origin = f"http://{server.host}:{server.port}"
        with server.client(token) as client:
            for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                            {"Sec-Fetch-Site": "cross-site"},
                            {"Sec-Fetch-Site": "same-site", "Origin": origin}):
                for method, path in (("POST", "/api/v1/sweeps/sw-01/cancel"),
                                     ("DELETE", "/api/v1/session"),
                                     ("POST", "/api/v1/session")):
                    response = client.request(method, path, headers=headers,
                                              json={"token": token or "x"})
                    _error(response, 403, "cross-site")
            # the same site, and a script that sends neither header, are served
            for headers in ({"Origin": origin}, {"Sec-Fetch-Site": "same-origin"}, {}):
                response = client.post("/api/v1/sweeps/sw-01/pause", headers=headers)
                assert response.status_code == 404, response.text  # no such sweep
            assert client.get("/api/v1/count",
                              headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


class _Attacker(BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_form_cannot_steer_a_no_auth_server_in_chromium(world: World) -> None:
    """A page of another origin auto-submits a form POST to the --no-auth server (the
    review's attack cancelled a sweep): the browser gets the 403, never the route."""
    server = world.serve("sqlite", "--no-auth")
    target = f"http://{server.host}:{server.port}/api/v1/sweeps/sw-01/cancel"
    page_html = (f'<form id="f" method="post" action="{target}"><input name="x" value="1">'
                 '</form><script>document.getElementById("f").submit()</script>')
    handler = type("Page", (_Attacker,), {"page": page_html.encode()})
    host, port = servers.allocate("api", 8080)
    evil = ThreadingHTTPServer((host, port), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            chrome = playwright.chromium.launch(executable_path=chromium(), args=ARGS)
            try:
                page = chrome.new_page()
                with page.expect_response(lambda r: r.url == target) as answered:
                    page.goto(f"http://{host}:{port}/")
                response = answered.value
                assert response.status == 403, response.text()
                assert "cross-site" in response.json()["error"]
            finally:
                chrome.close()
    finally:
        evil.shutdown()
        evil.server_close()


@pytest.mark.parametrize("next_", ["/%5Cattacker.example/x", "/%09/attacker.example/x",
                                   "//attacker.example/x", "/\\/attacker.example/x",
                                   "https://attacker.example/x", "/./%2F/attacker.example"])
def test_sign_in_never_leaves_the_site(world: World, next_: str) -> None:
    s = world.sides["sqlite"]
    with browser(s.server.url) as b:
        page = b.open()
        page.page.goto(f"{s.server.url}/signin?next={next_}")
        page.ready()
        page.page.fill("#token", s.reader)
        before = page.page.url
        page.page.press("#token", "Enter")
        page.page.wait_for_url(lambda url: url != before)
        page.ready()
        assert page.page.url.startswith(s.server.url + "/"), page.page.url
        assert not page.outside, page.outside
        page.check(allow=frozenset({401}))  # the sign-in page asks who it is first
    assert next_


def test_sign_in_goes_back_to_a_path_of_the_site(world: World) -> None:
    s = world.sides["sqlite"]
    with browser(s.server.url) as b:
        page = b.open()
        page.page.goto(f"{s.server.url}/signin?next=%2Fsearch%3Fq%3Dport%253A1883")
        page.ready()
        page.page.fill("#token", s.reader)
        page.page.press("#token", "Enter")
        page.page.wait_for_url(f"{s.server.url}/search?q=port%3A1883")
        page.ready()
        page.check(allow=frozenset({401}))


# --------------------------------------------------------------------------- bodies


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_large_body_is_refused_while_it_is_read(world: World) -> None:
    s = world.sides["sqlite"]
    server = s.server
    before = _rss_kib(server.process.pid)
    head = (f"POST /api/v1/session HTTP/1.1\r\nHost: {server.host}\r\n"
            "Content-Type: application/json\r\n")
    # a declared length over the limit: refused before a byte of the body is read
    answer = _raw(server, (head + "Content-Length: 209715200\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # chunked, no length: refused once the limit is passed, the rest never held
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        piece = b'{"token": "' + b"a" * 65536
        answer = b""
        try:
            for _ in range(3000):  # up to 200 MB
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        except OSError:
            pass  # the server closed: what we want
        sock.settimeout(10)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert b" 413 " in answer.split(b"\r\n", 1)[0] or answer == b"", answer[:200]
    assert _rss_kib(server.process.pid) - before < 50_000
    with server.client(s.reader) as client:  # and the server still answers
        assert client.get("/api/v1/count").status_code == 200


# --------------------------------------------------------------------------- slow clients


def _closed_within(server: ApiServer, send: list[bytes], seconds: float,
                   pause: float = 0.0) -> float:
    """Seconds until the server closes a connection that sends *send* (a pause between
    pieces), at most *seconds*."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=seconds) as sock:
        for piece in send:
            try:
                sock.sendall(piece)
            except OSError:
                return time.monotonic() - started
            if pause:
                # a slow client's pause, measured by the clock (this is the attack)
                sock.settimeout(pause)
                try:
                    if sock.recv(1) == b"":
                        return time.monotonic() - started
                except TimeoutError:
                    pass
                sock.settimeout(seconds)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            raise AssertionError(f"still open after {seconds} s") from None
        except OSError:
            pass
    return time.monotonic() - started


def test_idle_and_half_sent_connections_are_closed(world: World) -> None:
    server = world.sides["sqlite"].server  # --head-timeout 1, --body-timeout 1
    # connects, sends nothing
    assert _closed_within(server, [], 1 + HANG) >= 0.9
    # half a header, a byte every 0.2 s: the head's deadline is not reset by each byte
    head = f"GET /healthz HTTP/1.1\r\nHost: {server.host}\r\nX-Slow: ".encode()
    took = _closed_within(server, [head[i:i + 1] for i in range(len(head))] + [b"a"] * 60,
                          1 + HANG, pause=0.2)
    assert took < 1 + HANG
    # a body that stops half-way
    body = (f"POST /api/v1/session HTTP/1.1\r\nHost: {server.host}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tok").encode()
    assert _closed_within(server, [body], 1 + HANG) >= 0.9
    # an idle keep-alive connection after an answer
    with socket.create_connection((server.host, server.port), timeout=1 + HANG) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode())
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert time.monotonic() - started < 1 + HANG


def test_stalled_exports_are_bounded_and_let_go(world: World) -> None:
    """Exports that read nothing hold at most the per-token slots; past the send timeout
    the server ends them and gives the slots back."""
    s = world.sides["pg"]
    server = s.server
    request = (f"GET /api/v1/export?format=jsonl HTTP/1.1\r\nHost: {server.host}\r\n"
               f"Authorization: Bearer {s.reader}\r\n\r\n").encode()
    stalled = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.sendall(request)
        stalled.append(sock)
    try:
        with server.client(s.reader) as client:
            def refused() -> httpx.Response | None:
                response = client.get("/api/v1/export")
                return response if response.status_code == 429 else None

            third = wait_for(refused, HANG, "the third export of a token to be refused")
            assert third is not None
            assert "2 at once per token" in third.json()["error"]
            assert third.headers["retry-after"]
            with server.client(s.operator) as other:  # another token has its own slots
                assert other.get("/api/v1/export", params={"q": "port:1"}).status_code == 200
            wait_for(lambda: client.get("/api/v1/export",
                                        params={"q": "port:1"}).status_code == 200,
                     2 + HANG, "the stalled exports to be ended by the send timeout")
    finally:
        for sock in stalled:
            sock.close()
    assert "read nothing" in server.log()


# --------------------------------------------------------------------------- costly reads

#: The review's worst legal query: a bare term over the view as of a day, six facets.
COSTLY = {"q": "rabbit", "at": "2026-03-03",
          "facets": "country,asn,port,product,org,version"}


@dataclass
class Big:
    """A store of 20,000 observations on each side, where :data:`COSTLY` takes seconds."""

    urls: dict[str, str]
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def big(world: World) -> Iterator[Big]:
    loop = asyncio.new_event_loop()
    database = fresh_database()
    pg_url = loop.run_until_complete(database.__aenter__())
    try:
        loop.run_until_complete(migrate.migrate(pg_url))
        urls = {"sqlite": f"sqlite:///{world.workdir}/big.db", "pg": pg_url}
        results = make_search_results(20_000, seed=4, sweeps=2, hosts=10_000)
        for url in urls.values():
            store = loop.run_until_complete(open_store(url))
            for start in range(0, len(results), 5000):
                loop.run_until_complete(store.write(results[start:start + 5000]))
            loop.run_until_complete(store.close())
        yield Big(urls, {side: make_token(url, "big") for side, url in urls.items()})
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.mark.parametrize("side", SIDES)
def test_a_statement_past_the_time_limit_is_stopped(world: World, big: Big,
                                                    side: str) -> None:
    """The costly count takes seconds on SQLite and a few hundred ms on PostgreSQL: a limit
    below that stops it with a 503 that says why, and the server goes on answering."""
    limit = {"sqlite": 0.1, "pg": 0.01}[side]
    server = ApiServer(world.workdir, big.urls[side], "--rate-limit", "0",
                       "--statement-timeout", str(limit))
    world.started.append(server)
    with server.client(big.tokens[side]) as client:
        started = time.monotonic()
        response = client.get("/api/v1/count", params=COSTLY)
        _error(response, 503, "statement time limit")
        assert time.monotonic() - started < limit + HANG
        wait_for(lambda: client.get("/api/v1/count",
                                    params={"q": "port:1883"}).status_code == 200,
                 HANG, "a cheap count to be answered")
    assert "statement time limit" in server.log()


def test_a_long_sqlite_read_blocks_no_other_request(world: World, big: Big) -> None:
    """While the costly count runs (seconds), other requests answer at once; a client
    that gives up has its statement interrupted (the read connections come free)."""
    server = ApiServer(world.workdir, big.urls["sqlite"], "--rate-limit", "0",
                       "--log-level", "info")
    world.started.append(server)
    token = big.tokens["sqlite"]
    sent, done = threading.Event(), threading.Event()

    def costly() -> None:
        with server.client(token) as client:
            sent.set()
            assert client.get("/api/v1/count", params=COSTLY).status_code == 200
        done.set()

    thread = threading.Thread(target=costly)
    thread.start()
    try:
        with server.client(token) as client:
            wait_for(sent.is_set, HANG, "the costly request to be sent")
            quick = []
            for _ in range(5):
                started = time.monotonic()
                assert client.get("/readyz").status_code == 200
                assert client.get("/api/v1/count", params={"q": "port:1883"}).status_code == 200
                quick.append(time.monotonic() - started)
            assert not done.is_set(), "the costly request ended too soon to show anything"
            assert max(quick) < 1.0, quick
    finally:
        thread.join()
    # clients that give up: 8 costly requests abandoned after 0.2 s (more than the 4 read
    # connections); their statements are interrupted, so a count answers at once after
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                      timeout=0.2) as client:
        for _ in range(8):
            with pytest.raises(httpx.TimeoutException):
                client.get("/api/v1/count", params=COSTLY)
    with server.client(token) as client:
        wait_for(lambda: server.log().count("went away") >= 8, HANG,
                 "every abandoned request to be cancelled", detail=server.log)
        started = time.monotonic()
        assert client.get("/api/v1/count", params={"q": "port:1883"}).status_code == 200
        assert time.monotonic() - started < 1.0


@pytest.mark.serial  # the costly counts' server time must stay below the charge's cap
def test_the_rate_limit_charges_server_time(world: World, big: Big) -> None:
    """A second of server time costs a second's worth of requests: four costly counts at
    once (within the burst) put the token in debt, so its next request waits (the refill
    pays for one at a time, not four); another token does not."""
    # Slots enough in the costly lane for all four: queued one behind another, the refill
    # while each waits would pay for the one before (the lane has its own test below).
    server = ApiServer(world.workdir, big.urls["sqlite"], "--rate-limit", "1", "--burst", "4",
                       "--costly-slots", "4")
    world.started.append(server)
    other = make_token(big.urls["sqlite"], "other")
    with server.client(big.tokens["sqlite"]) as client:
        statuses: list[int] = []

        def costly() -> None:
            with server.client(big.tokens["sqlite"]) as mine:
                statuses.append(mine.get("/api/v1/count", params=COSTLY).status_code)

        threads = [threading.Thread(target=costly) for _ in range(4)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 4, statuses  # four fit in the burst of four
        # without the charge, the refill over this long (at 1 a second) would admit one
        assert time.monotonic() - started >= 1.0
        refused = client.get("/api/v1/count", params={"q": "port:1883"})
        _error(refused, 429, "rate limit")
        assert int(refused.headers["retry-after"]) >= 1
    with server.client(other) as client:
        assert client.get("/api/v1/count", params={"q": "port:1883"}).status_code == 200


def _thread_nices(pid: int) -> set[int]:
    """The nice value of each of a process's threads (field 19 of /proc/PID/task/TID/stat)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return found


@pytest.mark.serial  # cheap answers in under a second
def test_costly_requests_take_turns_and_cheap_ones_do_not_wait(world: World, big: Big) -> None:
    """One costly slot: once the costly count has run once (its shape measured), the same
    count from another token waits for the slot while the first runs, and past
    ``--costly-wait`` is a 503 that says why; a third token's cheap requests answer at once
    meanwhile, and the lane's gauges show who runs and who waits. The costly statement
    runs on a thread of lowered CPU priority."""
    host, port = servers.allocate("ops", 9100)
    server = ApiServer(world.workdir, big.urls["sqlite"], "--rate-limit", "0",
                       "--costly-slots", "1", "--costly-wait", "1", "--metrics-port", str(port),
                       env={**os.environ, "BROKERSCAN_METRICS_HOST": host})
    world.started.append(server)
    first, second, cheap = (make_token(big.urls["sqlite"], name)
                            for name in ("first", "second", "cheap"))

    def gauge(name: str) -> float:
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
        return next(float(line.split()[1]) for line in text.splitlines()
                    if line.startswith(name + " "))

    with server.client(first) as client:  # the lane measures the shape: costly
        assert client.get("/api/v1/count", params=COSTLY).status_code == 200
    done = threading.Event()

    def costly() -> None:
        with server.client(first) as client:
            assert client.get("/api/v1/count", params=COSTLY).status_code == 200
        done.set()

    thread = threading.Thread(target=costly)
    thread.start()
    try:
        wait_for(lambda: gauge("brokerscan_http_costly_running") == 1, HANG,
                 "the costly count to hold the lane")
        # its statement runs on a thread of lowered priority (storage/priority.py)
        assert NICE in _thread_nices(server.process.pid)
        with server.client(cheap) as client:
            for _ in range(5):
                started = time.monotonic()
                assert client.get("/api/v1/count", params={"q": "port:1883"}).status_code == 200
                assert time.monotonic() - started < 1.0
        with server.client(second) as client:
            started = time.monotonic()
            refused = client.get("/api/v1/count", params=COSTLY)
            waited = time.monotonic() - started
        assert not done.is_set(), "the first costly count ended too soon to show anything"
        _error(refused, 503, "busy with costly queries")
        assert refused.headers["retry-after"] == "5"
        assert 1.0 <= waited < 1.0 + HANG
    finally:
        thread.join()
    samples = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    assert "brokerscan_http_costly_refused_total 1.0" in samples
    assert gauge("brokerscan_http_costly_running") == 0
    assert gauge("brokerscan_http_costly_waiting") == 0
    with server.client(second) as client:  # the slot is free again
        assert client.get("/api/v1/count", params=COSTLY).status_code == 200


@pytest.mark.parametrize("side", SIDES)
def test_facets_are_deduplicated_and_capped(world: World, side: str) -> None:
    s = world.sides[side]
    with s.server.client(s.reader) as client:
        once = client.get("/api/v1/count", params={"facets": "country:5"}).json()
        many = client.get("/api/v1/count",
                          params={"facets": ",".join(["country:3", "country:5",
                                                      "location.country_code"] * 14)})
        assert many.status_code == 200, many.text
        assert many.json()["facets"] == once["facets"]  # one facet, the larger size
        thirteen = ("country,asn,port,product,org,version,tls,anonymous,status,transport,"
                    "protocol,mqtt.level,amqp.family")
        _error(client.get("/api/v1/count", params={"facets": thirteen}), 400, "at most 12")
