"""Store URLs: which backend a URL names, which URL a command uses, and how a URL is shown.

Kept apart from :mod:`storage.store` so the command line can tell a URL no backend takes
(bad input, exit 2) without importing the stores.
"""

from __future__ import annotations

import os
from difflib import get_close_matches
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit

from brokerscan.oneline import redact

if TYPE_CHECKING:
    from brokerscan.settings import Settings

__all__ = ["BACKENDS", "DEFAULT_STORE_URL", "StoreUrlError", "backend_of", "describe_store",
           "sqlite_file", "store_url", "unknown_scheme"]

#: URL scheme -> "module:class" of the backend.
BACKENDS: Final = {
    "postgresql": "storage.pgstore:PgStore",
    "postgres": "storage.pgstore:PgStore",
    "sqlite": "storage.sqlitestore:SqliteStore",
}


#: The embedded store, in the working directory, when no setting names another.
DEFAULT_STORE_URL: Final = "sqlite:///brokerscan.db"


def store_url(settings: Settings, explicit: str | None = None, *,
              fleet: bool = True) -> str:
    """Which store a command uses: *explicit* (a ``--store`` option), else the ``store_url``
    setting, else (for the fleet's roles and the read side, *fleet*) ``database_url``, else
    :data:`DEFAULT_STORE_URL`. A local scan passes ``fleet=False``: it stores in the
    embedded file unless told otherwise, whatever database a fleet uses."""
    database = settings.database_url if fleet else None
    url = explicit or settings.store_url or database or DEFAULT_STORE_URL
    problem = unknown_scheme(url)
    if problem:
        raise StoreUrlError(f"store {redact(url)}: {problem}")
    return url


class StoreUrlError(ValueError):
    """A store URL no backend takes: bad input (the command line's exit 2), not a store
    that failed."""


def unknown_scheme(url: str) -> str | None:
    """Why no backend takes *url*, in one line; None when one does."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in BACKENDS:
        return None
    close = get_close_matches(scheme, BACKENDS, n=1)
    hint = f" (did you mean {close[0]}://?)" if close else ""
    return (f"unknown store URL scheme {scheme or url[:20]!r}{hint}; use one of "
            + ", ".join(f"{s}://" for s in BACKENDS))


def sqlite_file(url: str) -> str | None:
    """The file a ``sqlite:///`` URL names (relative to the working directory as given);
    None for another scheme and for ``sqlite:///:memory:``."""
    if "://" not in url or urlsplit(url).scheme != "sqlite":
        return None
    path = unquote(urlsplit(url).path[1:])
    return None if path == ":memory:" else path


def describe_store(url: str) -> str:
    """*url* for messages: a SQLite file with its absolute path, any password hidden."""
    path = sqlite_file(url)
    if path is not None:
        return f"sqlite:///{os.path.abspath(path)}"
    return url if url.startswith("sqlite://") else redact(url)



def backend_of(url: str) -> str:
    """The "module:class" of *url*'s backend (the URL must pass :func:`unknown_scheme`)."""
    return BACKENDS[urlsplit(url).scheme]
