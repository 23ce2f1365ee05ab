"""``brokerscan lookup`` as a child process: text, JSON, bad input. Offline lookups only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def module() -> str:
    return "brokerscan.cli"


def lookup(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, "lookup", *args],
                          capture_output=True, text=True, timeout=60)


def test_text(module: str) -> None:
    proc = lookup(module, "8.8.8.8", "193.0.6.139", "192.168.0.1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    assert "AS15169 Google LLC" in lines[0] and "  US  " in lines[0]
    assert "AS3333" in lines[1] and "NL" in lines[1]
    assert "reserved (192.168.0.0/16)" in lines[2]
    assert "[ip-location-db asn+dbip-country, 2026-06-17]" in lines[0]


def test_json(module: str) -> None:
    proc = lookup(module, "--format", "json", "1.1.1.1", "9.9.9.9")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["asn"]["number"] for r in records] == [13335, 19281]
    assert [r["geo"]["country"] for r in records] == ["AU", "US"]
    assert all(r["asn"]["source"] and r["geo"]["source_date"] for r in records)


def test_bad_address_exits_2_with_one_line(module: str) -> None:
    proc = lookup(module, "8.8.8.8", "300.1.2.3")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'300.1.2.3' is not an IPv4 address" in lines[0]
    assert "Traceback" not in proc.stderr
