"""``brokerscan import``: a JSON-lines file of results (what ``scan -o`` writes) into a
store, streamed.

- **Constant memory.** Lines are read a batch at a time (:data:`BATCH`, the store writer's
  batch size); while the store writes one batch, the next is read, validated and enriched
  (in a worker thread) and prepared. At most two batches are in hand whatever the size of
  the file, standard input included. A line longer than :data:`MAX_LINE` is a bad line,
  read past in pieces and never held whole.
- **Idempotent per record.** Every result is written under a key that comes from the
  result alone (:func:`keyed`), and the stores ignore a key they hold: a second import of
  a file adds nothing, and a file cut short, imported, then imported whole, ends with every
  result stored once.
- **Bad lines are skipped and reported**, never a traceback: each with its line number and
  why (not UTF-8, not JSON, not a result, longer than the limit, an address that is not
  one, or refused by the store: a batch the store refuses is halved down to the results it
  refuses), the first :data:`NAMED` one by one, then their count; the good lines are
  stored, and the command exits with code 2. Nothing is lost: mend the named lines and
  import the whole file again (what is stored already is not stored twice). Refusing
  before writing would need the whole input twice, which standard input cannot give.
- Results without ``asn`` or ``geo`` are enriched (an address the sources cannot look up,
  IPv6, is stored as it is).
- The store failing under us (unreachable, disk full) stops the import with one line that
  says how far it got; importing the file again finishes it.
- On a terminal, progress on stderr every half second (lines, stored, results/s, and how
  far through a regular file); nothing when stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Final

import asyncpg

from brokerscan.cli.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNAVAILABLE, CliError
from brokerscan.cli.text import format_rate, redraw
from brokerscan.model import SCHEMA_VERSION, ScanResult
from brokerscan.oneline import one_line
from brokerscan.stream.deadletters import InvalidResult, parse_line
from enrichment.lookup import Enricher
from enrichment.sources import AddressError
from storage.db import DatabaseError
from storage.rows import as_utc
from storage.store import Store, StoreError

__all__ = ["BATCH", "MAX_LINE", "NAMED", "BadLine", "Batch", "Importer", "ResultReader",
           "input_size", "keyed", "open_input"]

#: Results a write carries: the store writer's default batch (``store-worker
#: --batch-size``), whose rate the import is measured against.
BATCH: Final = 2000
#: The longest line read, in bytes. A result is a few kB (its raw reply and payloads are
#: capped); a megabyte leaves room for a long certificate chain and still bounds memory.
MAX_LINE: Final = 1 << 20
#: Bad lines named one by one on stderr; past that they are only counted.
NAMED: Final = 20
#: What a store raises when it refuses the data of a batch: the batch is narrowed down
#: to the results it refuses, which become bad lines.
REFUSALS: Final = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                   sqlite3.DataError, sqlite3.IntegrityError)
#: What stops an import: the store is unreachable or failed under us.
STOPS: Final = (StoreError, DatabaseError, asyncpg.PostgresError, asyncpg.InterfaceError,
                sqlite3.Error, OSError)
#: How this brokerscan's ``to_json()`` of a result begins.
_OWN: Final = f'{{"schema_version":{SCHEMA_VERSION},"sweep_id":"'.encode()
#: How much of an over-long line is read at a time while skipping it.
_SKIP_CHUNK: Final = 1 << 16


def keyed(result: ScanResult) -> ScanResult:
    """*result* with the store's key complete.

    The stores identify an observation by ``(sweep_started_at, sweep_id, ip, port)``
    (SQLite by ``(sweep_id, ip, port)``) and ignore a write of a key they hold. So a result
    without a sweep gets a key made from the result alone, never from the file around it
    (a digest of the file, or its earliest time, differs between a cut file and the whole,
    and between a file and the same lines on standard input): the UTC day it was observed,
    ``sweep_started_at`` midnight and ``sweep_id`` ``import-<that instant>``. The day,
    because the rollup and PostgreSQL's partitions are per day: one import sweep a day
    reads like a local scan, where a sweep per result would flood the list of sweeps. The
    cost: two sweepless observations of one service on the same UTC day share a key, and
    the one imported first is kept (a sweep keeps one observation per service too).

    A result with ``sweep_started_at`` but no ``sweep_id`` is named after that start; one
    with a ``sweep_id`` but no start is given the midnight before it was observed.
    """
    if result.sweep_id is not None and result.sweep_started_at is not None:
        return result
    started = result.sweep_started_at or as_utc(result.observed_at).replace(
        hour=0, minute=0, second=0, microsecond=0)
    return result.model_copy(update={
        "sweep_started_at": started,
        "sweep_id": result.sweep_id or f"import-{as_utc(started):%Y%m%dT%H%M%SZ}",
    })


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that was not imported: its number (from 1) and why, in one line."""

    number: int
    reason: str


@dataclass(slots=True)
class Batch:
    """What one read of :class:`ResultReader` gave."""

    results: list[ScanResult] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)  # the line of each result
    records: list[str | None] = field(default_factory=list)  # see ResultReader.read
    bad: list[BadLine] = field(default_factory=list)
    last_line: int = 0  # the number of the last line read into this batch
    done: bool = False  # the input ends here


class ResultReader:
    """The results of a JSON-lines stream, a batch at a time, validated, keyed and
    enriched; not thread-safe (one read at a time, in any thread).

    :ivar lines: lines read so far
    :ivar position: bytes read so far
    """

    def __init__(self, stream: BinaryIO, enricher: Enricher, *, batch: int = BATCH,
                 max_line: int = MAX_LINE) -> None:
        self.lines = 0
        self.position = 0
        self._stream = stream
        self._enricher = enricher
        self._batch = batch
        self._max_line = max_line

    def read(self) -> Batch:
        """The next batch: up to *batch* lines that held a result or were bad (blank lines
        are passed over).

        A line stored as it came (its ``record``) when it is this brokerscan's own
        ``to_json()`` of a result that needed no key and no enrichment (what ``scan -o``
        writes): it starts as this schema version's compact form does, and the version
        changes whenever the fields do. That saves serialising every result again, as the
        store writer does for brokerscan's own messages; any other line is serialised.

        :raises OSError: the stream cannot be read
        """
        out = Batch()
        while len(out.results) + len(out.bad) < self._batch:
            line = self._stream.readline(self._max_line + 1)
            if not line:
                out.done = True
                break
            self.lines += 1
            self.position += len(line)
            if len(line) > self._max_line and not line.endswith(b"\n"):
                self._skip_rest()
                out.bad.append(BadLine(self.lines, f"longer than {self._max_line:,} bytes"))
                continue
            if line.isspace():
                continue
            try:
                came = parse_line(line)
            except InvalidResult as exc:
                out.bad.append(BadLine(self.lines, _why(line, exc)))
                continue
            result = keyed(came)
            if result.asn is None or result.geo is None:
                with contextlib.suppress(AddressError):  # IPv6, or not an address at all
                    result = self._enricher.enrich(result)
            out.results.append(result)
            out.numbers.append(self.lines)
            out.records.append(line.rstrip().decode() if result is came
                               and line.startswith(_OWN) else None)
        out.last_line = self.lines
        return out

    def _skip_rest(self) -> None:
        while True:
            piece = self._stream.readline(_SKIP_CHUNK)
            self.position += len(piece)
            if not piece or piece.endswith(b"\n"):
                return


def _why(line: bytes, exc: InvalidResult) -> str:
    """The reason a line is bad; bad UTF-8 named as such (the JSON parser's word for it is
    obscure), with the offset of the first bad byte in the line."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 text (byte {bad.start + 1} of the line)"
    return str(exc)


@dataclass(slots=True)
class Tally:
    """How far an import got."""

    stored: int = 0  # results in committed writes
    new: int = 0  # of those, observations the store did not hold
    bad: int = 0
    through: int = 0  # every line up to this one is committed or bad
    first_bad: list[BadLine] = field(default_factory=list)


class Importer:
    """One import: reads with a :class:`ResultReader`, writes to a store, one write in flight
    while the next batch is read and prepared (see the module docstring)."""

    def __init__(self, store: Store, reader: ResultReader, name: str, *,
                 progress: bool = False, size: int | None = None,
                 err: IO[str] | None = None) -> None:
        self.tally = Tally()
        self._store = store
        self._reader = reader
        self._name = name
        self._progress = progress
        self._size = size  # bytes, for a regular file
        self._err = err or sys.stderr
        self._began = time.monotonic()
        self._drawn = False

    async def run(self) -> None:
        """Import everything.

        :raises CliError: the input or the store failed part-way (what was committed
            stays, and the message says how far it got)
        """
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._tick()) if self._progress else None
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    batch = await asyncio.to_thread(self._reader.read)
                except OSError as exc:
                    raise CliError(f"cannot read {self._name} after line "
                                   f"{self._reader.lines}: {exc.strerror}; {self._so_far()}",
                                   EXIT_BAD_INPUT) from None
                prepared = await self._prepare(batch)
                self._report(batch.bad)
                if writing is not None:
                    await writing
                    writing = None
                if prepared is None:
                    self.tally.through = batch.last_line
                else:
                    writing = loop.create_task(self._write(batch, prepared))
                if batch.done:
                    break
            if writing is not None:
                await writing
                writing = None
        finally:
            if writing is not None:
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing
            if ticker is not None:
                ticker.cancel()
                self._clear()

    async def _write(self, batch: Batch, prepared: object) -> None:
        """Write one batch; a batch the store refuses is narrowed down (:meth:`_isolate`)."""
        try:
            try:
                new, stored = await self._store.write_prepared(prepared), len(batch.results)
            except REFUSALS:
                new, stored = await self._isolate(batch.results, batch.numbers)
        except STOPS as exc:
            raise CliError(f"store: {one_line(str(exc))}; {self._so_far()}",
                           EXIT_UNAVAILABLE) from None
        self.tally.new += new
        self.tally.stored += stored
        self.tally.through = batch.last_line

    async def _isolate(self, results: list[ScanResult], numbers: list[int],
                       ) -> tuple[int, int]:
        """Store what the store takes of *results*, halving them down to the results it
        refuses (a NUL character, which PostgreSQL's text and jsonb cannot hold), which
        become bad lines. :returns: (new, stored)"""
        try:
            return await self._store.write(results), len(results)
        except REFUSALS as exc:
            if len(results) == 1:
                self._report([BadLine(numbers[0],
                                      f"refused by the store: {one_line(str(exc))}")])
                return 0, 0
        half = len(results) // 2
        new_a, stored_a = await self._isolate(results[:half], numbers[:half])
        new_b, stored_b = await self._isolate(results[half:], numbers[half:])
        return new_a + new_b, stored_a + stored_b

    def _so_far(self) -> str:
        t = self.tally
        return (f"{t.stored:,} results stored, every line up to {t.through:,} done; import "
                "the whole input again to finish (nothing is stored twice)")

    async def _prepare(self, batch: Batch) -> object | None:
        """The rows of the batch's results; a result the store refuses (an address that is
        not one) becomes a bad line of its own and the rest go on."""
        if not batch.results:
            return None
        try:
            return await self._store.prepare(batch.results, batch.records)
        except ValueError:
            pass
        good, numbers, records = [], [], []
        for number, result, record in zip(batch.numbers, batch.results, batch.records,
                                          strict=True):
            try:
                await self._store.prepare([result], [record])
            except ValueError as exc:
                batch.bad.append(BadLine(number, f"not storable: {one_line(str(exc))}"))
            else:
                good.append(result)
                numbers.append(number)
                records.append(record)
        batch.bad.sort(key=lambda b: b.number)
        batch.results, batch.numbers, batch.records = good, numbers, records
        return await self._store.prepare(good, records) if good else None

    def _report(self, bad: Sequence[BadLine]) -> None:
        for line in bad:
            self.tally.bad += 1
            if len(self.tally.first_bad) < NAMED:
                self.tally.first_bad.append(line)
                self._clear()
                self._err.write(f"brokerscan: {self._name} line {line.number}: "
                                f"{line.reason}; skipped\n")
                self._err.flush()

    def summary(self, store: str) -> tuple[str, int]:
        """The last line for stderr, and the exit code."""
        t = self.tally
        text = f"stored {t.stored} results in {store} ({t.new} new)"
        if not t.stored and not t.bad:
            return f"{self._name} holds no results: nothing imported", EXIT_OK
        if not t.bad:
            return text, EXIT_OK
        more = f"; {t.bad - NAMED:,} more not named" if t.bad > NAMED else ""
        first = min(b.number for b in t.first_bad)
        return (f"{text}; {t.bad:,} bad lines skipped (first: line {first}"
                f"{more}): mend them and import the whole input again (what is stored "
                "already is not stored twice)", EXIT_BAD_INPUT)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            redraw(self._err, self.progress_line())
            self._drawn = True

    def progress_line(self) -> str:
        """One line of live progress."""
        t, reader = self.tally, self._reader
        elapsed = max(time.monotonic() - self._began, 1e-9)
        far = (f"  {100.0 * reader.position / self._size:5.1f}%"
               if self._size else "")
        return (f"{reader.lines:,} lines{far}  {t.stored:,} stored ({t.new:,} new)  "
                f"{format_rate(t.stored / elapsed) if t.stored else '-'}  bad {t.bad:,}")

    def _clear(self) -> None:
        if self._drawn:
            self._err.write("\r\033[K")
            self._drawn = False


def open_input(path: str) -> tuple[BinaryIO, str]:
    """The input (``-``: standard input) and its name for messages.

    :raises CliError: it cannot be opened
    """
    if path == "-":
        return sys.stdin.buffer, "standard input"
    try:
        return open(path, "rb", buffering=1 << 16), path
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def input_size(stream: BinaryIO) -> int | None:
    """The size of a regular file (None for a pipe or a terminal)."""
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None
