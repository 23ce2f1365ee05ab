"""The embedded store: one SQLite file (WAL mode) through the stdlib ``sqlite3``.

The same tables as PostgreSQL without partitions: ``observations`` (UNIQUE(sweep_id, ip,
port); a sweep id names one sweep, so its start time is not needed for uniqueness here),
``services`` and ``rollup``. A write runs in a worker thread (``asyncio.to_thread``), in
one ``BEGIN IMMEDIATE`` transaction: ``INSERT OR IGNORE`` each row, and for each row that
was new (``rowcount == 1``) add to the rollup and upsert the service. The writing
connection is used by one thread at a time (an asyncio lock).

Reads (``SELECT`` and ``WITH``) go to a few read-only connections of their own (WAL lets
them read beside the writer and beside each other), each in a worker thread: a long read
never holds up another request; a read for a costly request runs on threads of lower CPU
priority (:mod:`storage.priority`). A read past *statement_timeout* is stopped by SQLite's
progress handler (:class:`StatementTimeout`), and a read whose task is cancelled (the
client went away) is interrupted at once (``Connection.interrupt``).

Timestamps are stored as fixed-width UTC text (they sort), days as ``YYYY-MM-DD``,
booleans as 0/1; reads turn them back into Python values.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from brokerscan.model import ScanResult
from storage.dialect import SQLITE
from storage.priority import is_low, low_priority_executor
from storage.reader import Row
from storage.rows import (
    COLUMNS,
    ip_number,
    observation_row,
    sqlite_row,
)
from storage.sqliteschema import SchemaError, upgrade
from storage.sqlsearcher import SqlSearcher
from storage.store import StatementTimeout, StoreError

__all__ = ["SqliteStore", "path_of"]

_OBSERVATION_COLUMNS: Final = (*COLUMNS, "ip_num")
_INSERT = (
    f"INSERT OR IGNORE INTO observations ({', '.join(_OBSERVATION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_OBSERVATION_COLUMNS))})"
)
_ROLLUP = """
INSERT INTO rollup (day, sweep_id, protocol, port, transport, tls, anonymous, country, asn,
                    status, n)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
ON CONFLICT (day, sweep_id, protocol, port, transport, tls, anonymous, country, asn, status)
DO UPDATE SET n = n + 1
"""
#: What the current view keeps of its latest observation (every searchable column).
_LATEST = ("sweep_id", "status", "protocol", "tls", "anonymous", "mqtt_level",
           "mqtt_return_code", "mqtt_levels", "amqp_family", "product", "version",
           "amqp_mechanisms", "tls_version", "cert_sha256", "cert_subject", "cert_issuer",
           "cert_self_signed", "cert_expired", "cert_trusted", "asn", "org", "country",
           "ip_num", "latest", "census")
_CHANGE = ("protocol", "status", "anonymous", "product", "version", "cert_sha256")
_NEWER = "excluded.last_seen > services.last_seen"
# An observation that moves neither end of the span changes nothing: no update at all (no
# -1/+1 through the rollup triggers), as PostgreSQL's trigger since migration 0015.
_SERVICE = f"""
INSERT INTO services (ip, port, transport, first_seen, last_seen, last_changed,
                      {", ".join(_LATEST)})
VALUES (?, ?, ?, ?, ?, ?, {", ".join("?" * len(_LATEST))})
ON CONFLICT (ip, port, transport) DO UPDATE SET
    first_seen = min(services.first_seen, excluded.first_seen),
    last_seen = max(services.last_seen, excluded.last_seen),
    last_changed = CASE WHEN {_NEWER} AND ({" OR ".join(
        f"services.{c} IS NOT excluded.{c}" for c in _CHANGE)})
        THEN excluded.last_seen ELSE services.last_changed END,
    {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE services.{c} END"
               for c in _LATEST)}
WHERE {_NEWER} OR excluded.first_seen < services.first_seen
"""
#: Read-only connections beside the writer (reads at once).
READERS: Final = 4
#: A statement that only reads (a write sent to a read connection fails: query_only).
_READ: Final = re.compile(r"\s*(SELECT|WITH)\b", re.IGNORECASE)
#: SQLite virtual-machine steps between two looks at the clock.
_STEPS: Final = 10_000

_I = {name: i for i, name in enumerate(_OBSERVATION_COLUMNS)}
_I["latest"] = _I["record"]


def path_of(url: str) -> str:
    """The file of ``sqlite:///path`` (``sqlite:////abs/path`` or ``sqlite:///rel/path``).

    :raises StoreError: not a ``sqlite:///`` URL with a path
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.lstrip("/"):
        raise StoreError(
            f"invalid SQLite store URL {url!r}: use sqlite:///relative/file.db, "
            "sqlite:////absolute/file.db or sqlite:///:memory:"
        )
    return unquote(parts.path[1:])


def _new_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    if conn.execute(_INSERT, row).rowcount != 1:
        return False
    anonymous = row[_I["anonymous"]]
    conn.execute(_ROLLUP, (
        row[_I["day"]], row[_I["sweep_id"]], row[_I["protocol"]] or "", row[_I["port"]],
        row[_I["transport"]], row[_I["tls"]], -1 if anonymous is None else int(anonymous),
        row[_I["country"]] or "", -1 if row[_I["asn"]] is None else row[_I["asn"]],
        row[_I["status"]],
    ))
    seen = row[_I["observed_at"]]
    conn.execute(_SERVICE, (
        row[_I["ip"]], row[_I["port"]], row[_I["transport"]], seen, seen, seen,
        *(row[_I[c]] for c in _LATEST),
    ))
    return True


@dataclass(frozen=True, slots=True)
class _Prepared:
    rows: list[tuple[object, ...]]


class SqliteStore(SqlSearcher):
    """The results store in one SQLite file (see the module docstring)."""

    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:",
                 readers: Sequence[sqlite3.Connection] = (),
                 statement_timeout: float | None = None) -> None:
        self._conn = conn
        self._path = path
        self._lock = asyncio.Lock()
        self._timeout = statement_timeout or None
        self._readers: asyncio.Queue[sqlite3.Connection] | None = None
        self._all_readers = list(readers)
        self._low: ThreadPoolExecutor | None = None
        if readers:
            self._readers = asyncio.Queue()
            for reader in readers:
                self._readers.put_nowait(reader)

    @classmethod
    async def open(cls, url: str, *, read_only: bool = False,
                   statement_timeout: float | None = None) -> SqliteStore:
        """Open (creating if needed) the file *url* names, in WAL mode, and its read
        connections (none for ``:memory:``, which only one connection can see).

        *read_only* changes nothing here (the process that serves a file owns it; WAL
        readers need to write its shared-memory index anyway).

        :param statement_timeout: seconds a read may run (None: no limit)
        :raises StoreError: a bad URL, or the file cannot be opened or written
        """
        path = path_of(url)
        try:
            conn = await asyncio.to_thread(cls._connect, path)
            readers = [] if path == ":memory:" else \
                [await asyncio.to_thread(cls._connect_reader, path) for _ in range(READERS)]
        except (sqlite3.Error, SchemaError) as exc:
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
        return cls(conn, path, readers, statement_timeout)

    @staticmethod
    def _connect_reader(path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")  # a write sent here by mistake fails loudly
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
        conn.execute("PRAGMA busy_timeout=10000")
        upgrade(conn)
        return conn

    def _run(self, conn: sqlite3.Connection, sql: str, params: Sequence[object],
             ) -> list[Row]:
        """One statement on *conn* (in a worker thread), stopped past the time limit."""
        if self._timeout is not None:
            deadline = time.monotonic() + self._timeout
            conn.set_progress_handler(lambda: time.monotonic() > deadline, _STEPS)
        cursor = conn.cursor()
        cursor.row_factory = sqlite3.Row
        try:
            return cursor.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if str(exc) != "interrupted":
                raise
            raise StatementTimeout(f"the statement ran past the limit of {self._timeout} s"
                                   " and was stopped") from None
        finally:
            if self._timeout is not None:
                conn.set_progress_handler(None, 0)

    async def _interruptible(self, conn: sqlite3.Connection, sql: str,
                             params: Sequence[object]) -> list[Row]:
        executor = None
        if is_low():
            if self._low is None:
                self._low = low_priority_executor(max(1, len(self._all_readers)))
            executor = self._low
        work = asyncio.get_running_loop().run_in_executor(executor, self._run, conn, sql,
                                                          params)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            conn.interrupt()  # the caller is gone: stop the statement now
            with contextlib.suppress(Exception):
                await work  # the connection is free only once its thread is
            raise

    async def fetch(self, sql: str, params: Sequence[object]) -> list[Row]:
        """See :meth:`storage.reader.StoreReader.fetch` (in a worker thread): a read on a
        read connection of its own, anything else on the writing connection."""
        readers = self._readers
        if readers is None or not _READ.match(sql):
            async with self._lock:
                return await self._interruptible(self._conn, sql, params)
        conn = await readers.get()
        try:
            return await self._interruptible(conn, sql, params)
        finally:
            readers.put_nowait(conn)

    def _write(self, rows: list[tuple[Any, ...]]) -> int:
        """One transaction; a failure of SQLite itself (a full disk, an I/O error, a
        locked file) rolls it back and becomes a one-line :class:`StoreError`."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                new = sum(_new_row(conn, row) for row in rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot write to SQLite store {self._path}: {exc}") from exc
        return new

    async def write(self, results: Sequence[ScanResult]) -> int:
        """See :meth:`storage.store.Store.write`."""
        return await self.write_prepared(await self.prepare(results))

    async def prepare(self, results: Sequence[ScanResult],
                      records: Sequence[str | None] | None = None) -> _Prepared:
        """See :meth:`storage.store.Store.prepare`."""
        texts: Sequence[str | None] = records if records is not None else [None] * len(results)
        return _Prepared([(*sqlite_row(row), ip_number(str(row[2])))
                          for row in (observation_row(r, j)
                                      for r, j in zip(results, texts, strict=True))])

    async def write_prepared(self, prepared: object) -> int:
        """See :meth:`storage.store.Store.write_prepared`."""
        if not isinstance(prepared, _Prepared):
            raise TypeError("write_prepared() takes what this store's prepare() returned")
        rows = prepared.rows
        if not rows:
            return 0
        async with self._lock:
            return await asyncio.to_thread(self._write, rows)

    async def close(self) -> None:
        """Close the file (and the read connections), in this thread and at once: closing is
        quick, and a close awaited in a thread could be cancelled half-way by Ctrl-C (the
        task of ``serve`` is cancelled as it closes its store), leaving files open and a
        traceback behind."""
        async with self._lock:
            for reader in self._all_readers:
                reader.close()
            self._conn.close()
            if self._low is not None:
                self._low.shutdown(wait=False)
