"""The AMQP 1.0 codec against real servers' SASL replies, truncation, and fuzzing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.protocols.amqp10 import (
    SASL_HEADER,
    Described,
    Symbol,
    decode_value,
    parse_frame,
    parse_sasl_reply,
)
from workers.protocols.base import NeedData, ProtocolError

HERE = Path(__file__).resolve().parents[2] / "fixtures"
RECORDED = {
    HERE / "amqp10" / "rabbitmq-3.10.8-amqp10-sasl.bin": ["ANONYMOUS", "PLAIN", "AMQPLAIN"],
    HERE / "amqp10" / "qpid-proton-0.37.0-amqp10-sasl.bin": ["ANONYMOUS"],
    HERE / "amqp" / "qpid-proton-0.40.0-amqp-1.0-sasl.bin": ["ANONYMOUS"],
}


@pytest.mark.parametrize("path", sorted(RECORDED), ids=lambda p: p.name)
def test_real_sasl_mechanisms(path: Path) -> None:
    data = path.read_bytes()
    used, header, mechanisms = parse_sasl_reply(data)
    assert (used, header.text, mechanisms) == (len(data), "AMQP 3 1 0 0", RECORDED[path])


@pytest.mark.parametrize("path", sorted(RECORDED), ids=lambda p: p.name)
def test_every_truncation_asks_for_more(path: Path) -> None:
    data = path.read_bytes()
    for cut in range(len(data)):
        with pytest.raises(NeedData):
            parse_sasl_reply(data[:cut])


def test_a_server_refusing_sasl_names_its_header() -> None:
    used, header, mechanisms = parse_sasl_reply(b"AMQP\x00\x00\x09\x01")
    assert (used, header.text, mechanisms) == (8, "AMQP 0 0 9 1", None)


def test_proton_open_and_close_frames_decode() -> None:
    data = (HERE / "amqp" / "qpid-proton-0.40.0-amqp-0-9-1.bin").read_bytes()[8:]
    used, opened = parse_frame(data)
    assert decode_value(opened.body) == Described(0x10, [""])  # open, container-id ""
    _, closed = parse_frame(data[used:])
    error = decode_value(closed.body).value[0]
    assert error.descriptor == 0x1D and error.value[0] == "amqp:connection:framing-error"


def _sasl(body: bytes) -> bytes:
    return SASL_HEADER + struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


def test_one_symbol_and_the_symbolic_descriptor() -> None:
    name = b"amqp:sasl-mechanisms:list"
    body = b"\x00\xa3" + bytes([len(name)]) + name + b"\xc0\x07\x01\xa3\x04PLAN"
    assert parse_sasl_reply(_sasl(body))[2] == ["PLAN"]


@pytest.mark.parametrize(("body", "message"), [
    (b"\x00\x53\x41\xc0\x03\x02\x40\x40", "not sasl-mechanisms"),  # sasl-init
    (b"\x00\x53\x40\x45", "without its mechanisms"),
    (b"\x00\x53\x40\xc0\x02\x01\x40", "not symbols"),
    (b"\x00\x53\x40\xc0\x04\x01\xe0\x01\x00", "runs past"),
    (b"\x00\x53\x40\xc0\x03\x01\xa1\x01", "runs past"),
    (b"\x00\x53\x40\xc0\x04\x01\xa3\x01\xff", "bad symbol"),
    (b"\x00\x53\x40\xc0\x02\x01\xee", "unknown AMQP 1.0 format code"),
])
def test_bad_sasl_frames_are_protocol_errors(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_sasl_reply(_sasl(body))


@pytest.mark.parametrize(("head", "message"), [
    (b"\x00\x00\x00\x04\x02\x01\x00\x00", "below 8"),
    (b"\x7f\xff\xff\xff", "exceeds"),
    (b"\x00\x00\x00\x10\x09\x01", "data offset"),
])
def test_bad_frame_headers_are_refused_before_the_body(head: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_frame(head)


def test_values_of_every_kind() -> None:
    assert decode_value(b"\x40") is None
    assert decode_value(b"\x56\x01") is True
    assert decode_value(b"\x81" + struct.pack(">q", -5)) == -5
    assert decode_value(b"\xc1\x05\x02\xa3\x01k\x41") == {Symbol("k"): True}
    assert decode_value(b"\xf0\x00\x00\x00\x07\x00\x00\x00\x02\x50\x01\x02") == [1, 2]
    nested = b"\x45"
    for _ in range(20):
        nested = b"\xc0" + bytes([len(nested) + 1, 1]) + nested
    with pytest.raises(ProtocolError, match="nested"):
        decode_value(nested)


def test_an_array_of_four_billion_nulls_is_refused_at_once() -> None:
    with pytest.raises(ProtocolError, match="elements"):
        decode_value(b"\xf0\x00\x00\x00\x05\xff\xff\xff\xff\x40")
    assert decode_value(b"\xe0\x02\x03\x40") == [None, None, None]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_values_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        decode_value(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzzed_sasl_replies_only_need_data_or_fail_cleanly(tail: bytes) -> None:
    try:
        parse_sasl_reply(SASL_HEADER + tail)
    except (NeedData, ProtocolError):
        pass
