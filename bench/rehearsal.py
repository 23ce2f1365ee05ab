"""Rehearsal: one large sweep through the real fleet, watched while it runs.

    sudo .venv/bin/python bench/rehearsal.py                      # 127.0.0.0/8 x 6 ports
    sudo .venv/bin/python bench/rehearsal.py --network 127.0.0.0/14   # ~1.6M probes

The targets are 127.0.0.0/8 (or ``--network``, a part of it) inside a network namespace
of the rehearsal's own, minus 127.0.0.1 (the relay to the fleet's services, excluded
with a ``--blocklist`` file), times ``--ports`` (six by default: 100,663,290 probes for
the /8). In that namespace:

* nftables drops the SYNs to ``--silent`` of the addresses (a hash of the address, as in
  bench/world.py), so those probes wait out the connect timeout; conntrack is off
  (NOTRACK) for the namespace's TCP;
* every other address refuses (nothing listens), but for ``--mqtt`` addresses where a real
  Mosquitto answers on 1883 and ``--amqp`` addresses where a real RabbitMQ node answers on
  5672: the world's truth;
* bench/world.py's relay brings PostgreSQL, Redis and RabbitMQ (on 127.0.0.1) in.

The fleet is real and complete: ``brokerscan scheduler``, ``--workers`` probe workers
(``worker --pool solo``, in the namespace), ``enrich-worker`` and ``store-worker``, on the
machine's RabbitMQ, Redis and PostgreSQL, under a namespace and a database of their own.
Every ``--every`` seconds it samples probes/s, the RSS of every role, RabbitMQ queue
depths, Redis commands/s (the machine's Redis: other users count too) and PostgreSQL's
rows and bytes; at the end it checks the hits against the world's truth (every broker
found, none twice: in the results stream and in the store). One JSON document on stdout
(the samples as well). Everything it creates -- namespace, processes, queues, database --
is removed on exit, failure and Ctrl-C included.

Needs root, ``ip``, ``nft``, Mosquitto and RabbitMQ (``--amqp 0`` runs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import aio_pika
import asyncpg
from redis import Redis as SyncRedis
from redis.asyncio import Redis as AsyncRedis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.world import WorldError, _require, _run  # noqa: E402
from brokerscan.names import Names  # noqa: E402
from scheduler.status import sweep_status  # noqa: E402
from tests.integration.sweepfleet import Fleet  # noqa: E402
from tests.services import RABBIT_URL, REDIS_URL  # noqa: E402
from tests.waiting import wait_for, wait_for_async  # noqa: E402

MQTT_PORT, AMQP_PORT = 1883, 5672
SERVICES = (5432, 6379, 5672)  # PostgreSQL, Redis, RabbitMQ, relayed in on 127.0.0.1
RELAY = "127.0.0.1"


class Namespace:
    """A network namespace with only loopback: 127.0.0.0/8 is the world and the scanner's
    home at once. Silent addresses by nftables; real brokers on chosen addresses."""

    def __init__(self, network: str, silent: float, mqtt: int, amqp: int, seed: int,
                 workdir: Path) -> None:
        self.network = ipaddress.IPv4Network(network)
        if not self.network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            raise WorldError(f"{network} is not inside 127.0.0.0/8")
        self.silent, self.seed, self.workdir = silent, seed, workdir
        # Named like bench/world.py's scanner namespaces (the creator's pid in the name, so
        # one left by a run killed with -9 can be told apart: ``ip netns del`` it).
        self.name = f"bsscan{os.getpid() % 100000:05d}{random.randrange(36 ** 2):03x}"
        rng = random.Random(seed)
        hosts: list[str] = []
        while len(hosts) < mqtt + amqp:
            host = str(self.network.network_address + rng.randrange(self.network.num_addresses))
            if host != RELAY and host not in hosts and not host.endswith((".0", ".255")):
                hosts.append(host)
        self.mqtt_hosts, self.amqp_hosts = sorted(hosts[:mqtt]), sorted(hosts[mqtt:])
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def truth(self) -> set[str]:
        return ({f"{h}:{MQTT_PORT}" for h in self.mqtt_hosts}
                | {f"{h}:{AMQP_PORT}" for h in self.amqp_hosts})

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def build(self) -> None:
        _run(["ip", "netns", "add", self.name])
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        _run(self.command(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65000"]))
        brokers = ", ".join(self.mqtt_hosts + self.amqp_hosts) or RELAY
        threshold = round(self.silent * 10_000)
        rules = f"""
table inet rehearsal {{
  set brokers {{ type ipv4_addr; elements = {{ {brokers} }} }}
  counter silent {{ }}
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
    meta l4proto != tcp accept
    tcp flags & (syn | ack) != syn accept
    ip daddr {RELAY} accept
    ip daddr @brokers accept
    jhash ip daddr mod 10000 seed {self.seed} < {threshold} counter name silent drop
  }}
}}
"""
        (self.workdir / "rehearsal.nft").write_text(rules)
        _run(self.command(["nft", "-f", str(self.workdir / "rehearsal.nft")]))
        if self.mqtt_hosts:
            self._mosquitto()
        if self.amqp_hosts:
            self._rabbitmq()

    def _spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None,
               ) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("wb") as out:
            proc = subprocess.Popen(self.command(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.workdir,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _mosquitto(self) -> None:
        config = self.workdir / "mosquitto.conf"
        lines = ["per_listener_settings false", "persistence false", "log_dest none",
                 "user root", "allow_anonymous true", "max_connections -1"]
        lines += [f"listener {MQTT_PORT} {host}" for host in self.mqtt_hosts]
        config.write_text("\n".join(lines) + "\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        proc = self._spawn([binary, "-c", str(config)], "mosquitto.log")
        self._listening(proc, self.mqtt_hosts, MQTT_PORT, 20, "mosquitto.log")

    def _rabbitmq(self) -> None:
        script = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.access(script, os.X_OK):
            raise WorldError("RabbitMQ is not installed (or run with --amqp 0)")
        home = self.workdir / "rabbitmq"
        home.mkdir()
        listeners = "".join(f"listeners.tcp.{i} = {host}:{AMQP_PORT}\n"
                            for i, host in enumerate(self.amqp_hosts, 1))
        (home / "rabbitmq.conf").write_text(listeners + "log.console = false\n")
        (home / "enabled_plugins").write_text("[].\n")
        env = {"HOME": str(home), "RABBITMQ_NODENAME": "rehearsal@localhost",
               "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
               "RABBITMQ_LOG_BASE": str(home / "log"),
               "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
               "ERL_CRASH_DUMP": str(home / "erl_crash.dump")}
        proc = self._spawn([script], "rabbitmq.log", env)
        self._listening(proc, self.amqp_hosts, AMQP_PORT, 120, "rabbitmq.log")

    def _listening(self, proc: subprocess.Popen[bytes], hosts: list[str], port: int,
                   timeout: float, log: str) -> None:
        probe = self.command([sys.executable, "-c",
                              "import socket,sys\nfor h in sys.argv[2:]: "
                              "socket.create_connection((h, int(sys.argv[1])), 1).close()",
                              str(port), *hosts])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            time.sleep(0.2)  # a server starting: polled, with a hang bound
        raise WorldError(f"{log} did not start:\n"
                         f"{(self.workdir / log).read_text(errors='replace')[-1500:]}")

    def relay(self) -> subprocess.Popen[bytes]:
        """bench/world.py's relay: the fleet's services on 127.0.0.1 inside."""
        log = (self.workdir / "relay.log").open("wb")
        proc = subprocess.Popen([sys.executable, str(HERE / "world.py"), "relay", self.name,
                                 *map(str, SERVICES)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        probe = self.command([sys.executable, "-c",
                              "import socket,sys\nfor p in sys.argv[1:]: "
                              "socket.create_connection(('127.0.0.1', int(p)), 1).close()",
                              *map(str, SERVICES)])
        wait_for(lambda: subprocess.run(probe, capture_output=True).returncode == 0
                 or proc.poll() is not None, 20, "the relay to listen")
        if proc.poll() is not None:
            raise WorldError(f"the relay died: {(self.workdir / 'relay.log').read_text()}")
        return proc

    def silent_count(self) -> int:
        out = _run(self.command(["nft", "-j", "list", "counter", "inet", "rehearsal",
                                 "silent"]))
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        return 0

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        # Anything left inside (epmd, started by RabbitMQ), then the namespace itself.
        for pid in subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# -- sampling ------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process and its children (a role may fork), in MB."""
    total, found = 0, False
    for one in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    found = True
        except OSError:
            continue
    return round(total / 1024, 1) if found else None


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


class Sampler:
    """One sample of everything watched, over connections kept open for the whole run
    (a sample must cost the machine little: it shares the two cores with the fleet)."""

    def __init__(self, fleet: Fleet, queues: list[str]) -> None:
        self.fleet, self.queue_names = fleet, queues
        self.names = Names(fleet.namespace)

    async def __aenter__(self) -> Sampler:
        self.pg = await asyncpg.connect(self.fleet.database_url)
        self.redis = AsyncRedis.from_url(REDIS_URL)
        self.amqp = await aio_pika.connect(RABBIT_URL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.amqp.close()
        await self.redis.aclose()
        await self.pg.close()

    async def status(self, sweep_id: str) -> dict[str, Any]:
        return await sweep_status(self.pg, self.redis, self.names, sweep_id)

    async def redis_commands(self) -> int:
        return int((await self.redis.info("stats"))["total_commands_processed"])

    async def queues(self, names: list[str] | None = None) -> dict[str, int]:
        depths: dict[str, int] = {}
        for name in names or self.queue_names:
            channel = await self.amqp.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                continue  # not declared yet
            depths[name.split(".", 1)[1]] = int(queue.declaration_result.message_count or 0)
            await channel.close()
        return depths

    async def store(self) -> dict[str, int]:
        row = await self.pg.fetchrow(
            "SELECT (SELECT count(*) FROM observations) AS observations,"
            " (SELECT count(*) FROM services) AS services,"
            " (SELECT count(*) FROM sweep_shards) AS shards,"
            " pg_database_size(current_database()) AS bytes")
        assert row is not None
        return {key: int(value) for key, value in row.items()}

    async def stored_hits(self) -> Counter[str]:
        rows = await self.pg.fetch("SELECT host(ip) AS ip, port FROM observations")
        return Counter(f"{r['ip']}:{r['port']}" for r in rows)


# -- the rehearsal -------------------------------------------------------------------------


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def rehearse(args: argparse.Namespace) -> dict[str, Any]:
    _require()
    signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="bsrehearsal-") as tmp:
        workdir = Path(tmp)
        space = Namespace(args.network, args.silent, args.mqtt, args.amqp, args.seed, workdir)
        fleet = Fleet(workdir)
        try:
            space.build()
            relay = space.relay()
            fleet.setup()
            return _run_sweep(args, space, fleet, relay, workdir)
        finally:
            try:
                fleet.teardown()
                _forget(fleet.namespace)
            finally:
                space.close()


def _forget(namespace: str) -> None:
    """Delete the fleet's Redis keys (live counts, rate budget, heartbeats)."""
    redis = SyncRedis.from_url(REDIS_URL)
    try:
        keys = list(redis.scan_iter(f"{namespace}:*", count=1000))
        if keys:
            redis.delete(*keys)
    finally:
        redis.close()


def _run_sweep(args: argparse.Namespace, space: Namespace, fleet: Fleet,
               relay: subprocess.Popen[bytes], workdir: Path) -> dict[str, Any]:
    fleet.spawn("scheduler", "scheduler")
    for i in range(args.workers):
        fleet.spawn(f"worker{i}", "worker", "--pool", "solo",
                    prefix=tuple(space.command([])))
    fleet.spawn("enrich", "enrich-worker")
    fleet.spawn("store", "store-worker")
    workers = [f"worker{i}" for i in range(args.workers)]
    wait_for(lambda: all(" ready." in fleet.log(w) for w in workers), 120,
             "the probe workers to be ready", detail=fleet.logs)
    blocklist = workdir / "relay.blocklist"
    blocklist.write_text(f"{RELAY}/32  # the relay to the fleet's services\n")
    ns = fleet.namespace
    queues = [f"{ns}.probe", f"{ns}.probe-tls", f"{ns}.results.raw",
              f"{ns}.results.enriched", f"{ns}.results.dead", fleet.results_queue]
    procs = {name: proc.pid for name, proc in fleet.processes.items()}
    procs["relay"] = relay.pid
    result: dict[str, Any] = asyncio.run(_watch(args, space, fleet, queues, procs, blocklist))
    # Every hit published once: the results stream's copy of the sweep (a queue of its
    # own bound to the results exchange), drained.
    stream = Counter({key.split("|", 1)[1].replace("|", ":"): n
                      for key, n in fleet.results().items()})
    samples = result.pop("samples")
    result.update({"found_in_stream": len(set(stream) & space.truth),
                   "stream_duplicates": sum(n - 1 for n in stream.values()),
                   "stream_not_in_truth": sorted(set(stream) - space.truth),
                   "samples": samples})
    return result


async def _watch(args: argparse.Namespace, space: Namespace, fleet: Fleet, queues: list[str],
                 procs: dict[str, int], blocklist: Path) -> dict[str, Any]:
    async with Sampler(fleet, queues) as sampler:
        # The machine's Redis serves other users too: its rate before the sweep is the
        # baseline its rate during the sweep is read against.
        idle_from, idle_cmds = time.monotonic(), await sampler.redis_commands()
        await asyncio.sleep(min(args.every, 5))
        redis_idle = (await sampler.redis_commands() - idle_cmds) / (time.monotonic() - idle_from)
        began = time.monotonic()
        sweep_id = await asyncio.to_thread(
            fleet.start_sweep, str(space.network), "--ports", args.ports, "--allow-reserved",
            "--blocklist", str(blocklist), "--seed", str(args.seed), "--rate", str(args.rate),
            "--shard-size", str(args.shard_size), "--concurrency", str(args.concurrency),
            "--connect-timeout", str(args.connect_timeout), "--timeout", "10")
        samples: list[dict[str, Any]] = []
        last_probes, last_cmds, last_t = 0, await sampler.redis_commands(), time.monotonic()
        while True:
            await asyncio.sleep(args.every)  # the sampling period, not a wait for a condition
            status = await sampler.status(sweep_id)
            now, cmds = time.monotonic(), await sampler.redis_commands()
            probes = int(status["probes"])
            samples.append({
                "t": round(now - began, 1), "probes": probes,
                "probes_per_s": round((probes - last_probes) / (now - last_t)),
                "rss_mb": {name: rss_mb(pid) for name, pid in procs.items()},
                "queues": await sampler.queues(),
                "redis_ops_per_s": round((cmds - last_cmds) / (now - last_t)),
                "store": await sampler.store(),
            })
            print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
            last_probes, last_cmds, last_t = probes, cmds, now
            dead = [n for n, p in fleet.processes.items() if p.poll() is not None]
            if dead:
                raise SystemExit(f"bench/rehearsal.py: {', '.join(dead)} died\n{fleet.logs()}")
            if status["state"] in ("finished", "failed", "cancelled"):
                break
        seconds = time.monotonic() - began
        # The enricher and the writer catch up: their queues empty, every hit stored.
        await wait_for_async(lambda: _drained(sampler, queues[2:4]), 120,
                             "the results stream to drain", detail=fleet.logs)
        stored = await wait_for_async(lambda: _all_stored(sampler, space), 60,
                                      "the hits to be stored", detail=fleet.logs)
        assert stored is not None
        final = await sampler.store()
    rss = {name: [s["rss_mb"][name] for s in samples if s["rss_mb"][name] is not None]
           for name in procs}
    depth = {name: max(s["queues"].get(name, 0) for s in samples)
             for name in samples[-1]["queues"]}
    truth = space.truth
    return {
        "network": str(space.network), "ports": args.ports, "silent": args.silent,
        "workers": args.workers, "state": status["state"],
        "targets": status["targets"], "probes": status["probes"],
        "seconds": round(seconds, 1), "probes_per_s": round(status["probes"] / seconds),
        "probes_per_s_min_max": [min(s["probes_per_s"] for s in samples),
                                 max(s["probes_per_s"] for s in samples)],
        "rss_mb_first_last_max": {n: [v[0], v[-1], max(v)] for n, v in rss.items() if v},
        "queue_depth_max": depth,
        "redis_ops_per_s_before": round(redis_idle),
        "redis_ops_per_s_mean": round(sum(s["redis_ops_per_s"] for s in samples)
                                      / len(samples)),
        "store_final": final,
        "silent_syns": space.silent_count(),
        "truth": len(truth),
        "found_in_store": len(set(stored) & truth),
        "store_duplicates": sum(n - 1 for n in stored.values()),
        "store_not_in_truth": sorted(set(stored) - truth),
        "samples": samples,
    }


async def _drained(sampler: Sampler, queues: list[str]) -> bool:
    return not any((await sampler.queues(queues)).values())


async def _all_stored(sampler: Sampler, space: Namespace) -> Counter[str] | None:
    stored = await sampler.stored_hits()
    return stored if space.truth <= set(stored) else None


def _loopback_network(text: str) -> str:
    """An argparse type: a network inside 127.0.0.0/8 (the only space the rehearsal dials)."""
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 network: {exc}") from None
    if not network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        raise argparse.ArgumentTypeError(f"{text} is not inside 127.0.0.0/8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", type=_loopback_network, default="127.0.0.0/8",
                        help="the targets, inside 127.0.0.0/8 (default: %(default)s)")
    parser.add_argument("--ports", default="1883,8883,5672,5671,1884,5673")
    parser.add_argument("--silent", type=float, default=0.02,
                        help="fraction of addresses that drop SYNs (default: %(default)s)")
    parser.add_argument("--mqtt", type=int, default=4, help="Mosquitto broker addresses")
    parser.add_argument("--amqp", type=int, default=4, help="RabbitMQ broker addresses")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1_000_000,
                        help="the fleet rate budget (default: far above the machine)")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    parser.add_argument("--shard-size", type=int, default=250_000)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    args = parser.parse_args()
    try:
        result = rehearse(args)
    except WorldError as exc:
        raise SystemExit(f"bench/rehearsal.py: {exc}") from None
    except KeyboardInterrupt as exc:
        print(f"bench/rehearsal.py: stopped ({exc or 'interrupted'}); what it made is removed",
              file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
