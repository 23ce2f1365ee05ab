"""``brokerscan search|report|diff|import`` as child processes, on stores filled by real
scans of a small loopback fleet (Mosquitto brokers started here, the machine's RabbitMQ),
in the embedded store and in PostgreSQL.

The diff scenario: between two scans one broker is stopped, one is started and one is
reconfigured (from password-only to anonymous access).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import servers

pytestmark = pytest.mark.integration

ENV = {**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"}


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brokerscan.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=env or ENV)


def ok(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, **kw)  # type: ignore[arg-type]
    assert proc.returncode == 0, f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def scan(store: str, targets: list[str], output: Path | None = None) -> str:
    """Scan *targets* on 1883 into *store*; the scan's id."""
    extra = ["-o", str(output)] if output else []
    proc = ok("scan", *targets, "-p", "1883", "--allow-reserved", "--progress", "off",
              "--connect-timeout", "1", "--io-timeout", "2", "--timeout", "4",
              "--store", store, *extra)
    match = re.search(r"scan (scan-[0-9T]+-[0-9a-f]+)", proc.stderr)
    assert match, proc.stderr
    return match.group(1)


@dataclass
class Fleet:
    """Three Mosquitto brokers on their own addresses, changed between two scans."""

    workdir: Path
    hosts: list[str]

    def start(self, index: int, *, anonymous: bool) -> servers.MosquittoServer:
        users = None if anonymous else {"brokerscan": "pw"}
        host = self.hosts[index]
        return servers.start_mosquitto(self.workdir / f"m{index}-{anonymous}", host, 1883,
                                       users=users)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    hosts = [servers.allocate("scratch", 1883)[0] for _ in range(3)]
    yield Fleet(tmp_path, hosts)


async def test_search_report_and_diff_over_two_real_scans(fleet: Fleet, store_url: str,
                                                          tmp_path: Path) -> None:
    stopped = fleet.start(0, anonymous=True)
    reconfigured = fleet.start(1, anonymous=False)
    try:
        first = scan(store_url, fleet.hosts, tmp_path / "first.jsonl")
    finally:
        stopped.stop()
        reconfigured.stop()
    again = fleet.start(1, anonymous=True)
    started = fleet.start(2, anonymous=True)
    try:
        second = scan(store_url, fleet.hosts)
    finally:
        again.stop()
        started.stop()

    diff = json.loads(ok("diff", first, second, "--format", "json", "--store", store_url).stdout)
    assert diff["new"] == [{"ip": fleet.hosts[2], "port": 1883}]
    assert diff["gone"] == [{"ip": fleet.hosts[0], "port": 1883}]
    assert diff["changed"] == [{"ip": fleet.hosts[1], "port": 1883,
                                "changes": ["anonymous_granted"]}]
    assert diff["counts"]["anonymous_granted"] == 1
    text = ok("diff", first, second, "--store", store_url).stdout
    assert "newly exposed        1" in text and f"{fleet.hosts[1]}:1883  anonymous_granted" in text
    only_anonymous = json.loads(ok("diff", first, second, "anonymous:true", "--format", "json",
                                   "--store", store_url).stdout)
    assert only_anonymous["counts"]["changed"] == 1  # anonymous on one side is enough

    # The current view: the stopped broker keeps its last observation (gone only in diff).
    hits = ok("search", "protocol:mqtt", "--format", "jsonl", "--all", "--store", store_url)
    current = {json.loads(line)["ip"]: json.loads(line) for line in hits.stdout.splitlines()}
    assert set(current) == set(fleet.hosts)
    assert current[fleet.hosts[1]]["mqtt"]["anonymous"] is True
    # CSV: everything (the export path) and one page (decoded hits) write the same cells
    everything = ok("search", "protocol:mqtt", "--format", "csv", "--all", "--store",
                    store_url).stdout
    page = ok("search", "protocol:mqtt", "--format", "csv", "--limit", "1000", "--store",
              store_url).stdout
    assert everything == page
    rows = list(csv.DictReader(everything.splitlines()))
    assert {r["ip"]: r["anonymous"] for r in rows}[fleet.hosts[1]] == "true"
    assert {r["ip"] for r in rows} == set(fleet.hosts)
    count = json.loads(ok("search", "mqtt.anonymous:true", "--count", "--format", "json",
                          "--store", store_url).stdout)
    assert count["total"] == 3
    in_first = json.loads(ok("search", "mqtt.anonymous:true", "--count", "--format", "json",
                             "--sweep", first, "--store", store_url).stdout)
    assert in_first["total"] == 1

    report = json.loads(ok("report", "--format", "json", "--sweep", first,
                           "--store", store_url).stdout)
    assert report["mqtt"]["servers"] == 2 and report["mqtt"]["auth_required"] == 1
    shown = ok("report", "--store", store_url)
    assert "MQTT servers                  3" in shown.stdout
    assert "read " in shown.stderr


async def test_import_is_idempotent_and_enriches(fleet: Fleet, tmp_path: Path) -> None:
    broker = fleet.start(0, anonymous=True)
    try:
        results = tmp_path / "scan.jsonl"
        scan(f"sqlite:///{tmp_path}/scanned.db", [fleet.hosts[0]], results)
    finally:
        broker.stop()
    bare = tmp_path / "bare.jsonl"  # as an older tool might write: no sweep, no enrichment
    records = [json.loads(line) for line in results.read_text().splitlines()]
    sweep_id = records[0]["sweep_id"]
    for record in records:
        record.update(sweep_id=None, sweep_started_at=None, asn=None, geo=None)
    bare.write_text("".join(json.dumps(r) + "\n" for r in records))
    target = f"sqlite:///{tmp_path}/imported.db"
    for path in (results, bare):
        first = ok("import", str(path), "--store", target)
        assert f"stored {len(records)} results in" in first.stderr
        assert f"({len(records)} new)" in first.stderr
        again = ok("import", str(path), "--store", target)
        assert "(0 new)" in again.stderr
    hits = ok("search", "", "--format", "jsonl", "--all", "--store", target).stdout
    assert all(json.loads(line)["asn"]["reserved"] for line in hits.splitlines())
    count = json.loads(ok("search", "", "--count", "--format", "json", "--sweep",
                          sweep_id, "--store", target).stdout)
    assert count["total"] == len(records)
    total = json.loads(ok("search", "", "--count", "--format", "json", "--store",
                          target).stdout)
    assert total["total"] == len(records)  # the same services under two sweeps


@pytest.mark.parametrize(("args", "needle", "caret"), [
    (["search", "prot:mqtt AND port:1883"], "column 1: unknown field 'prot'", 0),
    (["search", "port:1883 AND (tls:true"], "column 24: the query ends too early", 23),
    (["search", "port:abc"], "port: expected a whole number", 5),
    (["search", "port:[1 TO"], "ends too early", 10),
    (["search", "", "--facets", "nope:3"], "facets: column 1: unknown field 'nope'", 0),
    (["search", "", "--facets", "country:0"], "sizes go from 1 to", 0),
    (["search", "", "--limit", "5000"], "at most 1000", None),
    (["search", "", "--cursor", "garbage"], "invalid cursor", None),
    (["search", "", "--at", "yesterday"], "not a day", None),
    (["report", "--sweep", "sw-nope"], "no sweep 'sw-nope'", None),
    (["diff", "sw-a", "sw-b"], "no sweep 'sw-a'", None),
    (["import", "/nonexistent.jsonl"], "cannot read /nonexistent.jsonl", None),
    (["lookup", "AS36375"], "brokerscan search 'asn:36375'", None),
    (["lookup", "country:US"], "brokerscan search 'country:US'", None),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str,
                                          caret: int | None) -> None:
    env = {**ENV, "BROKERSCAN_STORE_URL": f"sqlite:///{tmp_path}/empty.db"}
    proc = cli(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("brokerscan: error: ") or lines[0].startswith("usage:") is False
    assert needle in lines[0], lines
    if caret is not None:  # the query, and a caret under the column
        assert len(lines) == 3 and lines[2].index("^") - 4 == caret, lines
    else:
        assert len([line for line in lines if "error" in line]) == 1
    assert "Traceback" not in proc.stderr


def test_import_names_a_bad_line_and_skips_it(tmp_path: Path) -> None:
    """More bad input in tests/integration/test_import.py."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ip": "127.0.0.1"}\n')
    target = f"sqlite:///{tmp_path}/t.db"
    proc = cli("import", str(bad), "--store", target)
    assert proc.returncode == 2
    assert "bad.jsonl line 1: invalid result: port: Field required (+" in proc.stderr
    assert "stored 0 results" in proc.stderr and "1 bad lines skipped" in proc.stderr


def test_a_scan_says_where_it_stored_and_ignores_the_fleet_database(tmp_path: Path) -> None:
    """BROKERSCAN_DATABASE_URL belongs to a fleet: a local scan still uses the embedded
    store unless --store or BROKERSCAN_STORE_URL names another, and says which."""
    env = {**ENV, "BROKERSCAN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    env.pop("BROKERSCAN_STORE_URL", None)
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "scan", "127.0.0.1",
                           "-p", "1883", "--allow-reserved", "--progress", "off"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"stored 1 results in sqlite:///{tmp_path}/brokerscan.db" in proc.stderr
    assert (tmp_path / "brokerscan.db").exists()
