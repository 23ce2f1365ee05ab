"""What a sweep is, and its plan: eligible targets, port groups, shards, duration.

A :class:`SweepSpec` is what the operator asked for (targets, ports, rate, seed, ...). It
is stored with the sweep and every worker rebuilds the same :class:`SweepPlan` from it,
so a task message only carries a shard (a few ints). Planning is pure and O(ranges +
shards): ``sweep plan 0.0.0.0/0`` answers in well under a second.

Ports are split by transport into *groups*: plaintext ports go to the ``probe`` queue,
TLS ports to ``probe-tls`` (handshakes cost more CPU, so the pools are sized apart). Each
group has its own permutation and shards.

A shard run that stops early hands the rest back as a :class:`HandBack`: the exponent to
resume the walk at, and the exponents before it whose targets were started but not
finished (abandoned at a shutdown); the next run probes those first, then the walk
(:func:`hand_back`, :meth:`SweepPlan.targets_at`). Every target is probed by exactly one
run: finished ones lie before the resume point and are not in the list.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from brokerscan.names import Names
from scheduler.blocklist import IPSet, default_blocklist, format_ip, parse_blocklist
from scheduler.ports import PortSpec, parse_ports
from scheduler.shards import Shard, plan_shards, shard_targets
from scheduler.targets import Exclusions, eligible, read_targets

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MAX_SHARDS",
    "HandBack",
    "PortGroup",
    "SweepPlan",
    "SweepSpec",
    "describe_plan",
    "exponent_after",
    "hand_back",
    "plan_sweep",
]

DEFAULT_SHARD_SIZE = 250_000  # targets per shard: a few minutes of one worker process
MAX_SHARDS = 65_536


class SweepSpec(BaseModel):
    """The operator's request, as stored with the sweep (JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    started_at: datetime | None = None  # set by `sweep start`; stamped on every result
    targets: list[str]  # target specs, as given (CIDRs, addresses, ranges)
    ports: str = "1883,8883,5672,5671"
    probe: str | None = None
    allow_reserved: bool = False
    optout: list[str] = Field(default_factory=list)  # opt-out CIDRs (from files, resolved)
    scope: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"])
    # New connections per second for the whole fleet; 0 = no limit.
    rate: float = Field(default=10_000.0, ge=0)
    seed: int = 0
    shard_size: int = Field(default=DEFAULT_SHARD_SIZE, gt=0)
    shards: int | None = Field(default=None, gt=0, le=MAX_SHARDS)  # per port group
    emit_failures: bool = False
    connect_timeout: float = Field(default=3.0, gt=0)
    io_timeout: float = Field(default=5.0, gt=0)
    total_timeout: float = Field(default=20.0, gt=0)
    concurrency: int = Field(default=1000, gt=0)  # per worker process
    mqtt_levels: tuple[int, ...] = (5, 4, 3)
    client_id_prefix: str = "brokerscan-"
    # Opt-in: read $SYS/broker/version after an accepted MQTT CONNECT (recorded here so the
    # sweep says it did).
    sys_version: bool = False
    amqp_versions: tuple[str, ...] = ("0-9-1",)
    ws_paths: tuple[str, ...] = ("/mqtt", "/", "/ws")
    # A stateless SYN stage before the probes (workers.discovery); None: connect only.
    discovery: Literal["zmap"] | None = None
    discovery_cooldown: float = Field(default=8.0, ge=0)


@dataclass(frozen=True)
class PortGroup:
    """The ports of one transport, with their own permutation and shards."""

    tls: bool
    ports: tuple[PortSpec, ...]
    shards: tuple[Shard, ...]

    def queue(self, names: Names) -> str:
        return names.probe_tls_queue if self.tls else names.probe_queue

    @property
    def key(self) -> str:
        return "tls" if self.tls else "tcp"


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved: what will be probed, in how many shards, for how long."""

    spec: SweepSpec
    ips: IPSet
    exclusions: Exclusions
    groups: tuple[PortGroup, ...]

    @property
    def addresses(self) -> int:
        return self.ips.size

    @cached_property
    def targets(self) -> int:
        return self.ips.size * sum(len(g.ports) for g in self.groups)

    @property
    def shard_count(self) -> int:
        return sum(len(g.shards) for g in self.groups)

    @property
    def seconds(self) -> float | None:
        """How long the sweep takes at its rate (one connection per target at least);
        ``None`` when the rate is not limited (the fleet's speed decides)."""
        return self.targets / self.spec.rate if self.spec.rate else None

    def shard_ids(self) -> Iterator[tuple[PortGroup, Shard, int]]:
        """Every shard with its group and its sweep-wide index (groups one after another)."""
        offset = 0
        for group in self.groups:
            for shard in group.shards:
                yield group, shard, offset + shard.index
            offset += len(group.shards)

    def locate(self, shard_id: int) -> tuple[PortGroup, Shard]:
        """The group and shard of a sweep-wide shard index."""
        for group in self.groups:
            if shard_id < len(group.shards):
                return group, group.shards[shard_id]
            shard_id -= len(group.shards)
        raise IndexError(f"no shard {shard_id} in this sweep")

    def targets_of(self, group: PortGroup, shard: Shard,
                   from_exponent: int | None = None) -> Iterator[tuple[int, PortSpec]]:
        """The (ip, port) targets of a shard, optionally resuming at an exponent."""
        if from_exponent is not None:
            shard = replace(shard, first_exponent=max(shard.first_exponent, from_exponent))
        return shard_targets(shard, None, self.ips, group.ports)

    def targets_at(self, group: PortGroup,
                   exponents: Iterable[int]) -> Iterator[tuple[int, PortSpec]]:
        """The targets at these exponents of the group's walk, in that order (an
        exponent whose element is past ``n`` stands for no target and gives none)."""
        if not group.shards:
            return
        perm, size = group.shards[0].permutation, self.ips.size
        for exponent in exponents:
            index = perm.index_at(exponent)
            if index is not None:  # port-major, as in scheduler.shards
                k, i = divmod(index, size)
                yield self.ips.nth(i), group.ports[k]

    def element_of(self, group: PortGroup, ip: int, spec: PortSpec) -> int:
        """The group element that stands for target ``(ip, spec)`` (its index + 1).

        :raises KeyError: not a target of this plan
        :raises ValueError: not a port of this group
        """
        return group.ports.index(spec) * self.ips.size + self.ips.index_of(ip) + 1


def plan_sweep(spec: SweepSpec) -> SweepPlan:
    """Resolve a spec: parse, apply blocklists and scope, cut each port group into shards.

    :raises scheduler.targets.TargetError: a bad target or opt-out entry (one line).
    :raises scheduler.ports.PortError: a bad port list (one line).
    """
    ports = parse_ports(spec.ports, spec.probe)
    targets = read_targets(spec.targets)
    optout = parse_blocklist("\n".join(spec.optout), "<opt-out>") if spec.optout \
        else IPSet.empty()
    ips, exclusions = eligible(targets, blocklist=default_blocklist(), optout=optout,
                               scope=IPSet.from_networks(spec.scope),
                               allow_reserved=spec.allow_reserved)
    groups = []
    for tls in (False, True):
        group_ports = tuple(p for p in ports if p.tls == tls)
        if not group_ports or ips.size == 0:
            continue
        n = ips.size * len(group_ports)
        count = spec.shards or min(MAX_SHARDS, max(1, math.ceil(n / spec.shard_size)))
        # One permutation per group, from the sweep's seed and the group.
        seed = spec.seed * 2 + int(tls)
        groups.append(PortGroup(tls, group_ports, tuple(plan_shards(n, count, seed))))
    return SweepPlan(spec, ips, exclusions, tuple(groups))


def exponent_after(shard: Shard, first_exponent: int, launched: int) -> int:
    """The exponent to resume a shard at once ``launched`` targets from ``first_exponent``
    were started (elements past ``n`` are skipped, as the walk skips them).

    :returns: an exponent in ``first_exponent .. shard.end_exponent``.
    """
    perm = shard.permutation
    g, p, n = perm.generator, perm.prime, perm.n
    x = perm.element_at(first_exponent)
    exponent = first_exponent
    seen = 0
    while seen < launched and exponent < shard.end_exponent:
        if x <= n:
            seen += 1
        x = x * g % p
        exponent += 1
    return exponent


class HandBack(NamedTuple):
    """Where a shard resumes: the walk at ``position``, after the targets at the exponents
    ``unfinished`` (each below ``position``)."""

    position: int
    unfinished: tuple[int, ...]


def hand_back(shard: Shard, position: int, unfinished: Sequence[int], launched: int,
              abandoned: Collection[int]) -> HandBack:
    """Where a shard resumes after a run that stopped early.

    The run began at ``(position, unfinished)``: it started the targets at the exponents
    ``unfinished`` first (each stands for a target: they come from an earlier hand-back),
    then the walk from ``position``, ``launched`` targets in all, and finished all of
    them but the ``abandoned`` ones (given as group elements, see
    :meth:`SweepPlan.element_of`). The result keeps every target not finished, and only
    those: the ``unfinished`` not reached or abandoned, then the abandoned ones of the
    walk, in walk order; the walk resumes after the last target started. Pure, and
    O(launched): one multiplication per exponent walked.

    :raises ValueError: an abandoned element is not among the targets started (a target
        would be lost)
    """
    perm = shard.permutation
    abandoned = frozenset(abandoned)
    redone = min(launched, len(unfinished))
    left = [e for e in unfinished[:redone] if perm.element_at(e) in abandoned]
    left += unfinished[redone:]
    found = len(left) - (len(unfinished) - redone)
    g, p, n = perm.generator, perm.prime, perm.n
    x = perm.element_at(position)
    exponent, seen, walked = position, 0, launched - redone
    while seen < walked and exponent < shard.end_exponent:
        if x <= n:
            seen += 1
            if x in abandoned:
                left.append(exponent)
                found += 1
        x = x * g % p
        exponent += 1
    if found != len(abandoned):
        raise ValueError(f"shard {shard.index}: {len(abandoned) - found} abandoned target(s)"
                         f" not among the {launched} started from exponent {position}")
    return HandBack(exponent, tuple(left))


def describe_plan(plan: SweepPlan, names: Names) -> dict[str, Any]:
    """The plan as JSON-ready data (for ``sweep plan`` and ``sweep start``)."""
    return {
        "addresses": plan.addresses,
        "targets": plan.targets,
        "ports": [p.name for g in plan.groups for p in g.ports],
        "excluded": plan.exclusions.describe(),
        "shards": plan.shard_count,
        "queues": {g.queue(names): len(g.shards) for g in plan.groups},
        "rate": plan.spec.rate,
        "seconds": None if plan.seconds is None else round(plan.seconds, 1),
        "first_address": format_ip(plan.ips.nth(0)) if plan.ips.size else None,
    }
