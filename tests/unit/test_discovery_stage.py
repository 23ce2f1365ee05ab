"""The discovery stage without a network: what ZMap would be given (scope, blocklist) and
how the walk is replayed for the engine (no ZMap, no socket)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from brokerscan.model import ScanResult
from scheduler.blocklist import IPSet
from scheduler.ports import parse_ports
from scheduler.targets import iter_targets
from workers.discovery import Discovery, ZmapError, blocked_for
from workers.engine import Engine, ScanConfig
from workers.transport import Scope

PORTS = parse_ports("1883,5672", None)
SCOPE = Scope(["198.18.0.0/24"])


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def stage(targets: IPSet, blocked: IPSet | None = None) -> Discovery:
    return Discovery(lambda: iter_targets(targets, PORTS), scope=SCOPE,
                     blocked=blocked if blocked is not None else IPSet.empty(), rate=100,
                     seed=1, cooldown=0)


def test_zmap_is_given_the_walk_minus_what_is_blocked() -> None:
    targets = IPSet.from_networks(["198.18.0.0/28"])
    blocked = IPSet.from_networks(["198.18.0.4/30"])
    plan = stage(targets, blocked).plan()
    assert set(plan) == {1883, 5672}
    assert plan[1883] == plan[5672] == targets.difference(blocked)


def test_a_target_outside_the_scope_stops_everything() -> None:
    targets = IPSet.from_networks(["198.18.0.250/31", "198.18.1.0/32"])
    with pytest.raises(ZmapError, match=r"outside the scope \(198\.18\.1\.0\)"):
        stage(targets).plan()


def test_the_blocklist_is_everything_the_engine_would_not_dial() -> None:
    scope, optout = IPSet.from_networks(["198.18.0.0/15"]), IPSet.from_networks(["198.18.9.0/24"])
    blocked = blocked_for(scope, optout, None)
    assert ip("198.18.9.1") in blocked and ip("8.8.8.8") in blocked
    assert ip("198.18.0.1") not in blocked
    reserved = IPSet.from_networks(["198.18.0.0/15"])
    assert ip("198.18.0.1") in blocked_for(scope, optout, reserved)


def test_the_replay_yields_what_answered_and_settles_the_rest() -> None:
    targets = IPSet.from_networks(["198.18.0.0/29"])
    discovery = stage(targets)
    discovery.open[1883].add(ip("198.18.0.3"))
    discovery.refused[1883].add(ip("198.18.0.5"))
    engine = Engine(ScanConfig(), SCOPE)
    probed = list(discovery.narrowed(engine))
    assert probed == [(ip("198.18.0.3"), PORTS[0])]
    assert engine.stats.started == engine.stats.done == 15  # the walk: 16 targets, 1 left
    assert engine.stats.statuses == {"connection-refused": 1, "connection-timeout": 14}


def test_settled_targets_are_the_records_a_connect_would_write() -> None:
    # Nothing answered, so the engine dials nothing: it only settles the walk.
    discovery = stage(IPSet.from_networks(["198.18.0.0/29"]))
    discovery.refused[5672].add(ip("198.18.0.5"))
    seen: list[ScanResult] = []
    engine = Engine(ScanConfig(emit_failures=True, discovered_by="zmap"), SCOPE)
    stats = asyncio.run(engine.run(discovery.narrowed(engine), seen.append, total=16))
    assert stats.done == 16 and stats.open == 0
    assert len(seen) == 16 and {r.discovered_by for r in seen} == {"zmap"}
    refused = [r for r in seen if r.status.value == "connection-refused"]
    assert [(r.ip, r.port, r.error) for r in refused] == [("198.18.0.5", 5672, "ECONNREFUSED")]
    assert {r.status.value for r in seen} - {"connection-refused"} == {"connection-timeout"}
