"""Recurring sweeps with real processes (issue 20): two real ``brokerscan scheduler``
processes against one real PostgreSQL database start each period of a schedule exactly
once; a period whose previous run is still under way is skipped and says so; the
``sweep schedule`` verbs refuse bad input in one line.

Swept: one address of the ``scratch`` pool (tests/servers.py) on a port nothing listens
on, so every probe is a refused connect on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from brokerscan.cli.main import main
from scheduler.cadence import jitter_offset
from tests import servers
from tests.apiserver import ApiServer, make_token
from tests.browser import browser, screenshot
from tests.integration.sweepfleet import Fleet, fleet_in
from tests.optouts import request_opt_out
from tests.waiting import holds_for, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_in(tmp_path) as fleet:
        yield fleet


def target() -> str:
    host, _ = servers.allocate("scratch", 1883)
    return host


def rows(fleet: Fleet, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(fleet.database_url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def schedules(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Every schedule as ``sweep schedule list --format json`` shows it."""
    out = fleet.cli("sweep", "schedule", "list", "--format", "json").stdout
    return {s["name"]: s for s in json.loads(out)}


def schedule_row(fleet: Fleet, name: str) -> dict[str, Any]:
    """The schedule's row (polled: cheaper than a command)."""
    found = rows(fleet, "SELECT * FROM schedules WHERE name = $1", name)
    return found[0] if found else {}


def runs(fleet: Fleet, schedule: str) -> list[dict[str, Any]]:
    """The schedule's runs, oldest period first."""
    return rows(fleet, "SELECT id, name, state, period, created_at FROM sweeps"
                       " WHERE schedule = $1 ORDER BY period", schedule)


def cli(fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *args: str) -> tuple[int, str, str]:
    """``brokerscan ARGS`` in this process (bad input: quicker than a process each)."""
    for key, value in fleet.env.items():
        if key.startswith("BROKERSCAN_"):
            monkeypatch.setenv(key, value)
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(done: tuple[int, str, str], *needles: str) -> None:
    code, out, err = done
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.timeout(400)
def test_two_schedulers_start_each_period_exactly_once(fleet: Fleet) -> None:
    every, jitter = 4, 1
    fleet.cli("sweep", "schedule", "add", "often", target(), "--allow-reserved",
              "-p", "1883", "--rate", "0", "--every", f"{every}s", "--jitter", f"{jitter}s")
    fleet.start_worker("worker", "--queues", "probe")
    fleet.spawn("scheduler-a", "scheduler")
    fleet.spawn("scheduler-b", "scheduler")
    wanted = 5

    def enough() -> list[dict[str, Any]] | None:
        found = runs(fleet, "often")
        finished = [r for r in found if r["state"] == "finished"]
        return found if len(finished) >= wanted else None

    wait_for(enough, 180, f"{wanted} finished runs of the schedule", detail=fleet.logs,
             every=0.5)
    fleet.stop_all()
    found = runs(fleet, "often")
    row = schedules(fleet)["often"]
    periods = [r["period"] for r in found]
    assert len(periods) == len(set(periods)), periods  # no period started twice
    assert row["runs"] == len(found) and row["last_error"] is None
    # Every period from the first to the last was run (none lost to the race), but for
    # any the scheduler skipped because the previous run was still under way (a loaded
    # machine), which it counts.
    elapsed = int((periods[-1] - periods[0]).total_seconds()) // every + 1
    assert len(found) + row["skipped"] == elapsed, (found, row)
    # Each run started at its period's beginning plus its jitter, not before.
    for r in found:
        offset = timedelta(seconds=jitter_offset("often", r["period"], jitter))
        assert r["created_at"] >= r["period"] + offset
        assert r["name"].startswith("often-")
    logs = fleet.log("scheduler-a") + fleet.log("scheduler-b")
    assert logs.count("schedule often: started") == len(found), logs
    listed = fleet.cli("sweep", "list").stdout
    assert "(schedule often)" in listed


@pytest.mark.timeout(300)
def test_a_period_is_skipped_while_the_previous_run_goes_on(fleet: Fleet) -> None:
    # No worker: the first run never finishes, so the next periods are skipped.
    fleet.cli("sweep", "schedule", "add", "slow", target(), "--allow-reserved", "-p", "1883",
              "--every", "2s", "--jitter", "0")
    fleet.spawn("scheduler", "scheduler")
    row = wait_for(lambda: (s := schedule_row(fleet, "slow"))["skipped"] >= 1 and s, 60,
                   "a skipped period", detail=fleet.logs, every=0.3)
    found = runs(fleet, "slow")
    assert len(found) == 1 and found[0]["state"] == "running"
    assert found[0]["id"] in row["last_skip"] and "still running" in row["last_skip"]
    text = fleet.cli("sweep", "schedule", "list").stdout
    assert "skipped: the run of period" in text and found[0]["id"] in text
    assert "still running" in fleet.log("scheduler")
    assert "(schedule slow)" in fleet.cli("sweep", "status", found[0]["id"]).stdout
    # Once that run is over, the next period runs again.
    fleet.cli("sweep", "cancel", found[0]["id"])
    wait_for(lambda: len(runs(fleet, "slow")) == 2, 60, "a second run", detail=fleet.logs,
             every=0.3)
    # Paused: no more runs; resumed: runs again; removed: gone, its runs stay.
    assert "paused" in fleet.cli("sweep", "schedule", "pause", "slow").stdout
    assert schedule_row(fleet, "slow")["paused"]
    for run in runs(fleet, "slow"):
        if run["state"] == "running":
            fleet.cli("sweep", "cancel", run["id"])
    count = len(runs(fleet, "slow"))
    holds_for(lambda: len(runs(fleet, "slow")) == count, 5, "no run while paused")
    assert "next run due" in fleet.cli("sweep", "schedule", "resume", "slow").stdout
    wait_for(lambda: len(runs(fleet, "slow")) > count, 60, "a run after resuming",
             detail=fleet.logs, every=0.3)
    fleet.cli("sweep", "schedule", "remove", "slow")
    assert "slow" not in schedules(fleet)
    assert runs(fleet, "slow")


def test_bad_input_is_one_line(fleet: Fleet, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sweep", "schedule", "add"]
    good = [target(), "--allow-reserved", "-p", "1883"]
    cases = [
        ([*base, "x", *good, "--every", "24"], "bad interval '24'"),
        ([*base, "x", *good, "--every", "soon"], "bad interval 'soon'"),
        ([*base, "x", *good, "--cron", "61 * * * *"], "Bad minute"),
        ([*base, "x", *good, "--cron", "0 3 * *"], "Wrong number of fields"),
        ([*base, "x", *good, "--every", "1m", "--jitter", "45s"], "more than half"),
        ([*base, "x", *good, "--every", "1m", "--jitter", "later"], "bad jitter"),
        ([*base, "no/slash", *good, "--every", "1m"], "bad schedule name"),
        ([*base, "x", *good], "one of the arguments --every --cron is required"),
        ([*base, "x", *good, "--every", "1m", "--cron", "* * * * *"], "not allowed with"),
        ([*base, "x", "127.54.0.0/33", "--allow-reserved", "--every", "1m"], "127.54.0.0/33"),
        ([*base, "x", "127.54.0.1", "--every", "1m"], "reserved"),
        (["sweep", "schedule", "pause", "nosuch"], "no schedule nosuch"),
        (["sweep", "schedule", "resume", "nosuch"], "no schedule nosuch"),
        (["sweep", "schedule", "remove", "nosuch"], "no schedule nosuch"),
    ]
    for args, needle in cases:
        one_line(cli(fleet, monkeypatch, capsys, *args), needle)
    assert rows(fleet, "SELECT * FROM schedules") == []
    assert cli(fleet, monkeypatch, capsys, *base, "daily", *good, "--every", "24h")[0] == 0
    one_line(cli(fleet, monkeypatch, capsys, *base, "daily", *good, "--cron", "0 3 * * *"),
             "a schedule named 'daily' exists already")
    one_line(cli(fleet, monkeypatch, capsys, "sweep", "schedule", "resume", "daily"),
             "already active")
    assert cli(fleet, monkeypatch, capsys, "sweep", "schedule", "pause", "daily")[0] == 0
    one_line(cli(fleet, monkeypatch, capsys, "sweep", "schedule", "pause", "daily"),
             "already paused")
    listed = schedules(fleet)
    assert list(listed) == ["daily"] and listed["daily"]["every"] == "1d"
    assert listed["daily"]["jitter_seconds"] == 60 and listed["daily"]["next_due"] is None


@pytest.mark.timeout(300)
def test_api_and_dashboard_list_schedules_and_runs(fleet: Fleet, tmp_path: Path) -> None:
    """The API lists schedules and carries each run's schedule; operators add, pause,
    resume and remove, readers may not; the dashboard's Sweeps page shows both."""
    fleet.cli("sweep", "schedule", "add", "web", target(), "--allow-reserved", "-p", "1883",
              "--every", "2s", "--jitter", "0")
    fleet.spawn("scheduler", "scheduler")
    run = wait_for(lambda: runs(fleet, "web"), 60, "a run", detail=fleet.logs, every=0.3)[0]
    operator = make_token(fleet.database_url, "ops", "operator", env=fleet.env)
    reader = make_token(fleet.database_url, "reads", "reader", env=fleet.env)
    serve = ApiServer(tmp_path, fleet.database_url, "--rate-limit", "0", env=fleet.env)
    try:
        with serve.client(reader) as client, serve.client(operator) as steer:
            listed = client.get("/api/v1/schedules").json()
            assert [s["name"] for s in listed] == ["web"] and listed[0]["runs"] >= 1
            assert listed[0]["cadence"] == "every 2s" and listed[0]["state"] == "active"
            sweeps = {s["id"]: s for s in client.get("/api/v1/sweeps").json()}
            assert sweeps[run["id"]]["schedule"] == "web"
            detail = client.get(f"/api/v1/sweeps/{run['id']}").json()
            assert detail["schedule"] == "web" and detail["period"] is not None
            for method, path in (("POST", "/api/v1/schedules/web/pause"),
                                 ("POST", "/api/v1/schedules/web/resume"),
                                 ("DELETE", "/api/v1/schedules/web")):
                refused = client.request(method, path)
                assert refused.status_code == 403 and "operator" in refused.json()["error"]
            assert steer.post("/api/v1/schedules/web/pause").json() == {
                "name": "web", "state": "paused"}
            assert steer.post("/api/v1/schedules/web/pause").status_code == 409
            assert steer.post("/api/v1/schedules/web/resume").json()["state"] == "active"
            assert steer.post("/api/v1/schedules/nosuch/pause").status_code == 404
            options: dict[str, Any] = {"targets": [target()], "ports": "1883",
                                       "allow_reserved": True, "rate": 100}
            made: dict[str, Any] = {"name": "api-made", "every": "1d", "jitter": "0",
                                    "sweep": options}
            assert client.post("/api/v1/schedules", json=made).status_code == 403
            added = steer.post("/api/v1/schedules", json=made)
            assert added.status_code == 201, added.text
            assert added.json()["cadence"] == "every 1d" and added.json()["runs"] == 0
            assert steer.post("/api/v1/schedules", json=made).status_code == 409
            for bad, says in (({"every": "soon"}, "bad interval"),
                              ({"cron": "61 * * * *"}, "Bad minute"),
                              ({"every": "1m", "jitter": "45s"}, "more than half"),
                              ({"sweep": {**options, "scope": ["0.0.0.0/0"]}},
                               "sweep.scope"),
                              ({"sweep": {**options, "rate": -1}}, "sweep.rate"),
                              ({"sweep": {**options, "targets": ["127.54.0.0/33"]}},
                               "127.54.0.0/33"),
                              ({"sweep": {**options, "allow_reserved": False}},
                               "reserved")):
                body = {**made, "name": "refused", **bad}
                if "cron" in bad:
                    body.pop("every")
                refused = steer.post("/api/v1/schedules", json=body)
                assert refused.status_code == 400 and says in refused.json()["error"], (
                    bad, refused.text)
            names = [s["name"] for s in client.get("/api/v1/schedules").json()]
            assert names == ["api-made", "web"]
            assert steer.delete("/api/v1/schedules/api-made").json()["state"] == "removed"
        with browser(serve.url) as chrome:
            page = chrome.open()
            page.goto("/signin")
            page.page.fill("#token", reader)
            page.page.press("#token", "Enter")
            page.page.wait_for_url("**/")
            page.goto("/sweeps")
            page.page.locator("#schedules").wait_for()
            text = page.page.locator("#sweeps").inner_text()
            assert "schedule" in text and "web" in text and run["id"] in text
            assert "every 2s" in page.page.locator("#schedules").inner_text()
            screenshot(page, "sweeps-schedules")
            page.check(allow=frozenset({401}))
        with serve.client(operator) as steer:
            assert steer.delete("/api/v1/schedules/web").json()["state"] == "removed"
            assert steer.get("/api/v1/schedules").json() == []
    finally:
        serve.stop()


@pytest.mark.timeout(300)
def test_each_run_reads_its_opt_out_lists_again_and_adds_opt_out_requests(
        fleet: Fleet, tmp_path: Path) -> None:
    """A schedule keeps the paths of its opt-out lists: a run reads them as they are when
    it starts, plus the opt-out requests approved by then (issue 20). No worker: the runs
    are only planned and recorded."""
    fleet.env["BROKERSCAN_STORE_URL"] = fleet.database_url  # where `optout` writes
    listed = tmp_path / "optout.conf"
    listed.write_text("198.51.100.0/24  # asked by mail\n")
    fleet.cli("sweep", "schedule", "add", "polite", target(), "--allow-reserved", "-p",
              "1883", "--every", "2s", "--jitter", "0", "--blocklist", str(listed))
    fleet.spawn("scheduler", "scheduler")
    first = wait_for(lambda: runs(fleet, "polite"), 60, "a first run", detail=fleet.logs,
                     every=0.3)[0]
    assert json.loads(rows(fleet, "SELECT spec->'optout' AS o FROM sweeps WHERE id = $1",
                           first["id"])[0]["o"]) == ["198.51.100.0/24"]
    listed.write_text("198.51.100.0/24\n192.0.2.0/25  # a second mail\n")
    request = request_opt_out(fleet.database_url, "203.0.113.0/24")
    fleet.cli("optout", "approve", request)
    fleet.cli("sweep", "cancel", first["id"])
    def second_run() -> dict[str, Any] | None:
        found = runs(fleet, "polite")
        return found[-1] if len(found) >= 2 else None

    second = wait_for(second_run, 60, "a second run", detail=fleet.logs, every=0.3)
    assert second is not None
    optout = rows(fleet, "SELECT spec->'optout' AS o FROM sweeps WHERE id = $1",
                  second["id"])[0]["o"]
    assert json.loads(optout) == ["192.0.2.0/25", "198.51.100.0/24", "203.0.113.0/24"]
    listed.unlink()  # an unreadable list: the next period is not started, and says why
    fleet.cli("sweep", "cancel", second["id"])
    row = wait_for(lambda: (s := schedule_row(fleet, "polite"))["last_error"] and s, 60,
                   "a period refused", detail=fleet.logs, every=0.3)
    assert "optout.conf" in row["last_error"] and "not started" in row["last_error"]

