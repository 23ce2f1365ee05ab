"""Services a chaos test owns, so that it may stop, restart and wipe them (issue 17).

Each is a real server on an address and port of its own, its data in the test's directory:
a Redis without persistence (a restart comes back empty, as Redis does in production) and
a RabbitMQ node (a restart keeps its durable queues and persistent messages; ``recreate``
wipes them, as a broker node recreated without its volume does). The machine's shared
services are never touched.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from tests import servers
from tests.servers import ServerProcess, _free_port, _spawn

__all__ = ["OwnRabbit", "OwnRedis"]


class OwnRedis:
    """A Redis of the test's own, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host, self.port = servers.allocate("scratch", 0)
        self.process: ServerProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> OwnRedis:
        binary = servers.require_binary("redis-server", "/usr/bin/redis-server")
        self.process = _spawn([binary, "--bind", self.host, "--port", str(self.port),
                               "--save", "", "--appendonly", "no", "--dir",
                               str(self.workdir)], self.workdir, self.host, self.port)
        self.process.wait_until_listening(timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart_empty(self) -> float:
        """Stop it and start it again with nothing in it; the seconds it was away."""
        began = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - began


class OwnRabbit:
    """A RabbitMQ node of the test's own (plain AMQP, guest/guest, no plugins)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.host, self.port = servers.allocate("rabbitmq", 0)
        dist = _free_port("127.0.0.1", 0)
        assert dist is not None
        self.dist_port = dist
        self.node = f"bschaos{os.getpid()}x{self.port}@localhost"
        self.process: ServerProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def broker_url(self) -> str:
        """Celery's spelling of the URL."""
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    @property
    def results_url(self) -> str:
        """aio-pika's spelling of the URL."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def start(self) -> OwnRabbit:
        script = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # not /usr/sbin's: it drops root
        if not os.access(script, os.X_OK):
            script = servers.require_binary("rabbitmq-server")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.port}\nlog.console = false\n")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        env = {
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(self.workdir / "erl_crash.dump"),
        }
        self.process = _spawn([script], self.workdir, self.host, self.port, env)
        self.process.wait_until_listening(timeout=90)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self, away: float = 0.0) -> float:
        """Stop the node, wait *away* seconds, start it again (its data kept); the
        seconds it was away."""
        began = time.monotonic()
        self.stop()
        time.sleep(away)  # the outage itself: nothing to wait for
        self.start()
        return time.monotonic() - began

    def recreate(self) -> float:
        """Stop the node and start a new one without its data (queues and messages
        gone); the seconds it was away."""
        began = time.monotonic()
        self.stop()
        shutil.rmtree(self.workdir / "mnesia", ignore_errors=True)
        self.start()
        return time.monotonic() - began
