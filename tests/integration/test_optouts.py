"""Opt-out requests end to end, on both stores: the storage functions; a real ``brokerscan
serve --identity-page`` whose public page and form need no token while everything else
does; the operators' ``/api/v1/optouts`` and ``brokerscan optout``; hostile clients (a huge
body, bad networks, another site's form, a flood); and the page in headless Chromium, from
the form to the operator's approval. (A running sweep that stops dialling an approved
range: tests/integration/test_optout_sweep.py.)"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from storage import migrate
from storage.optouts import (
    OptOutError,
    approved_networks,
    decide,
    list_optouts,
    submit_optout,
)
from storage.store import open_store
from tests import pg
from tests.apiserver import ApiServer, cli, make_token
from tests.browser import browser, screenshot
from tests.optouts import request_opt_out

pytestmark = pytest.mark.integration

IDENTITY = {"BROKERSCAN_IDENTITY_OPERATOR": "Example Research Lab",
            "BROKERSCAN_IDENTITY_CONTACT": "scans@example.org",
            "BROKERSCAN_IDENTITY_PURPOSE": "Counting exposed message brokers.",
            "BROKERSCAN_IDENTITY_SOURCES": "192.0.2.16/28",
            "BROKERSCAN_CLIENT_ID_PREFIX": "examplelab-"}
FORM = "/scanner/opt-out"
JSON = {"Accept": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store of each kind (a SQLite file; a migrated PostgreSQL database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    url = pg.new_database_url()
    asyncio.run(pg.create_database(url))
    try:
        asyncio.run(migrate.migrate(url))
        yield url
    finally:
        asyncio.run(pg.drop_database(url))


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **IDENTITY, **extra}


async def _storage_round(url: str) -> None:
    store = await open_store(url)
    try:
        first = await submit_optout(store, "198.51.100.7/24, 203.0.113.0/25\n198.51.100.0/24",
                                    " noc@example.net ", "stop please", client="127.0.0.1")
        assert first.state == "pending" and first.contact == "noc@example.net"
        assert first.networks == ("198.51.100.0/24", "203.0.113.0/25")  # canonical, once
        second = await submit_optout(store, "192.0.2.0/24", "https://example.net/abuse")
        assert await approved_networks(store) == []
        approved, changed = await decide(store, first.id, "approved", by="test")
        assert changed and approved.state == "approved" and approved.decided_by == "test"
        again, changed = await decide(store, first.id, "approved", by="someone else")
        assert not changed and again.decided_by == "test"  # idempotent: nothing changed
        rejected, changed = await decide(store, second.id, "rejected", by="test")
        assert changed and rejected.state == "rejected"
        assert [o.id for o in await list_optouts(store, "rejected")] == [second.id]
        assert {o.id for o in await list_optouts(store)} == {first.id, second.id}  # kept
        assert await approved_networks(store) == ["198.51.100.0/24", "203.0.113.0/25"]
        for bad, message in (("10.0.0.0/33", "not an IPv4 network"),
                             ("2001:db8::/32", "not an IPv4 network"),
                             ("0.0.0.0/0", "wider than a /8"), ("", "at least one"),
                             (",".join(f"10.0.{i}.0/24" for i in range(65)), "at most 64")):
            with pytest.raises(OptOutError, match=message):
                await submit_optout(store, bad, "a@b.example")
        with pytest.raises(OptOutError, match="give a contact"):
            await submit_optout(store, "192.0.2.0/24", "  ")
        with pytest.raises(OptOutError, match="no opt-out request"):
            await decide(store, "oo-000000000000", "approved", by="test")
    finally:
        await store.close()


def test_requests_are_stored_listed_and_decided(store: str) -> None:
    asyncio.run(_storage_round(store))


def test_the_public_page_and_the_operators_review(tmp_path: Path, store: str) -> None:
    """Only the page and the form need no token; operators list and decide through the
    API and the CLI, the same records on either store."""
    operator = make_token(store, "op", "operator", env=env())
    reader = make_token(store, "rd", "reader", env=env())
    server = ApiServer(tmp_path, store, "--identity-page", env=env())
    try:
        with server.client() as anonymous:
            page = anonymous.get("/scanner")
            assert page.status_code == 200, page.text
            for text in ("Example Research Lab", "scans@example.org", "192.0.2.16/28",
                         "Counting exposed message brokers.", "<code>examplelab-</code>",
                         "$SYS/broker/version", "1883", "8883", "5672", "5671"):
                assert text in page.text, text
            assert "not configured" not in page.text
            assert "access-control-allow-origin" not in page.headers
            assert "default-src 'self'" in page.headers["content-security-policy"]
            made = anonymous.post(FORM, data={"networks": "198.51.100.0/24",
                                              "contact": "noc@example.net",
                                              "reason": "no thanks"}, headers=JSON)
            assert made.status_code == 201, made.text
            request = made.json()["id"]
            html = anonymous.post(FORM, data={"networks": "203.0.113.0/24",
                                              "contact": "noc@example.net"})
            assert html.status_code == 201 and "Received: request oo-" in html.text
            other = html.text.split("Received: request ")[1].split(" ")[0]
            assert anonymous.get("/api/v1/optouts").status_code == 401
            assert anonymous.post(f"/api/v1/optouts/{request}/approve").status_code == 401
            assert anonymous.get("/api/v1/services").status_code == 401  # the rest: tokens
        with server.client(reader) as client:
            assert client.get("/api/v1/optouts").status_code == 403
        with server.client(operator) as client:
            pending = client.get("/api/v1/optouts", params={"state": "pending"}).json()
            assert {p["id"] for p in pending} == {request, other}
            assert pending[0]["contact"] == "noc@example.net"
            done = client.post(f"/api/v1/optouts/{request}/approve")
            assert done.status_code == 200 and done.json()["changed"] is True
            again = client.post(f"/api/v1/optouts/{request}/approve").json()
            assert again["changed"] is False and again["state"] == "approved"
            assert client.post("/api/v1/optouts/oo-000000000000/approve").status_code == 404
            assert client.post("/api/v1/optouts/nope/approve").status_code == 400
        listed = cli("optout", "list", "--store", store, "--state", "approved", env=env())
        assert request in listed.stdout and "198.51.100.0/24" in listed.stdout
        rejected = cli("optout", "reject", other, "--store", store, env=env())
        assert f"{other} rejected" in rejected.stdout
        kept = cli("optout", "list", "--store", store, "--state", "rejected", env=env())
        assert other in kept.stdout
        bad = cli("optout", "approve", "oo-zz", "--store", store, env=env(), check=False)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
        assert "is not a request id" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        server.stop()


def test_hostile_clients_get_one_line_4xx_and_a_flood_gets_429(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    make_token(store, "op", "operator", env=env())
    plain = ApiServer(tmp_path, store, env=env())  # no --identity-page: no public page
    try:
        with plain.client() as client:
            assert client.get("/scanner").status_code == 404
            assert client.post(FORM, data={"networks": "192.0.2.0/24",
                                           "contact": "a@b.example"}).status_code in (404, 405)
    finally:
        plain.stop()
    server = ApiServer(tmp_path, store, "--identity-page", env=env())
    try:
        with server.client() as client:
            huge = client.post(FORM, content=b"networks=" + b"1" * 200_000,
                               headers={**JSON, "Content-Type":
                                        "application/x-www-form-urlencoded"})
            assert huge.status_code == 413  # the guard: over the server's body limit
            big = client.post(FORM, content=b"networks=" + b"1" * 20_000,
                              headers={**JSON, "Content-Type":
                                       "application/x-www-form-urlencoded"})
            assert big.status_code == 413 and "over 8192 bytes" in big.json()["error"]
            cross = client.post(FORM, data={"networks": "192.0.2.0/24", "contact": "x@y.z"},
                                headers={"Origin": "https://evil.example",
                                         "Sec-Fetch-Site": "cross-site"})
            assert cross.status_code == 403  # another site's form: refused by the guard
            bad = client.post(FORM, data={"networks": "192.0.2.300/24", "contact": "x@y.z"},
                              headers=JSON)
            assert bad.status_code == 400
            assert bad.json() == {"error": "'192.0.2.300/24' is not an IPv4 network (CIDR)"}
            page = client.post(FORM, data={"networks": "<script>", "contact": "x@y.z"})
            assert page.status_code == 400 and "<script>" not in page.text
            assert "&#x27;&lt;script&gt;&#x27; is not an IPv4 network" in page.text
            kind = client.post(FORM, json={"networks": "192.0.2.0/24"}, headers=JSON)
            assert kind.status_code == 415
            statuses = []
            for _ in range(10):
                answer = client.post(FORM, data={"networks": "192.0.2.0/24",
                                                 "contact": "x@y.z"}, headers=JSON)
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    assert int(answer.headers["retry-after"]) > 0
                    assert answer.json()["error"].startswith("too many requests")
                    break
            assert statuses[-1] == 429, statuses
            assert client.get("/scanner").status_code == 200  # the page itself still loads
            preflight = client.options(FORM, headers={
                "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in preflight.headers
    finally:
        server.stop()
    stored = cli("optout", "list", "--store", store, "--format", "json", env=env()).stdout
    assert "<script>" not in stored and "evil" not in stored


def test_the_page_in_chromium_from_the_form_to_the_approval(tmp_path: Path) -> None:
    """A visitor reads the page, sends the form and sees the confirmation; an operator
    approves the request on the dashboard's Opt-outs page; the CLI then finds it approved
    already; nothing left the server under test."""
    store = f"sqlite:///{tmp_path}/store.db"
    operator = make_token(store, "op", "operator", env=env())
    server = ApiServer(tmp_path, store, "--identity-page",
                       env=env(BROKERSCAN_IDENTITY_PURPOSE=""))  # one line left unset
    try:
        with browser(server.url) as chrome:
            page = chrome.open()
            page.goto("/scanner")
            assert "Example Research Lab" in page.page.inner_text("#operator")
            assert page.page.inner_text("#purpose") == "not configured"
            assert "examplelab-" in page.page.inner_text("#does")
            page.page.fill("#networks", "198.51.100.0/24\n203.0.113.0/25")
            page.page.fill("#contact-field", "noc@example.net")
            page.page.fill("#reason", "a honeypot we run")
            page.page.click("button[type=submit]")
            page.page.wait_for_selector("#done")
            done = page.page.inner_text("#done")
            assert "Received: request oo-" in done and "198.51.100.0/24" in done
            screenshot(page, "identity-page")
            page.page.fill("#networks", "198.51.100.0/33")
            page.page.fill("#contact-field", "noc@example.net")
            page.page.click("button[type=submit]")
            page.page.wait_for_selector("#error")
            assert "is not an IPv4 network" in page.page.inner_text("#error")
            page.check(allow=frozenset({400}))
            request = done.split("Received: request ")[1].split(" ")[0]
            board = chrome.open()
            board.goto("/signin")
            board.page.fill("#token", operator)
            board.page.press("#token", "Enter")
            board.page.wait_for_url("**/")
            board.goto("/optouts")
            assert board.page.inner_text(f"#state-{request}") == "pending"
            assert "a honeypot we run" in board.page.inner_text("#optouts")
            board.page.click(f"#approve-{request}")
            board.page.locator(f"#state-{request}", has_text="approved").wait_for()
            screenshot(board, "optouts")
            board.check(allow=frozenset({401}))  # the sign-in page's session, before it
        again = cli("optout", "approve", request, "--store", store, env=env())
        assert f"{request} was approved already" in again.stdout
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/scanner").status_code == 200
    finally:
        server.stop()


def test_a_read_only_server_shows_the_page_lists_and_refuses_writes(tmp_path: Path) -> None:
    """Served with a role of ``db grant-readonly``: the page loads, a form post is a 503
    with one line, an operator lists the requests, and a decision is a 403."""
    url = pg.new_database_url()
    asyncio.run(pg.create_database(url))
    role = f"brokerscan_ro_{secrets.token_hex(4)}"
    try:
        asyncio.run(migrate.migrate(url))
        cli("db", "grant-readonly", role, env=env(BROKERSCAN_DATABASE_URL=url))
        operator = make_token(url, "op", "operator", env=env())
        request = request_opt_out(url, "198.51.100.0/24")
        readonly = f"postgresql://{role}@127.0.0.1:5432/{urlsplit(url).path.lstrip('/')}"
        server = ApiServer(tmp_path, readonly, "--identity-page", env=env())
        try:
            with server.client() as client:
                assert client.get("/scanner").status_code == 200
                refused = client.post(FORM, data={"networks": "192.0.2.0/24",
                                                  "contact": "x@y.z"}, headers=JSON)
                assert refused.status_code == 503
                assert refused.json()["error"].startswith("this server cannot record")
            with server.client(operator) as client:
                assert [o["id"] for o in client.get("/api/v1/optouts").json()] == [request]
                denied = client.post(f"/api/v1/optouts/{request}/approve")
                assert denied.status_code == 403 and "may only read" in denied.text
                assert "use brokerscan optout," in denied.json()["error"]
        finally:
            server.stop()
    finally:
        async def drop() -> None:
            admin = await asyncpg.connect(url)
            try:
                await admin.execute(f'DROP OWNED BY "{role}"')
            finally:
                await admin.close()
            await pg.drop_database(url)
            admin = await asyncpg.connect(pg.BASE_URL)
            try:
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            finally:
                await admin.close()

        asyncio.run(drop())

