"""Real servers on loopback for the integration tests: brokers, a TLS RabbitMQ node, decoys.

Every helper starts a real server (a Mosquitto, amqtt or RabbitMQ process, or a small asyncio
server in a background thread), waits until its listener accepts, and returns an object with
``host``, ``port`` and ``stop()``. The pytest fixtures in ``tests/conftest.py`` wrap them.
Only the tests that start a program need it: :func:`require_binary` (called wherever a
program is started) raises :class:`MissingServerBinary`, which fails that test (never a
skip) with the one line of its message; a test that starts no program runs without any.
``BROKERSCAN_TEST_PROGRAM_PATH``, if set, is the only search path for programs (how
tests/integration/test_program_needs.py hides Mosquitto).

Address plan (all of 127.0.0.0/8 is loopback on Linux; a fresh address per server lets every
server sit on its protocol's standard port without collisions):

=================  ===========================================================
127.0.0.1          the machine's own services (PostgreSQL 5432, Redis 6379,
                   RabbitMQ 5672, Mosquitto 1883), started by scripts/services.sh
127.10.0.0/16      CLI bad-input tests (lead; run in a namespace, never dialled)
127.42.0.0/16      MQTT tests (MQTT helper)
127.43.0.0/16      AMQP tests (AMQP helper)
127.44.0.0/16      TLS tests (TLS helper)
127.50.0.0/16      Mosquitto instances from this module (``mosquitto`` pool)
127.51.0.0/16      amqtt brokers (``amqtt`` pool)
127.52.0.0/16      the second RabbitMQ node with a TLS listener (``rabbitmq`` pool)
127.53.0.0/16      decoys (``decoy`` pool)
127.54.0.0/16      free for any test that wants its own address (``scratch`` pool)
127.55-127.58      reserved for later test infrastructure
127.59.0.0/16      opt-out sweep tests: swept range (Mosquittos at .0.10, .1.10)
127.60-127.61      engine tests (lead)
127.62.0.0/20      ops tests: metrics/health listeners, proxies (``ops`` pool)
127.62.32.0/19     ops tests: swept ranges (nothing listens there, but for the
                   silent listeners of the shutdown tests: 127.62.52.0/24 and
                   127.62.56.0/26, port 1883)
127.62.64.0/20     ops tests: the graceful-shutdown sweep's range (nothing listens)
127.63.0.0/16      protocol-depth tests (issue 12; tests/protoservers.py): WebSocket
                   MQTT brokers and decoys, a RabbitMQ node with MQTT, Web MQTT and
                   AMQP 1.0 plugins, a Qpid Proton AMQP 1.0 server
127.64.0.0/17      read-side tests (lead: search, CLI)
127.64.128.0/17    ``brokerscan serve`` in the API tests (``api`` pool)
127.65.0.0/17      brokers scanned for the dashboard's browser tests (``web`` pool)
127.65.128.0/17    dashboard tests: swept ranges (nothing listens there)
127.66.0.0/16      hostile TLS servers (``hostile-tls`` pool; TLS helper)
127.77.0.0/16      ``brokerscan demo`` (lead)
=================  ===========================================================

:func:`allocate` hands out the next address of a pool on which the wanted port can be bound,
so that a server left over from an earlier run is stepped over, not collided with.
Under pytest-xdist (scripts/test.sh) each worker process takes every n-th address of a pool,
so tests running at once never share one; the fixed addresses above belong to one test
module each, and a module runs in one process (``--dist loadfile``).

Certificates come from ``tests/certs.py`` (``make_pki``); the TLS servers take file paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import importlib.util
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.certs import Pki

__all__ = [
    "AMQP_HUGE_FRAME",
    "MQTT_HUGE_CONNACK",
    "POOLS",
    "SSH_BANNER",
    "AddressPool",
    "DecoyFactory",
    "DecoyServer",
    "Endpoint",
    "MissingServerBinary",
    "MosquittoServer",
    "ServerProcess",
    "ServerStartError",
    "allocate",
    "check_rabbitmq",
    "close_at_once",
    "garbage",
    "http_response",
    "huge_length",
    "require_amqtt",
    "require_binary",
    "server_ssl_context",
    "reset_at_once",
    "ssh_banner",
    "start_amqtt",
    "start_mosquitto",
    "start_rabbitmq_tls",
    "tarpit",
    "trickle",
    "wait_for_port",
]

START_TIMEOUT = 30.0  # seconds a server process gets to accept connections


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class MissingServerBinary(RuntimeError):
    """A server program that the integration tests need is not installed."""


#: If set: the only directories searched for server programs (instead of PATH and the
#: usual places outside it).
PROGRAM_PATH = "BROKERSCAN_TEST_PROGRAM_PATH"


def require_binary(name: str, *candidates: str) -> str:
    """The path of program ``name`` (on PATH or at one of ``candidates``), or raise.

    :raises MissingServerBinary: naming the program and how to install it
    """
    search = os.environ.get(PROGRAM_PATH)
    found = shutil.which(name, path=search)
    if found:
        return found
    for path in candidates if search is None else ():
        if os.access(path, os.X_OK):
            return path
    raise MissingServerBinary(
        f"this test needs {name}, which is not installed; run scripts/bootstrap.sh as root"
    )


def require_amqtt() -> None:
    """Check the amqtt broker (a package of the test extra) is installed, or raise."""
    search = os.environ.get(PROGRAM_PATH)
    if search is None:
        found = importlib.util.find_spec("amqtt") is not None
    else:
        found = shutil.which("amqtt", path=search) is not None
    if not found:
        raise MissingServerBinary(
            "this test needs amqtt, which is not installed; run scripts/bootstrap.sh")


# --------------------------------------------------------------------------- addresses


class AddressPool:
    """Hands out addresses of one loopback network, each with a port that is free there."""

    def __init__(self, network: str) -> None:
        self.network = ipaddress.IPv4Network(network)
        if not self.network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            raise ValueError(f"{network} is not loopback")
        # Under pytest-xdist every worker process takes its own addresses of the pool
        # (worker k of n: the k-th of every n), so two workers never race for one.
        worker, self._step = xdist_worker()
        self._next = 1 + worker
        self._lock = threading.Lock()

    def take(self, port: int) -> tuple[str, int]:
        """The next address where ``port`` can be bound (port 0: a free ephemeral port)."""
        with self._lock:
            while self._next < self.network.num_addresses - 1:
                host = str(self.network[self._next])
                self._next += self._step
                if host.endswith((".0", ".255")):
                    continue
                free = _free_port(host, port)
                if free is not None:
                    return host, free
        raise RuntimeError(f"address pool {self.network} is exhausted")


def xdist_worker() -> tuple[int, int]:
    """``(index, count)`` of this pytest-xdist worker process; ``(0, 1)`` without xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not name.startswith("gw"):
        return 0, 1
    return int(name[2:]), max(count, 1)


def _free_port(host: str, port: int) -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


POOLS: dict[str, AddressPool] = {
    "mosquitto": AddressPool("127.50.0.0/16"),
    "amqtt": AddressPool("127.51.0.0/16"),
    "rabbitmq": AddressPool("127.52.0.0/16"),
    "decoy": AddressPool("127.53.0.0/16"),
    "scratch": AddressPool("127.54.0.0/16"),
    "ops": AddressPool("127.62.0.0/20"),
    "hostile-tls": AddressPool("127.66.0.0/16"),
    "api": AddressPool("127.64.128.0/17"),
    "web": AddressPool("127.65.0.0/17"),
}


def allocate(pool: str, port: int) -> tuple[str, int]:
    """``(host, port)`` from the named pool of the address plan above."""
    return POOLS[pool].take(port)


@dataclass(frozen=True)
class Endpoint:
    """A server that this module did not start (the machine's own RabbitMQ, say)."""

    host: str
    port: int

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


def wait_for_port(
    host: str,
    port: int,
    timeout: float = START_TIMEOUT,
    alive: Callable[[], bool] = lambda: True,
    describe: Callable[[], str] = lambda: "",
) -> None:
    """Block until ``host:port`` accepts a TCP connection; raise ServerStartError if not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if not alive():
            raise ServerStartError(f"server for {host}:{port} exited during start\n{describe()}")
        if time.monotonic() > deadline:
            raise ServerStartError(f"{host}:{port} did not accept within {timeout} s\n{describe()}")
        time.sleep(0.05)  # a poll: the condition is the listener accepting


# --------------------------------------------------------------------------- processes


@dataclass
class ServerProcess:
    """A server program in its own process group, with its log in ``workdir``."""

    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log files, for error messages."""
        parts = []
        for path in sorted({self.log, *self.workdir.glob("*.log")}):
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def wait_until_listening(self, timeout: float = START_TIMEOUT) -> None:
        try:
            wait_for_port(self.host, self.port, timeout, self.alive, self.log_tail)
        except ServerStartError:
            self.stop()
            raise


def _spawn(
    argv: list[str], workdir: Path, host: str, port: int, env: Mapping[str, str] | None = None
) -> ServerProcess:
    if _free_port(host, port) is None:  # else we would wait for someone else's listener
        raise ServerStartError(f"{host}:{port} is already in use; take one from allocate()")
    log = workdir / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
        )
    return ServerProcess(host, port, workdir, process, log)


# --------------------------------------------------------------------------- Mosquitto


@dataclass
class MosquittoServer(ServerProcess):
    """A Mosquitto broker; ``users`` is empty when it lets anonymous clients in."""

    users: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    require_certificate: bool = False


def start_mosquitto(
    workdir: Path,
    host: str,
    port: int,
    *,
    users: Mapping[str, str] | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    cafile: Path | None = None,
    require_certificate: bool = False,
) -> MosquittoServer:
    """Start Mosquitto on ``host:port`` from a config of its own in ``workdir``.

    No ``users``: anonymous clients are accepted. With ``users``: a password file, anonymous
    refused (CONNACK rc 5). ``certfile``/``keyfile``: the listener speaks TLS; with
    ``require_certificate`` clients must show a certificate signed by ``cafile``.
    """
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    lines = [
        "per_listener_settings false",
        "persistence false",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type all",
        # Stay the user we are: as root Mosquitto would switch to "mosquitto", which cannot
        # read a private temporary directory.
        f"user {'root' if os.geteuid() == 0 else getpass.getuser()}",
        f"listener {port} {host}",
        f"allow_anonymous {'false' if users else 'true'}",
    ]
    if users:
        passwd = require_binary("mosquitto_passwd")
        password_file = workdir / "passwd"
        for index, (name, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [passwd, "-b", *create, str(password_file), name, password],
                check=True, capture_output=True,
            )
        lines.append(f"password_file {password_file}")
    if certfile is not None:
        if keyfile is None:
            raise ValueError("certfile needs keyfile")
        lines += [f"certfile {certfile}", f"keyfile {keyfile}"]
        if cafile is not None:
            lines.append(f"cafile {cafile}")
        if require_certificate:
            if cafile is None:
                raise ValueError("require_certificate needs cafile")
            lines.append("require_certificate true")
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    proc = _spawn([binary, "-c", str(config), "-v"], workdir, host, port)
    server = MosquittoServer(
        proc.host, proc.port, proc.workdir, proc.process, proc.log,
        users=dict(users or {}), tls=certfile is not None,
        require_certificate=require_certificate,
    )
    server.wait_until_listening()
    return server


# --------------------------------------------------------------------------- amqtt


def start_amqtt(workdir: Path, host: str, port: int) -> ServerProcess:
    """Start an amqtt broker (MQTT 3.1.1, anonymous allowed) in a subprocess."""
    require_amqtt()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {  # JSON is YAML, and needs no YAML writer
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    path = workdir / "amqtt.yaml"
    path.write_text(json.dumps(config, indent=2))
    proc = _spawn(
        [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(path)], workdir, host, port
    )
    proc.wait_until_listening()
    return proc


# --------------------------------------------------------------------------- RabbitMQ


def check_rabbitmq(host: str = "127.0.0.1", port: int = 5672, timeout: float = 5.0) -> Endpoint:
    """The machine's RabbitMQ, after checking that it answers the AMQP 0-9-1 header."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            reply = sock.recv(7)
    except OSError as exc:
        raise ServerStartError(
            f"RabbitMQ at {host}:{port} does not answer ({exc}); run scripts/services.sh start"
        ) from exc
    if not reply.startswith(b"\x01\x00\x00"):  # a method frame on channel 0: Connection.Start
        raise ServerStartError(f"{host}:{port} answered {reply!r}, not Connection.Start")
    return Endpoint(host, port)


def start_rabbitmq_tls(
    workdir: Path, host: str, port: int, certfile: Path, keyfile: Path, cafile: Path | None = None
) -> ServerProcess:
    """A second RabbitMQ node with only a TLS (AMQPS) listener, all its state in ``workdir``.

    The node runs as the current user with HOME=workdir (its own Erlang cookie), a unique node
    name and distribution port, and no plugins; it starts in about 8 s.
    """
    require_binary("rabbitmq-server", "/usr/sbin/rabbitmq-server")
    # The node's own start script: /usr/sbin/rabbitmq-server would switch to the rabbitmq
    # user (as root) and lose our environment.
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not os.access(script, os.X_OK):
        script = require_binary("rabbitmq-server")
    workdir.mkdir(parents=True, exist_ok=True)
    dist_port = _free_port("127.0.0.1", 0)
    assert dist_port is not None
    lines = [
        "listeners.tcp = none",
        f"listeners.ssl.default = {host}:{port}",
        f"ssl_options.certfile = {certfile}",
        f"ssl_options.keyfile = {keyfile}",
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        "log.console = false",
    ]
    if cafile is not None:
        lines.append(f"ssl_options.cacertfile = {cafile}")
    (workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
    (workdir / "enabled_plugins").write_text("[].\n")
    env = {
        "HOME": str(workdir),
        "RABBITMQ_NODENAME": f"bstls{os.getpid()}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": host,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        "ERL_CRASH_DUMP": str(workdir / "erl_crash.dump"),
    }
    proc = _spawn([script], workdir, host, port, env)
    proc.wait_until_listening(timeout=60)
    return proc


# --------------------------------------------------------------------------- decoys

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
# An AMQP 0-9-1 method frame header on channel 0 announcing a payload of ~4 GiB.
AMQP_HUGE_FRAME = b"\x01\x00\x00\xff\xff\xff\xf0"
# An MQTT CONNACK fixed header with the largest remaining length (268,435,455 bytes).
MQTT_HUGE_CONNACK = b"\x20\xff\xff\xff\x7f"


async def _drain_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


def http_response(status: str = "400 Bad Request", body: bytes = b"not a broker\n") -> Handler:
    """An HTTP server: whatever arrives first, answer one HTTP/1.1 response and close."""
    reply = (
        f"HTTP/1.1 {status}\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(4096), timeout=5)
        writer.write(reply)
        await writer.drain()

    return handle


def tarpit() -> Handler:
    """Accept and never send a byte; hold the connection until the client goes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _drain_until_eof(reader)

    return handle


def garbage(total: int = 1 << 20, seed: int = 7) -> Handler:
    """Send random bytes, ``total`` in all, then close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rng = random.Random(seed)
        sent = 0
        while sent < total:
            chunk = rng.randbytes(min(4096, total - sent))
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    return handle


def trickle(payload: bytes = b"HTTP/1.1 200 OK\r\n" * 8, interval: float = 1.0) -> Handler:
    """Send ``payload`` one byte per ``interval`` seconds, then close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index in range(len(payload)):
            writer.write(payload[index : index + 1])
            await writer.drain()
            await asyncio.sleep(interval)  # the decoy's behaviour: a byte per interval

    return handle


def close_at_once() -> Handler:
    """Accept, then close cleanly (FIN) without sending anything."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return None

    return handle


def reset_at_once() -> Handler:
    """Accept, then abort with SO_LINGER 0 so the client sees a TCP reset."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return handle


def ssh_banner(banner: bytes = SSH_BANNER) -> Handler:
    """A non-broker service: send an SSH identification line, then wait for the client."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        await _drain_until_eof(reader)

    return handle


def huge_length(
    prefix: bytes = AMQP_HUGE_FRAME, interval: float = 1.0, count: int = 600
) -> Handler:
    """Announce a huge length field (``prefix``), then trickle zero bytes, ``count`` at most."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(prefix)
        await writer.drain()
        for _ in range(count):
            await asyncio.sleep(interval)  # the decoy's behaviour: a byte per interval
            writer.write(b"\x00")
            await writer.drain()

    return handle


class DecoyServer:
    """An asyncio server running ``handler`` on its own loop in a background thread.

    Works from sync and async tests alike. ``accepted`` counts the connections it took,
    so a test can prove that no connection was attempted. It accepts by itself rather than
    with ``asyncio.start_server``: on Python 3.11 a connection accepted while that server
    closes is leaked, never closed, and the client hangs.
    """

    def __init__(
        self, handler: Handler, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.accepted = 0
        self._handler = handler
        self._ssl = ssl_context
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"decoy-{host}:{port}")
        self._thread.start()
        self._loop.call_soon_threadsafe(self._loop.add_reader, self._listener, self._accept)

    def _accept(self) -> None:
        """Take every waiting connection (runs on the loop when the listener is readable)."""
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self.accepted += 1
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._ssl,
                ssl_handshake_timeout=10 if self._ssl else None,
            )
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the client went away or failed its handshake: normal for decoys
        except asyncio.CancelledError:
            pass  # stop(): end quietly
        finally:
            if writer is None:
                conn.close()
            elif not writer.transport.is_closing():
                writer.close()

    async def _stop(self) -> None:
        self._loop.remove_reader(self._listener)
        self._accept()  # connections already in the backlog get a task, and so are closed
        self._listener.close()
        await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await asyncio.sleep(0)  # let transports finish closing

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread and its loop."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def server_ssl_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    return context


class DecoyFactory:
    """Starts decoys on fresh 127.53.x addresses (default port 1883) and stops them all."""

    def __init__(self, pki: Pki | None = None) -> None:
        self._pki = pki
        self._servers: list[DecoyServer] = []

    def start(
        self, handler: Handler, port: int = 1883, ssl_context: ssl.SSLContext | None = None
    ) -> DecoyServer:
        host, port = allocate("decoy", port)
        server = DecoyServer(handler, host, port, ssl_context)
        self._servers.append(server)
        return server

    def http(self, port: int = 1883) -> DecoyServer:
        return self.start(http_response(), port)

    def tarpit(self, port: int = 1883) -> DecoyServer:
        return self.start(tarpit(), port)

    def garbage(self, port: int = 1883, total: int = 1 << 20) -> DecoyServer:
        return self.start(garbage(total), port)

    def trickle(self, port: int = 1883, interval: float = 1.0) -> DecoyServer:
        return self.start(trickle(interval=interval), port)

    def close_at_once(self, port: int = 1883) -> DecoyServer:
        return self.start(close_at_once(), port)

    def reset_at_once(self, port: int = 1883) -> DecoyServer:
        return self.start(reset_at_once(), port)

    def ssh(self, port: int = 5672) -> DecoyServer:
        return self.start(ssh_banner(), port)

    def tls_http(self, port: int = 8883) -> DecoyServer:
        """HTTP inside TLS, with the self-signed certificate of the test PKI."""
        if self._pki is None:
            raise ValueError("DecoyFactory needs a Pki for TLS decoys")
        context = server_ssl_context(self._pki.selfsigned.cert_path,
                                     self._pki.selfsigned.key_path)
        return self.start(http_response(), port, context)

    def huge_length(
        self, port: int = 5672, prefix: bytes = AMQP_HUGE_FRAME, interval: float = 1.0
    ) -> DecoyServer:
        return self.start(huge_length(prefix, interval), port)

    def stop_all(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def __iter__(self) -> Iterator[DecoyServer]:
        return iter(self._servers)
