"""An approved opt-out stops a RUNNING sweep from dialling its range: real PostgreSQL,
Redis and RabbitMQ, a real scheduler and a real Celery worker process, over a /23 of
loopback with a real Mosquitto in each half.

The sweep is slow on purpose (a fleet-wide rate of 20 connections a second, 16 shards, at
most one queued at a time), so that some shards run before the request is approved and
the rest after. What must hold, read from the results the worker published (every target
written: ``--all``):

- every target of the sweep has exactly one record;
- no target outside the opted-out /24 is ever refused: the Mosquitto there is found;
- in every shard the scheduler queued after the approval, every target of the /24 has the
  scope check's record (``blocklisted-target``, "opted out") and no probe; in every shard
  queued before it, they were probed (refused, or the Mosquitto found); both kinds exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import aio_pika
import pytest

from brokerscan.model import ScanResult, Status
from brokerscan.stream.wire import message_lines
from tests import servers
from tests.integration.sweepfleet import Fleet, fleet_in
from tests.optouts import request_opt_out

pytestmark = pytest.mark.integration

NET = "127.59.0.0/23"  # 512 addresses (tests/servers.py: this module's range)
OPTED = ipaddress.IPv4Network("127.59.1.0/24")
OUTSIDE_BROKER = ("127.59.0.10", 1883)
INSIDE_BROKER = ("127.59.1.10", 1883)
SHARDS = 16


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    one = servers.start_mosquitto(tmp_path_factory.mktemp("mq-out"), *OUTSIDE_BROKER)
    two = servers.start_mosquitto(tmp_path_factory.mktemp("mq-in"), *INSIDE_BROKER)
    yield
    two.stop()
    one.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_in(tmp_path) as made:
        # the fleet's store is its database: where `optout` and the scheduler look
        made.env["BROKERSCAN_STORE_URL"] = made.database_url
        yield made


def results(fleet: Fleet) -> list[tuple[int, ScanResult]]:
    """Drain the fleet's results queue: (shard, result) for every result published."""
    async def drain() -> list[tuple[int, ScanResult]]:
        found: list[tuple[int, ScanResult]] = []
        connection = await aio_pika.connect(fleet.results_url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.get_queue(fleet.results_queue)
            while True:
                message = await queue.get(no_ack=True, fail=False, timeout=5)
                if message is None:
                    return found
                shard = int(str(message.headers["shard"]))
                found += [(shard, ScanResult.model_validate_json(line))
                          for line in message_lines(message)]

    return asyncio.run(drain())


def test_an_approved_opt_out_stops_a_running_sweep_dialling_its_range(
        fleet: Fleet, brokers: None) -> None:
    request = request_opt_out(fleet.database_url, str(OPTED))
    fleet.start_scheduler("--max-queued", "1")
    fleet.start_worker("w1")
    sweep_id = fleet.start_sweep(NET, "--ports", "1883", "--allow-reserved", "--all",
                                 "--rate", "20", "--shards", str(SHARDS), "--seed", "3",
                                 "--connect-timeout", "1",
                                 "--io-timeout", "1", "--timeout", "3")
    fleet.wait_for(sweep_id, "two shards done",
                   lambda s: s["shards"].get("done", 0) >= 2, timeout=120)
    approved = fleet.cli("optout", "approve", request)
    assert f"{request} approved: {OPTED}" in approved.stdout
    approved_at: datetime = fleet.query("SELECT decided_at FROM optouts WHERE id = $1",
                                        request)
    again = fleet.cli("optout", "approve", request)  # idempotent
    assert "approved already" in again.stdout
    status = fleet.wait_state(sweep_id, {"finished"}, timeout=240)
    assert status["shards"]["done"] == SHARDS

    found = results(fleet)
    per_target = Counter(f"{r.ip}:{r.port}" for _, r in found)
    assert len(per_target) == 512 and max(per_target.values()) == 1
    queued = {s["shard_index"]: s["queued_at"] for s in fleet.shards(sweep_id)}
    refused_shards, probed_shards = set(), set()
    for shard, result in found:
        inside = ipaddress.IPv4Address(result.ip) in OPTED
        refused = result.status is Status.BLOCKLISTED_TARGET
        if not inside:
            assert not refused, result
            continue
        if refused:
            assert result.error == "opted out" and result.protocol is None
            refused_shards.add(shard)
        else:
            probed_shards.add(shard)
    assert not refused_shards & probed_shards, "a shard both probed and refused the range"
    for shard in refused_shards:
        assert queued[shard] > approved_at, f"shard {shard} refused before the approval"
    for shard in probed_shards:
        # the scheduler read the list at the start of the round it queued this shard in
        assert queued[shard] <= approved_at + timedelta(seconds=1), shard
    assert refused_shards and probed_shards, (refused_shards, probed_shards)
    outside = {r.ip: r for _, r in found if r.ip == OUTSIDE_BROKER[0]}
    assert outside[OUTSIDE_BROKER[0]].status is Status.SUCCESS
    assert outside[OUTSIDE_BROKER[0]].mqtt is not None
