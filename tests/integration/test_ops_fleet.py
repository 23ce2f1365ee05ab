"""Operating a fleet, with real processes: start-up checks, metrics and health of every role
during a real sweep, graceful shutdown (and the shard runner's hand-back, in this
process), failed shards that say why and can be retried.

Real PostgreSQL, Redis and RabbitMQ; real ``brokerscan scheduler``, ``worker`` (prefork,
so the multiprocess metrics are what is tested), ``enrich-worker`` and ``store-worker``
processes. Swept ranges are in 127.62.32.0/19, where nothing listens (every probe is a
refused connect, which is what a sweep mostly meets) but for the silent listeners of the
shutdown tests; other listeners in 127.62.0.0/20.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis

from brokerscan.settings import Settings
from scheduler.sweeps import SweepSpec, plan_sweep
from tests import servers
from tests.faultproxy import FaultProxy
from tests.integration.sweepfleet import Fleet
from tests.waiting import holds_for
from workers.shardrun import WorkerContext, run_shard

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    fleet.setup()
    try:
        yield fleet
    finally:
        fleet.teardown()


def wait_until(what: str, fetch: Callable[[], Any], test: Callable[[Any], Any] = bool,
               timeout: float = 60, fleet: Fleet | None = None) -> Any:
    """Poll ``fetch()`` until ``test`` of it holds; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if test(value):
            return value
        if time.monotonic() > deadline:
            logs = "" if fleet is None else "\n".join(
                f"--- {n}\n{fleet.log(n)}" for n in fleet.processes)
            raise AssertionError(f"{what} did not happen within {timeout} s\n{logs}")
        time.sleep(0.2)


def get(address: tuple[str, int], path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}",
                                    timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def scrape(address: tuple[str, int]) -> dict[str, float]:
    """Every sample as ``name{label="v",...}`` -> value (labels sorted)."""
    code, body = get(address, "/metrics")
    assert code == 200, body
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.split("{", 1)[0] == name and all(w in k for w in want))


def ops_env(address: tuple[str, int]) -> dict[str, str]:
    return {"BROKERSCAN_METRICS_HOST": address[0], "BROKERSCAN_METRICS_PORT": str(address[1])}


def healthy(address: tuple[str, int]) -> bool:
    return get(address, "/healthz")[0] == 200 and get(address, "/readyz")[0] == 200


# -- start-up -------------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "value", "says"), [
    ("BROKERSCAN_RESULTS_URL", "amqp://guest:guest@127.62.15.1:5999/%2F",
     "the results broker at amqp://guest:***@127.62.15.1:5999/%2F does not answer"),
    ("BROKERSCAN_REDIS_URL", "redis://127.62.15.1:6999/0",
     "Redis at redis://127.62.15.1:6999/0 does not answer"),
    ("BROKERSCAN_BROKER_URL", "amqp://guest:wrong@127.0.0.1:5672//",
     "the task broker at amqp://guest:***@127.0.0.1:5672// does not answer"),
])
def test_worker_refuses_to_start_without_a_dependency(fleet: Fleet, variable: str, value: str,
                                                      says: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "worker"],
                          env={**fleet.env, variable: value}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "ready" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr


def test_worker_refuses_connections_its_nofile_limit_cannot_hold(fleet: Fleet) -> None:
    proc = subprocess.run(["prlimit", "--nofile=1024:1500", sys.executable, "-m",
                           "brokerscan.cli", "worker", "--connections", "2000"],
                          env=fleet.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "brokerscan: error: --connections 2,000 needs 2,128 file descriptors per process, "
        "but the nofile limit is 1,500 (hard 1,500): raise LimitNOFILE / ulimit -n, or "
        "lower --connections")


# -- metrics and health during a real sweep ---------------------------------------------------

def test_every_role_exposes_metrics_and_health_during_a_sweep(fleet: Fleet) -> None:
    ops = {role: servers.allocate("ops", 0) for role in ("scheduler", "worker", "enrich",
                                                         "store")}
    fleet.spawn("scheduler", "scheduler", "--max-queued", "4", env=ops_env(ops["scheduler"]))
    worker = fleet.spawn("worker", "worker", "--pool", "prefork", "--concurrency", "2",
                         "--log-format", "json", env=ops_env(ops["worker"]),
                         prefix=("prlimit", "--nofile=1024:4096"))
    fleet.spawn("enrich", "enrich-worker", env=ops_env(ops["enrich"]))
    fleet.spawn("store", "store-worker", env=ops_env(ops["store"]))
    for role, address in ops.items():
        wait_until(f"{role} healthy and ready", lambda a=address: healthy(a), fleet=fleet)  # type: ignore[misc]
    # the worker raised its soft limit to the hard one
    limits = Path(f"/proc/{worker.pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"]
               for line in limits.splitlines()), limits

    targets = 1024 * 2
    # 200/s: about ten seconds of sweep, so that a scrape lands mid-sweep even on a busy
    # machine (at 600/s the whole sweep could fall between two scrapes)
    sweep_id = fleet.start_sweep("127.62.32.0/22", "--ports", "1883,8883", "--allow-reserved",
                                 "--all", "--rate", "200", "--shards", "3", "--seed", "5",
                                 "--connect-timeout", "1", "--timeout", "2")
    # Idle or busy, both worker processes are listed (their heartbeats start at once).
    status = wait_until("two worker processes listed", lambda: fleet.status(sweep_id),
                        lambda s: len(s["workers"]) == 2, fleet=fleet)
    assert all(sorted(w["queues"]) == sorted([f"{fleet.namespace}.probe",
                                               f"{fleet.namespace}.probe-tls"])
               for w in status["workers"])
    mid = wait_until("probes counted mid-sweep", lambda: scrape(ops["worker"]),
                     lambda m: 0 < total(m, "brokerscan_probes_total") < targets,
                     fleet=fleet)
    assert "brokerscan_connections_in_flight" in mid
    text = fleet.cli("sweep", "status", sweep_id).stdout
    assert "workers alive: 2" in text

    status = fleet.wait_state(sweep_id, {"finished"})
    assert status["probes"] == targets
    m = scrape(ops["worker"])
    # The worker's own counters equal the sweep's, summed over both child processes.
    assert total(m, "brokerscan_probes_total") == targets
    assert total(m, "brokerscan_probes_total", queue="probe") == 1024
    assert total(m, "brokerscan_probes_total", queue="probe-tls") == 1024
    assert total(m, "brokerscan_probes_total", protocol="none",
                 status="connection-refused") == targets
    assert total(m, "brokerscan_connect_seconds_count") == targets
    assert total(m, "brokerscan_results_published_total") == targets
    assert total(m, "brokerscan_rate_budget_wait_seconds_total") > 0
    assert total(m, "brokerscan_shard_runs_total", outcome="done") == 6
    assert total(m, "brokerscan_connections_in_flight") == 0

    stored = wait_until("every result stored", lambda: scrape(ops["store"]),
                        lambda s: total(s, "brokerscan_store_rows_total") >= targets
                        and total(s, "brokerscan_stream_messages_total") >= targets,
                        fleet=fleet)
    assert total(stored, "brokerscan_store_rows_total") == targets
    assert total(stored, "brokerscan_stream_messages_total", stage="store",
                 outcome="ok") == targets
    assert total(stored, "brokerscan_store_batch_seconds_count") > 0
    assert total(stored, "brokerscan_stream_lag_seconds", stage="store") > 0
    enriched = wait_until("every result enriched", lambda: scrape(ops["enrich"]),
                          lambda s: total(s, "brokerscan_stream_messages_total") >= targets)
    assert total(enriched, "brokerscan_stream_messages_total", stage="enrich",
                 outcome="ok") == targets

    sched = wait_until("scheduler gauges refreshed", lambda: scrape(ops["scheduler"]),
                       lambda s: total(s, "brokerscan_workers_alive", queue="probe") == 2
                       and total(s, "brokerscan_sweeps", state="finished") == 1,
                       fleet=fleet)
    assert total(sched, "brokerscan_shards_dispatched_total") == 6
    assert "brokerscan_queue_messages{queue=\"probe\"}" in sched

    # JSON logs: every line of the worker is one object
    for line in fleet.log("worker").splitlines():
        if line.startswith("{"):
            assert json.loads(line)["role"] == "probe-worker"
    # SIGTERM: every role stops cleanly, exit 0
    for name in ("worker", "enrich", "store", "scheduler"):
        proc = fleet.processes[name]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, fleet.log(name)


# -- graceful shutdown ----------------------------------------------------------------------

def test_sigterm_hands_the_rest_of_the_shard_back(fleet: Fleet) -> None:
    fleet.start_scheduler()
    w1 = fleet.spawn("w1", "worker", "--pool", "prefork", "--concurrency", "1")
    # 4,096 targets at 300 a second: over 10 s of the shard left when the (slow, on a
    # loaded machine) status poll sees the first 200 probes
    sweep_id = fleet.start_sweep("127.62.64.0/20", "--ports", "1883", "--allow-reserved",
                                 "--all", "--rate", "300", "--shards", "1", "--seed", "3",
                                 "--connect-timeout", "1", "--timeout", "2")
    fleet.wait_for(sweep_id, "probing", lambda s: s["probes"] > 200)
    began = time.monotonic()
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=10) == 0, fleet.log("w1")
    assert time.monotonic() - began < 10
    assert "handing the rest back" in fleet.log("w1")
    shard = fleet.shards(sweep_id)[0]
    assert shard["state"] in ("paused", "pending", "queued"), shard
    assert 200 < shard["probes"] < 4096 and shard["attempts"] == 0  # not a failed attempt
    fleet.start_worker("w2")
    fleet.wait_state(sweep_id, {"finished"}, timeout=60)
    seen = fleet.results()
    assert len(seen) == 4096 and max(seen.values()) == 1  # every target exactly once
    assert fleet.shards(sweep_id)[0]["attempts"] == 0  # no run was lost


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_sigterm_with_probes_waiting_on_a_tarpit_exits_within_10_s(fleet: Fleet,
                                                                   pool: str) -> None:
    # A quarter of the swept addresses hold their connections open and never answer (a
    # listener whose connections the kernel accepts and nobody reads): each probe there
    # waits for the sweep's timeouts, the defaults (3 s connect, 5 s per read, 20 s in
    # all), far past the 10 s a shutdown may take. The worker must abandon them, publish
    # nothing for them, and hand them back with the shard.
    base = "127.62.52"
    silent = [socket.create_server((f"{base}.{i}", 1883), backlog=64) for i in range(0, 256, 4)]
    try:
        fleet.start_scheduler()
        w1 = fleet.spawn("w1", "worker", "--pool", pool, "--concurrency", "1")
        sweep_id = fleet.start_sweep(f"{base}.0/24", "--ports", "1883", "--allow-reserved",
                                     "--all", "--rate", "20", "--shards", "1", "--seed", "6")
        spec = json.loads(fleet.query("SELECT spec FROM sweeps WHERE id = $1", sweep_id))
        assert (spec["connect_timeout"], spec["io_timeout"], spec["total_timeout"]) == \
            (3.0, 5.0, 20.0)
        fleet.wait_for(sweep_id, "probing", lambda s: s["probes"] > 40)
        began = time.monotonic()
        w1.send_signal(signal.SIGTERM)
        assert w1.wait(timeout=30) == 0, fleet.log("w1")
        took = time.monotonic() - began
        assert took < 10, f"{took:.1f} s\n{fleet.log('w1')}"
        # its processes said goodbye: no heartbeat left to expire on its own
        left = SyncRedis.from_url(fleet.env["BROKERSCAN_REDIS_URL"])
        try:
            assert left.keys(f"{fleet.namespace}:worker:*") == [], fleet.log("w1")
        finally:
            left.close()
        shard = fleet.shards(sweep_id)[0]
        assert shard["state"] in ("paused", "pending", "queued"), shard
        assert shard["attempts"] == 0 and shard["unfinished"], shard  # abandoned, kept
        first = fleet.results()
        assert max(first.values()) == 1 and len(first) == shard["probes"], fleet.log("w1")
        assert shard["probes"] + len(shard["unfinished"]) < 256  # stopped mid-walk

        fleet.start_worker("w2")
        fleet.wait_state(sweep_id, {"finished"}, timeout=120)
        seen = first + fleet.results()
        assert len(seen) == 256 and max(seen.values()) == 1  # every target exactly once
        shard = fleet.shards(sweep_id)[0]
        assert shard["probes"] == 256 and shard["unfinished"] == [], shard
    finally:
        for listener in silent:
            listener.close()


# The shard runner in this process, against the fleet's services and real sockets: runs
# stopped by the time limit with a short grace (the same mechanism as a shutdown) hand
# back exactly what they did not finish, run after run, even targets abandoned twice.
BASE = "127.62.56"  # a /26 of the swept ranges
SILENT = range(0, 64, 4)  # the addresses that hold their connections


def settings_of(fleet: Fleet) -> Settings:
    return Settings(namespace=fleet.namespace, database_url=fleet.database_url,
                    redis_url=fleet.env["BROKERSCAN_REDIS_URL"],
                    results_url=fleet.env["BROKERSCAN_RESULTS_URL"], scope=["127.0.0.0/8"])


def test_time_limited_runs_hand_back_their_abandoned_targets(fleet: Fleet) -> None:
    silent = [socket.create_server((f"{BASE}.{i}", 1883), backlog=64) for i in SILENT]
    try:
        sweep_id = fleet.start_sweep(f"{BASE}.0/26", "--ports", "1883", "--allow-reserved",
                                     "--all", "--rate", "0", "--shards", "1", "--seed", "9",
                                     "--connect-timeout", "3", "--io-timeout", "3",
                                     "--timeout", "4")
        spec = json.loads(fleet.query("SELECT spec FROM sweeps WHERE id = $1", sweep_id))
        shard = plan_sweep(SweepSpec.model_validate(spec)).locate(0)[1].to_dict()

        async def run(max_seconds: float, grace: float) -> str:
            ctx = WorkerContext(settings_of(fleet), "test:1", max_seconds, drain_grace=grace)
            try:
                return (await run_shard(ctx, sweep_id, 0, spec, shard)).outcome
            finally:
                await ctx.close()

        outcomes = []
        # two runs cut short: 0.2 s of time, then 0.2 s of grace, far below the 3 s the
        # silent listeners hold each probe; then one run with time to finish
        for max_seconds, grace in ((0.2, 0.2), (0.2, 0.2), (900.0, 3.0)):
            outcome = asyncio.run(run(max_seconds, grace))
            row = fleet.shards(sweep_id)[0]
            outcomes.append((outcome, row["probes"], sorted(row["unfinished"])))
    finally:
        for listener in silent:
            listener.close()
    (o1, p1, u1), (o2, p2, u2), (o3, p3, u3) = outcomes
    # run 1 started every target (no rate limit): the refused ones finished, the silent
    # ones were abandoned; run 2 started only those and abandoned them again
    assert (o1, p1, len(u1)) == ("handed-back", 64 - len(SILENT), len(SILENT)), outcomes
    assert (o2, p2, u2) == ("handed-back", p1, u1), outcomes
    assert (o3, p3, u3) == ("done", 64, []), outcomes
    results = fleet.results()
    assert len(results) == 64 and max(results.values()) == 1  # every target exactly once


# -- failures: visible and recoverable ---------------------------------------------------------

def test_an_outage_within_its_grace_costs_no_attempt(fleet: Fleet) -> None:
    # Redis gone for this worker (five failed runs failed the shard before issue 17):
    # within shard_outage_seconds nothing is spent, the worker, not ready, stops taking
    # the shard, which waits, and finishes once Redis is back, every target counted once.
    proxy = FaultProxy("127.0.0.1", 6379, host=servers.allocate("ops", 0)[0])
    try:
        fleet.start_scheduler()
        fleet.start_worker("w1", env={"BROKERSCAN_REDIS_URL": f"redis://{proxy.host}:"
                                                              f"{proxy.port}/0",
                                      "BROKERSCAN_SHARD_RETRY_SECONDS": "0.2"})
        sweep_id = fleet.start_sweep("127.62.48.0/24", "--ports", "1883", "--allow-reserved",
                                     "--all", "--rate", "40", "--shards", "1", "--seed", "4",
                                     "--connect-timeout", "1", "--timeout", "2")
        fleet.wait_for(sweep_id, "probing", lambda s: s["probes"] > 20)
        proxy.refuse_new()
        proxy.cut()
        wait_until("failed runs, then a worker that is not ready",
                   lambda: "takes no shard until it is" in fleet.log("w1")
                   and "no attempt spent" in fleet.log("w1"), timeout=60, fleet=fleet)
        holds_for(lambda: fleet.shards(sweep_id)[0]["attempts"] == 0
                  and fleet.shards(sweep_id)[0]["state"] in ("queued", "running"), 8.0,
                  "the shard waiting without spending attempts")
        assert "outage too long" not in fleet.log("w1")
        proxy.refuse_new(False)
        status = fleet.wait_state(sweep_id, {"finished"}, timeout=90)
        assert fleet.shards(sweep_id)[0]["attempts"] == 0
        assert status["probes"] == 256 and sum(status["statuses"].values()) == 256
        assert len(fleet.results()) == 256
    finally:
        proxy.stop()


def test_a_worker_that_is_not_ready_takes_no_shard_until_it_is(fleet: Fleet) -> None:
    proxy = FaultProxy("127.0.0.1", 6379, host=servers.allocate("ops", 0)[0])
    try:
        fleet.start_scheduler()
        fleet.start_worker("w1", env={"BROKERSCAN_REDIS_URL": f"redis://{proxy.host}:"
                                                              f"{proxy.port}/0"})
        wait_until("w1 up", lambda: "ready." in fleet.log("w1"), fleet=fleet)
        proxy.refuse_new()
        proxy.cut()  # its /readyz fails: Redis does not answer it
        wait_until("w1 not ready", lambda: "takes no shard until it is" in fleet.log("w1"),
                   fleet=fleet)
        sweep_id = fleet.start_sweep("127.62.50.0/26", "--ports", "1883", "--allow-reserved",
                                     "--all", "--shards", "1", "--seed", "5",
                                     "--connect-timeout", "1", "--timeout", "2")
        wait_until("the shard queued", lambda: fleet.shards(sweep_id)[0]["state"],
                   lambda s: s == "queued", fleet=fleet)
        holds_for(lambda: fleet.shards(sweep_id)[0]["state"] == "queued", 4.0,
                  "the shard left alone by a worker that is not ready")
        assert "Task brokerscan.run_shard" not in fleet.log("w1")  # never even received
        proxy.refuse_new(False)
        fleet.wait_state(sweep_id, {"finished"}, timeout=60)
        assert "worker ready again" in fleet.log("w1")
        assert fleet.shards(sweep_id)[0]["attempts"] == 0
        assert len(fleet.results()) == 64
    finally:
        proxy.stop()


def test_failed_shards_say_why_and_can_be_retried(fleet: Fleet) -> None:
    proxy = FaultProxy("127.0.0.1", 6379, host=servers.allocate("ops", 0)[0])
    try:
        fleet.start_scheduler()
        # no grace: every run that fails on the outage is an attempt
        fleet.start_worker("w1", env={"BROKERSCAN_REDIS_URL": f"redis://{proxy.host}:"
                                                              f"{proxy.port}/0",
                                      "BROKERSCAN_SHARD_RETRY_SECONDS": "0.2",
                                      "BROKERSCAN_SHARD_OUTAGE_SECONDS": "0",
                                      "BROKERSCAN_READY_GATE": "false"})
        sweep_id = fleet.start_sweep("127.62.44.0/24", "--ports", "1883", "--allow-reserved",
                                     "--all", "--rate", "40", "--shards", "1", "--seed", "4",
                                     "--connect-timeout", "1", "--timeout", "2")
        fleet.wait_for(sweep_id, "probing", lambda s: s["probes"] > 20)
        proxy.refuse_new()
        proxy.cut()  # Redis is gone for this worker: its shard fails, five times
        status = fleet.wait_state(sweep_id, {"failed"}, timeout=90)
        assert status["shards"]["failed"] == 1
        failure = status["failed_shards"][0]
        assert failure["error"].startswith("gave up after 5 attempts; last error: ")
        assert "Error" in failure["error"], failure
        text = fleet.cli("sweep", "status", sweep_id).stdout
        assert "[failed]" in text and "failed shard 0" in text and "sweep retry" in text
        assert "1 failed" in fleet.cli("sweep", "list").stdout

        proxy.refuse_new(False)
        out = fleet.cli("sweep", "retry", sweep_id).stdout
        assert out.strip() == f"{sweep_id} running: 1 failed shard(s) queued again"
        status = fleet.wait_state(sweep_id, {"finished"}, timeout=90)
        assert status["shards"]["done"] == 1
        # the durable counts cover each target once (the live ones may count a failed run)
        assert fleet.shards(sweep_id)[0]["probes"] == 256
        assert len(fleet.results()) == 256  # duplicates allowed, nothing missing
        bad = fleet.cli("sweep", "retry", sweep_id, check=False)
        assert bad.returncode == 2 and "no failed shard" in bad.stderr
    finally:
        proxy.stop()


def test_sweep_status_lists_idle_workers(fleet: Fleet) -> None:
    fleet.start_scheduler()
    fleet.start_worker("w1")
    sweep_id = fleet.start_sweep("127.62.46.0/30", "--ports", "1883", "--allow-reserved",
                                 "--connect-timeout", "1", "--timeout", "2")
    fleet.wait_state(sweep_id, {"finished"})
    status = wait_until("the idle worker listed", lambda: fleet.status(sweep_id),
                        lambda s: s["workers"])
    assert [w["state"] for w in status["workers"]] == ["idle"]
    assert "workers alive: 1 (0 busy, 1 idle)" in fleet.cli("sweep", "status", sweep_id).stdout
    assert os.environ.get("BROKERSCAN_SCOPE", "127.0.0.0/8").startswith("127.")
