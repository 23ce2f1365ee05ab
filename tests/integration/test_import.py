"""``brokerscan import`` as a child process, into real stores (SQLite and PostgreSQL):
idempotent per record across a cut file, bad lines skipped and named, memory that does not
grow with the file, progress only on a terminal.

The results come from tests/unit/storage/gen.py (``import_lines``): one loopback address
each, data only (nothing is dialled); every third has no sweep and no enrichment, as an
older tool might write it.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from brokerscan.cli.importer import BATCH, MAX_LINE
from tests.unit.storage.gen import import_lines

pytestmark = pytest.mark.integration

ENV = {**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"}
COMMAND = [sys.executable, "-m", "brokerscan.cli", "import"]


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*COMMAND, *args], input=stdin, capture_output=True, timeout=120,
                          env=ENV)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def expected_key(line: str) -> tuple[str, str, int]:
    """(sweep_id, ip, port) the store should hold for *line*: a sweepless result under the
    UTC day it was observed."""
    record = json.loads(line)
    sweep = record["sweep_id"]
    if sweep is None:
        seen = datetime.fromisoformat(record["observed_at"]).astimezone(UTC)
        sweep = f"import-{seen:%Y%m%d}T000000Z"
    return sweep, record["ip"], record["port"]


async def stored(url: str, *, records: bool = False) -> list[tuple[str, str, int]]:
    """Every observation's key, sorted (duplicates would show); with *records*, check that
    each record is enriched."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute("SELECT sweep_id, ip, port, record FROM observations"
                                ).fetchall()
        finally:
            conn.close()
    else:
        pg = await asyncpg.connect(url)
        try:
            rows = await pg.fetch("SELECT sweep_id, host(ip), port, record::text "
                                  "FROM observations")
        finally:
            await pg.close()
    if records:
        for row in rows:
            record = json.loads(row[3])
            assert record["asn"] is not None and record["geo"] is not None, record
    return sorted((str(s), str(i), int(p)) for s, i, p, _ in rows)


async def test_a_cut_file_then_the_whole_file_stores_every_result_once(
        store_url: str, tmp_path: Path) -> None:
    lines = import_lines(BATCH * 2 + 500)  # three batches
    whole = tmp_path / "whole.jsonl"
    whole.write_text("".join(lines))
    data = whole.read_bytes()
    third = len("".join(lines[:len(lines) // 3]).encode())
    head = tmp_path / "head.jsonl"  # cut between two lines
    head.write_bytes(data[:third])
    mid = tmp_path / "mid.jsonl"  # cut in the middle of a line, two thirds in
    cut_line = 2 * len(lines) // 3
    cut_at = len("".join(lines[:cut_line]).encode()) + 40
    mid.write_bytes(data[:cut_at])

    first = cli(str(head), "--store", store_url)
    assert first.returncode == 0, first.stderr
    assert await stored(store_url) == sorted(map(expected_key, lines[:len(lines) // 3]))

    cut = cli(str(mid), "--store", store_url)
    assert cut.returncode == 2, cut.stderr  # the cut line is a bad line; the rest stored
    assert f"line {cut_line + 1}: invalid result" in cut.stderr, cut.stderr
    assert "Traceback" not in cut.stderr
    assert await stored(store_url) == sorted(map(expected_key, lines[:cut_line]))
    assert f"stored {cut_line} results" in cut.stderr
    assert f"({cut_line - len(lines) // 3} new)" in cut.stderr

    full = cli(str(whole), "--store", store_url)
    assert full.returncode == 0, full.stderr
    assert f"({len(lines) - cut_line} new)" in full.stderr
    assert await stored(store_url) == sorted(map(expected_key, lines))

    again = cli("-", "--store", store_url, stdin=data)  # the same lines, on stdin
    assert again.returncode == 0 and "(0 new)" in again.stderr, again.stderr
    assert await stored(store_url, records=True) == sorted(map(expected_key, lines))


BAD_INPUT = [
    (b"\n", None),  # blank: passed over
    (b'{"ip": "127.0.0.1", \n', "invalid result: "),  # not JSON
    (b'{"ip": "127.0.0.1"}\n', "invalid result: port: Field required"),
    ('{"ip": "127.0.0.1", "caf\u00e9": 1}\n'.encode("latin-1"), "not UTF-8 text (byte 25"),
    (b'{"x": "' + b"a" * (MAX_LINE + 10) + b'"}\n', f"longer than {MAX_LINE:,} bytes"),
    (b"[1, 2]\n", "invalid result: "),
]


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_bad_lines_are_skipped_and_named_with_their_numbers(via: str, tmp_path: Path) -> None:
    good = import_lines(4)
    not_an_address = json.loads(good[3])
    not_an_address["ip"] = "not-an-address"
    body = [good[0].encode()]
    body += [line for line, _ in BAD_INPUT]
    body += [good[1].encode(), (json.dumps(not_an_address) + "\n").encode(),
             good[2].rstrip("\n").encode()]  # the last line without its line break
    data = b"".join(body)
    target = f"sqlite:///{tmp_path}/t.db"
    if via == "file":
        (tmp_path / "bad.jsonl").write_bytes(data)
        proc, name = cli(str(tmp_path / "bad.jsonl"), "--store", target), "bad.jsonl"
    else:
        proc, name = cli("-", "--store", target, stdin=data), "standard input"
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.endswith("; skipped")]
    numbered = [(2 + i, why) for i, (_, why) in enumerate(BAD_INPUT) if why]
    numbered.append((2 + len(BAD_INPUT) + 1, "not storable: "))
    assert len(errors) == len(numbered), proc.stderr
    for error, (number, why) in zip(errors, numbered, strict=True):
        assert f"{name} line {number}: {why}" in error and error.endswith("; skipped"), error
    last = proc.stderr.splitlines()[-1]
    assert "stored 3 results" in last and "(3 new)" in last, last
    assert f"{len(numbered)} bad lines skipped (first: line 3)" in last, last
    assert len(last) < 400


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_an_empty_input_imports_nothing_and_says_so(via: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path}/t.db"
    (tmp_path / "empty.jsonl").write_bytes(b"")
    proc = (cli(str(tmp_path / "empty.jsonl"), "--store", target) if via == "file"
            else cli("-", "--store", target, stdin=b""))
    assert proc.returncode == 0, proc.stderr
    assert "holds no results: nothing imported" in proc.stderr
    assert "Traceback" not in proc.stderr


#: The command, reporting its own peak resident set as it exits: VmHWM belongs to the
#: process's address space since its exec (the rusage of a child also counts what the
#: parent had resident when it forked).
PEAK = ("import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write(next(\n"
        "    line for line in open('/proc/self/status') if line.startswith('VmHWM'))))\n"
        "from brokerscan.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")


def peak_rss_mb(args: list[str], stdin: Path | None) -> float:
    """Run the import; its own peak resident set."""
    with open(stdin or os.devnull, "rb") as source:
        proc = subprocess.run([sys.executable, "-c", PEAK, "import", *args], stdin=source,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak = [line for line in proc.stderr.splitlines() if line.startswith("VmHWM:")]
    return int(peak[-1].split()[1]) / 1024


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    """Not timed: the peak resident set of an import of 15 batches (from stdin) against one
    of a single batch (a file). The import before streaming held every line and its result
    at once: hundreds of MB more for the larger file."""
    lines = import_lines(BATCH * 15)
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text("".join(lines[:BATCH]))
    large.write_text("".join(lines))
    small_mb = peak_rss_mb([str(small), "--store", f"sqlite:///{tmp_path}/s.db"], None)
    large_mb = peak_rss_mb(["-", "--store", f"sqlite:///{tmp_path}/l.db"], large)
    assert large_mb < small_mb + 40, (small_mb, large_mb)
    assert large_mb < 300, large_mb
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] == len(lines)
    conn.close()


def _stalled_import(tmp_path: Path, stderr: int) -> tuple[subprocess.Popen[bytes], list[str]]:
    """An import from a pipe that has had its first 10 lines and waits for the rest."""
    lines = import_lines(50)
    proc = subprocess.Popen([*COMMAND, "-", "--store", f"sqlite:///{tmp_path}/p.db"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                            env=ENV)
    assert proc.stdin is not None
    proc.stdin.write("".join(lines[:10]).encode())
    proc.stdin.flush()
    return proc, lines[10:]


def _finish(proc: subprocess.Popen[bytes], rest: list[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("".join(rest).encode())
    proc.stdin.close()


def test_progress_on_a_terminal_and_none_otherwise(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    proc, rest = _stalled_import(tmp_path, follower)
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 60
    while b"\r10 lines" not in shown and time.monotonic() < deadline:
        if select.select([leader], [], [], 0.2)[0]:  # progress while the input stalls
            shown += os.read(leader, 4096)
    _finish(proc, rest)
    while True:
        try:
            piece = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not piece:
            break
        shown += piece
    os.close(leader)
    assert proc.wait(timeout=60) == 0, shown
    assert b"\r10 lines" in shown and b"stored 50 results" in shown, shown

    quiet, rest = _stalled_import(tmp_path, subprocess.PIPE)
    time.sleep(3)  # the same stall (start-up is about a second): no terminal, no progress
    _finish(quiet, rest)
    assert quiet.stderr is not None
    with quiet.stderr:
        text = quiet.stderr.read()
    assert quiet.wait(timeout=60) == 0, text
    assert b"\r" not in text and b" lines" not in text, text
    assert b"stored 50 results" in text


async def test_a_result_the_store_refuses_is_a_bad_line_and_the_rest_is_stored(
        store_url: str, tmp_path: Path) -> None:
    """A NUL character: SQLite keeps it, PostgreSQL's text and jsonb refuse it, and the
    batch it is in is narrowed down to that one line."""
    lines = import_lines(BATCH + 300)
    poisoned = json.loads(lines[700])
    poisoned["error"] = "a\u0000b"
    lines[700] = json.dumps(poisoned) + "\n"
    path = tmp_path / "nul.jsonl"
    path.write_text("".join(lines))
    proc = cli(str(path), "--store", store_url)
    assert "Traceback" not in proc.stderr
    if store_url.startswith("sqlite"):
        assert proc.returncode == 0, proc.stderr
        assert await stored(store_url) == sorted(map(expected_key, lines))
        return
    assert proc.returncode == 2, proc.stderr
    assert "nul.jsonl line 701: refused by the store: " in proc.stderr, proc.stderr
    assert f"stored {len(lines) - 1} results" in proc.stderr
    kept = lines[:700] + lines[701:]
    assert await stored(store_url) == sorted(map(expected_key, kept))
