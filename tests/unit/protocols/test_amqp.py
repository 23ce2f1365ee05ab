"""The AMQP codec against recorded replies of real servers, truncation, and fuzzing."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, frame, header

from workers.protocols.amqp import (
    PROTOCOL_HEADER,
    ConnectionStart,
    ProtocolHeader,
    UnexpectedFrame,
    build_close,
    header_result,
    parse_protocol_header,
    parse_reply,
    start_result,
)
from workers.protocols.base import NeedData, ProtocolError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "amqp"
ALL = sorted(FIXTURES.glob("*.bin"))
START = (FIXTURES / "rabbitmq-3.10.8-amqp-0-9-1.bin").read_bytes()

# file -> (bytes consumed, family, protocol header text or None)
EXPECTED = {
    "rabbitmq-3.10.8-amqp-0-9-1.bin": (504, "0-9-1", None),
    **{f"rabbitmq-3.10.8-{case}.bin": (8, "0-9-1", "AMQP 0 0 9 1")
       for case in ("amqp-1.0", "amqp-1.0-sasl", "amqp-0-10", "http-get", "mqtt-connect")},
    **{f"qpid-proton-0.40.0-{case}.bin": (8, "1.0", "AMQP 0 1 0 0")
       for case in ("amqp-0-9-1", "amqp-1.0", "amqp-0-10", "http-get", "mqtt-connect")},
    "qpid-proton-0.40.0-amqp-1.0-sasl.bin": (8, "1.0-sasl", "AMQP 3 1 0 0"),
}


def method_frame(payload: bytes, channel: int = 0, frame_type: int = 1) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


def start_frame(props: dict[str, Any], mechanisms: str = "PLAIN",
                locales: str = "en_US") -> bytes:
    start = commands.Connection.Start(server_properties=props, mechanisms=mechanisms,
                                      locales=locales)
    return frame.marshal(start, 0)


def parse_result(buf: bytes):
    consumed, reply = parse_reply(buf)
    if isinstance(reply, ProtocolHeader):
        return consumed, header_result(reply)
    return consumed, start_result(reply)


def test_every_fixture_is_known():
    assert {p.name for p in ALL} == set(EXPECTED)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_fixture_parses(path: Path):
    consumed, result = parse_result(path.read_bytes())
    want_consumed, family, text = EXPECTED[path.name]
    assert (consumed, result.family, result.protocol_header) == (want_consumed, family, text)
    json.loads(result.model_dump_json())


def test_rabbitmq_start_fields():
    consumed, result = parse_result(START)
    assert consumed == len(START)
    assert (result.version_major, result.version_minor) == (0, 9)
    props = result.server_properties
    assert props is not None
    assert (props.product, props.version) == ("RabbitMQ", "3.10.8")
    assert props.platform == "Erlang/OTP 25.2.3"
    assert props.cluster_name == "rabbit@vm"
    assert props.copyright and props.information
    assert props.capabilities["publisher_confirms"] is True
    assert len(props.capabilities) == 9
    assert props.other == {}
    assert result.mechanisms == ["PLAIN", "AMQPLAIN"]
    assert result.locales == ["en_US"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_truncated_prefix_needs_data(path: Path):
    data = path.read_bytes()
    consumed, _ = parse_reply(data)
    for end in range(consumed):
        with pytest.raises(NeedData):
            parse_reply(data[:end])


def test_trailing_bytes_are_not_consumed():
    consumed, reply = parse_reply(START + b"\x01\x00")
    assert consumed == len(START) and isinstance(reply, ConnectionStart)


def test_protocol_header_constant_matches_pamqp():
    assert PROTOCOL_HEADER == header.ProtocolHeader().marshal()


@pytest.mark.parametrize(("raw", "family"), [
    (b"AMQP\x00\x00\x09\x01", "0-9-1"),
    (b"AMQP\x01\x01\x00\x09", "0-9"),
    (b"AMQP\x01\x01\x08\x00", "0-8"),
    (b"AMQP\x01\x01\x09\x01", "0-8"),
    (b"AMQP\x01\x01\x00\x0a", "0-10"),
    (b"AMQP\x00\x01\x00\x00", "1.0"),
    (b"AMQP\x02\x01\x00\x00", "1.0-tls"),
    (b"AMQP\x03\x01\x00\x00", "1.0-sasl"),
    (b"AMQP\x04\x01\x00\x00", "unknown"),
    (b"AMQP\x00\x00\x09\x00", "unknown"),
])
def test_header_table(raw: bytes, family: str):
    consumed, hdr = parse_protocol_header(raw + b"rest")
    assert consumed == 8 and hdr.raw == raw
    result = header_result(hdr)
    assert result.family == family
    assert result.protocol_header == "AMQP " + " ".join(str(b) for b in raw[4:])


@pytest.mark.parametrize("buf", [b"", b"A", b"AM", b"AMQ", b"AMQP", b"AMQP\x00\x00\x09"])
def test_header_prefix_needs_data(buf: bytes):
    with pytest.raises(NeedData):
        parse_protocol_header(buf)


@pytest.mark.parametrize("buf", [b"HTTP/1.1", b"AMQX\x00\x00\x09\x01", b"SSH-2.0-", b"B"])
def test_header_refuses_other_bytes(buf: bytes):
    with pytest.raises(ProtocolError):
        parse_protocol_header(buf)


@pytest.mark.parametrize("buf", [
    b"HTTP/1.1 400 Bad Request\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2p1\r\n",
    b"\x20\x02\x00\x00",  # an MQTT CONNACK
    b"\x00\x00\x00\x00",
    b"\x08\x00\x00\x00\x00\x00\x00\xce",  # a heartbeat frame
    b"\x02\x00\x00\x00\x00\x00\x04abcd\xce",  # a content header frame
    b"\x01\x00\x01",  # channel 1
    b"\x01\x00\x00\x00\x00\x00\x02ab\xce",  # too short for a method
    b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0a\x00",  # bad frame end
    method_frame(b"\xff\xff\xff\xff"),  # unknown method index
    method_frame(b"\x00\x0a\x00\x0a\x00"),  # Connection.Start cut short
])
def test_reply_refuses_bad_bytes(buf: bytes):
    with pytest.raises(ProtocolError):
        parse_reply(buf)


def test_two_gigabyte_size_is_refused_at_once():
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_reply(b"\x01\x00\x00\x80\x00\x00\x00")
    with pytest.raises(ProtocolError, match="exceeds"):  # from the first size octet on
        parse_reply(b"\x01\x00\x00\x80")
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_reply(b"\x01\x00\x00\x00\x00\x01\xf0", max_size=400)
    with pytest.raises(NeedData):  # the same frame is fine under a larger limit
        parse_reply(b"\x01\x00\x00\x00\x00\x01\xf0", max_size=496)


def test_other_method_is_an_unexpected_frame():
    close = commands.Connection.Close(reply_code=530, reply_text="NOT_ALLOWED", class_id=0,
                                      method_id=0)
    with pytest.raises(UnexpectedFrame) as info:
        parse_reply(frame.marshal(close, 0))
    assert info.value.name == "Connection.Close"
    assert isinstance(info.value, ProtocolError)


def test_deeply_nested_table_is_a_protocol_error():
    table = b""
    for _ in range(5000):  # pamqp recurses per level: RecursionError, mapped
        table = b"\x01kF" + struct.pack(">I", len(table)) + table
    payload = b"\x00\x0a\x00\x0a\x00\x09" + struct.pack(">I", len(table)) + table
    payload += b"\x00\x00\x00\x00" * 2
    with pytest.raises(ProtocolError):
        parse_reply(method_frame(payload), max_size=1 << 20)


def test_timestamp_out_of_range_is_a_protocol_error():
    table = b"\x01tT" + struct.pack(">Q", 0xFFFFFFFFFFFFFFFF)
    payload = b"\x00\x0a\x00\x0a\x00\x09" + struct.pack(">I", len(table)) + table
    payload += b"\x00\x00\x00\x00" * 2
    with pytest.raises(ProtocolError):
        parse_reply(method_frame(payload))


def test_start_result_makes_values_json_safe():
    props = {
        "product": "Broker", "version": b"\xff1.0",
        "capabilities": {"a": True, "b": 1},
        "raw": bytearray(b"\xff\x00"), "text": bytearray(b"ok"),
        "dec": Decimal("1.50"), "when": datetime(2024, 1, 2, tzinfo=UTC),
        "nested": {"list": [1, "x", {"deep": Decimal("2")}], "nothing": None},
        "double": 1.5,
    }
    start = ConnectionStart(0, 9, props, "PLAIN ANONYMOUS", "en_US de_DE")
    result = start_result(start)
    sp = result.server_properties
    assert sp is not None
    assert sp.product == "Broker" and sp.version == "\\xff1.0"
    assert sp.capabilities == {}
    assert sp.other == {
        "capabilities": {"a": True, "b": 1},
        "raw": "base64:/wA=", "text": "ok", "dec": "1.50",
        "when": "2024-01-02T00:00:00+00:00",
        "nested": {"list": [1, "x", {"deep": "2"}], "nothing": None},
        "double": 1.5,
    }
    assert result.mechanisms == ["PLAIN", "ANONYMOUS"]
    assert result.locales == ["en_US", "de_DE"]
    json.loads(result.model_dump_json())


def test_start_result_version_8_0_is_0_8():
    assert start_result(ConnectionStart(8, 0, {}, "", "")).family == "0-8"


def test_build_close_sends_nothing():
    assert build_close() == b""


# --- fuzzing: only NeedData or ProtocolError may come out, and results are JSON-safe --


def check(buf: bytes) -> None:
    try:
        _, result = parse_result(buf)
    except (NeedData, ProtocolError):
        return
    json.loads(result.model_dump_json())


FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(buf: bytes):
    check(buf)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_method_frames(payload: bytes):
    check(method_frame(b"\x00\x0a\x00\x0a" + payload))


@FUZZ
@given(st.sampled_from([p.read_bytes() for p in ALL]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 600))
def test_fuzz_mutated_fixtures(data: bytes, flips: list[tuple[int, int]], cut: int):
    buf = bytearray(data)
    for pos, value in flips:
        buf[pos % len(buf)] = value
    check(bytes(buf[: max(cut, 1)]))
    check(bytes(buf))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1,
                max_size=12),
       st.lists(st.integers(0, 10_000), max_size=4))
def test_fuzz_mutated_field_table_in_start(flips: list[tuple[int, int]], drops: list[int]):
    # Mutate the server-properties table and its length, then re-frame it correctly so
    # the mutation reaches pamqp's table decoder instead of the frame checks.
    payload = bytearray(START[7:-1])
    table_end = 6 + 4 + struct.unpack(">I", payload[6:10])[0]
    for pos, value in flips:
        payload[6 + pos % (table_end - 6)] = value
    for pos in drops:
        del payload[10 + pos % (table_end - 10)]
    check(method_frame(bytes(payload)))


field_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31 - 1) | st.text(max_size=20)
    | st.binary(max_size=20).map(bytearray) | st.decimals(places=2, min_value=-1000, max_value=1000)
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                   timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.dictionaries(st.text(max_size=12), field_values, max_size=8))
def test_fuzz_generated_server_properties(props: dict[str, Any]):
    buf = start_frame(props)
    consumed, reply = parse_reply(buf)
    assert consumed == len(buf) and isinstance(reply, ConnectionStart)
    json.loads(start_result(reply).model_dump_json())
