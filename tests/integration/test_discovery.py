"""``scan --discovery zmap`` in a simulated world (bench/world.py): the same records as the
connect engine, no SYN outside the allowed targets, and one-line errors before any packet.

The world is 198.18.0.0/22 in namespaces of the test's own (SAFETY.md): 85% silent, the
rest refusing, Mosquitto brokers on 1883 and AMQP 0-9-1 on 5672 (brokerscan's mini broker
here, to keep CI quick) behind a few addresses. An opt-out list removes 198.18.1.0/26;
the world's nftables counter ``stray`` counts every SYN to an address outside the eligible
targets. The sweep test runs a real Celery worker in the scanner namespace (the machine's
PostgreSQL, Redis and RabbitMQ reached through the world's relay) and a real scheduler.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.world import World, WorldConfig
from tests.integration.sweepfleet import Fleet
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NETWORK = "198.18.0.0/22"
OPTED_OUT = "198.18.1.0/26"
# The eligible targets: NETWORK minus OPTED_OUT.
ALLOWED = ("198.18.0.0/24", "198.18.1.64/26", "198.18.1.128/25", "198.18.2.0/23")
ELIGIBLE = 1024 - 64
PORTS = "1883,5672"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the simulated world needs root (network namespaces, nftables, zmap)")
    for tool in ("zmap", "nft", "capsh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; scripts/bootstrap.sh installs it")
    # AMQP from brokerscan's mini broker (a RabbitMQ node would add ~12 s to CI; the
    # benchmarks run real RabbitMQ).
    with World(WorldConfig(network=NETWORK, silent=0.85, mqtt=3, amqp=2, seed=16,
                           allowed=ALLOWED, amqp_server="mini")) as built:
        yield built


@pytest.fixture(scope="module")
def optout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("optout") / "optout.conf"
    path.write_text(f"{OPTED_OUT}\n")
    return path


def scan_argv(out: Path, optout: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "brokerscan.cli", "scan", NETWORK, "-p", PORTS,
            "--allow-reserved", "--blocklist", str(optout), "--no-store", "--all",
            "-o", str(out), "--connect-timeout", "1", "-c", "3000", "-r", "0", *extra]


def run_in(world: World, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return world.run(["env", "BROKERSCAN_SCOPE=198.18.0.0/15", *(f"{k}={v}" for k, v in
                                                                  env.items()), *argv],
                     timeout=120, cwd=str(Path(__file__).resolve().parents[2]))


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_discovery_finds_exactly_what_connect_finds(world: World, optout: Path,
                                                    tmp_path: Path) -> None:
    connect_out, zmap_out = tmp_path / "connect.jsonl", tmp_path / "zmap.jsonl"
    proc = run_in(world, scan_argv(connect_out, optout))
    assert proc.returncode == 0, proc.stderr
    world.reset_counts()
    proc = run_in(world, scan_argv(zmap_out, optout, "--discovery", "zmap",
                                   "--discovery-cooldown", "1"))
    assert proc.returncode == 0, proc.stderr
    counts = world.syn_counts()

    def outcome(rows: list[dict[str, object]]) -> set[tuple[object, ...]]:
        return {(r["ip"], r["port"], r["status"], r["protocol"]) for r in rows}

    connect, zmap = records(connect_out), records(zmap_out)
    assert len(connect) == len(zmap) == ELIGIBLE * 2
    assert outcome(zmap) == outcome(connect)
    assert {r["discovered_by"] for r in zmap} == {"zmap"}
    assert {r["discovered_by"] for r in connect} == {None}
    found = {(r["ip"], r["port"]) for r in zmap if r["protocol"] is not None}
    expected = {(ip, port) for ip, port in world.brokers
                if not ip.startswith("198.18.1.") or int(ip.rsplit(".", 1)[1]) >= 64}
    assert found == expected and expected
    # ZMap sent one SYN per eligible target and port, the probes one connect per broker
    # found, and nothing went anywhere else.
    assert counts["stray"] == 0, counts
    assert counts["syn"] == ELIGIBLE * 2 + len(found), counts
    assert counts["accepted"] == 2 * len(found), counts
    products = {(r["port"], r["protocol"]) for r in zmap if r["protocol"] is not None}
    assert products == {(1883, "mqtt"), (5672, "amqp")}


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]


def test_missing_zmap_is_one_line_and_sends_nothing(world: World, optout: Path,
                                                    tmp_path: Path) -> None:
    world.reset_counts()
    proc = run_in(world, scan_argv(tmp_path / "out.jsonl", optout, "--discovery", "zmap"),
                  PATH="/nonexistent")
    assert_one_line_error(proc, "zmap is not installed")
    assert world.syn_counts()["syn"] == 0


def test_missing_cap_net_raw_is_one_line_and_sends_nothing(world: World, optout: Path,
                                                           tmp_path: Path) -> None:
    world.reset_counts()
    argv = scan_argv(tmp_path / "out.jsonl", optout, "--discovery", "zmap")
    proc = run_in(world, ["capsh", "--drop=cap_net_raw", "--", "-c", 'exec "$@"', "sh",
                          *argv])
    assert_one_line_error(proc, "needs CAP_NET_RAW")
    assert world.syn_counts()["syn"] == 0


def test_no_route_is_one_line(tmp_path: Path, optout: Path) -> None:
    # A namespace with only loopback: no route to the world range at all.
    argv = scan_argv(tmp_path / "out.jsonl", optout, "--discovery", "zmap")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up; exec "$@"', "sh",
                           "env", "BROKERSCAN_SCOPE=198.18.0.0/15", *argv],
                          capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, "no route to 198.18.")


def test_sigterm_hands_a_discovery_shard_back(world: World, optout: Path,
                                              tmp_path: Path) -> None:
    world.relay([5432, 6379, 5672])  # the fleet's services, seen from the scanner side
    world.reset_counts()
    fleet = Fleet(tmp_path)
    fleet.env["BROKERSCAN_SCOPE"] = "198.18.0.0/15"
    fleet.setup()
    inside = tuple(world.command([]))
    try:
        fleet.start_scheduler()
        fleet.spawn("w1", "worker", "--pool", "solo", prefix=inside)
        sweep_id = fleet.start_sweep(
            NETWORK, "--ports", "1883", "--allow-reserved", "--blocklist", str(optout),
            "--shards", "1", "--seed", "7", "--rate", "20000", "--discovery", "zmap",
            "--discovery-cooldown", "6", "--connect-timeout", "1", "--io-timeout", "1",
            "--timeout", "3")
        # ZMap has sent every SYN and is listening out its cooldown: stop the worker now.
        wait_for(lambda: world.syn_counts()["syn"] >= ELIGIBLE, 60, "ZMap's SYNs",
                 detail=fleet.logs)
        stopped_at = time.monotonic()
        fleet.processes["w1"].send_signal(signal.SIGTERM)
        assert fleet.processes["w1"].wait(timeout=30) == 0, fleet.log("w1")
        assert time.monotonic() - stopped_at < 6  # it did not wait for ZMap to finish
        shard = fleet.shards(sweep_id)[0]
        assert shard["state"] in ("paused", "queued"), shard  # handed back, not failed
        assert shard["probes"] == 0 and shard["attempts"] <= 1, shard
        assert not world.run(["pgrep", "-x", "zmap"]).stdout  # ZMap went with it
        # Another worker takes the shard up again and finishes it, every target once.
        fleet.spawn("w2", "worker", "--pool", "solo", prefix=inside)
        status = fleet.wait_state(sweep_id, {"finished"}, timeout=90)
        assert status["probes"] == ELIGIBLE
        seen = fleet.results()
        assert max(seen.values()) == 1
        assert world.syn_counts()["stray"] == 0
        found = {key.split("|")[1] for key in seen}
        assert found == {ip for ip, port in world.brokers if port == 1883
                         and (not ip.startswith("198.18.1.") or
                              int(ip.rsplit(".", 1)[1]) >= 64)}
    finally:
        fleet.teardown()
