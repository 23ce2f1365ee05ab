"""Stateless discovery before the probes (``--discovery zmap``), for a scan or a shard.

The connect engine spends a socket and the whole connect timeout on every silent address;
on the Internet that is ~94% of them. With discovery, a run first sends ZMap's SYNs to its
targets (:mod:`workers.zmap`) and hands only the (address, port) pairs that answered
SYN-ACK to the engine's MQTT/AMQP probes, as Censys runs ZMap before ZGrab.

What stays the same as without discovery:

* the targets: ZMap's allowlist is made from the run's own walk (the same permutation,
  seed, blocklist, opt-out lists and scope), checked against the transport's scope once
  more, and its blocklist is the same exclusions, so it never sends where the engine
  would not dial;
* the records and counters: the walk is replayed in its order; an answering target is
  probed by the engine as usual, every other one is *settled* in the engine
  (:meth:`~workers.engine.Engine.settle`) as ``connection-refused`` (ZMap saw an RST) or
  ``connection-timeout`` (no answer), counted (and written with ``--all``) exactly as a
  connect would have been. Every record says ``discovered_by: "zmap"``;
* resuming: targets are started in walk order, settled ones included, so the engine's
  ``started`` count still says how far the walk went (a shard hands back from there);
  a run stopped while ZMap is still sending starts nothing, and hands back everything.
"""

from __future__ import annotations

import asyncio
import errno
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from brokerscan.model import Status
from brokerscan.names import Names
from scheduler import live
from scheduler.blocklist import IPSet, default_blocklist, parse_blocklist
from scheduler.ports import PortSpec
from scheduler.sweeps import SweepSpec
from workers.engine import Engine
from workers.transport import Scope
from workers.zmap import Route, ZmapError, ZmapFailed, preflight, run_zmap

if TYPE_CHECKING:  # shardrun imports this module for its hook
    from workers.shardrun import WorkerContext

__all__ = ["DISCOVERY_NAMES", "Discovery", "Walk", "ZmapError", "ZmapFailed", "blocked_for",
           "discover_shard", "rate_share"]

#: The discovery stages a run may ask for.
DISCOVERY_NAMES = ("zmap",)

#: A walk of targets, and what makes one (called again to replay the walk).
Walk = Iterator[tuple[int, PortSpec]]
Targets = Callable[[], Walk]

_REFUSED = errno.errorcode[errno.ECONNREFUSED]
_TIMEOUT = errno.errorcode[errno.ETIMEDOUT]


def blocked_for(scope: IPSet, optout: IPSet, reserved: IPSet | None) -> IPSet:
    """Everything ZMap must exclude: outside the scope, opted out, and (unless reserved
    space is allowed, ``reserved`` None) the IANA blocklist."""
    blocked = scope.complement().union(optout)
    return blocked if reserved is None else blocked.union(reserved)


class Discovery:
    """One discovery run over a walk of targets.

    :param targets: makes the walk (called twice: once to give ZMap its addresses, once
        to replay it in order for the engine).
    :param scope: the transport's scope: ZMap's allowlist must lie inside it.
    :param blocked: what ZMap must exclude (:func:`blocked_for`).
    :param rate: SYNs per second for ZMap (this run's share of the budget; 0 unlimited).
    :param seed: ZMap's permutation seed (the run's seed).
    :param cooldown: seconds ZMap keeps listening after its last SYN.
    :param stopped: polled while ZMap runs: true stops it, and the run starts nothing.
    """

    def __init__(self, targets: Targets, *, scope: Scope, blocked: IPSet, rate: float,
                 seed: int, cooldown: float,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self._targets = targets
        self._scope = IPSet.from_networks(scope.networks)
        self._blocked = blocked
        self.rate, self.seed, self.cooldown = rate, seed, cooldown
        self._stopped = stopped
        self._route: tuple[str, Route] | None = None
        self.open: dict[int, set[int]] = defaultdict(set)  # port -> addresses (SYN-ACK)
        self.refused: dict[int, set[int]] = defaultdict(set)  # port -> addresses (RST)
        self.sent = 0  # SYNs ZMap was asked to send
        self.ignored = 0  # answers from addresses ZMap was not asked about

    def plan(self) -> dict[int, IPSet]:
        """The addresses to send to, by port: the walk's (:meth:`checked`).

        :raises ZmapError: an address outside the scope (a bug upstream: nothing sent)
        """
        by_port: dict[int, list[int]] = defaultdict(list)
        for ip, spec in self._targets():
            by_port[spec.port].append(ip)
        plan = {}
        for port, ips in by_port.items():
            ips.sort()
            ranges: list[tuple[int, int]] = []
            for ip in ips:
                if ranges and ip <= ranges[-1][1] + 1:
                    ranges[-1] = (ranges[-1][0], max(ranges[-1][1], ip))
                else:
                    ranges.append((ip, ip))
            plan[port] = IPSet(ranges)
        return self.checked(plan)

    def checked(self, plan: dict[int, IPSet]) -> dict[int, IPSet]:
        """``plan`` (addresses by port, e.g. a whole scan's) checked against the scope,
        minus anything blocked.

        :raises ZmapError: an address outside the scope (a bug upstream: nothing sent)
        """
        for allow in plan.values():
            outside = allow.difference(self._scope)
            if outside:
                raise ZmapError(f"refusing to give ZMap targets outside the scope "
                                f"({', '.join(outside.describe_ranges(limit=3))})")
        return {port: allow.difference(self._blocked) for port, allow in plan.items()}

    def check(self, plan: dict[int, IPSet]) -> None:
        """Everything ZMap needs (binary, CAP_NET_RAW, route, gateway), before any packet.

        :raises ZmapError: one line
        """
        nonempty = [ips for ips in plan.values() if ips]
        if not nonempty:
            return
        first = min(ips.ranges[0][0] for ips in nonempty)
        last = max(ips.ranges[-1][1] for ips in nonempty)
        self._route = preflight(first, last)

    async def discover(self, plan: dict[int, IPSet]) -> bool:
        """Run ZMap on every port at once (one process per port, 2.1.1 scans one port a
        run), each at its share of the rate, and keep what answered. At once, not one
        after another: the cooldowns overlap, and the SYN rate is the same.

        :returns: False when stopped before ZMap finished (nothing may be started then)
        :raises ZmapError: ZMap failed or ran out of time
        """
        if self._route is None:
            self.check(plan)
        runs = [(port, allow) for port, allow in plan.items() if allow]
        if not runs:
            return True
        rate = self.rate / len(runs)
        try:
            async with asyncio.TaskGroup() as group:
                for port, allow in runs:
                    group.create_task(self._run(port, allow, rate))
        except ExceptionGroup as failed:  # the other runs were stopped; report the first
            raise failed.exceptions[0] from None
        return not self._stopped()

    async def _run(self, port: int, allow: IPSet, rate: float) -> None:
        assert self._route is not None
        binary, route = self._route
        self.sent += allow.size
        opened, refused = self.open[port], self.refused[port]
        async for answer in run_zmap(binary, route, port, allow.ranges, self._blocked.ranges,
                                     targets=allow.size, rate=rate, seed=self.seed,
                                     cooldown=self.cooldown, stopped=self._stopped):
            if answer.port != port or answer.ip not in allow:
                self.ignored += 1
            elif answer.kind == "synack":
                opened.add(answer.ip)
            else:
                refused.add(answer.ip)

    def narrowed(self, engine: Engine) -> Iterator[tuple[int, PortSpec]]:
        """The walk again, in order: yields the targets that answered SYN-ACK and settles
        every other one in ``engine`` as it passes (so the engine's counters, and its
        ``started``, cover the whole walk)."""
        for ip, spec in self._targets():
            if ip in self.open.get(spec.port, ()):
                yield ip, spec
            elif ip in self.refused.get(spec.port, ()):
                engine.settle(ip, spec, Status.CONNECTION_REFUSED, _REFUSED)
            else:
                engine.settle(ip, spec, Status.CONNECTION_TIMEOUT, _TIMEOUT)

    @property
    def found(self) -> int:
        return sum(len(ips) for ips in self.open.values())


async def rate_share(redis: Redis, names: Names, queue: str, worker_id: str,
                     rate: float) -> float:
    """This worker's share of a sweep's fleet-wide rate: the rate divided among every live
    worker process that consumes ``queue`` (this one included), busy or not, so that ZMap
    runs that start together never add up to more than the budget; 0 stays unlimited."""
    if rate <= 0:
        return 0.0
    consumers = {w.worker_id for w in await live.live_workers(redis, names)
                 if queue in w.queues}
    return rate / len(consumers | {worker_id})


async def discover_shard(walk: Targets, engine: Engine, spec: SweepSpec, ctx: WorkerContext,
                         queue: str, *, stopped: Callable[[], bool]) -> Walk:
    """The discovery step of a shard run (the hook in :mod:`workers.shardrun`): ZMap over
    the shard's remaining walk (``walk``: its unfinished targets, then the walk from its
    position), at this worker's :func:`rate_share` among ``queue``'s consumers; returns
    what the engine runs instead of the walk. Stopped while ZMap runs: nothing at all (the
    whole shard is handed back).

    :raises ZmapError: ZMap cannot run on this worker (the shard fails, with the line)
    :raises ZmapFailed: a ZMap run failed (the shard is retried)
    """
    rate = await rate_share(ctx.redis(), ctx.names, queue, ctx.worker_id, spec.rate)
    late = engine.scope.opted_out  # approved since the sweep was planned: no SYN either
    cidrs = [*spec.optout, *(str(n) for n in late.networks)] if late else spec.optout
    optout = parse_blocklist("\n".join(cidrs), "<opt-out>") if cidrs else IPSet.empty()
    blocked = blocked_for(IPSet.from_networks(spec.scope), optout,
                          None if spec.allow_reserved else default_blocklist())
    stage = Discovery(walk, scope=ctx.scope, blocked=blocked, rate=rate, seed=spec.seed,
                      cooldown=spec.discovery_cooldown, stopped=stopped)
    if not await stage.discover(stage.plan()):
        return iter(())
    return stage.narrowed(engine)
