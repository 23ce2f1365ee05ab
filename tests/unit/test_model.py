"""The result model: the committed schema, round trips, and what it refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from brokerscan.model import (
    SCHEMA_VERSION,
    AmqpResult,
    MqttResult,
    Protocol,
    ScanResult,
    Status,
    Transport,
    result_schema,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "brokerscan" / "result.schema.json"


def test_committed_schema_matches_the_model():
    # A failure here means the model changed: bump SCHEMA_VERSION if the change is not
    # backwards compatible, then regenerate the file with brokerscan.model.result_schema().
    assert SCHEMA_FILE.read_text() == result_schema()


def _result(**extra):
    return ScanResult(ip="127.0.0.1", port=1883, transport=Transport.TCP,
                      observed_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
                      status=Status.SUCCESS, **extra)


def test_json_round_trip_keeps_raw_bytes_and_nested_results():
    result = _result(protocol=Protocol.MQTT, raw=b"\x20\x02\x00\x00\xff",
                     mqtt=MqttResult(protocol_level=4, return_code=0, return_code_name="accepted",
                                     session_present=False, anonymous=True, accepted_levels=[4]),
                     amqp=AmqpResult(family="0-9-1", protocol_header="AMQP 0 0 9 1"))
    line = result.model_dump_json()
    data = json.loads(line)
    assert data["raw"] == "IAIAAP8="  # base64 in JSON
    assert data["schema_version"] == SCHEMA_VERSION
    again = ScanResult.model_validate_json(line)
    assert again == result
    assert again.raw == b"\x20\x02\x00\x00\xff"
    assert again.key == (None, "127.0.0.1", 1883)


@pytest.mark.parametrize("change", [
    {"port": 70000},
    {"status": "kinda-worked"},
    {"schema_version": 4},
    {"transport": "quic"},
    {"unexpected": 1},
])
def test_invalid_records_are_refused(change):
    data = json.loads(_result().model_dump_json())
    data.update(change)
    with pytest.raises(ValidationError):
        ScanResult.model_validate(data)


def test_bad_base64_is_refused():
    data = json.loads(_result().model_dump_json())
    data["raw"] = "not base64!"
    with pytest.raises(ValidationError):
        ScanResult.model_validate(data)


def test_results_are_frozen():
    result = _result()
    with pytest.raises(ValidationError):
        result.port = 1


def test_version_1_records_are_still_valid():
    # Version 2 only added fields and enum values, so a consumer reads both versions.
    data = json.loads(_result().model_dump_json())
    for key in ("websocket", "tls_retried"):
        data.pop(key)
    data["schema_version"] = 1
    data["probes"] = ["mqtt", "amqp"]
    old = ScanResult.model_validate(data)
    assert old.schema_version == 1 and old.websocket is None


def test_version_2_records_are_still_valid():
    # Version 3 only added discovered_by, so a version-2 record reads as one without it.
    data = json.loads(_result().model_dump_json())
    data.pop("discovered_by")
    data["schema_version"] = 2
    old = ScanResult.model_validate(data)
    assert old.schema_version == 2 and old.discovered_by is None
    found = _result().model_copy(update={"discovered_by": "zmap"})
    assert ScanResult.model_validate_json(found.model_dump_json()).discovered_by == "zmap"


def test_websocket_transports_and_probe_names():
    result = _result(probes=["mqtt-ws", "mqtt"]).model_copy(
        update={"transport": Transport.WSS})
    assert json.loads(result.model_dump_json())["transport"] == "wss"
    assert ScanResult.model_validate_json(result.model_dump_json()) == result
