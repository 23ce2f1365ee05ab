"""The API over a fleet: sweeps from PostgreSQL and Redis (the same answers as ``brokerscan
sweep status|list``), steering by operator tokens (the same effect as ``sweep pause``...),
cookie sessions steering with their CSRF value, and a server whose PostgreSQL role may
only read (``brokerscan db grant-readonly``): it searches, lists, checks tokens, and
refuses to steer in one line.

Real processes throughout: ``brokerscan sweep start`` (a sweep with no scheduler stays
``running`` with its shards pending), ``brokerscan serve``, ``brokerscan token create``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from redis import Redis

from brokerscan.names import Names
from storage.store import open_store
from tests.apiserver import ApiServer, cli, make_token
from tests.integration.sweepfleet import Fleet
from tests.pg import BASE_URL as ADMIN_URL
from tests.searchref import make_search_results

pytestmark = pytest.mark.integration

RESULTS = make_search_results(300, seed=3)


@dataclass
class Served:
    fleet: Fleet
    server: ApiServer
    reader: str
    operator: str
    workdir: Path

    def client(self, token: str | None) -> httpx.Client:
        return self.server.client(token)

    def start_sweep(self, seed: int) -> str:
        return self.fleet.start_sweep("127.64.250.0/28", "--allow-reserved", "--seed",
                                      str(seed), "--rate", "100", "--name", f"api-{seed}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("apisweeps")
    fleet = Fleet(workdir)
    fleet.setup()
    server: ApiServer | None = None
    try:
        async def fill() -> None:
            store = await open_store(fleet.database_url)
            try:
                await store.write(RESULTS)
            finally:
                await store.close()

        asyncio.run(fill())
        reader = make_token(fleet.database_url, "reader", env=fleet.env)
        operator = make_token(fleet.database_url, "operator", "operator", env=fleet.env)
        server = ApiServer(workdir, fleet.database_url, "--rate-limit", "0", env=fleet.env)
        yield Served(fleet, server, reader, operator, workdir)
    finally:
        if server is not None:
            server.stop()
        fleet.teardown()


def _same_time(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) == datetime.fromisoformat(b)


def test_sweeps_list_and_status_are_the_clis(served: Served) -> None:
    first = served.start_sweep(1)
    second = served.start_sweep(2)
    listed_cli = served.fleet.cli("sweep", "list", "--format", "json").stdout
    with served.client(served.reader) as client:
        listed = client.get("/api/v1/sweeps").json()
        fleet = [s for s in listed if s["kind"] == "fleet"]
        assert [s["id"] for s in fleet] == [second, first]
        for mine, theirs in zip(fleet, json.loads(listed_cli), strict=True):
            for key in ("id", "name", "state", "targets", "shards"):
                assert mine[key] == theirs[key], key
            assert _same_time(mine["created_at"], theirs["created_at"])
        scans = [s for s in listed if s["kind"] == "scan"]  # the stored results' sweeps
        assert sorted(s["id"] for s in scans) == sorted({r.sweep_id or "" for r in RESULTS})
        assert sum(s["observations"] for s in scans) == len(RESULTS)
        for sweep_id in (first, second):
            api = client.get(f"/api/v1/sweeps/{sweep_id}").json()
            status = served.fleet.status(sweep_id)
            assert api.pop("kind") == "fleet" and api.pop("observations") == 0
            assert _same_time(api.pop("created_at"), status.pop("created_at"))
            assert api == status
        assert client.get("/api/v1/sweeps/sw-nosuchid").status_code == 404
        stored = client.get("/api/v1/sweeps/sw-01").json()
        assert stored["kind"] == "scan" and stored["observations"] > 0


def _control(served: Served, sweep_id: str) -> str:
    redis = Redis.from_url(served.fleet.env["BROKERSCAN_REDIS_URL"])
    try:
        value = redis.get(Names(served.fleet.namespace).sweep_control(sweep_id))
    finally:
        redis.close()
    assert isinstance(value, bytes)
    return value.decode()


def test_an_operator_steers_as_the_cli_does_and_a_reader_may_not(served: Served) -> None:
    sweep_id = served.start_sweep(3)
    with served.client(served.reader) as reader, served.client(served.operator) as operator:
        for verb in ("pause", "resume", "cancel"):
            refused = reader.post(f"/api/v1/sweeps/{sweep_id}/{verb}")
            assert refused.status_code == 403 and "operator" in refused.json()["error"]
        assert served.fleet.status(sweep_id)["state"] == "running"
        for verb, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
            response = operator.post(f"/api/v1/sweeps/{sweep_id}/{verb}")
            assert response.status_code == 200, response.text
            assert response.json() == {"id": sweep_id, "state": state, "workers_notified": True}
            assert served.fleet.status(sweep_id)["state"] == state
            assert _control(served, sweep_id) == state
        again = operator.post(f"/api/v1/sweeps/{sweep_id}/pause")
        assert again.status_code == 409 and "cancelled" in again.json()["error"]
        assert operator.post("/api/v1/sweeps/sw-nosuchid/pause").status_code == 404
        assert served.fleet.status(sweep_id)["shards"]["cancelled"] > 0


def test_a_cookie_session_steers_only_with_its_csrf_value(served: Served) -> None:
    sweep_id = served.start_sweep(4)
    with served.client(None) as browser:
        csrf = browser.post("/api/v1/session", json={"token": served.operator}).json()["csrf"]
        refused = browser.post(f"/api/v1/sweeps/{sweep_id}/pause")
        assert refused.status_code == 403
        assert served.fleet.status(sweep_id)["state"] == "running"
        paused = browser.post(f"/api/v1/sweeps/{sweep_id}/pause",
                              headers={"X-CSRF-Token": csrf})
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert served.fleet.status(sweep_id)["state"] == "paused"


@pytest.fixture
def readonly(served: Served) -> Iterator[str]:
    """A role made by ``brokerscan db grant-readonly``; its URL. Dropped afterwards."""
    role = f"brokerscan_ro_{secrets.token_hex(4)}"
    out = served.fleet.cli("db", "grant-readonly", role).stdout
    assert f"created {role}" in out
    again = served.fleet.cli("db", "grant-readonly", role).stdout
    assert f"granted {role}" in again  # running it again is harmless
    try:
        database = urlsplit(served.fleet.database_url).path.lstrip("/")
        yield f"postgresql://{role}@127.0.0.1:5432/{database}"
    finally:
        async def drop() -> None:
            admin = await asyncpg.connect(served.fleet.database_url)
            try:
                await admin.execute(f'DROP OWNED BY "{role}"')
            finally:
                await admin.close()
            admin = await asyncpg.connect(ADMIN_URL)
            try:
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            finally:
                await admin.close()

        asyncio.run(drop())


def test_a_read_only_role_serves_everything_but_steering(served: Served,
                                                         readonly: str) -> None:
    sweep_id = served.start_sweep(5)
    env = {**served.fleet.env, "BROKERSCAN_DATABASE_URL": readonly}
    server = ApiServer(served.workdir, readonly, "--rate-limit", "0", env=env)
    try:
        with server.client(served.operator) as ro, served.client(served.operator) as rw:
            for path, params in (("/api/v1/count", {"q": "tags:mqtt", "facets": "country"}),
                                 ("/api/v1/services", {"q": "port:1883"}),
                                 ("/api/v1/report", {}), ("/api/v1/sweeps", {}),
                                 (f"/api/v1/sweeps/{sweep_id}", {})):
                got, want = ro.get(path, params=params), rw.get(path, params=params)
                assert got.status_code == 200, (path, got.text)
                strip = ("query_ms", "probes_per_second", "eta_seconds")
                assert _without(got.json(), strip) == _without(want.json(), strip), path
            refused = ro.post(f"/api/v1/sweeps/{sweep_id}/pause")
            assert refused.status_code == 403 and "read" in refused.json()["error"]
            assert "use brokerscan sweep," in refused.json()["error"]  # what may
            assert served.fleet.status(sweep_id)["state"] == "running"
            assert ro.get("/readyz").status_code == 200
    finally:
        server.stop()
    made = cli("token", "create", "--name", "x", "--store", readonly, env=env, check=False)
    assert made.returncode != 0 and len(made.stderr.strip().splitlines()) == 1

    async def try_writes() -> list[str]:
        conn = await asyncpg.connect(readonly)
        refused = []
        try:
            for sql in ("INSERT INTO api_tokens (id, name, role, hash) VALUES "
                        "('x', 'x', 'operator', 'x')",
                        "UPDATE sweeps SET state = 'cancelled'",
                        "DELETE FROM observations",
                        "CREATE TABLE sneaky (x int)"):
                try:
                    await conn.execute(sql)
                except asyncpg.InsufficientPrivilegeError:
                    refused.append(sql.split()[0])
        finally:
            await conn.close()
        return refused

    assert asyncio.run(try_writes()) == ["INSERT", "UPDATE", "DELETE", "CREATE"]


def _without(body: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(body, dict):
        return {k: _without(v, keys) for k, v in body.items() if k not in keys}
    if isinstance(body, list):
        return [_without(v, keys) for v in body]
    return body
