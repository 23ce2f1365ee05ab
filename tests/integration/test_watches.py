"""Watches end to end: two sweeps' results in a real store (SQLite and PostgreSQL), a watch
on an address range, ``brokerscan watch ...`` as child processes, deliveries to a real
HTTP receiver and a real SMTP server (aiosmtpd), both on loopback.

The scenario: between sweep 1 and sweep 2 one broker of the range became anonymous, one
anonymous broker appeared, one broker that needs a password appeared, and anonymous
brokers appeared outside the range. The watch ``protocol:mqtt anonymous:true`` on the
range must report exactly the two new anonymous brokers of sweep 2, each delivered once
(the receiver fails the first two tries of one of them: the third is delivered), signed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509

from brokerscan.model import MqttResult, Protocol, ScanResult, Status, Transport
from brokerscan.settings import Settings
from scheduler.notify import sign
from scheduler.watchloop import WatchLoop
from storage.store import open_store
from storage.watches import create_watch, list_deliveries
from tests import servers
from tests.apiserver import ApiServer, make_token
from tests.browser import Watched, browser, off_loop, screenshot
from tests.certs import Pki, issue, write_issued
from tests.services import RABBIT_URL, new_names
from tests.waiting import HANG, wait_for_async

pytestmark = pytest.mark.integration

SECRET = "s3cret-key"
RANGE = "127.60.0.0/16"
FIRST = datetime(2026, 12, 1, 6, tzinfo=UTC)
SECOND = FIRST + timedelta(days=7)


def mqtt(sweep: str, started: datetime, ip: str, *, anonymous: bool) -> ScanResult:
    return ScanResult(
        sweep_id=sweep, sweep_started_at=started, ip=ip, port=1883, transport=Transport.TCP,
        observed_at=started + timedelta(minutes=1), status=Status.SUCCESS,
        protocol=Protocol.MQTT,
        mqtt=MqttResult(protocol_level=4, return_code=0 if anonymous else 5,
                        return_code_name="accepted" if anonymous else "not-authorized",
                        session_present=False, anonymous=anonymous, accepted_levels=[4]))


SWEEP_1 = [mqtt("sw-1", FIRST, "127.60.0.1", anonymous=True),
           mqtt("sw-1", FIRST, "127.60.0.2", anonymous=False),
           mqtt("sw-1", FIRST, "127.61.0.5", anonymous=True)]
SWEEP_2 = [mqtt("sw-2", SECOND, "127.60.0.1", anonymous=True),   # unchanged
           mqtt("sw-2", SECOND, "127.60.0.2", anonymous=True),   # became anonymous
           mqtt("sw-2", SECOND, "127.60.0.3", anonymous=True),   # new, anonymous
           mqtt("sw-2", SECOND, "127.60.0.4", anonymous=False),  # new, needs a password
           mqtt("sw-2", SECOND, "127.61.0.6", anonymous=True)]   # new, outside the range


async def seed(url: str) -> None:
    store = await open_store(url)
    try:
        await store.write(SWEEP_1)
        await store.write(SWEEP_2)
    finally:
        await store.close()


# -- a real HTTP receiver -----------------------------------------------------------------

class Receiver:
    """An HTTP server on loopback that records every request; it answers 500 to the first
    ``fail`` tries of the deliveries whose body names ``fail_ip``. (A receiver that never
    answers: test_watch_loop.py.)"""

    def __init__(self, *, fail_ip: str | None = None, fail: int = 0) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes, int]] = []
        self.fail_ip, self.fail = fail_ip, fail
        self.lock = threading.Lock()
        host, port = servers.allocate("scratch", 0)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    delivery = self.headers["X-Brokerscan-Delivery"]
                    failed = sum(1 for _, h, _, c in receiver.requests
                                 if h["X-Brokerscan-Delivery"] == delivery and c != 200)
                    named = receiver.fail_ip is not None and \
                        json.loads(body)["ip"] == receiver.fail_ip
                    code = 500 if named and failed < receiver.fail else 200
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered with 200, verified against their signature."""
        out = []
        with self.lock:
            requests = list(self.requests)
        for _, headers, body, code in requests:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Brokerscan-Signature"], expected)
            assert headers["Content-Type"] == "application/json"
            if code == 200:
                item = json.loads(body)
                assert item["delivery"] == headers["X-Brokerscan-Delivery"]
                out.append(item)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_ip="127.60.0.3", fail=2)
    yield r
    r.stop()


# -- a real SMTP server -------------------------------------------------------------------

class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.tls: list[bool] = []  # per message: was the session inside TLS

    async def handle_DATA(self, server: SMTP, session: Session,
                          envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        self.tls.append(session.ssl is not None)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[str, Mailbox]]:
    host, port = servers.allocate("scratch", 0)
    box = Mailbox()
    controller = Controller(box, hostname=host, port=port)
    controller.start()
    yield f"smtp://{host}:{port}", box
    controller.stop()


# -- the command line ---------------------------------------------------------------------

def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerscan.cli", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def ok(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = cli(env, *args)
    assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def environment(smtp_url: str, allow: str = "127.54.0.0/16") -> dict[str, str]:
    return {**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8", "BROKERSCAN_WATCH_ALLOW": allow,
            "BROKERSCAN_SMTP_URL": smtp_url, "BROKERSCAN_WATCH_RETRY_SECONDS": "0.05",
            "BROKERSCAN_WATCH_TIMEOUT_SECONDS": "5"}


async def test_a_watch_on_a_range_gets_exactly_the_new_anonymous_brokers(
        store_url: str, receiver: Receiver, smtp: tuple[str, Mailbox]) -> None:
    smtp_url, box = smtp
    env = environment(smtp_url)
    await seed(store_url)
    ok(env, "watch", "add", "owner", "--query", "protocol:mqtt anonymous:true",
       "--networks", RANGE, "--webhook", receiver.url + "/hook", "--secret", SECRET,
       "--email", "owner@example.org", "--store", store_url)

    first = json.loads(ok(env, "watch", "evaluate", "sw-1", "--format", "json",
                          "--store", store_url).stdout)
    assert [(e["kind"], e["ip"]) for e in first] == [("new", "127.60.0.1")]
    second = json.loads(ok(env, "watch", "evaluate", "sw-2", "--format", "json",
                           "--store", store_url).stdout)
    assert sorted((e["kind"], e["ip"]) for e in second) == [
        ("new", "127.60.0.3"), ("now_matching", "127.60.0.2")]

    got = [d for d in receiver.delivered() if d["sweep"] == "sw-2"]
    assert sorted((d["kind"], d["ip"], d["port"]) for d in got) == [
        ("new", "127.60.0.3", 1883), ("now_matching", "127.60.0.2", 1883)]
    assert len({d["delivery"] for d in got}) == 2  # each delivered once
    tries = [r for r in receiver.requests if json.loads(r[2])["ip"] == "127.60.0.3"]
    assert [code for *_, code in tries] == [500, 500, 200]  # the third try got through
    assert len({r[1]["X-Brokerscan-Delivery"] for r in tries}) == 1  # one idempotency key
    assert all(d["previous_sweep"] == "sw-1" and d["watch"] == "owner" for d in got)

    mails = [m for m in box.messages if "sw-2" in str(m.get_payload())]
    assert sorted(str(m["Subject"]) for m in mails) == [
        "[brokerscan] owner: new 127.60.0.3:1883",
        "[brokerscan] owner: now matching 127.60.0.2:1883"]
    assert all(m["To"] == "owner@example.org" for m in mails)

    log = json.loads(ok(env, "watch", "deliveries", "owner", "--format", "json",
                        "--store", store_url).stdout)
    assert len(log) == 6 and {d["status"] for d in log} == {"delivered"}
    retried = [d for d in log if d["channel"] == "webhook" and d["ip"] == "127.60.0.3"]
    assert retried[0]["attempts"] == 3 and "HTTP 500" in retried[0]["last_error"]

    # evaluated again: nothing new is recorded, nothing is sent again
    before = len(receiver.requests), len(box.messages)
    again = json.loads(ok(env, "watch", "evaluate", "sw-2", "--format", "json",
                          "--store", store_url).stdout)
    assert again == []
    assert (len(receiver.requests), len(box.messages)) == before


async def test_a_webhook_outside_the_allow_list_is_refused_and_never_dialled(
        tmp_path: Path, receiver: Receiver, smtp: tuple[str, Mailbox]) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    env = environment(smtp[0], allow="127.99.0.0/16,receiver.example")
    await seed(url)
    ok(env, "watch", "add", "out", "--query", "anonymous:true", "--webhook",
       receiver.url + "/hook", "--secret", SECRET, "--store", url)
    ok(env, "watch", "evaluate", "sw-2", "--store", url)
    log = json.loads(ok(env, "watch", "deliveries", "--format", "json",
                        "--store", url).stdout)
    assert log and {d["status"] for d in log} == {"refused"}
    assert all(d["attempts"] == 0 and "outside the outbound allow list" in d["last_error"]
               for d in log)
    assert receiver.requests == []


async def test_the_scheduler_evaluates_a_finished_sweep_once_and_delivers(
        migrated_url: str, receiver: Receiver) -> None:
    """What the dispatch loop runs when a sweep ends (scheduler/watchloop.py): wait for
    the stream to be empty (this namespace's queues, on the machine's RabbitMQ), evaluate,
    deliver, retry; a second finish of the same sweep adds nothing."""
    await seed(migrated_url)
    settings = Settings(store_url=migrated_url, results_url=RABBIT_URL,
                        namespace=new_names().namespace, watch_allow=["127.54.0.0/16"],
                        watch_retry_seconds=0.05, watch_timeout_seconds=HANG)
    loop = WatchLoop(settings, settle=0.05)
    store = await open_store(migrated_url)
    try:
        await create_watch(store, "owner", "protocol:mqtt anonymous:true", networks=[RANGE],
                           webhook_url=receiver.url + "/hook", secret=SECRET)
        assert await loop.sweep_finished("sw-2") == 2

        async def all_delivered() -> bool:
            await loop.tick()
            log = await list_deliveries(store, "owner")
            return len(log) == 2 and all(d.status == "delivered" for d in log)
        await wait_for_async(all_delivered, HANG, "both deliveries, one after 3 tries")
        assert sorted((d["kind"], d["ip"]) for d in receiver.delivered()) == [
            ("new", "127.60.0.3"), ("now_matching", "127.60.0.2")]
        again = WatchLoop(settings, settle=0.05)  # a restarted scheduler, say
        try:
            assert await again.sweep_finished("sw-2") == 0
        finally:
            await again.close()
    finally:
        await loop.close()
        await store.close()


def test_signature_is_over_the_exact_body() -> None:
    body = b'{"a":1}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("args", "needle"), [
    (["--query", "anonymous:", "--webhook", "http://127.54.0.1/", "--secret", "s"],
     "--query"),
    (["--networks", "10.0.0.0/33", "--email", "a@b.example"], "not an IPv4 network"),
    (["--query", "anonymous:true"], "needs --webhook URL or --email"),
    (["--webhook", "http://127.54.0.1/"], "needs --secret"),
    (["--webhook", "ftp://127.54.0.1/", "--secret", "s"], "not an http:// or https:// URL"),
    (["--email", "not an address"], "not one email address"),
    (["--email", "a@b.example", "--cert-expiry-days", "-1"], "--cert-expiry-days"),
    (["--email", "a@b.example", "--cert-expiry-days", "soon"], "--cert-expiry-days"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                          needle: str) -> None:
    env = environment("smtp://127.0.0.1:1")
    proc = cli(env, "watch", "add", "w", *args, "--store", f"sqlite:///{tmp_path}/s.db")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_names_are_unique_and_removal_needs_a_watch(tmp_path: Path) -> None:
    env = environment("smtp://127.0.0.1:1")
    store = f"sqlite:///{tmp_path}/s.db"
    ok(env, "watch", "add", "w", "--email", "a@b.example", "--store", store)
    proc = cli(env, "watch", "add", "w", "--email", "a@b.example", "--store", store)
    assert proc.returncode == 2 and "exists already" in proc.stderr
    ok(env, "watch", "remove", "w", "--store", store)
    proc = cli(env, "watch", "remove", "w", "--store", store)
    assert proc.returncode == 2 and "no watch 'w'" in proc.stderr


def test_the_api_manages_watches_for_operators_only(
        tmp_path: Path, receiver: Receiver, smtp: tuple[str, Mailbox]) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    env = environment(smtp[0])
    operator, reader = (make_token(url, name, role, env=env)
                        for name, role in (("op", "operator"), ("rd", "reader")))
    server = ApiServer(tmp_path, url, env=env)
    try:
        body = {"name": "owner", "query": "protocol:mqtt anonymous:true",
                "networks": [RANGE], "webhook_url": receiver.url + "/hook",
                "secret": SECRET, "email": "owner@example.org"}
        with server.client(reader) as client:
            assert client.get("/api/v1/watches").status_code == 403
            assert client.post("/api/v1/watches", json=body).status_code == 403
        with server.client(operator) as client:
            made = client.post("/api/v1/watches", json=body)
            assert made.status_code == 201, made.text
            assert "secret" not in made.json() and made.json()["networks"] == [RANGE]
            again = client.post("/api/v1/watches", json=body)
            assert again.status_code == 409
            bad = client.post("/api/v1/watches", json={**body, "name": "b",
                                                       "query": "anonymous:"})
            assert bad.status_code == 400 and "--query" in bad.json()["error"]
            assert client.post("/api/v1/watches", json={
                **body, "name": "b", "cert_expiry_days": -1}).status_code in (400, 422)
            soon = client.post("/api/v1/watches", json={**body, "name": "soon",
                                                        "cert_expiry_days": 30})
            assert soon.status_code == 201 and soon.json()["cert_expiry_days"] == 30
            assert client.delete("/api/v1/watches/soon").status_code == 200
            assert [w["name"] for w in client.get("/api/v1/watches").json()] == ["owner"]
            sent = client.post("/api/v1/watches/owner/test").json()
            assert sorted((d["channel"], d["status"]) for d in sent) == [
                ("email", "delivered"), ("webhook", "delivered")]
            assert [d["kind"] for d in receiver.delivered()] == ["test"]
            assert len(smtp[1].messages) == 1
            log = client.get("/api/v1/watches/owner/deliveries").json()
            assert {d["id"] for d in log} == {d["id"] for d in sent}
            assert client.get("/api/v1/watches/nope/deliveries").status_code == 404
            assert client.delete("/api/v1/watches/owner").status_code == 200
            assert client.get("/api/v1/watches").json() == []
    finally:
        server.stop()


def test_watch_test_sends_a_signed_test_event(tmp_path: Path, receiver: Receiver,
                                              smtp: tuple[str, Mailbox]) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    env = environment(smtp[0])
    ok(env, "watch", "add", "w", "--webhook", receiver.url + "/hook", "--secret", SECRET,
       "--store", url)
    out = ok(env, "watch", "test", "w", "--store", url).stdout
    assert "delivered" in out
    assert [d["kind"] for d in receiver.delivered()] == ["test"]
    receiver.server.shutdown()  # nobody answers any more: exit 1, the error logged
    receiver.server.server_close()
    proc = cli(env, "watch", "test", "w", "--store", url)
    assert proc.returncode == 1 and "pending" in proc.stdout, proc.stdout


def test_email_goes_through_starttls_when_the_server_offers_it(tmp_path: Path,
                                                               pki: Pki) -> None:
    """An SMTP server that offers STARTTLS and refuses mail without it (its certificate
    from the test CA, which the child process trusts through SSL_CERT_FILE)."""
    host, port = servers.allocate("scratch", 0)
    cert, key = issue("smtp.test", pki.ca,
                      sans=[x509.IPAddress(ipaddress.IPv4Address(host))])
    issued = write_issued(tmp_path, "smtp", cert, key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    box = Mailbox()
    controller = Controller(box, hostname=host, port=port, tls_context=context,
                            require_starttls=True)
    controller.start()
    try:
        url = f"sqlite:///{tmp_path}/store.db"
        env = {**environment(f"smtp://{host}:{port}"),
               "SSL_CERT_FILE": str(pki.ca.cert_path)}
        ok(env, "watch", "add", "w", "--email", "owner@example.org", "--store", url)
        out = ok(env, "watch", "test", "w", "--store", url).stdout
        assert "delivered" in out
        assert len(box.messages) == 1 and box.tls == [True]
    finally:
        controller.stop()


def _sign_in(page: Watched, token: str) -> None:
    page.goto("/signin")
    page.page.fill("#token", token)
    page.page.press("#token", "Enter")
    page.page.wait_for_url("**/")


def test_the_watches_page_shows_the_log_and_sends_a_test_for_operators(
        tmp_path: Path, receiver: Receiver, smtp: tuple[str, Mailbox]) -> None:
    """The dashboard's Watches page in Chromium: the delivery log of a watch after two
    sweeps (the retried delivery with its three tries), a test event sent by its button;
    a reader is told the page is for operators."""
    url = f"sqlite:///{tmp_path}/store.db"
    env = environment(smtp[0])
    off_loop(seed(url))
    ok(env, "watch", "add", "owner", "--query", "protocol:mqtt anonymous:true", "--networks",
       RANGE, "--webhook", receiver.url + "/hook", "--secret", SECRET, "--store", url)
    ok(env, "watch", "evaluate", "sw-2", "--against", "sw-1", "--store", url)
    operator, reader = (make_token(url, name, role, env=env)
                        for name, role in (("op", "operator"), ("rd", "reader")))
    server = ApiServer(tmp_path, url, env=env)
    try:
        with browser(server.url) as chrome:
            page = chrome.open()
            _sign_in(page, operator)
            page.goto("/watches")
            log = page.page.inner_text("#log-owner")
            assert "127.60.0.3:1883" in log and "127.60.0.2:1883" in log
            assert "delivered" in log and "HTTP 500" in log
            page.page.click("#test-owner")
            page.page.wait_for_selector("#message-owner")
            assert "webhook delivered" in page.page.inner_text("#message-owner")
            assert [d["kind"] for d in receiver.delivered()].count("test") == 1
            screenshot(page, "watches")
            page.check(allow=frozenset({401}))  # the sign-in page's session, before it
        with browser(server.url) as chrome:
            page = chrome.open()
            _sign_in(page, reader)
            page.goto("/watches")
            assert "for operator tokens" in page.page.inner_text("#page")
            page.check(allow=frozenset({401, 403}))
    finally:
        server.stop()
