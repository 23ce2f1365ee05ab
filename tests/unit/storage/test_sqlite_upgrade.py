"""The embedded store's schema steps when several processes open one new file at once (a
scheduler, a server and the workers of a one-machine fleet do)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

from storage.sqliteschema import STEPS, upgrade, version


def _open(path: str, start: multiprocessing.synchronize.Barrier,
          done: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    start.wait()
    try:
        done.put(("ok", upgrade(conn)))
    except Exception as exc:  # what the test reports: the process's own error
        done.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def test_processes_opening_one_new_file_at_once_apply_each_step_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):  # each round a new file: the race has several chances
        path = str(tmp_path / f"store{attempt}.db")
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
        start = context.Barrier(6)
        done = context.Queue()
        procs = [context.Process(target=_open, args=(path, start, done)) for _ in range(6)]
        for proc in procs:
            proc.start()
        outcomes = [done.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert [o for o in outcomes if o[0] == "error"] == []
        applied = sorted(step for _, steps in outcomes for step in steps)
        assert applied == list(range(1, len(STEPS) + 1))  # every step by exactly one
        conn = sqlite3.connect(path)
        assert version(conn) == len(STEPS)
        conn.close()
