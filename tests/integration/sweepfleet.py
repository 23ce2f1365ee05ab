"""A sweep fleet for end-to-end tests: real scheduler and Celery worker processes.

Everything runs under a namespace of its own (queues, exchanges, Redis keys) and a
PostgreSQL database of its own, so tests never see each other or the machine's other
users of RabbitMQ and Redis. Processes are real ``brokerscan scheduler`` and
``brokerscan worker --pool solo`` processes (one process each, so that killing one
kills exactly one worker).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from redis.asyncio import Redis

from brokerscan.model import ScanResult
from brokerscan.names import Names
from brokerscan.stream.publisher import message_key
from brokerscan.stream.wire import message_lines
from scheduler.status import sweep_status
from storage.db import connect
from tests import pg
from tests.services import BROKER_URL, RABBIT_URL, REDIS_URL, new_names
from tests.waiting import wait_for


class Fleet:
    """One namespace, one database, a results queue, and the processes of a sweep."""

    def __init__(self, workdir: Path, *, broker_url: str | None = None,
                 results_url: str | None = None, redis_url: str | None = None,
                 postgres_url: str | None = None) -> None:
        """Each URL, if given, replaces the machine's shared service (``postgres_url``:
        the maintenance database of the server to make the fleet's database on)."""
        self.workdir = workdir
        self.namespace = new_names().namespace
        self.database_url = pg.new_database_url(postgres_url or pg.BASE_URL)
        self.results_url = results_url or RABBIT_URL
        self.env = {**os.environ,
                    "BROKERSCAN_NAMESPACE": self.namespace,
                    "BROKERSCAN_DATABASE_URL": self.database_url,
                    "BROKERSCAN_SCOPE": "127.0.0.0/8",
                    "BROKERSCAN_REDIS_URL": redis_url or REDIS_URL,
                    "BROKERSCAN_BROKER_URL": broker_url or BROKER_URL,
                    "BROKERSCAN_RESULTS_URL": results_url or RABBIT_URL}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.results_queue = f"{self.namespace}.test-results"

    # -- set-up and tear-down ----------------------------------------------------------

    def setup(self) -> None:
        asyncio.run(pg.create_database(self.database_url))
        self.cli("db", "migrate")
        asyncio.run(self._bind_results())

    async def _bind_results(self) -> None:
        connection = await aio_pika.connect(self.results_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(f"{self.namespace}.results",
                                                      aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(self.results_queue, durable=True)
            await queue.bind(exchange, "result.#")

    def teardown(self) -> None:
        self.stop_all()
        asyncio.run(self._cleanup())

    async def _cleanup(self) -> None:
        connection = await aio_pika.connect(self.results_url)
        async with connection:
            channel = await connection.channel()
            for queue in (self.results_queue, f"{self.namespace}.probe",
                          f"{self.namespace}.probe-tls", f"{self.namespace}.results.raw",
                          f"{self.namespace}.results.enriched",
                          f"{self.namespace}.results.dead"):
                await channel.queue_delete(queue)
            for exchange in (f"{self.namespace}.results", f"{self.namespace}.tasks",
                             f"{self.namespace}.enriched", f"{self.namespace}.dead"):
                await channel.exchange_delete(exchange)
        await pg.drop_database(self.database_url)

    # -- processes -----------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"brokerscan {' '.join(args)}: {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # the child keeps its own copy
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "brokerscan.cli", *args],
                                env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = proc
        return proc

    def start_worker(self, name: str, *args: str, env: dict[str, str] | None = None,
                     ) -> subprocess.Popen[bytes]:
        return self.spawn(name, "worker", "--pool", "solo", *args, env=env)

    def start_scheduler(self, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn("scheduler", "scheduler", "--max-queued", "4", *args)

    def start_stream(self) -> None:
        """The enrichment and storage workers (``enrich``, ``store``): results go on to
        PostgreSQL, for :meth:`stored` to check."""
        self.spawn("enrich", "enrich-worker")
        self.spawn("store", "store-worker", "--max-delay", "0.2",
                   env={"BROKERSCAN_STORE_URL": self.database_url})

    def kill(self, name: str) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]

    # -- observing -------------------------------------------------------------------------

    def start_sweep(self, *args: str) -> str:
        out = self.cli("sweep", "start", *args, "--format", "json")
        return str(json.loads(out.stdout)["id"])

    def status(self, sweep_id: str) -> dict[str, Any]:
        """What ``brokerscan sweep status ID --format json`` prints, read by the same function
        in this process: the tests poll it every 0.2-0.5 s, and a Python process a poll kept
        a core busy (test_sweep_cli runs the command itself)."""
        async def read() -> dict[str, Any]:
            conn = await connect(self.database_url)
            redis = Redis.from_url(self.env["BROKERSCAN_REDIS_URL"])
            try:
                return await sweep_status(conn, redis, Names(self.namespace), sweep_id)
            finally:
                await redis.aclose()
                await conn.close()

        # on a thread of its own: the caller may be inside an event loop (Playwright's)
        with ThreadPoolExecutor(1) as thread:
            data = thread.submit(lambda: asyncio.run(read())).result()
        return dict(json.loads(json.dumps(data, default=str)))

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)}" for n in self.processes)

    def wait_state(self, sweep_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            last.update(self.status(sweep_id))
            return dict(last) if last["state"] in states else None

        found = wait_for(reached, timeout, f"sweep {sweep_id} to be {' or '.join(states)}",
                         detail=lambda: f"status {last}\n{self.logs()}", every=0.5)
        assert found is not None
        return found

    def wait_for(self, sweep_id: str, what: str, test: Any, timeout: float = 60) -> None:
        wait_for(lambda: test(self.status(sweep_id)), timeout, f"sweep {sweep_id}: {what}",
                 detail=self.logs, every=0.2)

    def shards(self, sweep_id: str) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(self.database_url)
            try:
                rows = await conn.fetch("SELECT * FROM sweep_shards WHERE sweep_id = $1"
                                        " ORDER BY shard_index", sweep_id)
            finally:
                await conn.close()
            return [dict(r) for r in rows]

        return asyncio.run(fetch())

    def query(self, sql: str, *args: Any) -> Any:
        """The first value of the first row of ``sql`` in the fleet's database."""
        async def fetch() -> Any:
            conn = await asyncpg.connect(self.database_url)
            try:
                return await conn.fetchval(sql, *args)
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def stored(self, sweep_id: str) -> dict[str, Any]:
        """What PostgreSQL holds of a sweep: ``rows`` (observations), ``keys`` (distinct
        addresses and ports among them), ``rollup`` (the targets the rollup counted),
        ``services`` (services in the current view with a protocol, by protocol)."""
        async def fetch() -> dict[str, Any]:
            conn = await asyncpg.connect(self.database_url)
            try:
                counted = await conn.fetchrow(
                    "SELECT count(*), count(DISTINCT (ip, port)) FROM observations"
                    " WHERE sweep_id = $1", sweep_id)
                assert counted is not None
                rows, keys = counted
                rollup = await conn.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM rollup WHERE sweep_id = $1", sweep_id)
                services = await conn.fetch(
                    "SELECT protocol, count(*) FROM services WHERE sweep_id = $1"
                    " AND protocol IS NOT NULL GROUP BY protocol", sweep_id)
            finally:
                await conn.close()
            return {"rows": rows, "keys": keys, "rollup": int(rollup),
                    "services": {r[0]: r[1] for r in services}}

        return asyncio.run(fetch())

    def results(self) -> Counter[str]:
        """Drain the results queue: how many times each result arrived, by its key
        ``"sweep|ip|port"`` (every message unpacked, every line validated)."""
        async def drain() -> Counter[str]:
            seen: Counter[str] = Counter()
            connection = await aio_pika.connect(self.results_url)
            async with connection:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=1000)
                queue = await channel.get_queue(self.results_queue)
                while True:
                    message = await queue.get(no_ack=True, fail=False, timeout=5)
                    if message is None:
                        return seen
                    seen.update(message_key(ScanResult.model_validate_json(line))
                                for line in message_lines(message))

        return asyncio.run(drain())


@contextmanager
def fleet_in(workdir: Path) -> Iterator[Fleet]:
    """A :class:`Fleet` set up in *workdir* and torn down on exit (its processes stopped,
    its queues and database removed)."""
    fleet = Fleet(workdir)
    fleet.setup()
    try:
        yield fleet
    finally:
        fleet.teardown()
