"""Protocol depth against real servers (issue 12): MQTT over WebSocket on Mosquitto, amqtt
and RabbitMQ Web MQTT; ``$SYS`` versions; AMQP 1.0 SASL mechanisms on RabbitMQ's plugin
and Qpid Proton; the TLS retry on a port with no default; the broker product of every real
broker, and of none of the decoys (HTTP 404/200 on 9001, a WebSocket echo server, another
subprotocol, an upgrade-then-close proxy, an endless ``$SYS`` stream).

Everything runs on 127.63.x addresses (tests/protoservers.py) through the real engine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokerscan.model import Protocol, ScanResult, Status, Transport
from scheduler.ports import parse_ports
from tests import protoservers
from tests.certs import Pki
from tests.servers import DecoyServer, ServerProcess
from workers.engine import Engine, ScanConfig
from workers.probes.base import ProbeOptions
from workers.transport import Scope

pytestmark = pytest.mark.integration


def scan(host: str, ports: str, probe: str | None = None, **options: object) -> ScanResult:
    """One target through the engine; its one result."""
    config = ScanConfig(connect_timeout=2, io_timeout=2, total_timeout=12,
                        probe=ProbeOptions(**options))  # type: ignore[arg-type]
    results: list[ScanResult] = []
    targets = [(int(ipaddress.IPv4Address(host)), spec) for spec in parse_ports(ports, probe)]
    engine = Engine(config, Scope(["127.0.0.0/8"]))
    asyncio.run(engine.run(targets, results.append))
    assert len(results) == len(targets) == 1
    return results[0]


@pytest.fixture(scope="module")
def mosquitto_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[protoservers.WsBroker]:
    broker = protoservers.start_mosquitto_ws(tmp_path_factory.mktemp("mosquitto-ws"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def amqtt_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[protoservers.WsBroker]:
    broker = protoservers.start_amqtt_ws(tmp_path_factory.mktemp("amqtt-ws"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory, pki: Pki
           ) -> Iterator[protoservers.RabbitNode]:
    node = protoservers.start_rabbitmq_plugins(tmp_path_factory.mktemp("rabbit-plugins"),
                                               pki.server.cert_path, pki.server.key_path)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def proton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = protoservers.start_proton(tmp_path_factory.mktemp("proton"))
    yield server
    server.stop()


@pytest.fixture
def decoy() -> Iterator[list[DecoyServer]]:
    started: list[DecoyServer] = []
    yield started
    for server in started:
        server.stop()


# --------------------------------------------------------------------------- WebSocket


def test_mosquitto_over_websocket_with_its_version(mosquitto_ws):
    result = scan(mosquitto_ws.host, f"{mosquitto_ws.ws_port}/ws", sys_version=True)
    assert (result.status, result.protocol, result.transport) == (
        Status.SUCCESS, Protocol.MQTT, Transport.WS)
    assert result.probes == ["mqtt-ws"]
    ws = result.websocket
    assert ws is not None and (ws.path, ws.subprotocol) == ("/mqtt", "mqtt")
    assert [(t.path, t.status, t.answer) for t in ws.tries] == [("/mqtt", 101, "upgraded")]
    mqtt = result.mqtt
    assert mqtt is not None and mqtt.accepted_levels == [5] and mqtt.anonymous is True
    assert mqtt.sys is not None and mqtt.sys.version == "mosquitto version 2.0.11"
    assert mqtt.sys.answer == "version" and mqtt.sys.suback == 0
    assert mqtt.product is not None
    assert (mqtt.product.name, mqtt.product.version) == ("Mosquitto", "2.0.11")
    assert "mosquitto-sys-version" in (mqtt.product.rule or "")


def test_mosquitto_plain_is_named_without_logging_in_or_sys(mosquitto_ws):
    result = scan(mosquitto_ws.host, f"{mosquitto_ws.port}")
    mqtt = result.mqtt
    assert mqtt is not None and mqtt.sys is None and mqtt.unasked == []
    assert mqtt.product is not None and mqtt.product.name == "Mosquitto"
    assert mqtt.product.rule == "mosquitto-v5-defaults"
    assert "prop.receive_maximum = 20" in mqtt.product.evidence


def test_amqtt_on_the_default_web_port(amqtt_ws):
    assert amqtt_ws.ws_port == 9001
    result = scan(amqtt_ws.host, "9001", mqtt_all_levels=True)
    assert (result.status, result.protocol, result.transport) == (
        Status.SUCCESS, Protocol.MQTT, Transport.WS)
    assert result.probes == ["mqtt-ws"]  # it upgraded: no raw probe was needed
    assert result.websocket is not None
    assert result.websocket.server is not None
    assert result.websocket.server.startswith("Python/")
    mqtt = result.mqtt
    assert mqtt is not None and mqtt.accepted_levels == [4] and mqtt.refused_levels == [5]
    # 3.1 asks for the subprotocol mqttv3.1, which amqtt refuses (400)
    assert [t.subprotocol for t in result.websocket.tries][-1] == "mqttv3.1"
    assert mqtt.product is not None and mqtt.product.name == "amqtt"


def test_amqtt_plain_is_unknown_until_its_sys_version_is_read(amqtt_ws):
    plain = scan(amqtt_ws.host, f"{amqtt_ws.port}/tcp")
    assert plain.mqtt is not None and plain.mqtt.product is not None
    assert plain.mqtt.product.name == "unknown"  # a 3.1.1-only broker like many others
    deep = scan(amqtt_ws.host, f"{amqtt_ws.port}/tcp", sys_version=True)
    assert deep.mqtt is not None and deep.mqtt.sys is not None
    assert deep.mqtt.sys.version == "aMQTT version 0.12.1"
    assert deep.mqtt.product is not None
    assert (deep.mqtt.product.name, deep.mqtt.product.version) == ("amqtt", "0.12.1")


def test_rabbitmq_web_mqtt_after_two_refused_paths(rabbit):
    result = scan(rabbit.host, f"{rabbit.web_mqtt_port}/ws")
    assert (result.status, result.protocol, result.transport) == (
        Status.SUCCESS, Protocol.MQTT, Transport.WS)
    ws = result.websocket
    assert ws is not None and ws.server == "Cowboy" and ws.path == "/ws"
    assert [(t.path, t.status) for t in ws.tries][:3] == [("/mqtt", 404), ("/", 404),
                                                          ("/ws", 101)]
    assert ws.close_code == 1011  # its answer to a 5.0 CONNECT
    mqtt = result.mqtt
    assert mqtt is not None and mqtt.accepted_levels == [4]
    assert mqtt.product is not None and mqtt.product.name == "RabbitMQ"


def test_rabbitmq_plain_mqtt_is_unknown(rabbit):
    result = scan(rabbit.host, f"{rabbit.mqtt_port}/tcp")
    assert result.mqtt is not None and result.mqtt.accepted_levels == [4]
    assert result.mqtt.product is not None and result.mqtt.product.name == "unknown"


# --------------------------------------------------------------------------- AMQP 1.0


def test_rabbitmq_offers_amqp10_mechanisms_only_when_asked(rabbit):
    plain = scan(rabbit.host, f"{rabbit.port}")
    assert plain.amqp is not None and plain.amqp.family == "0-9-1"
    assert plain.amqp.sasl is None
    deep = scan(rabbit.host, f"{rabbit.port}", amqp_versions=("0-9-1", "1.0"))
    assert deep.amqp is not None and deep.amqp.sasl is not None
    sasl = deep.amqp.sasl
    assert (sasl.protocol_header, sasl.mechanisms, sasl.anonymous_offered) == (
        "AMQP 3 1 0 0", ["ANONYMOUS", "PLAIN", "AMQPLAIN"], True)
    assert deep.amqp.mechanisms == ["PLAIN", "AMQPLAIN"]  # 0-9-1's own list is kept


def test_proton_answers_sasl_with_anonymous(proton):
    result = scan(proton.host, f"{proton.port}")
    assert result.amqp is not None and result.amqp.family == "1.0"
    assert result.amqp.sasl is not None
    assert result.amqp.sasl.mechanisms == ["ANONYMOUS"]
    assert result.amqp.sasl.anonymous_offered is True


def test_a_server_without_amqp10_answers_its_header(rabbitmq):
    result = scan(rabbitmq.host, f"{rabbitmq.port}", amqp_versions=("0-9-1", "1.0"))
    assert result.amqp is not None and result.amqp.sasl is not None
    assert result.amqp.sasl.protocol_header == "AMQP 0 0 9 1"
    assert result.amqp.sasl.mechanisms == [] and result.amqp.sasl.anonymous_offered is None


# --------------------------------------------------------------------------- TLS retry


def test_a_tls_alert_on_a_guessed_port_is_retried_inside_tls(rabbit):
    result = scan(rabbit.host, f"{rabbit.tls_port}")
    assert result.tls_retried is True
    assert (result.status, result.protocol, result.transport) == (
        Status.SUCCESS, Protocol.AMQP, Transport.TLS)
    assert result.tls is not None and result.tls.handshake_completed
    chosen = scan(rabbit.host, f"{rabbit.tls_port}/tcp")  # the transport was chosen
    assert chosen.tls_retried is False and chosen.protocol is None


# --------------------------------------------------------------------------- decoys


@pytest.mark.parametrize("status", ["404 Not Found", "200 OK"])
def test_http_on_9001_is_not_mqtt(decoy, status):
    server = protoservers.start_decoy(protoservers.http_answer(status), 9001)
    decoy.append(server)
    result = scan(server.host, "9001")
    assert result.protocol is None and result.status is Status.PROTOCOL_ERROR
    assert result.transport is Transport.TCP
    assert result.probes == ["mqtt-ws"]  # it spoke HTTP: no raw MQTT or AMQP probe
    ws = result.websocket
    assert ws is not None and ws.server == "nginx/1.22.1" and ws.path is None
    code = int(status.split()[0])
    assert [(t.path, t.status) for t in ws.tries] == [("/mqtt", code), ("/", code),
                                                      ("/ws", code)]


@pytest.mark.parametrize(("handler", "answer"), [
    (protoservers.ws_echo("mqtt"), "upgraded"),
    (protoservers.ws_echo(None), "upgraded"),
    (protoservers.ws_echo("graphql-ws"), "bad-upgrade"),
    (protoservers.upgrade_then_close(), "upgraded"),
])
def test_websockets_that_are_not_mqtt(decoy, handler, answer):
    server = protoservers.start_decoy(handler, 9001)
    decoy.append(server)
    result = scan(server.host, "9001/ws")
    assert result.protocol is None and result.mqtt is None
    assert result.status is Status.PROTOCOL_ERROR
    assert result.transport is Transport.WS  # asked for as /ws
    assert result.websocket is not None
    assert result.websocket.tries[0].answer == answer


@pytest.mark.parametrize("over_websocket", [False, True])
def test_an_endless_sys_stream_is_bounded(decoy, over_websocket):
    server = protoservers.start_decoy(protoservers.endless_sys(over_websocket), 1883)
    decoy.append(server)
    started = time.monotonic()
    spec = "1883/ws" if over_websocket else "1883"
    result = scan(server.host, spec, sys_version=True, mqtt_levels=(4,))
    assert time.monotonic() - started < 5
    mqtt = result.mqtt
    assert mqtt is not None and mqtt.anonymous is True
    assert len(mqtt.unasked) == 16 and all(u.topic for u in mqtt.unasked)
    assert mqtt.sys is not None and mqtt.sys.version is None
    assert mqtt.sys.answer in ("capped", "timeout", "no-version")
    assert mqtt.product is not None and mqtt.product.name == "unknown"


def test_every_real_broker_row_is_checked_here():
    # The rows marked tested=true name products whose brokers this module runs.
    from workers.fingerprint import load_rules

    tested = {rule.product for rule in load_rules() if rule.tested}
    assert tested == {"Mosquitto", "amqtt", "RabbitMQ"}
    assert Path(__file__).read_text().count("product.name ==") >= 6
