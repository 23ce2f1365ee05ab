"""``brokerscan stream dead-letters list|replay|drop`` on the machine's RabbitMQ, in a
namespace of the test's own: letters are listed without being taken, replayed to the
stage they failed in (where a real enrich-worker then handles them) or dropped, and the
letters not chosen stay in the queue, in order."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from brokerscan.model import ScanResult, Status, Transport
from brokerscan.names import Names
from brokerscan.stream.deadletters import ERROR_HEADER, ROUTING_KEY_HEADER, STAGE_HEADER
from brokerscan.stream.replay import REPLAYED_HEADER
from brokerscan.stream.topology import declare_stream, delete_stream

pytestmark = pytest.mark.integration

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def names() -> Iterator[Names]:
    names = Names(f"t{secrets.token_hex(5)}")
    yield names
    asyncio.run(delete_stream(RABBIT_URL, names))


def env(names: Names) -> dict[str, str]:
    return {**os.environ, "BROKERSCAN_NAMESPACE": names.namespace,
            "BROKERSCAN_RESULTS_URL": RABBIT_URL}


def cli(names: Names, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerscan.cli", "stream", "dead-letters",
                           *args], env=env(names), capture_output=True, text=True, timeout=120)


def record(i: int) -> bytes:
    return ScanResult(sweep_id="sw-dead", sweep_started_at=datetime(2026, 12, 1, tzinfo=UTC),
                      ip=f"8.8.8.{i}", port=1883, transport=Transport.TCP,
                      observed_at=datetime(2026, 12, 1, 1, tzinfo=UTC),
                      status=Status.SUCCESS).to_json().encode()


async def put_letters(names: Names, stages: list[str]) -> None:
    connection = await aio_pika.connect(RABBIT_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_stream(channel, names)
        for i, stage in enumerate(stages):
            await topology.dead.publish(aio_pika.Message(
                record(i), content_type="application/json", message_id=f"letter-{i}",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={ERROR_HEADER: "enrichment: source unavailable", STAGE_HEADER: stage,
                         ROUTING_KEY_HEADER: "result.mqtt.success"}), "#")


async def take_all(names: Names, queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(RABBIT_URL)
    out = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            out.append(message)
    return out


def test_list_replay_and_drop(names: Names, tmp_path: Path) -> None:
    asyncio.run(put_letters(names, ["enrich", "enrich", "mystery", "enrich", "store"]))

    listed = cli(names, "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["waiting"] == 5
    assert [d["message_id"] for d in data["letters"]] == [f"letter-{i}" for i in range(5)]
    assert data["letters"][0]["reason"] == "enrichment: source unavailable"
    assert json.loads(cli(names, "list", "--format", "json").stdout)["waiting"] == 5  # kept

    one = cli(names, "replay", "--id", "letter-1")
    assert one.returncode == 0 and "replayed 1 dead letter(s)" in one.stdout, one.stderr
    rest = cli(names, "replay", "--all")
    assert rest.returncode == 0, rest.stderr
    assert "replayed 3 dead letter(s)" in rest.stdout  # letters 0 and 3 (enrich), 4 (store)
    assert "left letter-2: unknown stage 'mystery'" in rest.stdout

    raw = asyncio.run(take_all(names, names.results_queue))
    assert [m.message_id for m in raw] == ["letter-1", "letter-0", "letter-3"]
    for message in raw:
        headers = message.headers or {}
        assert message.routing_key == "result.mqtt.success"
        assert ERROR_HEADER not in headers and STAGE_HEADER not in headers
        assert headers[REPLAYED_HEADER] == 1
        assert ScanResult.model_validate_json(message.body)
    enriched = asyncio.run(take_all(names, names.enriched_queue))
    assert [m.message_id for m in enriched] == ["letter-4"]

    missing = cli(names, "drop", "--id", "letter-9")
    assert missing.returncode == 2 and "no dead letter with id letter-9" in missing.stderr
    dropped = cli(names, "drop", "--id", "letter-2")
    assert dropped.returncode == 0 and "dropped 1" in dropped.stdout
    assert json.loads(cli(names, "list", "--format", "json").stdout)["waiting"] == 0


def test_replayed_letters_go_through_a_real_enrich_worker(names: Names, tmp_path: Path) -> None:
    asyncio.run(put_letters(names, ["enrich"] * 3))
    assert cli(names, "replay", "--all").returncode == 0
    log = open(tmp_path / "enrich.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "brokerscan.cli", "enrich-worker"],
                              env=env(names), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 60
        lines: list[bytes] = []
        while len(lines) < 3 and time.monotonic() < deadline:  # batches of one or more
            lines += [line for m in asyncio.run(take_all(names, names.enriched_queue))
                      for line in m.body.splitlines() if line.strip()]
        assert len(lines) == 3, (tmp_path / "enrich.log").read_text()
        assert all(json.loads(line)["asn"]["number"] == 15169 for line in lines)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0


def test_an_unreachable_broker_is_one_line(names: Names) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "brokerscan.cli", "stream", "dead-letters", "replay", "--all"],
        env={**env(names), "BROKERSCAN_RESULTS_URL": "amqp://guest:guest@127.0.0.1:1/%2F"},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot reach the results broker" in proc.stderr
