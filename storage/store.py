"""The results store: one interface, a backend per URL scheme.

``await open_store(url)`` picks the backend from :data:`BACKENDS` by the URL's scheme
(``postgresql://`` / ``postgres://``: :class:`~storage.pgstore.PgStore`; ``sqlite:///path``:
:class:`~storage.sqlitestore.SqliteStore`). Every backend passes the same conformance tests
(``tests/integration/test_store.py``).

What every backend promises:

- ``write`` is durable when it returns and idempotent: an observation is identified by
  (sweep_started_at, sweep_id, ip, port), so a redelivered result or a re-run shard (even
  with another ``observed_at``) adds nothing and counts nothing twice;
- the search (:class:`storage.searcher.Searcher`) answers the same questions the same way
  over the current view (one row per ip, port and transport), a sweep, or a past day.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

from brokerscan.model import ScanResult
from storage.searcher import Searcher
from storage.urls import (
    BACKENDS,
    DEFAULT_STORE_URL,
    StoreUrlError,
    backend_of,
    describe_store,
    store_url,
    unknown_scheme,
)

__all__ = ["BACKENDS", "DEFAULT_STORE_URL", "ResultWriter", "StatementTimeout", "Store",
           "StoreError", "StoreUrlError", "describe_store", "open_store", "store_url"]

class StoreError(Exception):
    """The store cannot be opened or used; the message is one line for the operator."""


class StatementTimeout(Exception):
    """A statement ran past the store's statement time limit and was stopped (the query
    was too costly for the limit, not the store down)."""


class ResultWriter(Protocol):
    """What writes results into a store: the stream's store writer
    (:mod:`storage.consumer`), a local scan's sink (:mod:`storage.sink`), ``import``."""

    async def write(self, results: Sequence[ScanResult]) -> int:
        """Store a batch, in one transaction, committed on return.

        :param results: the batch (every result has ``sweep_id`` and ``sweep_started_at``)
        :returns: how many observations were new (the rest were already stored)
        :raises ValueError: a result has no ``sweep_id`` or ``sweep_started_at``
        """
        ...

    async def prepare(self, results: Sequence[ScanResult],
                      records: Sequence[str | None] | None = None) -> object:
        """The CPU half of :meth:`write`, done ahead: rows for :meth:`write_prepared`.

        ``write(r)`` is ``write_prepared(await prepare(r))``; a caller may prepare the next
        batch while the database works on the previous one (``prepare`` yields to the
        event loop now and then, so that the write in flight keeps moving).

        :param records: ``result.to_json()`` of each result, when the caller has that
            exact text already (saves serialising again); computed where None (for the
            whole batch, or for one result)
        :raises ValueError: as :meth:`write`
        """
        ...

    async def write_prepared(self, prepared: object) -> int:
        """:meth:`write` of what :meth:`prepare` returned (same promises)."""
        ...


class Store(ResultWriter, Searcher, Protocol):
    """A backend: it writes results (:class:`ResultWriter`) and answers the search
    (:class:`~storage.searcher.Searcher`); :func:`open_store` opens one."""


async def open_store(url: str, *, read_only: bool = False,
                     statement_timeout: float | None = None) -> Store:
    """Open the store *url* names.

    :param url: ``postgresql://user@host/db``, ``sqlite:///path/file.db`` or
        ``sqlite:///:memory:``
    :param read_only: the caller only reads (``brokerscan serve``): PostgreSQL makes no
        partitions, so a role that may only SELECT can open it
    :param statement_timeout: seconds a statement may run before the store stops it with
        :class:`StatementTimeout` (None: no limit)
    :returns: the open store (PostgreSQL: migrations must be applied)
    :raises StoreError: an unknown scheme, or the store cannot be opened
    """
    problem = unknown_scheme(url)
    if problem:
        raise StoreError(problem)
    module_name, class_name = backend_of(url).split(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    store: Store = await backend.open(url, read_only=read_only,
                                      statement_timeout=statement_timeout)
    return store
