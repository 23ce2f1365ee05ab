"""The recipes' commands are real: each role's command and environment, read out of
``deploy/compose.yaml`` and the Kubernetes Deployments, run as local processes against the
local services until a small sweep completes; and the KEDA trigger's query, read out of
the committed ScaledObject, counts work while shards wait or run and nothing after; and
``brokerscan db wait``, what the Kubernetes init containers and the systemd units start
behind, waits for an unmigrated database until it is migrated, and gives up in one line.

Service URLs (and the metrics port) are the local test ones; everything else (arguments,
settings such as the log format) is the recipe's. ``serve`` runs too, on a loopback
address instead of the recipe's ``0.0.0.0`` (tests never listen beyond loopback): its
metrics port, the one Prometheus scrapes, must answer like every other role's.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
import yaml

from storage.migrate import migrate
from tests import pg, servers
from tests.apiserver import cli
from tests.integration.sweepfleet import Fleet
from tests.integration.test_ops_fleet import healthy, wait_until
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_LOCAL = ("BROKERSCAN_DATABASE_URL", "BROKERSCAN_REDIS_URL", "BROKERSCAN_BROKER_URL",
          "BROKERSCAN_RESULTS_URL", "BROKERSCAN_NAMESPACE", "BROKERSCAN_SCOPE",
          "BROKERSCAN_METRICS_PORT", "BROKERSCAN_METRICS_HOST")


def _defaults(value: object) -> str:
    """*value* with compose's ``${NAME:-default}`` as the default (the passwords,
    ``${NAME:?...}``, are among the local URLs replaced anyway)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def compose_roles() -> dict[str, tuple[list[str], dict[str, str]]]:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return {name: (list(s["command"]), {k: _defaults(v) for k, v in s["environment"].items()})
            for name, s in services.items()
            if name in ("scheduler", "probe-worker", "probe-tls-worker", "enrich-worker",
                        "store-worker", "serve")}


def k8s_roles() -> dict[str, tuple[list[str], dict[str, str]]]:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s" / "base")],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    return {d["metadata"]["name"]: (d["spec"]["template"]["spec"]["containers"][0]["args"],
                                    dict(config))
            for d in docs if d["kind"] == "Deployment"
            and d["metadata"]["name"].startswith("brokerscan-")}


@pytest.mark.timeout(420)
@pytest.mark.parametrize("recipe", ["compose", "k8s"])
def test_recipe_commands_run_a_sweep(recipe: str, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.setup()
    try:
        roles = compose_roles() if recipe == "compose" else k8s_roles()
        assert len(roles) == 6
        addresses = {}
        for name, (command, env) in roles.items():
            address = servers.allocate("ops", 0)
            addresses[name] = address
            if command[0] == "serve":  # the API on loopback, not the recipe's 0.0.0.0
                assert command[1:] == ["--host", "0.0.0.0", "--port", "8080"]
                command = ["serve", "--host", address[0], "--port", "0"]
            local = {k: v for k, v in env.items() if k not in _LOCAL}
            local |= {"BROKERSCAN_METRICS_HOST": address[0],
                      "BROKERSCAN_METRICS_PORT": str(address[1])}
            fleet.spawn(name, *command, env=local)
        for name, address in addresses.items():
            # five processes start at once on two cores: readiness waits for all of them
            wait_until(f"{name} ready", lambda a=address: healthy(a),  # type: ignore[misc]
                       timeout=120, fleet=fleet)
        sweep_id = fleet.start_sweep("127.62.48.0/26", "--ports", "1883,8883",
                                     "--allow-reserved", "--all", "--connect-timeout", "1",
                                     "--timeout", "2")
        assert fleet.wait_state(sweep_id, {"finished"}, timeout=150)["probes"] == 128
        assert len(fleet.results()) == 128
    finally:
        fleet.teardown()


def keda_queries() -> dict[str, str]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "keda" / "scaledobjects.yaml").read_text())
    return {d["metadata"]["name"]: d["spec"]["triggers"][0]["metadata"]["query"]
            for d in docs if d and d["kind"] == "ScaledObject"
            and d["spec"]["triggers"][0]["type"] == "postgresql"}


def test_keda_trigger_counts_pending_queued_and_running_shards(tmp_path: Path) -> None:
    """The probe pools scale on every shard not yet done, pending ones included: the
    scheduler queues only what the live pool can take (nothing runs yet: its margin, 2
    a queue), yet the trigger reads all 8 shards of each queue."""
    fleet = Fleet(tmp_path)
    fleet.setup()
    try:
        queries = {name: q.replace("'brokerscan.", f"'{fleet.namespace}.")
                   for name, q in keda_queries().items()}

        def measure() -> dict[str, int]:
            async def go() -> dict[str, int]:
                conn = await asyncpg.connect(fleet.database_url)
                try:
                    return {n: int(await conn.fetchval(q)) for n, q in queries.items()}
                finally:
                    await conn.close()
            return asyncio.run(go())

        fleet.start_scheduler()
        sweep_id = fleet.start_sweep("127.62.52.0/24", "--ports", "1883,8883",
                                     "--allow-reserved", "--rate", "200", "--shards", "8",
                                     "--connect-timeout", "1", "--timeout", "2")
        # nobody runs them yet: the pool must scale up from zero, to the whole sweep
        wait_until("shards queued", lambda: fleet.shards(sweep_id),
                   lambda s: any(x["state"] == "queued" for x in s))
        waiting = measure()
        states = Counter(x["state"] for x in fleet.shards(sweep_id))
        assert states["pending"] > 0, states  # the scheduler held some back
        assert waiting == {"brokerscan-probe": 8, "brokerscan-probe-tls": 8}, waiting
        fleet.start_worker("w1")
        wait_until("a shard running", lambda: fleet.shards(sweep_id),
                   lambda s: any(x["state"] == "running" for x in s))
        assert sum(measure().values()) > 0  # running shards count: never scaled to zero
        fleet.wait_state(sweep_id, {"finished"}, timeout=120)
        assert measure() == {"brokerscan-probe": 0, "brokerscan-probe-tls": 0}
    finally:
        fleet.teardown()


def test_db_wait_waits_for_the_migrations(tmp_path: Path) -> None:
    async def create() -> None:
        await pg.create_database(url)

    url = pg.new_database_url()
    asyncio.run(create())
    env = {**os.environ, "BROKERSCAN_DATABASE_URL": url}
    # not migrated, a short timeout: one line, exit 1, the reason given
    proc = cli("db", "wait", "--timeout", "0.5", env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    (last,) = [line for line in proc.stderr.splitlines() if "not ready" in line]
    assert "database not ready after 0.5 s" in last and "db migrate" in last
    assert "Traceback" not in proc.stderr
    # waiting: it holds until the schema is there, then says so and exits 0
    log = tmp_path / "wait.log"
    with open(log, "wb") as out:
        waiter = subprocess.Popen([sys.executable, "-m", "brokerscan.cli", "db", "wait",
                                   "--timeout", "120"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"waiting for the database" in log.read_bytes(), 30,
                 "db wait to say what it waits for")
        assert waiter.poll() is None
        asyncio.run(migrate(url))
        wait_for(lambda: waiter.poll() is not None, 30, "db wait to end once migrated")
        assert waiter.returncode == 0 and b"database is ready" in log.read_bytes()
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait()
        asyncio.run(pg.drop_database(url))
    # nothing listens: still one line and exit 1
    host, port = servers.allocate("ops", 1)
    proc = cli("db", "wait", "--timeout", "0.5", check=False, env={
        **os.environ, "BROKERSCAN_DATABASE_URL": f"postgresql://u@{host}:{port}/none"})
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) >= 1
    assert proc.stderr.strip().splitlines()[-1].startswith("brokerscan: error: database not ready")
