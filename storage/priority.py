"""Statements run on behalf of a costly request, at a low CPU priority.

The API's costly lane (:class:`brokerscan.api.ratelimit.Admission`) bounds how many costly
requests run at once; this lowers what each of them takes from the cheap ones while they
run. Code that answers a costly request runs inside :func:`low_priority`; a store that runs
statements on threads of its own (the SQLite store) runs that request's statements on
threads whose nice value is raised by :data:`NICE` (Linux schedules threads one by one, and
any thread may lower its own priority), so a cheap request's statement or the event loop
gets a busy core first and the costly one takes what is left. PostgreSQL runs statements in
its own processes: there the lane alone bounds them.

Why a context variable: the request's dependency decides, and the statements are issued
several calls below it in the same task; nothing between them needs to know.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Final

__all__ = ["NICE", "is_low", "low_priority", "low_priority_executor"]

#: How much a low-priority thread's nice value is raised: at 10 the kernel gives it about
#: a tenth of a core that a normal thread also wants (CFS weights 110 against 1024).
NICE: Final = 10

_low: ContextVar[bool] = ContextVar("brokerscan_low_priority", default=False)


@contextlib.contextmanager
def low_priority(on: bool = True) -> Iterator[None]:
    """Statements issued inside run at low priority (if *on*)."""
    token = _low.set(on)
    try:
        yield
    finally:
        _low.reset(token)


def is_low() -> bool:
    """Whether the current context asked for low priority."""
    return _low.get()


def _lower_this_thread() -> None:
    try:  # per thread on Linux; elsewhere it may lower the whole process: do not
        if os.uname().sysname == "Linux":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError:
        pass  # a sandbox that forbids it: the lane still bounds the costly requests


def low_priority_executor(workers: int) -> ThreadPoolExecutor:
    """Threads for low-priority statements, each lowered once as it starts."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brokerscan-low",
                              initializer=_lower_this_thread)
