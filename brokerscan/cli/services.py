"""What commands that talk to the fleet's services share: run a coroutine with the services'
failures turned into one line (exit 1), check the task broker answers, and insist on
PostgreSQL where it is needed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.settings import Settings
from storage.db import DatabaseError

__all__ = ["check_broker", "database_url", "run_async"]


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(coro)``; a database or Redis that fails becomes a :class:`CliError`."""
    try:
        return asyncio.run(coro)
    except DatabaseError as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    except (RedisError, OSError) as exc:
        raise CliError(f"cannot reach Redis: {exc}", EXIT_UNAVAILABLE) from None


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
