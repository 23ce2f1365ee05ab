"""``brokerscan scan`` writes enriched results to a store through the same interface the
distributed storage writer uses: the embedded SQLite file, or PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brokerscan.model import ScanResult
from storage.store import open_store

pytestmark = pytest.mark.integration


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerscan.cli", "scan", "127.0.0.1",
                           "--allow-reserved", "--format", "json", "--progress", "off", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})


async def check_store(url: str, report: dict[str, object]) -> None:
    store = await open_store(url)
    try:
        counted = await store.count("", facets=[("protocol", 5)])
        by_protocol = dict(counted.facets["protocol"])
        mqtt = report["mqtt"]
        amqp = report["amqp"]
        assert isinstance(mqtt, dict) and isinstance(amqp, dict)
        assert by_protocol.get("mqtt", 0) == mqtt["servers"] >= 1
        assert by_protocol.get("amqp", 0) == amqp["services"] >= 1
        hosts = [ScanResult.model_validate_json(h.record)
                 for h in (await store.search("protocol:mqtt")).hits]
        assert hosts and all(h.ip == "127.0.0.1" for h in hosts)
        assert all(h.asn is not None and h.asn.reserved for h in hosts)  # enriched: loopback
        assert all(h.sweep_id and h.sweep_id.startswith("scan-") for h in hosts)
    finally:
        await store.close()


async def test_scan_into_the_embedded_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    proc = scan("--store", url)
    assert proc.returncode == 0, proc.stderr
    await check_store(url, json.loads(proc.stdout))
    again = scan("--store", url)  # a second scan is a second sweep: new observations
    assert again.returncode == 0 and "new observations" in again.stderr


async def test_scan_into_postgresql(migrated_url):
    proc = scan("--store", migrated_url)
    assert proc.returncode == 0, proc.stderr
    await check_store(migrated_url, json.loads(proc.stdout))


@pytest.mark.parametrize(("store", "needle"), [
    ("mongodb://127.0.0.1/x", "mongodb"),
    ("postgresql://postgres@127.0.0.1:1/x", "127.0.0.1:1"),
])
def test_bad_store_is_one_line(store, needle):
    proc = scan("--store", store)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def _scan_on_tmpfs(tmp_path: Path, size_kib: int, targets: str, output: Path,
                   *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``brokerscan scan`` storing on a tmpfs of *size_kib* mounted in a private mount
    namespace (needs root); returns the process, with its one stderr line checked, and
    the mount."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test needs root and unshare(1) to mount a small tmpfs privately")
    mount = tmp_path / "small"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {mount} && exec {sys.executable} "
              f"-m brokerscan.cli scan {targets} --ports 1883 --allow-reserved {' '.join(extra)} "
              f"--progress off --connect-timeout 0.5 --store sqlite:///{mount}/store.db "
              f"-o {output}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, mount


def test_a_disk_too_full_for_the_schema_says_so(tmp_path):
    """A file system with no room for the embedded store's schema (a 64 KiB tmpfs): the
    one line names the disk, not SQLite's own rollback of the failed step."""
    proc, mount = _scan_on_tmpfs(tmp_path, 64, "127.66.4.0/30", tmp_path / "out.jsonl")
    assert proc.returncode != 0
    assert proc.stderr == (f"brokerscan: error: store: cannot open SQLite store "
                           f"{mount}/store.db: database or disk is full\n"), proc.stderr


def test_a_full_disk_is_one_line_and_the_results_are_in_the_output(tmp_path):
    """The embedded store on a real, full file system (a 320 KiB tmpfs in a private mount
    namespace): one line naming the store and saying how much was stored, exit 1, and
    every result still in the ``-o`` file."""
    output = tmp_path / "results.jsonl"
    proc, mount = _scan_on_tmpfs(tmp_path, 320, "127.66.0.0/22", output, "--all")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"brokerscan: error: store: cannot write to SQLite store "
                           f"{mount}/store.db: database or disk is full; ")
    assert line.endswith(f"; all 1024 are in {output}")
    assert len(output.read_text().splitlines()) == 1024  # one record per probed port (--all)
