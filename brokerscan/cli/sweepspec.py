"""The options of a sweep, and the :class:`~scheduler.sweeps.SweepSpec` they make: shared by
``sweep plan``, ``sweep start`` and ``sweep schedule add`` (a schedule's runs take exactly
the options of ``sweep start``), defined once."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from pydantic import ValidationError

from brokerscan.cli.errors import CliError
from brokerscan.cli.options import (
    add_depth_options,
    add_discovery_options,
    add_rate_option,
    add_target_options,
)
from brokerscan.settings import Settings
from scheduler.blocklist import format_ip
from scheduler.launch import PlanError, checked_plan, opt_out
from scheduler.ports import PortError
from scheduler.sweeps import SweepPlan, SweepSpec
from scheduler.targets import TargetError, read_targets

__all__ = ["add_plan_options", "add_run_options", "plan_or_fail", "sweep_spec"]


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """What is swept and how it is cut: ``sweep plan`` has these only."""
    p.add_argument("targets", nargs="*", metavar="TARGET")
    add_target_options(p)
    add_rate_option(p, "the whole fleet")
    p.add_argument("--seed", type=int, default=None, help="order of the permutation")
    p.add_argument("--shards", type=int, default=None, help="shards per port group")
    p.add_argument("--shard-size", type=int, default=250_000)
    p.add_argument("--format", choices=("text", "json"), default="text")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """How a sweep runs (``sweep start`` and ``sweep schedule add``), besides the plan's."""
    add_plan_options(p)
    p.add_argument("--all", dest="emit_failures", action="store_true",
                   help="also publish results for closed and silent ports")
    p.add_argument("--connect-timeout", type=float, default=3.0)
    p.add_argument("--io-timeout", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=1000,
                   help="connections in flight per worker process")
    add_depth_options(p)
    add_discovery_options(p)


def sweep_spec(args: argparse.Namespace, settings: Settings, *, name: str = "") -> SweepSpec:
    """The spec of the options given (those of :func:`add_plan_options`, and of
    :func:`add_run_options` where present). Target files and opt-out lists are read now:
    the spec keeps what they held. Without ``--seed`` the seed is drawn at random."""
    if not args.targets and not args.target_files:
        raise CliError("no targets given (a CIDR, an address, a range, -iL FILE or -)")
    try:
        specs = list(args.targets)
        if "-" in specs or args.target_files:  # resolve files now: the sweep keeps its list
            ips = read_targets(specs, args.target_files,
                               stdin=sys.stdin if "-" in specs else None)
            specs = [f"{format_ip(lo)}-{format_ip(hi)}" for lo, hi in ips.ranges]
        cidrs = opt_out([*settings.blocklist_files, *args.blocklist])
        extra: dict[str, Any] = {}
        if hasattr(args, "emit_failures"):  # the run options (add_run_options)
            extra = {"emit_failures": args.emit_failures,
                     "connect_timeout": args.connect_timeout, "io_timeout": args.io_timeout,
                     "total_timeout": args.timeout, "concurrency": args.concurrency,
                     "sys_version": args.sys_version, "amqp_versions": args.amqp_versions,
                     "ws_paths": args.ws_paths, "discovery": args.discovery,
                     "discovery_cooldown": args.discovery_cooldown}
        return SweepSpec(
            name=name, targets=specs, ports=args.ports,
            probe=args.probe, allow_reserved=args.allow_reserved, optout=cidrs,
            scope=settings.scope, rate=args.rate,
            seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
            shard_size=args.shard_size, shards=args.shards,
            client_id_prefix=settings.client_id_prefix, **extra)
    except (TargetError, PortError) as exc:
        raise CliError(str(exc)) from None
    except ValidationError as exc:  # an impossible number
        error = exc.errors()[0]
        field = str(error["loc"][0]).replace("_", "-") if error["loc"] else "setting"
        raise CliError(f"--{field}: {error['msg'].lower()}") from None


def plan_or_fail(spec: SweepSpec) -> SweepPlan:
    """The plan of *spec*; a bad one, or one with nothing to sweep, is a :class:`CliError`."""
    try:
        return checked_plan(spec)
    except PlanError as exc:
        raise CliError(str(exc)) from None
