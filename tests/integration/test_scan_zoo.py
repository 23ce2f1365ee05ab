"""``brokerscan scan`` end to end against a zoo of real brokers and hostile servers.

One real command, in a child process, over the addresses of: Mosquitto (anonymous, with a
password file, TLS self-signed, TLS requiring a client certificate), amqtt, the machine's
RabbitMQ and Mosquitto on 127.0.0.1, a second RabbitMQ node with only a TLS listener, and
decoys (HTTP, tarpit, garbage, trickle, close at once, reset at once, SSH on 5672, HTTP in
TLS on 8883, a 2 GB AMQP length field). Every open port must end as the right record
within the timeout; the report must count them the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import servers
from tests.waiting import HANG

pytestmark = pytest.mark.integration

TIMEOUT = 6.0  # --timeout: per target, fall-backs included


def scan(tmp_path, *targets: str, extra: tuple[str, ...] = ()):
    out = tmp_path / "zoo.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "brokerscan.cli", "scan", *targets, "--allow-reserved",
         "-o", str(out), "--format", "json", "--timeout", str(TIMEOUT), "--io-timeout", "2",
         "--connect-timeout", "2", "--progress", "off", *extra],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "BROKERSCAN_SCOPE": "127.0.0.0/8"})
    assert proc.returncode == 0, proc.stderr
    records = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        key = (record["ip"], record["port"])
        assert key not in records, f"two records for {key}"
        records[key] = record
    return json.loads(proc.stdout), records


def test_zoo(tmp_path, mosquitto_anon, mosquitto_password, mosquitto_tls,
             mosquitto_tls_client_cert, amqtt_broker, rabbitmq, rabbitmq_tls, decoys):
    http = decoys.http()
    tarpit = decoys.tarpit()
    garbage = decoys.garbage()
    trickle = decoys.trickle()
    closer = decoys.close_at_once()
    resetter = decoys.reset_at_once()
    ssh = decoys.ssh()
    tls_http = decoys.tls_http()
    huge = decoys.huge_length(prefix=servers.AMQP_HUGE_FRAME)
    empty, _ = servers.allocate("scratch", 1883)  # nothing listens there
    everyone = [mosquitto_anon, mosquitto_password, mosquitto_tls, mosquitto_tls_client_cert,
                amqtt_broker, rabbitmq, rabbitmq_tls, http, tarpit, garbage, trickle, closer,
                resetter, ssh, tls_http, huge]
    assert {s.port for s in everyone} <= {1883, 8883, 5672, 5671}
    report, r = scan(tmp_path, *sorted({s.host for s in everyone} | {empty}))

    def at(server):
        return r[(server.host, server.port)]

    anon = at(mosquitto_anon)
    assert (anon["status"], anon["protocol"], anon["mqtt"]["anonymous"]) == \
        ("success", "mqtt", True)
    assert anon["mqtt"]["protocol_level"] == 5 and anon["mqtt"]["properties"] is not None
    assert anon["raw"]  # the CONNACK bytes are kept

    password = at(mosquitto_password)["mqtt"]
    assert password["anonymous"] is False and password["return_code_name"] == "not-authorized"

    mqtts = at(mosquitto_tls)
    assert mqtts["transport"] == "tls" and mqtts["mqtt"]["anonymous"] is True
    cert = mqtts["tls"]["certificate"]
    assert cert["self_signed"] is True and mqtts["tls"]["trusted"] is False
    assert len(cert["sha256"]) == 64

    wants_cert = at(mosquitto_tls_client_cert)
    assert wants_cert["status"] == "handshake-error"
    assert wants_cert["tls"]["client_certificate_required"] is True
    assert wants_cert["protocol"] is None

    amqtt = at(amqtt_broker)["mqtt"]
    assert amqtt["anonymous"] is True and amqtt["protocol_level"] == 4
    assert 5 in amqtt["refused_levels"] and 4 in amqtt["accepted_levels"]

    rabbit = at(rabbitmq)
    assert rabbit["amqp"]["server_properties"]["product"] == "RabbitMQ"
    assert "PLAIN" in rabbit["amqp"]["mechanisms"]
    rabbit_tls = at(rabbitmq_tls)
    assert rabbit_tls["transport"] == "tls" and rabbit_tls["protocol"] == "amqp"
    assert rabbit_tls["amqp"]["server_properties"]["product"] == "RabbitMQ"
    assert rabbit_tls["tls"]["certificate"]["self_signed"] is False

    assert at(http)["status"] == "protocol-error" and at(http)["protocol"] is None
    assert at(tarpit)["status"] == "io-timeout"
    assert at(garbage)["status"] == "protocol-error"
    assert at(trickle)["status"] in ("protocol-error", "io-timeout")
    # closed before any byte; our CONNECT may then meet an RST, depending on timing
    assert at(closer)["status"] in ("connection-closed", "connection-reset")
    assert at(resetter)["status"] in ("connection-reset", "connection-closed")
    assert at(ssh)["status"] == "protocol-error"
    assert at(ssh)["raw"] and at(ssh)["protocol"] is None
    tls_web = at(tls_http)
    assert tls_web["status"] == "protocol-error" and tls_web["tls"]["handshake_completed"]
    assert at(huge)["status"] == "protocol-error"

    for record in r.values():
        assert record["duration_ms"] < (TIMEOUT + HANG) * 1000, record  # --timeout; a hang
        assert record["raw"] is None or len(record["raw"]) <= 4096 * 4 // 3 + 4
    assert all(ip != empty for ip, _ in r)  # refused ports are counted, not written

    assert report["mqtt"]["anonymous_accepted"] >= 3  # anon, TLS, amqtt (+127.0.0.1)
    assert report["mqtt"]["auth_required"] >= 1
    assert report["mqtt"]["tls_on_8883"] == 1
    assert report["amqp"]["by_port"]["5671/tls"] == 1
    assert report["tls"]["client_certificate_required"] == 1
    assert report["scan"]["probed"] == report["scan"]["targets"]
    assert report["scan"]["by_status"]["connection-refused"] >= 4  # the empty address
