"""Dispatch sized to the fleet, with real processes: a real scheduler (no ``--max-queued``)
and ten real ``brokerscan worker --pool solo`` processes, seven on the plaintext queue and
three on the TLS queue, over refusing loopback space (every probe a refused connect; the
fleet rate budget makes each shard last a few seconds).

What must hold: more than eight workers are fed at once (the old fixed cap was eight per
sweep, plaintext first), so every one is busy; the TLS pool has work from the first round;
no queue's backlog ever exceeds its live capacity plus the margin; two sweeps started one
after the other end up sharing the fleet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from brokerscan.names import Names
from scheduler.sizing import margin
from tests.integration.sweepfleet import Fleet
from tests.services import REDIS_URL
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PLAIN, TLS = 7, 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("dispatch"))
    fleet.setup()
    try:
        fleet.spawn("scheduler", "scheduler")
        for i in range(PLAIN):
            fleet.start_worker(f"plain{i}", "--queues", "probe")
        for i in range(TLS):
            fleet.start_worker(f"tls{i}", "--queues", "probe-tls")
        wait_for(lambda: _heartbeats(fleet) == PLAIN + TLS, 240, "every worker's heartbeat",
                 detail=fleet.logs, every=0.5)
        yield fleet
    finally:
        fleet.teardown()


def _heartbeats(fleet: Fleet) -> int:
    """Worker processes whose heartbeat is alive in the fleet's namespace."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for _ in client.scan_iter(match=Names(fleet.namespace).workers_pattern()))
    finally:
        client.close()


def _backlog(fleet: Fleet, sweep_ids: list[str]) -> dict[str, int]:
    """Shards queued or running per queue, every sweep given together."""
    found = fleet.query(
        "SELECT coalesce(jsonb_object_agg(queue, n), '{}')::text FROM (SELECT queue,"
        " count(*) AS n FROM sweep_shards WHERE sweep_id = ANY($1::text[])"
        " AND state IN ('queued', 'running') GROUP BY queue) t", sweep_ids)
    return {q: int(n) for q, n in json.loads(found).items()}


def _running(fleet: Fleet, sweep_id: str) -> int:
    return int(fleet.query("SELECT count(*) FROM sweep_shards WHERE sweep_id = $1"
                           " AND state = 'running'", sweep_id))


def _start(fleet: Fleet, net: str, shards: int, rate: int) -> str:
    return fleet.start_sweep(net, "--ports", "1883,8883", "--allow-reserved",
                             "--shards", str(shards), "--rate", str(rate), "--seed", "3")


def _bounded(fleet: Fleet, sweep_ids: list[str]) -> None:
    """No queue holds more than its capacity plus the margin (every sweep together)."""
    per_queue = _backlog(fleet, sweep_ids)
    for queue, n in per_queue.items():
        capacity = TLS if queue.endswith("probe-tls") else PLAIN
        assert n <= capacity + margin(capacity), (queue, n, per_queue)
    assert sum(per_queue.values()) <= PLAIN + TLS + margin(PLAIN) + margin(TLS), per_queue


def _cancel(fleet: Fleet, *sweep_ids: str) -> None:
    for sweep_id in sweep_ids:
        fleet.cli("sweep", "cancel", sweep_id)
    for sweep_id in sweep_ids:
        fleet.wait_state(sweep_id, {"cancelled"})
    wait_for(lambda: fleet.query("SELECT count(*) FROM sweep_shards WHERE state IN"
                                 " ('queued', 'running')") == 0, 60, "the fleet to be idle",
             detail=fleet.logs)


def test_every_worker_is_fed_and_tls_works_from_the_start(fleet: Fleet) -> None:
    # 2 x 48 shards of ~340 targets at 300 probes/s for the sweep: ~12 s per shard
    sweep_id = _start(fleet, "127.62.0.0/18", 48, 300)
    seen: dict[str, Any] = {}

    def all_busy() -> bool:
        _bounded(fleet, [sweep_id])
        seen.update(fleet.status(sweep_id))
        return bool(seen["workers_busy"] == PLAIN + TLS and seen["workers_idle"] == 0)

    wait_for(all_busy, 60, f"all {PLAIN + TLS} workers busy at once",
             detail=lambda: f"{seen}\n{fleet.logs()}", every=0.2)
    short = {q.rsplit(".", 1)[-1]: n for q, n in seen["capacity"].items()}
    assert short == {"probe": PLAIN, "probe-tls": TLS}
    assert sum(1 for w in seen["workers"] if w["state"] == "busy") == PLAIN + TLS
    # From the start: the TLS pool's first shard went out in the same round as the first
    # plaintext ones, not after them.
    gap = fleet.query("SELECT extract(epoch FROM max(first) - min(first)) FROM"
                      " (SELECT min(queued_at) AS first FROM sweep_shards WHERE sweep_id = $1"
                      " GROUP BY queue) t", sweep_id)
    assert gap is not None and float(gap) < 1.0, gap
    _bounded(fleet, [sweep_id])
    text = fleet.cli("sweep", "status", sweep_id).stdout
    assert f"workers alive: {PLAIN + TLS} ({PLAIN + TLS} busy, 0 idle)" in text
    assert f"capacity: probe {PLAIN}, probe-tls {TLS}" in text
    _cancel(fleet, sweep_id)


def test_two_sweeps_share_the_fleet(fleet: Fleet) -> None:
    # 2 x 128 shards of 128 targets, 1,000 probes/s each: shards turn over in ~1-2 s
    first = _start(fleet, "127.63.0.0/18", 128, 1000)
    wait_for(lambda: _running(fleet, first) == PLAIN + TLS, 60,
             "the first sweep to hold the whole fleet", detail=fleet.logs, every=0.2)
    second = _start(fleet, "127.64.0.0/18", 128, 1000)
    counts: list[tuple[int, int]] = []

    def shared() -> bool:
        _bounded(fleet, [first, second])
        counts.append((_running(fleet, first), _running(fleet, second)))
        # an even split of 7 + 3 processes is 5 each; a shard or two may be turning over
        return min(counts[-1]) >= 4

    wait_for(shared, 60, "both sweeps to run at least 4 shards at once",
             detail=lambda: f"running (first, second): {counts[-20:]}\n{fleet.logs()}",
             every=0.2)
    _cancel(fleet, first, second)
