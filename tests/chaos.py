"""Services a chaos test owns, so that it may stop, restart and wipe them (issue 17).

Each is a real server on an address and port of its own, its data in the test's directory:
a Redis without persistence (a restart comes back empty, as Redis does in production), a
RabbitMQ node (a restart keeps its durable queues and persistent messages; ``recreate``
wipes them, as a broker node recreated without its volume does) and a PostgreSQL cluster
(restarted with its data; optionally on a small tmpfs of its own that ``fill`` fills up).
The machine's shared services are never touched.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from tests import servers
from tests.servers import MissingServerBinary, ServerProcess, _free_port, _spawn
from tests.waiting import wait_for

__all__ = ["OwnPostgres", "OwnRabbit", "OwnRedis"]


class _Own:
    """What every service here does: start, stop, and a restart made of the two."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, away: float = 0.0) -> float:
        """Stop it, wait *away* seconds, start it again (with whatever data it keeps);
        the seconds it was away."""
        began = time.monotonic()
        self.stop()
        time.sleep(away)  # the outage itself: nothing to wait for
        self.start()
        return time.monotonic() - began


class OwnRedis(_Own):
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
        return self.restart()


class OwnRabbit(_Own):
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

    def recreate(self) -> float:
        """Stop the node and start a new one without its data (queues and messages
        gone); the seconds it was away."""
        began = time.monotonic()
        self.stop()
        shutil.rmtree(self.workdir / "mnesia", ignore_errors=True)
        self.start()
        return time.monotonic() - began


def postgres_bin() -> Path:
    """Debian's PostgreSQL programs (the newest major version installed), or raise."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise MissingServerBinary(
            "this test needs PostgreSQL's initdb (/usr/lib/postgresql/*/bin), which is not "
            "installed; run scripts/bootstrap.sh as root")
    return found[-1].parent


class OwnPostgres(_Own):
    """A PostgreSQL cluster of the test's own, run as the ``postgres`` system user.

    initdb refuses root, so the cluster's files live in a directory of its own under
    /tmp owned by ``postgres`` (a test's ``tmp_path`` is not reachable by that user);
    logs go to *workdir*. Trust authentication on its own loopback address; fsync off.

    :param disk_mb: if set, the cluster (data and WAL alike: one disk, as in most
        deployments) lives on a tmpfs of this size mounted for it (needs root), which
        :meth:`fill` fills and :meth:`free` frees again; :meth:`remove` unmounts it.
    :param wal_apart: the WAL (``pg_wal``) on another disk than the data (the machine's):
        a full data disk then fails writes without ever stopping the server.
    """

    def __init__(self, workdir: Path, *, disk_mb: int | None = None,
                 wal_apart: bool = False) -> None:
        self.workdir = workdir
        self.bin = postgres_bin()
        self.host, self.port = servers.allocate("scratch", 0)
        self.root = Path(tempfile.mkdtemp(prefix="bschaos-pg-"))
        self.disk = self.root / "disk"
        self.data = self.disk / "data"
        self.ballast = self.disk / "ballast"
        self.disk_mb = disk_mb
        self.mounted = False
        self.process: ServerProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.disk.mkdir()
        if disk_mb is not None:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk_mb}m,mode=0700",
                            "bschaos-pg", str(self.disk)], check=True, capture_output=True)
            self.mounted = True
        shutil.chown(self.root, "postgres", "postgres")
        shutil.chown(self.disk, "postgres", "postgres")
        self._as_postgres("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--no-sync", "--no-instructions",
                          # 1 MB WAL segments: a sweep of a few seconds needs new ones,
                          # so a full disk reaches the WAL as it would in production
                          "--wal-segsize=1",
                          *(["--waldir", str(self.root / "wal")] if wal_apart else []))

    def _as_postgres(self, program: str, *args: str) -> None:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / program),
                               *args], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{program} failed ({proc.returncode}):\n{proc.stdout}"
                               f"\n{proc.stderr}")

    @property
    def url(self) -> str:
        """The URL of its maintenance database (user ``postgres``, no password)."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def log(self) -> str:
        """Everything the server logged, over all its starts."""
        return "".join(path.read_text(errors="replace") for path in
                       (self.workdir / "earlier.log", self.workdir / "stdout.log")
                       if path.is_file())

    def start(self) -> OwnPostgres:
        current = self.workdir / "stdout.log"
        if current.is_file():  # _spawn starts it afresh: keep the earlier runs' lines
            with (self.workdir / "earlier.log").open("a") as earlier:
                earlier.write(current.read_text(errors="replace"))
        self.process = _spawn(
            ["runuser", "-u", "postgres", "--", str(self.bin / "postgres"), "-D",
             str(self.data), "-c", f"listen_addresses={self.host}", "-p", str(self.port),
             "-c", "unix_socket_directories=", "-c", "fsync=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200",
             "-c", "min_wal_size=4MB", "-c", "max_wal_size=16MB"],
            self.workdir, self.host, self.port)
        self.process.wait_until_listening(timeout=60)
        self.wait_ready()
        return self

    def ready(self) -> bool:
        """True once the server accepts connections (not starting up or recovering)."""
        return subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p",
                               str(self.port), "-U", "postgres", "-t", "2"],
                              check=False).returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None
        process = self.process
        wait_for(lambda: self.ready() or not process.alive(), timeout,
                 "PostgreSQL accepting connections", detail=process.log_tail)
        if not process.alive():
            raise servers.ServerStartError(f"PostgreSQL exited\n{process.log_tail()}")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster: sessions ended, a clean checkpoint),
        as ``pg_ctl stop -m fast`` and systemd do; killed if it lingers."""
        if self.process is None:
            return
        if self.process.alive():
            pid = self.postmaster_pid()
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
            try:
                self.process.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.process.pid, signal.SIGKILL)
                self.process.process.wait(timeout=5)
        self.process = None

    def fill(self) -> int:
        """Fill the cluster's disk to the last byte with a ballast file; its size."""
        assert self.mounted, "fill() needs disk_mb"
        chunk = b"\0" * (1 << 20)
        written = 0
        with self.ballast.open("wb", buffering=0) as out:
            while True:
                try:
                    written += out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            while True:  # the last partial megabyte, a page at a time
                try:
                    written += out.write(chunk[:4096])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return written

    def free(self) -> None:
        """Remove the ballast: the disk has room again."""
        self.ballast.unlink(missing_ok=True)

    def remove(self) -> None:
        """Stop the server, unmount its disk, delete its files."""
        try:
            self.stop()
        finally:
            if self.mounted:
                subprocess.run(["umount", "--lazy", str(self.disk)], check=False)
                self.mounted = False
            shutil.rmtree(self.root, ignore_errors=True)
