"""An opt-out request made straight in a store, as the public form would (for tests that
need one without a ``serve`` process)."""

from __future__ import annotations

import asyncio

from storage.optouts import submit_optout
from storage.store import open_store

__all__ = ["request_opt_out"]


def request_opt_out(url: str, networks: str, contact: str = "noc@example.net") -> str:
    """A pending request for *networks* in the store *url*; its id."""
    async def made() -> str:
        store = await open_store(url)
        try:
            return (await submit_optout(store, networks, contact, "please stop",
                                        client="127.0.0.1")).id
        finally:
            await store.close()

    return asyncio.run(made())
