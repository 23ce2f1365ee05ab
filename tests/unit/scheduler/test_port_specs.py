"""Port lists: names, transports, probes, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.ports import DEFAULT_PORTS, PROBE_NAMES, PortError, PortSpec, parse_ports


def test_default_ports() -> None:
    assert parse_ports(DEFAULT_PORTS) == [
        PortSpec(1883, False, ("mqtt",), "1883/mqtt"),
        PortSpec(8883, True, ("mqtt",), "8883/mqtts"),
        PortSpec(5672, False, ("amqp",), "5672/amqp"),
        PortSpec(5671, True, ("amqp",), "5671/amqps"),
    ]
    assert parse_ports("MQTT, mqtts ,Amqp,AMQPS") == parse_ports(DEFAULT_PORTS)


def test_transport_suffixes_and_other_ports() -> None:
    specs = parse_ports("8883/tcp,1883/TLS,9000,9002/tls,amqps/tcp,8883")
    assert [(s.port, s.tls, s.probes, s.name) for s in specs] == [
        (8883, False, ("mqtt",), "8883/mqtt"),
        (1883, True, ("mqtt",), "1883/mqtts"),
        (9000, False, ("mqtt", "amqp"), "9000/tcp"),
        (9002, True, ("mqtt", "amqp"), "9002/tls"),
        (5671, False, ("amqp",), "5671/amqp"),
        (8883, True, ("mqtt",), "8883/mqtts"),  # same port, other transport: allowed
    ]


def test_probe_overrides_every_port() -> None:
    specs = parse_ports("1883,5672,9000/tls", probe="amqp")
    assert [(s.probes, s.name) for s in specs] == [
        (("amqp",), "1883/amqp"), (("amqp",), "5672/amqp"), (("amqp",), "9000/amqps")]
    assert parse_ports("9000", probe="mqtt")[0].probes == ("mqtt",)


def test_portspec_is_frozen_and_hashable() -> None:
    spec = parse_ports("1883")[0]
    with pytest.raises(AttributeError):
        spec.port = 1  # type: ignore[misc]
    assert {spec: 1}[PortSpec(1883, False, ("mqtt",), "1883/mqtt")] == 1


@pytest.mark.parametrize(("text", "probe", "message"), [
    ("mqqt", None, "bad port 'mqqt': unknown port name 'mqqt' (did you mean 'mqtt'?)"),
    ("http", None, "bad port 'http': unknown port name 'http' (use a number or mqtt, mqtts, "
                   "amqp, amqps)"),
    ("0", None, "bad port '0': port 0 out of range (1-65535)"),
    ("65536", None, "bad port '65536': port 65536 out of range (1-65535)"),
    ("1883,,5672", None, "empty item in port list '1883,,5672'"),
    ("1883,", None, "empty item in port list '1883,'"),
    ("", None, "no ports given"),
    ("  ", None, "no ports given"),
    ("1883/ssl", None, "bad port '1883/ssl': unknown suffix 'ssl' (did you mean 'wss'?)"),
    ("1883/tsl", None, "bad port '1883/tsl': unknown suffix 'tsl' (did you mean 'tls'?)"),
    ("/tls", None, "bad port '/tls': missing port before '/'"),
    ("1883,mqtt", None, "port 1883/tcp listed twice in '1883,mqtt'"),
    ("8883,mqtts/tls", None, "port 8883/tls listed twice in '8883,mqtts/tls'"),
    ("1883", "http", "unknown probe 'http' (expected 'mqtt', 'amqp' or 'mqtt-ws')"),
    ("1883", "mqt", "unknown probe 'mqt' (did you mean 'mqtt'?)"),
    ("-1", None, "bad port '-1': unknown port name '-1' (use a number or mqtt, mqtts, amqp, "
                 "amqps)"),
])
def test_errors(text: str, probe: str | None, message: str) -> None:
    with pytest.raises(PortError) as info:
        parse_ports(text, probe)
    assert str(info.value) == message


@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=6)))
def test_fuzz_raises_only_port_error(text: str, probe: str | None) -> None:
    try:
        specs = parse_ports(text, probe)
    except PortError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert specs
        assert len({(s.port, s.tls) for s in specs}) == len(specs)
        for spec in specs:
            assert 1 <= spec.port <= 65535
            assert spec.probes and set(spec.probes) <= set(PROBE_NAMES)


@given(st.lists(st.sampled_from(["1883", "8883", "5672", "5671", "9000", "mqtt", "amqps",
                                 "/tls", "/tcp", ",", " ", "x", "0"]), max_size=10))
def test_fuzz_near_valid(tokens: list[str]) -> None:
    try:
        parse_ports("".join(tokens))
    except PortError as exc:
        assert "\n" not in str(exc)


def test_huge_number_is_a_port_error() -> None:
    with pytest.raises(PortError, match="out of range"):
        parse_ports("9" * 5000)


def test_websocket_suffixes_web_ports_and_tls_retry() -> None:
    specs = {s.name: s for s in parse_ports("9001/ws,443/wss,9001,80,443,9000,1883")}
    assert (specs["9001/ws"].probes, specs["9001/ws"].tls, specs["9001/ws"].websocket) == (
        ("mqtt-ws",), False, True)
    assert (specs["443/wss"].probes, specs["443/wss"].tls) == (("mqtt-ws",), True)
    assert specs["9001/tcp"].probes == ("mqtt-ws", "mqtt", "amqp")
    assert specs["443/tls"].probes == ("mqtt-ws", "mqtt", "amqp")  # 443 is TLS by default
    assert specs["80/tcp"].tls_retry and specs["9001/tcp"].tls_retry
    assert not specs["1883/mqtt"].tls_retry and not specs["443/tls"].tls_retry
    assert not parse_ports("9000/tcp")[0].tls_retry  # the transport was chosen
    assert [s.name for s in parse_ports("9000,8883", probe="mqtt-ws")] == ["9000/ws", "8883/wss"]
    with pytest.raises(PortError, match="9001/ws listed twice"):
        parse_ports("9001/ws,9001/ws")
