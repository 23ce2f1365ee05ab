"""A test needs only the server programs it starts: with Mosquitto hidden, a PostgreSQL-only
test passes, and the tests that start Mosquitto (through a conftest fixture, a module's own
fixture, or a helper inside the test) fail, never skip, with one line naming it.

pytest runs in a subprocess with ``BROKERSCAN_TEST_PROGRAM_PATH`` set to an empty
directory (tests/servers.py searches only there), on four existing tests; a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import servers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POSTGRESQL_ONLY = "tests/integration/test_migrate.py::test_fresh_database_is_created_and_dropped"
NEED_MOSQUITTO = [
    "tests/integration/test_servers.py::test_mosquitto_anonymous_accepts_connect",  # conftest
    "tests/integration/test_mqtt_probe.py::test_mosquitto_anonymous_5",  # module fixture
    "tests/integration/test_tls.py::test_mosquitto_tls_listener",  # started inside the test
]


def test_a_missing_program_fails_only_the_tests_that_start_it(tmp_path: Path) -> None:
    empty = tmp_path / "no-programs"
    empty.mkdir()
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", POSTGRESQL_ONLY, *NEED_MOSQUITTO],
        cwd=ROOT, env={**os.environ, servers.PROGRAM_PATH: str(empty)},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # tests failed (not 0, not 5)
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
        kind = problems[0].tag if problems else "passed"
        text = problems[0].get("message", "") + (problems[0].text or "") if problems else ""
        outcomes[name] = (kind, text)
    assert outcomes[POSTGRESQL_ONLY] == ("passed", "")
    for node in NEED_MOSQUITTO:
        kind, text = outcomes[node]
        assert kind in ("failure", "error"), (node, kind)  # failed, never skipped
        assert "this test needs mosquitto, which is not installed" in text, (node, text)
        assert "Traceback" not in text, text
    assert "skipped" not in proc.stdout
