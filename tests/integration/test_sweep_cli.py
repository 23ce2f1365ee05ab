"""Bad input and unavailable services for the sweep commands: one line, non-zero exit,
nothing half-created."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import pg
from tests.integration.sweepfleet import Fleet
from tests.optouts import request_opt_out

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("sweepcli"))
    fleet.env["BROKERSCAN_STORE_URL"] = fleet.database_url  # where `optout` and plans look
    fleet.setup()
    yield fleet
    fleet.teardown()


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def sweep_count(fleet: Fleet) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(fleet.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM sweeps"))
        finally:
            await conn.close()

    return asyncio.run(count())


def isolated(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in a network namespace with only loopback: a plan of 0.0.0.0/0 sends nothing."""
    return subprocess.run(["unshare", "-n", sys.executable, "-m", "brokerscan.cli", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_plan_full_ipv4_is_a_dry_run(fleet: Fleet) -> None:
    proc = isolated("sweep", "plan", "0.0.0.0/0", "--rate", "50000", "--format", "json",
                    env=fleet.env | {"BROKERSCAN_SCOPE": "0.0.0.0/0"})
    assert proc.returncode == 0, proc.stderr
    assert '"addresses": 3702258432' in proc.stdout
    assert sweep_count(fleet) == 0
    # no database in the namespace: planned without the approved opt-outs, and said so
    assert "approved opt-outs not read" in proc.stderr and proc.stderr.count("\n") == 1


def test_plan_leaves_out_approved_opt_outs_as_start_does(fleet: Fleet) -> None:
    # (sweep start's share: test_optout_sweep.py; this module's other ranges are elsewhere)
    def plan() -> dict[str, Any]:
        return dict(json.loads(fleet.cli("sweep", "plan", "127.57.64.0/24", "--allow-reserved",
                                         "--format", "json").stdout))

    assert plan()["addresses"] == 256 and plan()["excluded"] == "nothing excluded"
    request = request_opt_out(fleet.database_url, "127.57.64.128/25")
    assert plan()["addresses"] == 256  # pending: not yet
    fleet.cli("optout", "approve", request)
    planned = plan()
    assert planned["addresses"] == 128 and planned["excluded"].startswith("128 opted out")


def test_rate_zero_means_no_limit_as_for_scan(fleet: Fleet) -> None:
    """``--rate`` means the same for ``scan`` and ``sweep`` (issue 8): 0 is no limit."""
    proc = fleet.cli("sweep", "plan", "127.57.0.0/20", "--allow-reserved", "--rate", "0",
                     "--format", "json")
    assert json.loads(proc.stdout)["rate"] == 0 and json.loads(proc.stdout)["seconds"] is None
    text = fleet.cli("sweep", "plan", "127.57.0.0/20", "--allow-reserved", "--rate", "0.5")
    assert "0.5/s" in text.stdout  # not "0/s"
    for command in (("sweep", "start"), ("scan",)):  # argparse wraps help: compare words
        assert "0 = no limit" in " ".join(fleet.cli(*command, "--help").stdout.split())


@pytest.mark.parametrize(("args", "needle"), [
    (["sweep", "plan", "127.57.0.0/20", "--allow-reserved", "--rate", "nan"], "rate"),
    (["sweep", "plan", "127.57.0.0/20", "--allow-reserved", "--rate", "1e9"], "rate"),
    (["sweep", "plan", "127.57.0.0/20", "--allow-reserved", "--rate", "-3"], "rate"),
    (["sweep", "plan", "127.57.0.0/33", "--allow-reserved"], "127.57.0.0/33"),
    (["sweep", "plan", "127.57.0.0/20", "--allow-reserved", "-p", "mqttz"], "mqttz"),
    (["sweep", "start", "127.57.0.0/20", "--allow-reserved", "--shards", "0"], "shards"),
    (["sweep", "start", "127.57.0.0/20"], "reserved"),
    (["sweep", "status", "sw-nosuchid"], "sw-nosuchid"),
    (["sweep", "pause", "sw-nosuchid"], "sw-nosuchid"),
    (["worker", "--queues", "probe,bogus"], "bogus"),
])
def test_bad_input(fleet: Fleet, args: list[str], needle: str) -> None:
    one_line(fleet.cli(*args, check=False), 2, needle)
    assert sweep_count(fleet) == 0


def test_same_sweep_twice_and_finished_sweep(fleet: Fleet) -> None:
    first = fleet.start_sweep("127.57.0.0/28", "--allow-reserved", "--seed", "1",
                              "--rate", "100")
    again = fleet.cli("sweep", "start", "127.57.0.0/28", "--allow-reserved", "--seed", "1",
                      "--rate", "100", check=False)
    one_line(again, 2, first)
    assert sweep_count(fleet) == 1
    fleet.cli("sweep", "cancel", first)
    one_line(fleet.cli("sweep", "pause", first, check=False), 2, "cancelled")
    listed = fleet.cli("sweep", "list").stdout
    assert first in listed and "cancelled" in listed
    text = fleet.cli("sweep", "status", first).stdout
    assert first in text and "[cancelled]" in text and "shards: done 0" in text
    assert "workers alive: 0" in text and "%" in text
    # the JSON form is what the fleet's polls read in-process (a cancelled sweep stands still)
    printed = json.loads(fleet.cli("sweep", "status", first, "--format", "json").stdout)
    assert printed == fleet.status(first) and printed["state"] == "cancelled"


@pytest.mark.parametrize(("variable", "value", "needle"), [
    ("BROKERSCAN_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x", "127.0.0.1:1"),
    ("BROKERSCAN_REDIS_URL", "redis://127.0.0.1:1/0", "Redis"),
    ("BROKERSCAN_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//", "127.0.0.1:1"),
])
def test_service_down_at_start_creates_nothing(fleet: Fleet, tmp_path: Path, variable: str,
                                               value: str, needle: str) -> None:
    before = sweep_count(fleet)
    env = {**fleet.env, variable: value}
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "sweep", "start",
                           "127.57.1.0/28", "--allow-reserved", "--rate", "100"],
                          capture_output=True, text=True, env=env, timeout=60,
                          cwd=os.getcwd())
    one_line(proc, 1, needle)
    assert sweep_count(fleet) == before


def test_missing_migration_is_a_clear_error(fleet: Fleet) -> None:
    url = pg.new_database_url()  # empty: never migrated
    asyncio.run(pg.create_database(url))
    try:
        proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "sweep", "list"],
                              capture_output=True, text=True, timeout=60,
                              env={**fleet.env, "BROKERSCAN_DATABASE_URL": url})
        one_line(proc, 1, "migrate")
    finally:
        asyncio.run(pg.drop_database(url))


def test_db_maintain_premakes_partitions_and_reports(fleet: Fleet) -> None:
    out = fleet.cli("db", "maintain", "--retention-days", "30", "--format", "json").stdout
    data = json.loads(out)
    assert data["partitions"] >= 8 and data["days_ahead"] >= 7
    assert data["default_rows"] == 0 and data["retention_days"] == 30
    one_line(fleet.cli("db", "maintain", "--retention-days", "0", check=False), 2, "retention")
