"""``scan --discovery zmap`` in a simulated world (bench/world.py): the same records as the
connect engine, no SYN outside the allowed targets, and one-line errors before any packet.

The world is 198.18.0.0/22 in namespaces of the test's own (SAFETY.md): 85% silent, the
rest refusing, Mosquitto brokers on 1883 and a RabbitMQ node on 5672 behind a few
addresses. An opt-out list removes 198.18.1.0/26 from the scan; the world's nftables
counter ``stray`` counts every SYN to an address outside the scan's eligible targets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.world import World, WorldConfig

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
    with World(WorldConfig(network=NETWORK, silent=0.85, mqtt=3, amqp=2, seed=16,
                           allowed=ALLOWED)) as built:
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
