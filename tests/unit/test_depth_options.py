"""The protocol-depth options (``--sys-version``, ``--amqp-versions``, ``--ws-paths``) on
``scan`` and ``sweep start``, and what the report makes of the new fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from brokerscan.cli.main import build_parser
from brokerscan.cli.scan import scan_config
from brokerscan.cli.sweepspec import sweep_spec
from brokerscan.model import (
    AmqpResult,
    AmqpSasl,
    MqttProduct,
    MqttResult,
    Protocol,
    ScanResult,
    Status,
    Transport,
    WebSocketInfo,
    WebSocketTry,
)
from brokerscan.report import Report
from brokerscan.settings import Settings
from scheduler.sweeps import SweepSpec


def test_scan_options_reach_the_probes() -> None:
    args = build_parser().parse_args(
        ["scan", "127.0.0.1", "--sys-version", "--amqp-versions", "1.0",
         "--ws-paths", "/mqtt,/ws"])
    probe = scan_config(args, Settings()).probe
    assert probe.sys_version is True
    assert probe.amqp_versions == ("0-9-1", "1.0")  # 0-9-1 is always asked
    assert probe.ws_paths == ("/mqtt", "/ws")
    default = scan_config(build_parser().parse_args(["scan", "127.0.0.1"]), Settings()).probe
    assert (default.sys_version, default.amqp_versions) == (False, ("0-9-1",))


def test_sweep_start_records_them_in_the_spec() -> None:
    args = build_parser().parse_args(
        ["sweep", "start", "127.0.0.1", "--allow-reserved", "--sys-version",
         "--amqp-versions", "0-9-1,1.0"])
    spec = sweep_spec(args, Settings())
    assert spec.sys_version is True and spec.amqp_versions == ("0-9-1", "1.0")
    again = SweepSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert SweepSpec(targets=["127.0.0.1"]).sys_version is False  # off by default


@pytest.mark.parametrize("argv", [
    ["--amqp-versions", "0-10"], ["--ws-paths", "mqtt"], ["--ws-paths", ",".join("/" * 9)],
    ["--probe", "http"],
])
def test_bad_values_are_one_line_and_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["scan", "127.0.0.1", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1


def _result(**fields: object) -> ScanResult:
    base = ScanResult(ip="127.0.0.1", port=9001, transport=Transport.TCP,
                      observed_at=datetime(2026, 12, 3, tzinfo=UTC), status=Status.SUCCESS)
    return base.model_copy(update=fields)


def test_the_report_counts_products_websockets_and_mechanisms() -> None:
    report = Report()
    mqtt = MqttResult(protocol_level=5, return_code=0, return_code_name="accepted",
                      session_present=False, anonymous=True, accepted_levels=[5],
                      product=MqttProduct(name="Mosquitto", version="2.0.11"))
    ws = WebSocketInfo(tries=[WebSocketTry(path="/mqtt", subprotocol="mqtt", status=101,
                                           answer="upgraded")], path="/mqtt")
    report.add(_result(protocol=Protocol.MQTT, mqtt=mqtt, websocket=ws).model_copy(
        update={"transport": Transport.WS}))
    report.add(_result(protocol=Protocol.AMQP, amqp=AmqpResult(
        family="1.0", sasl=AmqpSasl(mechanisms=["ANONYMOUS"], anonymous_offered=True))))
    http = WebSocketInfo(server="nginx", tries=[
        WebSocketTry(path="/mqtt", subprotocol="mqtt", status=404, answer="refused")])
    report.add(_result(status=Status.PROTOCOL_ERROR, websocket=http))
    data = report.as_dict()
    assert data["mqtt"]["by_product"] == {"Mosquitto 2.0.11": 1}
    assert data["mqtt"]["websocket_endpoints"] == {"ws /mqtt": 1}
    assert data["amqp"]["amqp10_sasl_mechanisms"] == {"ANONYMOUS": 1}
    assert data["amqp"]["amqp10_anonymous_offered"] == 1
    assert data["websocket"] == {"http_without_mqtt": 1, "by_server": {"nginx": 1}}
    text = report.render()
    assert "Mosquitto 2.0.11" in text and "ws /mqtt" in text and "nginx" in text
