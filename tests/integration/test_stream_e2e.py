"""The results stream end to end with real processes: ResultPublisher -> RabbitMQ ->
``enrich-worker`` -> RabbitMQ -> ``store-worker`` -> PostgreSQL.

Each test has a namespace of its own (queues and exchanges deleted afterwards) and a fresh
migrated database. Workers are started as separate ``brokerscan`` processes, so SIGKILL
kills exactly one of them; the database outage goes through tests/faultproxy.FaultProxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest

from brokerscan.model import ScanResult, Status, Transport
from brokerscan.stream.publisher import ResultPublisher
from brokerscan.stream.status import stream_status
from brokerscan.stream.topology import delete_stream
from storage.migrate import migrate
from tests import pg
from tests.faultproxy import FaultProxy
from tests.services import RABBIT_URL, new_names
from tests.waiting import holds_for, wait_for

pytestmark = pytest.mark.integration

# Public addresses as data (nothing is dialled): loopback would enrich as "reserved".
PREFIXES = ("8.8.8", "1.1.1", "9.9.9", "208.67.222", "4.2.2", "151.101.1")


def results(count: int, started: datetime, offset: int = 0) -> list[ScanResult]:
    out = []
    for i in range(offset, offset + count):
        prefix = PREFIXES[i % len(PREFIXES)]
        out.append(ScanResult(
            sweep_id="sw-e2e", sweep_started_at=started, ip=f"{prefix}.{(i // 6) % 256}",
            port=1883 + (i // (6 * 256)), transport=Transport.TCP, observed_at=started,
            status=Status.SUCCESS))
    return out


class Stream:
    """A namespace, a database and the two worker processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.names = new_names()
        self.database_url = pg.new_database_url()
        self.database = urlsplit(self.database_url).path.lstrip("/")
        self.store_url = self.database_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started = datetime.now(UTC).replace(microsecond=0)

    def setup(self) -> None:
        async def create() -> None:
            await pg.create_database(self.database_url)
            await migrate(self.database_url)

        asyncio.run(create())

    def teardown(self) -> None:
        for name in list(self.processes):
            self.stop(name)

        async def cleanup() -> None:
            await delete_stream(RABBIT_URL, self.names)
            await pg.drop_database(self.database_url)

        asyncio.run(cleanup())

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "BROKERSCAN_NAMESPACE": self.names.namespace,
                "BROKERSCAN_RESULTS_URL": RABBIT_URL, "BROKERSCAN_STORE_URL": self.store_url,
                "BROKERSCAN_DATABASE_URL": self.database_url}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "brokerscan.cli", *args],
                              env=self.env, capture_output=True, text=True, timeout=60)

    def spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "brokerscan.cli", *args], env=self.env,
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} ignored signal {sig}:\n{self.log(name)}") from None

    def log(self, name: str, tail: int = 3000) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-tail:]

    def publish(self, batch: Sequence[ScanResult]) -> None:
        async def go() -> None:
            publisher = ResultPublisher(RABBIT_URL, self.names, batch_size=1000,
                                        max_pending=20000)
            await publisher.start()
            for r in batch:
                publisher.add(r)
            await publisher.close()

        asyncio.run(go())

    def publish_raw(self, body: bytes, message_id: str, key: str,
                    headers: dict[str, Any] | None = None) -> None:
        async def go() -> None:
            connection = await aio_pika.connect(RABBIT_URL)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(self.names.results_exchange)
                await exchange.publish(aio_pika.Message(
                    body, message_id=message_id, headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT), key, mandatory=True)

        asyncio.run(go())

    def counts(self) -> dict[str, int]:
        async def go() -> dict[str, int]:
            conn = await asyncpg.connect(self.database_url)
            try:
                row = await conn.fetchrow(
                    "SELECT count(*) AS rows,"
                    " count(DISTINCT (sweep_started_at, sweep_id, ip, port)) AS keys,"
                    " count(*) FILTER (WHERE asn IS NOT NULL AND country IS NOT NULL)"
                    "   AS enriched FROM observations")
                rollup = await conn.fetchval("SELECT coalesce(sum(n), 0) FROM rollup")
                services = await conn.fetchval("SELECT count(*) FROM services")
            finally:
                await conn.close()
            assert row is not None
            return {"rows": row["rows"], "keys": row["keys"], "enriched": row["enriched"],
                    "rollup": int(rollup), "services": services}

        return asyncio.run(go())

    def depths(self) -> tuple[int | None, int | None, int | None]:
        status = asyncio.run(stream_status(RABBIT_URL, self.names, peek=0))
        return status.raw.messages, status.enriched.messages, status.dead.messages

    def wait(self, what: str, test: Callable[[], bool], timeout: float = 90) -> None:
        def reached() -> bool:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited {proc.returncode}:\n{self.log(name)}")
            return test()

        def detail() -> str:
            logs = "\n".join(f"--- {n}\n{self.log(n)}" for n in self.processes)
            return f"{self.counts()} {self.depths()}\n{logs}"

        wait_for(reached, timeout, what, detail=detail, every=0.2)

    def start_workers(self, *store_args: str) -> None:
        self.spawn("enrich", "enrich-worker")
        self.spawn("store", "store-worker", *store_args)


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[Stream]:
    s = Stream(tmp_path)
    s.setup()
    yield s
    s.teardown()


def test_end_to_end_exactly_once(stream: Stream) -> None:
    n = 3000
    batch = results(n, stream.started)
    stream.start_workers("--batch-size", "500", "--max-delay", "0.1")
    stream.publish(batch)
    stream.wait("N observations", lambda: stream.counts()["rows"] == n)
    assert stream.counts() == {"rows": n, "keys": n, "enriched": n, "rollup": n,
                               "services": n}
    stream.publish(batch)  # the same results again: a re-run sweep, or redeliveries
    stream.wait("the repeat drained", lambda: stream.depths()[:2] == (0, 0))
    # A window for a late batch of the repeat to commit: nothing may be added meanwhile.
    holds_for(lambda: stream.counts()["rows"] == n, 1.0, f"{n} rows after the repeat")
    stream.wait("still drained", lambda: stream.depths()[:2] == (0, 0))
    assert stream.counts() == {"rows": n, "keys": n, "enriched": n, "rollup": n,
                               "services": n}
    assert stream.depths()[2] == 0
    assert stream.stop("store") == 0 and stream.stop("enrich") == 0  # SIGTERM: clean exit


def test_store_worker_killed_mid_stream(stream: Stream) -> None:
    n = 20000
    stream.start_workers("--batch-size", "500", "--max-delay", "0.1")
    stream.publish(results(n, stream.started))
    stream.wait("some written", lambda: stream.counts()["rows"] >= 2000)
    stream.stop("store", signal.SIGKILL)
    partial = stream.counts()["rows"]
    assert partial < n, "the writer finished before it was killed: raise n"
    stream.spawn("store2", "store-worker", "--batch-size", "500", "--max-delay", "0.1")
    stream.wait("all written", lambda: stream.counts()["rows"] == n, timeout=100)
    stream.wait("drained", lambda: stream.depths()[:2] == (0, 0))
    assert stream.counts() == {"rows": n, "keys": n, "enriched": n, "rollup": n,
                               "services": n}


@pytest.mark.timeout(240)
def test_database_unreachable_for_30_seconds(stream: Stream) -> None:
    n = 4000
    with FaultProxy("127.0.0.1", 5432) as proxy:
        stream.store_url = proxy.url("postgresql", "postgres", f"/{stream.database}")
        stream.spawn("enrich", "enrich-worker", "--per-message", "50")
        stream.spawn("store", "store-worker", "--batch-size", "200", "--max-delay", "0.1",
                     "--prefetch", "4")
        stream.publish(results(n // 2, stream.started))
        stream.wait("first half", lambda: stream.counts()["rows"] == n // 2)
        proxy.refuse_new(True)
        proxy.cut()
        began = time.monotonic()
        stream.publish(results(n // 2, stream.started, offset=n // 2))
        depths = []
        while time.monotonic() - began < 30:
            depths.append(stream.depths()[1] or 0)
            time.sleep(2)  # the scenario: sample the queue through the 30 s outage
        assert stream.counts()["rows"] == n // 2  # (read directly, not through the proxy)
        # Everything past the writer's prefetch (4 messages of at most 50 results) waits,
        # ready, in the enriched queue.
        assert max(depths) >= (n // 2) // 50 - 4
        log = stream.log("store", tail=1_000_000)
        assert log.count("database unavailable") == 1, log  # one line per state change
        proxy.refuse_new(False)
        stream.wait("second half", lambda: stream.counts()["rows"] == n, timeout=90)
        stream.wait("drained", lambda: stream.depths()[:2] == (0, 0))
    assert stream.counts() == {"rows": n, "keys": n, "enriched": n, "rollup": n,
                               "services": n}
    assert "writing again" in stream.log("store", tail=1_000_000)


def test_bad_messages_go_to_dead_letters(stream: Stream) -> None:
    n = 1000
    stream.start_workers("--batch-size", "100", "--max-delay", "0.1")
    stream.publish(results(n // 2, stream.started))
    stream.publish_raw(b'{"ip": "8.8.8.8", "port": ', "bad|8.8.8.8|1", "result.mqtt.success")
    wrong = results(1, stream.started, offset=n)[0].model_dump(mode="json")
    stream.publish_raw(json.dumps(wrong | {"schema_version": 9}).encode(), "bad|9.9.9.9|2",
                       "result.amqp.success")
    stream.publish(results(n // 2, stream.started, offset=n // 2))
    stream.wait("all good ones written", lambda: stream.counts()["rows"] == n)
    stream.wait("two dead letters", lambda: stream.depths() == (0, 0, 2))
    out = stream.cli("stream", "status", "--format", "json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["dead"]["messages"] == 2
    reasons = {d["message_id"]: d["reason"] for d in status["dead_letters"]}
    assert "Invalid JSON" in reasons["bad|8.8.8.8|1"]
    assert reasons["bad|9.9.9.9|2"] == "unknown schema_version 9"
    assert {d["routing_key"] for d in status["dead_letters"]} == {
        "result.mqtt.success", "result.amqp.success"}
    text = stream.cli("stream", "status")
    assert "unknown schema_version 9" in text.stdout and "dead" in text.stdout


def test_bad_configuration_is_one_line(stream: Stream, tmp_path: Path) -> None:
    stream.store_url = "postgresql://postgres@127.0.0.1:1/nowhere"
    out = stream.cli("store-worker")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot reach PostgreSQL" in out.stderr
    stream.store_url = "mysql://x/y"
    out = stream.cli("store-worker")
    assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr
    env_rabbit = {**stream.env, "BROKERSCAN_RESULTS_URL": "amqp://guest:guest@127.0.0.1:1/"}
    for command in (["stream", "status"], ["enrich-worker"]):
        out = subprocess.run([sys.executable, "-m", "brokerscan.cli", *command],
                             env=env_rabbit, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "cannot reach the results broker" in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr  # aiormq's own log is kept quiet
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(b"not a maxmind database")
    env_bad = {**stream.env, "BROKERSCAN_ENRICHMENT_SOURCES": f"mmdb://{corrupt}"}
    out = subprocess.run([sys.executable, "-m", "brokerscan.cli", "enrich-worker"],
                         env=env_bad, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
