"""``brokerscan serve``'s metrics, from a real ``serve`` process over a real SQLite store,
scraped on its ``--metrics-port`` as Prometheus would: requests by route template (never
the address asked for) and status, the latency histogram, requests in flight (a request
whose body has not all arrived is one), and the export's bytes, equal to the bytes the
client received. The metrics port needs no token; the API's port answers no ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage.store import open_store
from tests import servers
from tests.apiserver import ApiServer, cli, make_token
from tests.searchref import make_search_results
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RESULTS = make_search_results(60, seed=5)


class Serve:
    def __init__(self, server: ApiServer, store: str, metrics: str, token: str) -> None:
        self.server, self.store, self.metrics, self.token = server, store, metrics, token

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        body = httpx.get(f"{self.metrics}/metrics", timeout=10).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(body) for s in f.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= ls)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    workdir: Path = tmp_path_factory.mktemp("serve-metrics")
    url = f"sqlite:///{workdir}/store.db"

    async def fill() -> None:
        store = await open_store(url)
        try:
            await store.write(RESULTS)
        finally:
            await store.close()

    asyncio.run(fill())
    token = make_token(url, "metrics reader")
    host, port = servers.allocate("ops", 9100)
    env = {**os.environ, "BROKERSCAN_METRICS_HOST": host}
    server = ApiServer(workdir, url, "--rate-limit", "0", "--metrics-port", str(port),
                       env=env)
    try:
        yield Serve(server, url, f"http://{host}:{port}", token)
    finally:
        server.stop()


def test_requests_are_counted_by_route_template_and_status(serve: Serve) -> None:
    before = serve.scrape()
    ips = sorted({r.ip for r in RESULTS})[:3]
    with serve.server.client(serve.token) as client:
        for ip in ips:
            assert client.get(f"/api/v1/hosts/{ip}").status_code == 200
        assert client.get("/api/v1/hosts/10.9.9.9").status_code == 404
        assert client.get("/api/v1/count", params={"q": "port:1883"}).status_code == 200
    with serve.server.client() as anonymous:
        assert anonymous.get("/api/v1/count").status_code == 401
        assert anonymous.get(f"/no/such/{ips[0]}").status_code == 404
        assert anonymous.get("/metrics").status_code == 404  # not on the API's port
    after = serve.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "brokerscan_http_requests_total"
    assert delta(total, route="/api/v1/hosts/{ip}", method="GET", status="200") == 3
    assert delta(total, route="/api/v1/hosts/{ip}", status="404") == 1
    assert delta(total, route="/api/v1/count", status="200") == 1
    assert delta(total, route="/api/v1/count", status="401") == 1
    assert delta(total, route="unmatched", status="404") == 2
    assert delta("brokerscan_http_request_seconds_count", route="/api/v1/hosts/{ip}") == 4
    assert delta("brokerscan_http_request_seconds_bucket", route="/api/v1/hosts/{ip}",
                 le="+Inf") == 4
    assert delta("brokerscan_http_request_seconds_sum", route="/api/v1/hosts/{ip}") > 0
    # no address a client asked for is a label value (or part of one)
    labels = {v for (_, ls) in after for _, v in ls}
    assert not [v for v in labels for ip in [*ips, "10.9.9.9"] if ip in v]


def test_export_bytes_are_the_bytes_sent(serve: Serve) -> None:
    before = serve.scrape()
    with serve.server.client(serve.token) as client:
        body = client.get("/api/v1/export", params={"format": "jsonl"}).content
    assert body.count(b"\n") >= 1
    after = serve.scrape()
    name = "brokerscan_http_response_bytes_total"
    sent = value(after, name, route="/api/v1/export") - value(before, name,
                                                               route="/api/v1/export")
    assert sent == len(body)


def test_in_flight_counts_a_request_being_answered(serve: Serve) -> None:
    def in_flight() -> float:
        return value(serve.scrape(), "brokerscan_http_requests_in_flight")

    assert in_flight() == 0
    host, port = serve.server.host, serve.server.port
    with socket.create_connection((host, port), timeout=10) as sock:
        # the head and half the body: the app waits for the rest, so the request is open
        sock.sendall(b"POST /api/v1/session HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"to")
        wait_for(lambda: in_flight() == 1, 10, "the half-sent request to be in flight")
    wait_for(lambda: in_flight() == 0, 10, "the dropped request to leave the gauge")


def test_metrics_port_needs_no_token_and_says_ready(serve: Serve) -> None:
    ready = httpx.get(f"{serve.metrics}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["role"] == "serve"
    assert httpx.get(f"{serve.metrics}/healthz", timeout=10).status_code == 200


def test_a_taken_metrics_port_is_one_line(serve: Serve) -> None:
    host, port = serve.metrics.removeprefix("http://").rsplit(":", 1)
    api_host, api_port = servers.allocate("api", 8080)
    proc = cli("serve", "--store", serve.store, "--host", api_host, "--port", str(api_port),
               "--metrics-port", port, check=False,
               env={**os.environ, "BROKERSCAN_METRICS_HOST": host})
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"brokerscan: error: serve: cannot serve metrics on "
                                   f"{host}:{port}: Address already in use")
