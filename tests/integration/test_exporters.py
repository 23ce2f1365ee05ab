"""Every series the alert rules read exists, so that no alert stays silent for a misspelt
name: each name in ``deploy/prometheus/rules/brokerscan.yml`` is Prometheus's own ``up``,
a metric brokerscan defines, or one that the real exporter of its service serves:

- a test-owned RabbitMQ node started with ``deploy/rabbitmq/enabled_plugins`` (so the file
  is also proved to load: management and ``rabbitmq_prometheus``), scraped on its
  prometheus listener at ``/metrics`` and at ``/metrics/detailed`` with the families the
  scrape configuration asks for;
- Debian's ``prometheus-redis-exporter`` on the local Redis and
  ``prometheus-postgres-exporter`` on the local PostgreSQL (the programs the compose and
  Kubernetes recipes run as images). ``scripts/bootstrap.sh`` installs them; missing, the
  test fails.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aio_pika
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import servers
from tests.pg import BASE_URL
from tests.services import REDIS_URL
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("brokerscan", "scheduler", "workers", "enrichment", "storage")
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def rule_names() -> set[str]:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "brokerscan.yml")
                         .read_text())
    exprs = " ".join(r["expr"] for g in doc["groups"] for r in g["rules"])
    return set(re.findall(r"\b(?:brokerscan|rabbitmq|redis|pg)_[a-z_]+\b", exprs)) | (
        {"up"} if re.search(r"\bup\{", exprs) else set())


def brokerscan_names() -> set[str]:
    names: set[str] = set()
    for root in PRODUCT:
        for path in (ROOT / root).rglob("*.py"):
            names |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(brokerscan_\w+)"',
                                    path.read_text()))
    return names


def scrape(url: str) -> set[str]:
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200, (url, answer.text[:300])
    names = set()
    for family in text_string_to_metric_families(answer.text):
        names |= {s.name for s in family.samples}
    return names


def binary(name: str) -> str:
    found = shutil.which(name, path="/usr/bin:/usr/local/bin:/bin")
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install {name} (scripts/bootstrap.sh)")
    return found


@contextmanager
def exporter(tmp_path: Path, name: str, pool_port: int, argv: list[str],
             env: dict[str, str] | None = None) -> Iterator[set[str]]:
    host, port = servers.allocate("ops", pool_port)
    workdir = tmp_path / name
    workdir.mkdir()
    proc = servers._spawn([binary(name), *argv, f"--web.listen-address={host}:{port}"],
                          workdir, host, port, env)
    try:
        proc.wait_until_listening(timeout=30)
        yield scrape(f"http://{host}:{port}/metrics")
    finally:
        proc.stop()


class Node:
    def __init__(self, amqp: str, metrics: str) -> None:
        self.amqp, self.metrics = amqp, metrics


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    servers.require_binary("rabbitmq-server", script)
    workdir = tmp_path_factory.mktemp("rabbitmq-exporter")
    host, port = servers.allocate("ops", 5672)
    _, metrics_port = servers.allocate("ops", 15692)
    _, management_port = servers.allocate("ops", 15672)
    dist_port = servers._free_port("127.0.0.1", 0)
    (workdir / "rabbitmq.conf").write_text("\n".join([
        f"listeners.tcp.default = {host}:{port}",
        f"prometheus.tcp.ip = {host}", f"prometheus.tcp.port = {metrics_port}",
        f"management.tcp.ip = {host}", f"management.tcp.port = {management_port}",
        "log.console = false", ""]))
    shutil.copy(ROOT / "deploy" / "rabbitmq" / "enabled_plugins", workdir / "enabled_plugins")
    env = {"HOME": str(workdir), "RABBITMQ_NODENAME": f"bsexp{port}@localhost",
           "RABBITMQ_NODE_IP_ADDRESS": host, "RABBITMQ_NODE_PORT": str(port),
           "RABBITMQ_DIST_PORT": str(dist_port),
           "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
           "RABBITMQ_LOG_BASE": str(workdir / "log"),
           "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
           "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
           "ERL_CRASH_DUMP": str(workdir / "erl_crash.dump")}
    node = servers._spawn([script], workdir, host, metrics_port, env)
    try:
        node.wait_until_listening(timeout=90)
        servers.wait_for_port(host, port, 30, node.alive, node.log_tail)
        yield Node(f"amqp://guest:guest@{host}:{port}/", f"http://{host}:{metrics_port}")
    finally:
        node.stop()


def detailed_url(node: Node) -> str:
    """The per-queue endpoint with the families prometheus.yml's rabbitmq-queues job asks."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "rabbitmq-queues"]
    query = "&".join(f"family={f}" for f in job["params"]["family"])
    return f"{node.metrics}{job['metrics_path']}?{query}"


def test_every_series_an_alert_reads_exists(rabbitmq: Node, tmp_path: Path) -> None:
    served = scrape(f"{rabbitmq.metrics}/metrics") | scrape(detailed_url(rabbitmq))
    with exporter(tmp_path, "prometheus-redis-exporter", 9121,
                  [f"--redis.addr={REDIS_URL}"]) as names:
        served |= names
    with exporter(tmp_path, "prometheus-postgres-exporter", 9187, [],
                  {"DATA_SOURCE_NAME": f"{BASE_URL}?sslmode=disable"}) as names:
        served |= names
    assert {"redis_up", "pg_up", "rabbitmq_alarms_memory_used_watermark"} <= served
    ours = brokerscan_names()
    assert "brokerscan_http_requests_total" in ours and "brokerscan_shards" in ours
    names = rule_names()
    assert {"up", "brokerscan_shards", "redis_up", "pg_up"} <= names
    missing = sorted(n for n in names - {"up"}
                     if n not in served and n not in ours
                     and not any(n.endswith(s) and n[:-len(s)] in ours for s in SUFFIXES))
    assert not missing, f"alert rules read series nobody serves: {missing}"


def test_per_queue_scrape_counts_a_queue(rabbitmq: Node) -> None:
    """The rabbitmq-queues job's scrape gives each queue's depth, by name."""
    async def declare() -> None:
        connection = await aio_pika.connect(rabbitmq.amqp)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("brokerscan.results.raw", durable=True)
            await channel.default_exchange.publish(aio_pika.Message(b"{}"), queue.name)

    asyncio.run(declare())

    def depth() -> float | None:
        body = httpx.get(detailed_url(rabbitmq), timeout=10).text
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if (sample.name == "rabbitmq_detailed_queue_messages_ready"
                        and sample.labels.get("queue") == "brokerscan.results.raw"):
                    return sample.value
        return None

    # the node's statistics are collected every few seconds
    wait_for(lambda: depth() == 1, 30, "the queue's depth in the per-queue scrape")
