"""Chaos, the fast case (issue 17): a probe worker killed with -9 and Redis restarted empty,
both mid-sweep, with real processes and a Redis the test owns.

What must hold at every look and at the end: ``sweep status`` never counts a target twice
(probes never above the targets, hits never above the brokers there are), the sweep
finishes, every target's result is published (none lost), and at the end the counts are
exact: probes = targets, hits = the one broker in the range. The other faults (RabbitMQ
restarted or recreated, PostgreSQL restarted or out of disk, a network cut) take longer:
they are ``bench/chaos.py``'s cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.chaos import OwnRedis
from tests.integration.sweepfleet import Fleet
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NET = "127.58.0.0/21"  # 2,048 addresses, nothing listening but one Mosquitto
PORTS = "1883,5672"
TARGETS = 2048 * 2
MOSQUITTO = ("127.58.0.10", 1883)


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path / "redis").start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[None]:
    server = servers.start_mosquitto(tmp_path / "mq", *MOSQUITTO)
    yield
    server.stop()


def expected_keys(sweep_id: str) -> set[str]:
    return {f"{sweep_id}|127.58.{i >> 8}.{i & 255}|{port}"
            for i in range(2048) for port in (1883, 5672)}


class Watch:
    """``sweep status`` read again and again, each answer checked never to overcount."""

    def __init__(self, fleet: Fleet, sweep_id: str) -> None:
        self.fleet, self.sweep_id, self.looks = fleet, sweep_id, 0

    def status(self) -> dict[str, Any]:
        status = self.fleet.status(self.sweep_id)
        self.looks += 1
        assert status["probes"] <= TARGETS, status
        assert sum(status["statuses"].values()) <= TARGETS, status
        assert status["hits"].get("mqtt", 0) <= 1 and set(status["hits"]) <= {"mqtt"}, status
        return status

    def until(self, what: str, test: Any, timeout: float = 120) -> dict[str, Any]:
        found = wait_for(lambda: (lambda s: s if test(s) else None)(self.status()), timeout,
                         f"sweep {self.sweep_id}: {what}", detail=self.fleet.logs, every=0.3)
        assert found is not None
        return found


def test_worker_killed_and_redis_restarted_empty_mid_sweep(tmp_path: Path, redis_own: OwnRedis,
                                                           mosquitto: None) -> None:
    fleet = Fleet(tmp_path, redis_url=redis_own.url)
    fleet.setup()
    try:
        fleet.start_scheduler()
        fleet.start_worker("w1")
        fleet.start_worker("w2")
        sweep_id = fleet.start_sweep(NET, "--ports", PORTS, "--allow-reserved", "--all",
                                     "--rate", "250", "--shards", "4", "--seed", "11",
                                     "--connect-timeout", "1", "--io-timeout", "1",
                                     "--timeout", "3")
        watch = Watch(fleet, sweep_id)
        watch.until("probing", lambda s: s["probes"] > 200)
        victim = fleet.processes["w1"].pid
        wait_for(lambda: any(s["state"] == "running" and s["worker"].endswith(f":{victim}")
                             for s in fleet.shards(sweep_id)), 30, "w1 running a shard",
                 detail=fleet.logs)
        fleet.kill("w1")
        before = watch.status()["probes"]
        watch.until("probing on", lambda s: s["probes"] > before + 300)

        redis_own.restart_empty()  # counters, control, heartbeats, rate budget: all gone
        durable = sum(s["probes"] for s in fleet.shards(sweep_id))
        watch.until("counts rebuilt from PostgreSQL", lambda s: s["probes"] >= durable)
        fleet.start_worker("w3")
        status = watch.until("finished", lambda s: s["state"] == "finished", timeout=180)

        seen = fleet.results()
        assert set(seen) == expected_keys(sweep_id)  # nothing lost
        # exact: every target counted once, the one broker once
        assert status["probes"] == TARGETS and status["progress"] == 1.0, status
        assert sum(status["statuses"].values()) == TARGETS and status["hits"] == {"mqtt": 1}
        assert status["statuses"].get("success") == 1
        shards = fleet.shards(sweep_id)
        assert sum(s["probes"] for s in shards) == TARGETS
        assert sum(s["attempts"] for s in shards) <= 1  # w1's run, if nothing else
        # little rework: the lost run replays from its last checkpoint (one a second)
        assert sum(seen.values()) - TARGETS < 0.1 * TARGETS, sum(seen.values())
        assert watch.looks >= 4
    finally:
        fleet.teardown()
