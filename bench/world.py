"""A simulated Internet in two network namespaces, for tests and benchmarks.

    with World(WorldConfig(network="198.18.0.0/24", silent=0.5, mqtt=4)) as world:
        world.run(["brokerscan", "scan", ...])       # runs in the scanner namespace
        world.syn_counts()                            # SYNs the world saw, by verdict

SAFETY.md's scale world: a *scanner* namespace and a *world* namespace joined by a veth
pair, nothing else. The world answers for all of 198.18.0.0/15 (RFC 2544's benchmarking
range) through an AnyIP route inside its own namespace (``ip route add local
198.18.0.0/15 dev lo``); the scanner namespace routes only that range, through the veth,
and has no default route, so a packet to anywhere else has nowhere to go. Link addresses
are link-local (169.254.18.0/30) and are never targets.

The world's nftables table decides, for every SYN to ``network`` (the part of the range a
test uses), what the address is:

* a broker: its address is in the ``mqtt`` (port 1883) or ``amqp`` (port 5672) set, and a
  real Mosquitto (``0.0.0.0:1883``) or RabbitMQ node (``0.0.0.0:5672``) in the world
  namespace answers, on every address at once thanks to AnyIP;
* silent: ``jhash(daddr) mod 10000 < silent * 10000`` -- the SYN is dropped (deterministic
  per address, so two scanners see the same world);
* refusing: anything else gets a TCP RST.

Counters say what arrived: ``syn`` (every SYN), ``silent``, ``refused``, ``accepted``, and
``stray``: SYNs to an address outside ``allowed`` (the addresses a test permits; by default
``network``), which a test asserts is 0. Conntrack is off for the world's TCP (NOTRACK), so
a /15 costs no conntrack entries there.

Everything is created by :class:`World` and removed on exit, failure included (processes
in the world namespace are stopped, both namespaces deleted). Needs root, ``ip``
(iproute2) and ``nft`` (nftables); Mosquitto and RabbitMQ for brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = ["RANGE", "World", "WorldConfig", "WorldError"]

#: The whole simulated range (RFC 2544); the world answers for all of it.
RANGE = "198.18.0.0/15"
SCANNER_LINK = "169.254.18.1"
WORLD_LINK = "169.254.18.2"
MQTT_PORT = 1883
AMQP_PORT = 5672


class WorldError(RuntimeError):
    """The world could not be built (a missing tool, not root, a broker that did not start)."""


@dataclass(frozen=True)
class WorldConfig:
    """What the world looks like.

    :param network: the part of :data:`RANGE` that the nftables verdicts cover.
    :param silent: the fraction of addresses that drop SYNs (the census's 0.94).
    :param mqtt: Mosquitto brokers (addresses answering 1883), drawn from ``network``.
    :param amqp: RabbitMQ brokers (addresses answering 5672); 0 starts no RabbitMQ node.
    :param seed: draws the broker addresses and the silent hash.
    :param allowed: the addresses a test permits as targets (``stray`` counts SYNs to any
        other); default: ``network``.
    :param amqp_server: ``rabbitmq`` (a real node, ~12 s to start) or ``mini``
        (brokerscan's own AMQP 0-9-1 mini broker: Connection.Start, at once), for tests
        that must stay quick.
    """

    network: str = "198.18.0.0/24"
    silent: float = 0.94
    mqtt: int = 2
    amqp: int = 0
    seed: int = 1
    allowed: tuple[str, ...] = ()
    amqp_server: Literal["rabbitmq", "mini"] = "rabbitmq"

    @staticmethod
    def census(network: str, *, silent: float = 0.94, per_100k: float = 1.7,
               seed: int = 1) -> WorldConfig:
        """The census's density (~1.7 brokers per 100,000 addresses), at least one of each."""
        size = ipaddress.IPv4Network(network).num_addresses
        count = max(1, round(size * per_100k / 100_000))
        return WorldConfig(network=network, silent=silent, mqtt=count, amqp=count, seed=seed)


@dataclass
class World:
    """The namespaces, the nftables table and the brokers; a context manager."""

    config: WorldConfig
    scanner_ns: str = ""
    world_ns: str = ""
    interface: str = ""  # the scanner's veth
    mqtt_hosts: list[str] = field(default_factory=list)
    amqp_hosts: list[str] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _workdir: Path | None = None

    def __enter__(self) -> World:
        _require()
        tag = f"{os.getpid() % 100000:05d}{random.randrange(36 ** 2):03x}"
        self.scanner_ns, self.world_ns = f"bsscan{tag}", f"bsworld{tag}"
        self.interface = f"bss{tag}"
        self._workdir = Path(tempfile.mkdtemp(prefix="bsworld-"))
        try:
            self._build(tag)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- building -----------------------------------------------------------------------

    def _build(self, tag: str) -> None:
        cfg = self.config
        net = ipaddress.IPv4Network(cfg.network)
        if not net.subnet_of(ipaddress.IPv4Network(RANGE)):
            raise WorldError(f"{cfg.network} is not inside {RANGE}")
        peer = f"bsw{tag}"
        _ip("netns", "add", self.scanner_ns)
        _ip("netns", "add", self.world_ns)
        _ip("link", "add", self.interface, "netns", self.scanner_ns, "type", "veth",
            "peer", "name", peer, "netns", self.world_ns)
        s, w = ["-n", self.scanner_ns], ["-n", self.world_ns]
        for ns, dev, addr in ((s, self.interface, SCANNER_LINK), (w, peer, WORLD_LINK)):
            _ip(*ns, "link", "set", "lo", "up")
            _ip(*ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip(*ns, "link", "set", dev, "up")
        # The world answers for the whole range; the scanner reaches only the range.
        _ip(*w, "route", "add", "local", RANGE, "dev", "lo")
        _ip(*s, "route", "add", RANGE, "via", WORLD_LINK, "dev", self.interface)
        mac = json.loads(_ip(*w, "-j", "link", "show", peer))[0]["address"]
        # A permanent neighbour entry: ZMap needs the gateway's MAC (-G) and finds it here.
        _ip(*s, "neigh", "replace", WORLD_LINK, "lladdr", mac, "dev", self.interface,
            "nud", "permanent")
        for name in (self.scanner_ns, self.world_ns):
            _run(["ip", "netns", "exec", name, "sysctl", "-q", "-w",
                  "net.ipv4.ip_local_port_range=1024 65000"])
        rng = random.Random(cfg.seed)
        size = net.num_addresses
        picks = rng.sample(range(size), min(size, cfg.mqtt + cfg.amqp))
        hosts = [str(net.network_address + i) for i in picks]
        self.mqtt_hosts = sorted(hosts[: cfg.mqtt], key=_key)
        self.amqp_hosts = sorted(hosts[cfg.mqtt:], key=_key)
        self._nft()
        if cfg.mqtt:
            self._start_mosquitto()
        if cfg.amqp and cfg.amqp_server == "mini":
            self._start_mini_amqp()
        elif cfg.amqp:
            self._start_rabbitmq()

    def _nft(self) -> None:
        cfg = self.config
        allowed = ", ".join(cfg.allowed or (cfg.network,))
        threshold = round(cfg.silent * 10_000)

        def elements(hosts: Sequence[str]) -> str:
            return f"elements = {{ {', '.join(hosts)} }}" if hosts else ""

        rules = f"""
table inet world {{
  set mqtt {{ type ipv4_addr; {elements(self.mqtt_hosts)} }}
  set amqp {{ type ipv4_addr; {elements(self.amqp_hosts)} }}
  set allowed {{ type ipv4_addr; flags interval; elements = {{ {allowed} }} }}
  counter syn {{ }}
  counter stray {{ }}
  counter accepted {{ }}
  counter silent {{ }}
  counter refused {{ }}
  chain raw {{
    type filter hook prerouting priority raw; policy accept;
    ip protocol tcp notrack
  }}
  chain rawout {{
    type filter hook output priority raw; policy accept;
    ip protocol tcp notrack
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "lo" accept
    meta l4proto != tcp accept
    tcp flags & (syn | ack) != syn accept
    counter name syn
    ip daddr != @allowed counter name stray
    ip daddr != {cfg.network} counter name silent drop
    tcp dport {MQTT_PORT} ip daddr @mqtt counter name accepted accept
    tcp dport {AMQP_PORT} ip daddr @amqp counter name accepted accept
    jhash ip daddr mod 10000 seed {cfg.seed & 0xFFFFFFFF} < {threshold} counter name silent drop
    counter name refused reject with tcp reset
  }}
}}
"""
        path = self._path("world.nft")
        path.write_text(rules)
        _run(["ip", "netns", "exec", self.world_ns, "nft", "-f", str(path)])

    def _path(self, name: str) -> Path:
        assert self._workdir is not None
        return self._workdir / name

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None,
               log: str = "server.log") -> subprocess.Popen[bytes]:
        with self._path(log).open("wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.world_ns, *argv],
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self._workdir,
                                    env=None if env is None else {**os.environ, **env},
                                    start_new_session=True)
        self._procs.append(proc)
        return proc

    def _start_mosquitto(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        config = self._path("mosquitto.conf")
        config.write_text("\n".join([
            "per_listener_settings false", "persistence false", "log_dest none",
            f"user {'root' if os.geteuid() == 0 else os.environ.get('USER', 'nobody')}",
            f"listener {MQTT_PORT} 0.0.0.0", "allow_anonymous true",
            "max_connections -1", ""]))
        proc = self._spawn([binary, "-c", str(config)], log="mosquitto.log")
        self._wait_listening(proc, self.mqtt_hosts[0], MQTT_PORT, 20, "mosquitto.log")

    def _start_mini_amqp(self) -> None:
        code = ("import threading\n"
                "from brokerscan.cli.minibrokers import MiniServer, ServerThread, amqp091\n"
                f"ServerThread([MiniServer('0.0.0.0', {AMQP_PORT}, amqp091('RabbitMQ', "
                "'3.12.1'))]).start()\nthreading.Event().wait()\n")
        proc = self._spawn([sys.executable, "-c", code],
                           {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                           log="mini-amqp.log")
        self._wait_listening(proc, self.amqp_hosts[0], AMQP_PORT, 30, "mini-amqp.log")

    def _start_rabbitmq(self) -> None:
        script = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.access(script, os.X_OK):
            raise WorldError("RabbitMQ is not installed (/usr/lib/rabbitmq/bin/rabbitmq-server)")
        home = self._path("rabbitmq")
        home.mkdir()
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 0.0.0.0:{AMQP_PORT}\nlog.console = false\n")
        (home / "enabled_plugins").write_text("[].\n")
        env = {
            "HOME": str(home), "RABBITMQ_NODENAME": "world@localhost",
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(home / "erl_crash.dump"),
        }
        proc = self._spawn([script], env, log="rabbitmq.log")
        self._wait_listening(proc, self.amqp_hosts[0], AMQP_PORT, 90, "rabbitmq.log")

    def _wait_listening(self, proc: subprocess.Popen[bytes], host: str, port: int,
                        timeout: float, log: str) -> None:
        """Wait until the server accepts on ``host:port`` (checked from the world side)."""
        probe = ["ip", "netns", "exec", self.world_ns, "python3", "-c",
                 "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])),"
                 " 1).close()", host, str(port)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            time.sleep(0.2)  # a server starting up: polled, with a hang bound
        tail = self._path(log).read_text(errors="replace")[-2000:]
        raise WorldError(f"{log.split('.')[0]} did not start in the world namespace:\n{tail}")

    # -- using --------------------------------------------------------------------------

    @property
    def brokers(self) -> set[tuple[str, int]]:
        """The world's truth: every (address, port) where a broker answers."""
        return ({(h, MQTT_PORT) for h in self.mqtt_hosts}
                | {(h, AMQP_PORT) for h in self.amqp_hosts})

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the scanner namespace."""
        return ["ip", "netns", "exec", self.scanner_ns, *argv]

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command in the scanner namespace (text output captured)."""
        done: subprocess.CompletedProcess[str] = subprocess.run(
            self.command(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
        return done

    def relay(self, ports: Sequence[int]) -> None:
        """Make the machine's services on 127.0.0.1 (PostgreSQL, Redis, RabbitMQ: ``ports``)
        reachable from the scanner namespace at the same address and ports, through a
        relay process (so a worker in the scanner namespace joins the fleet). Stopped by
        :meth:`close`."""
        argv = [sys.executable, str(Path(__file__).resolve()), "relay", self.scanner_ns,
                *map(str, ports)]
        log = self._path("relay.log")
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        probe = self.command([sys.executable, "-c",
                              "import socket,sys\nfor p in sys.argv[1:]: "
                              "socket.create_connection(('127.0.0.1', int(p)), 1).close()",
                              *map(str, ports)])
        deadline = time.monotonic() + 20
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise WorldError(f"the relay did not start: {log.read_text()[-1000:]}")
            time.sleep(0.1)  # the relay binding its ports: polled, with a hang bound

    def syn_counts(self) -> dict[str, int]:
        """Packets counted by the world's table: syn, stray, accepted, silent, refused."""
        out = _run(["ip", "netns", "exec", self.world_ns, "nft", "-j", "list", "counters",
                    "table", "inet", "world"])
        counts = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is not None:
                counts[counter["name"]] = int(counter["packets"])
        return counts

    def reset_counts(self) -> None:
        _run(["ip", "netns", "exec", self.world_ns, "nft", "reset", "counters", "table",
              "inet", "world"])

    def close(self) -> None:
        """Stop the world's processes and delete both namespaces (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self._procs.clear()
        if self.world_ns:
            # Anything else still in the world namespace (epmd, started by RabbitMQ).
            pids = subprocess.run(["ip", "netns", "pids", self.world_ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in (self.scanner_ns, self.world_ns):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.scanner_ns = self.world_ns = ""
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _key(host: str) -> int:
    return int.from_bytes(socket.inet_aton(host), "big")


def _require() -> None:
    if os.geteuid() != 0:
        raise WorldError("the simulated world needs root (network namespaces, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            raise WorldError(f"{tool} is not installed (scripts/bootstrap.sh installs it)")


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorldError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _ip(*args: str) -> str:
    return _run(["ip", *args])


# -- the relay process: ``python bench/world.py relay NAMESPACE PORT...`` -------------------

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(namespace: str, ports: list[int]) -> None:
    """Listen on 127.0.0.1:PORT inside ``namespace`` and forward each connection to
    127.0.0.1:PORT here. A socket belongs to the namespace its thread was in when it was
    made: the listeners are made inside, every upstream socket outside."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    inside = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    listeners = []
    _setns(inside)
    try:
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            listeners.append((port, sock))
    finally:
        _setns(home)

    def handler(port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                       Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        return serve

    servers = [await asyncio.start_server(handler(port), sock=sock, backlog=1024)
               for port, sock in listeners]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "relay":
        asyncio.run(_relay(sys.argv[2], [int(p) for p in sys.argv[3:]]))
    else:
        raise SystemExit("usage: world.py relay NAMESPACE PORT...")
