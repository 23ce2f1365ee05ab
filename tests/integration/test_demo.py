"""``brokerscan demo`` end to end: it starts its brokers, scans them and reports them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_demo_finds_every_demo_broker(tmp_path):
    out = tmp_path / "demo.jsonl"
    proc = subprocess.run([sys.executable, "-m", "brokerscan.cli", "demo", "--no-serve",
                           "--format", "json", "-o", str(out)], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    records = {(r["ip"], r["port"]): r for r in map(json.loads, out.read_text().splitlines())}

    anon = records[("127.77.0.1", 1883)]
    assert anon["protocol"] == "mqtt" and anon["mqtt"]["anonymous"] is True
    auth = records[("127.77.0.2", 1883)]
    assert auth["mqtt"]["anonymous"] is False
    assert auth["mqtt"]["return_code_name"] == "not-authorized"
    mqtts = records[("127.77.0.3", 8883)]
    assert mqtts["transport"] == "tls" and mqtts["protocol"] == "mqtt"
    assert mqtts["tls"]["certificate"]["self_signed"] is True
    amqp = records[("127.77.0.4", 5672)]
    assert amqp["amqp"]["server_properties"]["product"] == "brokerscan-demo"
    amqps = records[("127.77.0.5", 5671)]
    assert amqps["protocol"] == "amqp" and amqps["tls"]["handshake_completed"] is True
    assert records[("127.77.0.6", 1883)]["status"] == "protocol-error"
    assert records[("127.77.0.7", 5672)]["amqp"]["family"] == "1.0-sasl"

    demo_only = [r for (ip, _), r in records.items() if ip.startswith("127.77.")]
    assert all(r["status"] in ("success", "protocol-error") for r in demo_only), demo_only
    assert report["mqtt"]["servers"] >= 3
    assert report["mqtt"]["tls_on_8883"] >= 1
    assert report["mqtt"]["anonymous_accepted"] >= 2
    assert report["amqp"]["services"] >= 3
    assert report["tls"]["self_signed"] >= 2
    assert report["scan"]["probed"] == report["scan"]["targets"]


def test_demo_serves_its_results_on_the_dashboard_until_interrupted(tmp_path):
    """Without --no-serve the demo ends by serving the dashboard on its results (here on
    a free port) until Ctrl-C."""
    log = tmp_path / "demo.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "brokerscan.cli", "demo", "--port", "0",
                                 "--format", "json"], stdout=subprocess.DEVNULL, stderr=sink,
                                env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"serving (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = match.group(1)
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and "/assets/js/overview.js" in page.text
        report = httpx.get(f"{url}/api/v1/report", timeout=10).json()  # no token: --no-auth
        assert report["mqtt"]["servers"] >= 3 and report["amqp"]["services"] >= 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()  # interrupted, as any command
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text() and "interrupted" in log.read_text()
