"""What commands that talk to the fleet's services share: run a coroutine with the services'
failures turned into one line (exit 1), check the task broker answers, insist on
PostgreSQL where it is needed; and what every long-running role does at start-up: check
every dependency it has (one line and exit 1 instead of a process that says ``ready`` and
then fails every piece of work), raise its file-descriptor limit, serve its metrics and
health."""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from brokerscan.cli.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, CliError
from brokerscan.health import Check, Health, OpsServer, amqp_check, redis_check
from brokerscan.oneline import describe, redact
from brokerscan.settings import Settings
from storage.db import DatabaseError, connect
from storage.store import Store, StoreError, open_store

log = logging.getLogger("brokerscan")

#: What each dependency is called in messages and in ``/readyz``.
DEPENDENCIES = ("postgresql", "redis", "task-broker", "results-broker")

__all__ = ["NO_SCHEDULER", "check_broker", "check_services", "database_url",
           "dependency_checks", "opened_store", "pg_check", "raise_nofile", "run_async",
           "start_ops_server"]


#: The note of a command that created work for a scheduler when none beats in Redis.
NO_SCHEDULER = ("brokerscan: note: no scheduler is running; start one with "
                "`brokerscan scheduler`")


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(coro)``; a database or Redis that fails becomes a :class:`CliError`."""
    try:
        return asyncio.run(coro)
    except DatabaseError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    except (RedisError, OSError) as exc:
        raise CliError(f"cannot reach Redis: {exc}", EXIT_UNAVAILABLE) from None


@asynccontextmanager
async def opened_store(url: str, *, read_only: bool = False) -> AsyncIterator[Store]:
    """The store *url* names, open for the block and closed after it; a store that cannot
    be opened, or whose database fails on the way, is one line and exit 3."""
    try:
        store = await open_store(url, read_only=read_only)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    try:
        yield store
    except DatabaseError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        await store.close()


def check_broker(url: str) -> None:
    """Fail in one line unless the task broker at *url* accepts a TCP connection."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        raise CliError(f"cannot reach the task broker at {host}:{port}: "
                       f"{exc.strerror or exc}", EXIT_UNAVAILABLE) from None


def database_url(settings: Settings) -> str:
    """The PostgreSQL URL; fails in one line when it is not set."""
    if not settings.database_url:
        raise CliError("sweeps need PostgreSQL: set BROKERSCAN_DATABASE_URL", EXIT_UNAVAILABLE)
    return settings.database_url


def pg_check(url: str) -> Check:
    async def check() -> None:
        conn = await connect(url)  # checks the migrations too
        await conn.close()

    return check


def dependency_checks(settings: Settings, needs: Iterable[str]) -> dict[str, Check]:
    """Readiness checks of the named dependencies (of :data:`DEPENDENCIES`)."""
    checks: dict[str, Check] = {}
    for need in needs:
        if need == "postgresql":
            checks[need] = pg_check(database_url(settings))
        elif need == "redis":
            checks[need] = redis_check(settings.redis_url)
        elif need == "task-broker":
            checks[need] = amqp_check(settings.broker_url)
        elif need == "results-broker":
            checks[need] = amqp_check(settings.results_url)
        else:  # pragma: no cover - a typo of ours
            raise ValueError(f"unknown dependency {need!r}")
    return checks


def _where(name: str, settings: Settings) -> str:
    if name == "redis":
        return f"Redis at {redact(settings.redis_url)}"
    if name == "task-broker":
        return f"the task broker at {redact(settings.broker_url)}"
    return f"the results broker at {redact(settings.results_url)}"


def check_services(settings: Settings, needs: Iterable[str], role: str) -> None:
    """Check every dependency before the role starts; fail in one line (exit 1, or 2 for
    a database that needs ``db migrate``) naming the first that does not answer."""
    checks = dependency_checks(settings, needs)

    async def run_all() -> list[str | None]:
        return list(await asyncio.gather(*(Health._run(c) for c in checks.values())))

    for name, problem in zip(checks, asyncio.run(run_all()), strict=True):
        if problem is None:
            continue
        if name == "postgresql":
            code = EXIT_BAD_INPUT if "migrate" in problem else EXIT_UNAVAILABLE
            raise CliError(f"{role}: cannot start: {problem.split(': ', 1)[-1]}", code)
        raise CliError(f"{role}: cannot start: {_where(name, settings)} does not answer: "
                       f"{problem}", EXIT_UNAVAILABLE)


#: File descriptors a worker process needs besides its probe connections (connections to
#: PostgreSQL, Redis and RabbitMQ, the epoll sets, logs, metrics files, imports).
FD_RESERVE = 128


def raise_nofile(connections: int, option: str = "--connections") -> tuple[int, int]:
    """Raise the soft ``nofile`` limit to the hard one; refuse *connections* in flight
    that it cannot hold (one line with both numbers).

    :returns: the soft and hard limits now in force
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the nofile limit from %d to %d: %s", soft, target,
                        describe(exc))
    needed = connections + FD_RESERVE
    if needed > soft:
        raise CliError(f"{option} {connections:,} needs {needed:,} file descriptors per "
                       f"process, but the nofile limit is {soft:,} (hard {hard:,}): raise "
                       f"LimitNOFILE / ulimit -n, or lower {option}", EXIT_BAD_INPUT)
    return soft, hard


def start_ops_server(settings: Settings, health: Health) -> OpsServer | None:
    """Serve metrics and health on ``settings.metrics_port`` (None when unset); a port
    that cannot be bound is one line and exit 1."""
    if settings.metrics_port is None:
        return None
    try:
        return OpsServer(health, settings.metrics_host, settings.metrics_port).start()
    except OSError as exc:
        raise CliError(f"{health.role}: cannot serve metrics on "
                       f"{settings.metrics_host}:{settings.metrics_port}: "
                       f"{exc.strerror or exc}", EXIT_UNAVAILABLE) from None
