"""The approved opt-outs as the dispatcher knows them: read from the store (the one
``brokerscan optout`` and ``serve --identity-page`` use, :func:`storage.store.store_url`)
at the start of every dispatch round, and sent with every shard message of that round
(:mod:`scheduler.dispatch`; the worker's scope refuses them before any packet,
:meth:`workers.transport.Scope.without`). Scheduled runs plan with them too
(:func:`scheduler.schedules.run_spec`).

A round whose read fails (the store away) keeps the list of the last good read, and the
failure is logged once until a read succeeds again: the dispatch loop never stops for it.
A scheduler that has not read the list once sends none, which is what every sweep's own
plan had left out already (``sweep start`` and scheduled runs plan without the approved
networks of their time).
"""

from __future__ import annotations

import logging

from brokerscan.oneline import describe
from brokerscan.settings import Settings
from storage.optouts import approved_networks
from storage.store import Store, open_store, store_url

__all__ = ["OptOutFeed"]

log = logging.getLogger(__name__)


class OptOutFeed:
    """The approved opt-out networks, read again by :meth:`refresh`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: the networks of the last good read (CIDRs)
        self.current: list[str] = []
        self._store: Store | None = None
        self._failing = False

    async def refresh(self) -> list[str]:
        """Read the approved networks again; on failure keep the last good list."""
        try:
            if self._store is None:
                self._store = await open_store(store_url(self.settings))
            found = await approved_networks(self._store)
        except Exception as exc:  # never the dispatch loop's end
            if not self._failing:
                log.warning("opt-outs: cannot read the approved list (%s); sending the "
                            "last one read (%d networks)", describe(exc), len(self.current))
            self._failing = True
            return self.current
        if found != self.current:
            log.info("opt-outs: %d approved network(s) now skipped by every sweep",
                     len(found))
        self._failing = False
        self.current = found
        return found

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
