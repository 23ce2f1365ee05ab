"""Unit tests of the MQTT codec: exact bytes, recorded replies, prefixes, fuzzing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerscan.model import MqttProperties
from workers.protocols.base import NeedData, ProtocolError
from workers.protocols.mqtt import (
    REASON_CODES_5,
    RETURN_CODES_3,
    ConnAck,
    Disconnect,
    OtherPacket,
    SubAck,
    build_connect,
    build_disconnect,
    build_subscribe,
    build_unsubscribe,
    decode_publish,
    decode_suback,
    is_anonymous,
    is_level_refused,
    parse_packet,
    return_code_name,
)

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "mqtt"
MQTT_FIXTURES = sorted(p for p in FIXTURES.glob("*.bin")
                       if p.stat().st_size and not p.name.startswith("rabbitmq"))


def _level(path: Path) -> int:
    level = int(path.name.split("-connack-")[1].split("-")[0])
    return 5 if level == 6 else level  # the level-6 CONNECT was a patched 5.0 one


# -- building ----------------------------------------------------------------------------


def test_connect_311_matches_the_spec_byte_by_byte():
    assert build_connect(4, "MQTTClient") == bytes([
        0x10, 22,  # CONNECT, flags 0; remaining length 22
        0x00, 0x04, *b"MQTT",  # protocol name
        0x04,  # level 4 = 3.1.1
        0x02,  # clean session only
        0x00, 0x3C,  # keep-alive 60
        0x00, 0x0A, *b"MQTTClient",  # client id
    ])


def test_connect_5_has_an_empty_property_block():
    assert build_connect(5, "MQTTClient") == bytes([
        0x10, 23, 0x00, 0x04, *b"MQTT", 0x05, 0x02, 0x00, 0x3C,
        0x00,  # property length 0
        0x00, 0x0A, *b"MQTTClient",
    ])


def test_connect_31_uses_mqisdp():
    assert build_connect(3, "abc", keepalive=30) == bytes([
        0x10, 17, 0x00, 0x06, *b"MQIsdp", 0x03, 0x02, 0x00, 0x1E, 0x00, 0x03, *b"abc",
    ])


def test_connect_long_client_id_uses_a_two_byte_remaining_length():
    packet = build_connect(4, "x" * 200)
    assert packet[:3] == bytes([0x10, 212 % 128 | 0x80, 212 // 128])
    assert len(packet) == 3 + 212


@pytest.mark.parametrize(("level", "client_id", "keepalive"), [
    (6, "a", 60), (2, "a", 60), (3, "a" * 24, 60), (4, "a", -1), (4, "a", 65536),
])
def test_connect_refuses_bad_arguments(level, client_id, keepalive):
    with pytest.raises(ValueError):
        build_connect(level, client_id, keepalive)


@pytest.mark.parametrize("level", [3, 4, 5])
def test_disconnect(level):
    assert build_disconnect(level) == b"\xe0\x00"
    assert parse_packet(build_disconnect(level), level)[0] == 2


# -- recorded replies --------------------------------------------------------------------

EXPECTED = {
    "mosquitto-2.0.11-connack-3-anonymous.bin": ConnAck(3, False, 0),
    "mosquitto-2.0.11-connack-4-anonymous.bin": ConnAck(4, False, 0),
    "mosquitto-2.0.11-connack-5-anonymous.bin": ConnAck(
        5, False, 0, MqttProperties(topic_alias_maximum=10, receive_maximum=20)),
    "mosquitto-2.0.11-connack-6-unsupported.bin": ConnAck(4, False, 1),
    "mosquitto-2.0.11-connack-3-denied.bin": ConnAck(3, False, 5),
    "mosquitto-2.0.11-connack-4-denied.bin": ConnAck(4, False, 5),
    "mosquitto-2.0.11-connack-5-denied.bin": ConnAck(5, False, 0x87, MqttProperties()),
    "amqtt-0.12.1-connack-4-anonymous.bin": ConnAck(4, False, 0),
    "amqtt-0.12.1-connack-5-anonymous.bin": ConnAck(4, False, 1),
}


def test_every_fixture_has_an_expectation():
    assert {p.name for p in MQTT_FIXTURES} == set(EXPECTED)


@pytest.mark.parametrize("path", MQTT_FIXTURES, ids=lambda p: p.name)
def test_fixture_parses(path):
    data = path.read_bytes()
    consumed, packet = parse_packet(data, _level(path))
    assert consumed == len(data)
    assert packet == EXPECTED[path.name]


@pytest.mark.parametrize("path", MQTT_FIXTURES, ids=lambda p: p.name)
def test_every_truncated_prefix_needs_data(path):
    data = path.read_bytes()
    for end in range(len(data)):
        with pytest.raises(NeedData):
            parse_packet(data[:end], _level(path))


def test_trailing_bytes_are_not_consumed():
    assert parse_packet(b"\x20\x02\x00\x00\xe0\x00", 4) == (4, ConnAck(4, False, 0))


def test_rabbitmq_reply_is_not_mqtt():
    data = (FIXTURES / "rabbitmq-3.10.8-connack-4-amqp-port.bin").read_bytes()
    assert data == b"AMQP\x00\x00\x09\x01"
    with pytest.raises(ProtocolError):
        parse_packet(data, 4)


# -- 5.0 properties ----------------------------------------------------------------------


def _connack5(props: bytes, code: int = 0, flags: int = 0) -> bytes:
    body = bytes([flags, code, len(props)]) + props
    return bytes([0x20, len(body)]) + body


def _s(text: str) -> bytes:
    return len(text.encode()).to_bytes(2, "big") + text.encode()


def test_all_connack_properties():
    props = (b"\x11\x00\x00\x00\x3c" + b"\x21\x00\x0a" + b"\x24\x01" + b"\x25\x00"
             + b"\x27\x00\x01\x00\x00" + b"\x12" + _s("auto-1") + b"\x22\x00\x05"
             + b"\x1f" + _s("ok") + b"\x26" + _s("a") + _s("1") + b"\x26" + _s("a") + _s("2")
             + b"\x28\x01\x29\x00\x2a\x01" + b"\x13\x00\x1e" + b"\x1a" + _s("info")
             + b"\x1c" + _s("other:1883") + b"\x15" + _s("SCRAM") + b"\x16\x00\x02\xff\x00")
    _, packet = parse_packet(_connack5(props), 5)
    assert packet == ConnAck(5, False, 0, MqttProperties(
        session_expiry_interval=60, receive_maximum=10, maximum_qos=1, retain_available=False,
        maximum_packet_size=65536, assigned_client_identifier="auto-1", topic_alias_maximum=5,
        reason_string="ok", user_properties=[("a", "1"), ("a", "2")],
        wildcard_subscription_available=True, subscription_identifiers_available=False,
        shared_subscription_available=True, server_keep_alive=30, response_information="info",
        server_reference="other:1883", authentication_method="SCRAM"))


@pytest.mark.parametrize("case", [  # (bytes, why[, level: 5 unless given])
    (_connack5(b"\x01\x00"), "payload format indicator is not a CONNACK property"),
    (_connack5(b"\x21\x00\x0a\x21\x00\x0b"), "duplicate receive maximum"),
    (_connack5(b"\x1f\x00\x05ab"), "string runs past the end"),
    (_connack5(b"\x1f\x00\x02\xff\xfe"), "invalid UTF-8"),
    (_connack5(b"\x1f\x00\x01\x00"), "U+0000 in a string"),
    (_connack5(b"\x24\x02"), "maximum QoS 2"),
    (_connack5(b"\x25\x07"), "boolean 7"),
    (_connack5(b"\x21\x00\x00"), "receive maximum 0"),
    (_connack5(b"", flags=0x02), "reserved CONNACK flag"),
    (_connack5(b"", code=0x87, flags=0x01), "session present on a refusal"),
    (b"\x20\x04\x00\x00\x05\x11", "property length past the body"),
    (b"\x20\x04\x00\x00\x00\x11", "bytes after the properties"),
    (b"\x20\x01\x00", "1-byte CONNACK"),
    (b"\x20\x00", "empty CONNACK"),
    (b"\x21\x02\x00\x00", "CONNACK with flags in the fixed header", 4),
    (b"\x20\x02\x02\x00", "3.x CONNACK reserved flags", 4),
    (b"\x20\x80\x00", "non-minimal remaining length"),
    (b"\x20\xff\xff\xff\xff\x01", "remaining length of 5 bytes"),
    (b"\x00\x00", "packet type 0"),
    (b"\xf0\x00", "AUTH before 5.0", 4),
    (b"\x36\x00", "PUBLISH QoS 3"),
    (b"HTTP/1.1 400 Bad Request\r\n", "HTTP"),
], ids=lambda case: case[1])
def test_malformed(case):
    data, _why, level = (*case, 5) if len(case) == 2 else case
    with pytest.raises(ProtocolError):
        parse_packet(data, level)


@pytest.mark.parametrize("level", [3, 4])
def test_long_connack_for_a_3x_connect_is_malformed(level):
    with pytest.raises(ProtocolError):
        parse_packet(b"\x20\x03\x00\x00\x00", level)


def test_two_gigabyte_length_is_refused_at_once():
    # 0x7FFFFFFF would need 5 varint bytes; the largest 4-byte value is 268435455.
    with pytest.raises(ProtocolError, match="above the cap"):
        parse_packet(b"\x20\xff\xff\xff\x7f", 5)
    with pytest.raises(ProtocolError, match="above the cap"):
        parse_packet(b"\x20\x81\x80\x04", 5, max_size=65536)  # 65537
    with pytest.raises(NeedData):
        parse_packet(b"\x20\x80\x80\x04", 5, max_size=65536)  # exactly 65536: wait


def test_disconnect_5_with_reason_and_properties():
    data = b"\xe0\x08\x8b\x06\x1f\x00\x03bye"
    assert parse_packet(data, 5) == (10, Disconnect(0x8B, MqttProperties(reason_string="bye")))
    assert parse_packet(b"\xe0\x01\x87", 5) == (3, Disconnect(0x87))
    assert parse_packet(b"\xe0\x00", 5) == (2, Disconnect(0))
    assert parse_packet(b"\xe0\x00", 4) == (2, Disconnect(None))
    with pytest.raises(ProtocolError):
        parse_packet(b"\xe0\x01\x00", 4)
    with pytest.raises(ProtocolError):  # assigned client id is not a DISCONNECT property
        parse_packet(b"\xe0\x05\x00\x03\x12\x00\x00", 5)


def test_other_packets():
    assert parse_packet(b"\x10\x02ab", 4) == (4, OtherPacket(1, b"ab"))
    assert parse_packet(b"\x62\x02\x00\x01", 4) == (4, OtherPacket(6, b"\x00\x01", 2))
    assert parse_packet(b"\xf0\x00", 5) == (2, OtherPacket(15, b""))


def test_parse_refuses_unknown_levels():
    with pytest.raises(ValueError):
        parse_packet(b"\x20\x02\x00\x00", 6)


# -- return codes ------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "name", "anonymous"), [
    (0, "accepted", True), (1, "unacceptable-protocol-version", None),
    (2, "identifier-rejected", None), (3, "server-unavailable", None),
    (4, "bad-username-or-password", False), (5, "not-authorized", False),
    (6, "reserved-6", None), (0x87, "reserved-135", None), (255, "reserved-255", None),
])
@pytest.mark.parametrize("level", [3, 4])
def test_return_codes_3x(level, code, name, anonymous):
    assert return_code_name(level, code) == name
    assert is_anonymous(level, code) is anonymous


@pytest.mark.parametrize(("code", "name", "anonymous"), [
    (0x00, "accepted", True), (0x80, "unspecified-error", None),
    (0x81, "malformed-packet", None), (0x82, "protocol-error", None),
    (0x83, "implementation-specific-error", None),
    (0x84, "unsupported-protocol-version", None),
    (0x85, "client-identifier-not-valid", None), (0x86, "bad-username-or-password", False),
    (0x87, "not-authorized", False), (0x88, "server-unavailable", None),
    (0x89, "server-busy", None), (0x8A, "banned", None),
    (0x8C, "bad-authentication-method", False), (0x90, "topic-name-invalid", None),
    (0x95, "packet-too-large", None), (0x97, "quota-exceeded", None),
    (0x99, "payload-format-invalid", None), (0x9A, "retain-not-supported", None),
    (0x9B, "qos-not-supported", None), (0x9C, "use-another-server", None),
    (0x9D, "server-moved", None), (0x9F, "connection-rate-exceeded", None),
    (0x01, "reserved-1", None), (0x05, "reserved-5", None), (0xA0, "reserved-160", None),
])
def test_reason_codes_5(code, name, anonymous):
    assert return_code_name(5, code) == name
    assert is_anonymous(5, code) is anonymous


def test_every_named_code_is_lowercase_kebab():
    for name in [*RETURN_CODES_3.values(), *REASON_CODES_5.values()]:
        assert name == name.lower() and " " not in name and "_" not in name
    assert set(range(0x80, 0xA0)) <= set(REASON_CODES_5)


def test_level_refusal():
    assert is_level_refused(ConnAck(4, False, 1))
    assert is_level_refused(ConnAck(3, False, 1))
    assert is_level_refused(ConnAck(5, False, 0x84))
    assert not is_level_refused(ConnAck(5, False, 1))
    assert not is_level_refused(ConnAck(4, False, 0x84))
    assert not is_level_refused(ConnAck(4, False, 5))


# -- fuzzing -----------------------------------------------------------------------------


def _only_codec_errors(data: bytes, level: int, max_size: int = 65536) -> None:
    try:
        consumed, _ = parse_packet(data, level, max_size)
    except (NeedData, ProtocolError):
        return
    assert 2 <= consumed <= len(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([3, 4, 5]))
def test_random_bytes_raise_only_codec_errors(data, level):
    _only_codec_errors(data, level)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=48), st.sampled_from([3, 4, 5]))
def test_random_connack_bodies_raise_only_codec_errors(body, level):
    _only_codec_errors(bytes([0x20, len(body)]) + body, level)
    _only_codec_errors(bytes([0xE0, len(body)]) + body, level)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_mutated_fixtures_raise_only_codec_errors(data):
    path = data.draw(st.sampled_from(MQTT_FIXTURES))
    buf = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "insert":
            buf.insert(pos, data.draw(st.integers(0, 255)))
        elif op == "delete" and buf:
            del buf[pos]
        else:
            del buf[pos:]
    _only_codec_errors(bytes(buf), data.draw(st.sampled_from([3, 4, 5])),
                       data.draw(st.sampled_from([0, 4, 65536])))


# -- the sans-IO rule --------------------------------------------------------------------

FORBIDDEN = {"asyncio", "socket", "ssl"}


@pytest.mark.parametrize("path", sorted((ROOT / "workers" / "protocols").glob("*.py")),
                         ids=lambda p: p.name)
def test_codecs_do_no_io(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


# -- SUBSCRIBE / PUBLISH / SUBACK (the opt-in $SYS read) ----------------------------------


@pytest.mark.parametrize(("level", "expected"), [
    (4, "82 18 00 01 00 13 24535953 2f62726f6b6572 2f76657273696f6e 00"),
    (5, "82 19 00 01 00 00 13 24535953 2f62726f6b6572 2f76657273696f6e 00"),
])
def test_subscribe_to_the_version_topic_only(level, expected):
    assert build_subscribe(level, 1, "$SYS/broker/version") == bytes.fromhex(expected)
    unsubscribe = build_unsubscribe(level, 2, "$SYS/broker/version")
    assert unsubscribe[0] == 0xA2 and unsubscribe.endswith(b"$SYS/broker/version")
    with pytest.raises(ValueError):
        build_subscribe(level, 0, "x")


def _other(data, level):
    packet = parse_packet(data, level)[1]
    assert isinstance(packet, OtherPacket)
    return packet


def test_publish_and_suback_decode():
    body = b"\x00\x13$SYS/broker/version" + b"mosquitto version 2.0.11"
    packet = _other(b"\x31" + bytes([len(body)]) + body, 4)
    publish = decode_publish(packet, 4)
    assert (publish.topic, publish.payload, publish.retain, publish.qos) == (
        "$SYS/broker/version", b"mosquitto version 2.0.11", True, 0)
    body5 = b"\x00\x01t\x03\x01\x01\x01hi"  # 5.0: properties (payload format) skipped
    packet5 = _other(b"\x30" + bytes([len(body5)]) + body5, 5)
    assert decode_publish(packet5, 5).payload == b"hi"
    suback = _other(b"\x90\x03\x00\x01\x80", 4)
    assert decode_suback(suback, 4) == SubAck(1, (0x80,))
    suback5 = _other(b"\x90\x04\x00\x01\x00\x87", 5)
    assert decode_suback(suback5, 5) == SubAck(1, (0x87,))
    with pytest.raises(ProtocolError):
        decode_publish(OtherPacket(3, b"\x00\x09ab"), 4)
    with pytest.raises(ValueError):
        decode_suback(packet, 4)
