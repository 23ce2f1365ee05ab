"""The Prometheus alert rules and configuration of ``deploy/prometheus``, checked offline
with ``promtool`` (Debian's ``prometheus`` package; ``scripts/bootstrap.sh`` installs it):
the rules and the configuration parse, every alert fires on what it is for and stays quiet
on its look-alike (``rules/tests.yml``), every alert has its test and its runbook entry,
and no rule or scaling trigger leans on ``brokerscan_stream_lag_seconds``, a gauge that
freezes when the stream stalls. A missing promtool fails, it does not skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules"


def promtool() -> str:
    found = shutil.which("promtool", path="/usr/bin:/usr/local/bin:/bin")
    if found is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (or run "
                    "scripts/bootstrap.sh as root); the alert rules cannot be checked")
    return found


def run(*args: str | Path, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def alerts() -> dict[str, str]:
    """Every alert's name -> its expression."""
    doc = yaml.safe_load((RULES / "brokerscan.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_rules_and_config_pass_promtool_check() -> None:
    tool = promtool()
    proc = run(tool, "check", "rules", "brokerscan.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(tool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_pass_their_unit_tests() -> None:
    proc = run(promtool(), "test", "rules", "tests.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit tests are not a rubber stamp: one expectation changed fails them."""
    for name in ("brokerscan.yml", "tests.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    tests = tmp_path / "tests.yml"
    text = tests.read_text()
    assert "summary: Sweep sw-1 has 2 failed shard(s)" in text
    tests.write_text(text.replace("summary: Sweep sw-1 has 2 failed shard(s)",
                                  "summary: Sweep sw-1 has 3 failed shard(s)"))
    proc = run(promtool(), "test", "rules", "tests.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "BrokerscanShardsFailed" in proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_has_a_runbook_entry() -> None:
    tests = yaml.safe_load((RULES / "tests.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for name in alerts():
        assert name in fired, f"{name} has no test where it fires"
        assert re.search(rf"^#+ .*`{name}`", runbook, re.M), \
            f"{name} has no runbook heading in docs/operations.md"


def test_nothing_alerts_or_scales_on_a_gauge_that_freezes() -> None:
    for name, expr in alerts().items():
        assert "stream_lag_seconds" not in expr, name
    keda = ROOT / "deploy" / "k8s" / "keda" / "scaledobjects.yaml"
    for doc in yaml.safe_load_all(keda.read_text()):
        if doc and doc["kind"] == "ScaledObject":
            assert "stream_lag" not in repr(doc["spec"]["triggers"]), doc["metadata"]["name"]
