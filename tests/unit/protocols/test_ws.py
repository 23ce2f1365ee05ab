"""The WebSocket codec against real brokers' recorded answers, truncation, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.protocols import ws
from workers.protocols.base import NeedData, ProtocolError
from workers.protocols.mqtt import ConnAck, parse_packet

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ws"
KEYS = json.loads((FIXTURES / "keys.json").read_text())
# recording -> (Server header, subprotocol accepted)
EXPECTED = {
    "mosquitto-2.0.11": (None, "mqtt"),
    "amqtt-0.12.1": ("Python/3.11 websockets/15.0.1", "mqtt"),
    "rabbitmq-3.10.8-web-mqtt": ("Cowboy", "mqtt"),
}


def _recorded(name: str) -> tuple[bytes, bytes]:
    return (FIXTURES / f"{name}-upgrade-connack.bin").read_bytes(), KEYS[name].encode()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_upgrades_then_a_connack_in_a_binary_frame(name: str) -> None:
    data, key = _recorded(name)
    used, answer = ws.parse_handshake(data, key, "mqtt")
    assert answer == ws.Upgraded(EXPECTED[name][1], EXPECTED[name][0])
    events = ws.FrameReader().feed(data[used:])
    payload = b"".join(e.data for e in events if isinstance(e, ws.Data))
    assert parse_packet(payload, 4)[1] == ConnAck(4, False, 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_truncation_of_a_handshake_asks_for_more(name: str) -> None:
    data, key = _recorded(name)
    used, _ = ws.parse_handshake(data, key, "mqtt")
    for cut in range(used):
        with pytest.raises(NeedData):
            ws.parse_handshake(data[:cut], key, "mqtt")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_frames_fed_byte_by_byte_give_the_same_message(name: str) -> None:
    data, key = _recorded(name)
    used, _ = ws.parse_handshake(data, key, "mqtt")
    reader = ws.FrameReader()
    got = b"".join(e.data for b in range(used, len(data))
                   for e in reader.feed(data[b:b + 1]) if isinstance(e, ws.Data))
    assert got == b"\x20\x02\x00\x00"


def test_refusals_keep_status_and_server() -> None:
    key = ws.new_key()
    reply = b"HTTP/1.1 404 Not Found\r\nServer: nginx/1.22.1\r\nContent-Length: 0\r\n\r\n"
    assert ws.parse_handshake(reply, key, "mqtt")[1] == ws.Refused(404, "nginx/1.22.1",
                                                                   "Not Found")


@pytest.mark.parametrize(("extra", "message"), [
    (b"Sec-WebSocket-Protocol: graphql-ws\r\n", "another subprotocol"),
    (b"Sec-WebSocket-Extensions: permessage-deflate\r\n", "extension"),
])
def test_a_101_for_something_else_is_a_bad_upgrade(extra: bytes, message: str) -> None:
    key = ws.new_key()
    reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nServer: x\r\nSec-WebSocket-Accept: "
             + ws.accept_token(key) + b"\r\n" + extra + b"\r\n")
    with pytest.raises(ws.BadUpgrade, match=message) as info:
        ws.parse_handshake(reply, key, "mqtt")
    assert (info.value.status, info.value.server) == (101, "x")


def test_a_wrong_accept_token_is_a_bad_upgrade() -> None:
    reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n")
    with pytest.raises(ws.BadUpgrade, match="Accept"):
        ws.parse_handshake(reply, ws.new_key(), "mqtt")


@pytest.mark.parametrize("reply", [b"AMQP\x00\x00\x09\x01", b"SSH-2.0-OpenSSH_9.2\r\n",
                                   b"\x20\x02\x00\x00", b"\x15\x03\x01\x00\x02\x02\x46"])
def test_other_protocols_are_not_http(reply: bytes) -> None:
    with pytest.raises(ProtocolError):
        ws.parse_handshake(reply + b"\r\n\r\n", ws.new_key(), "mqtt")


def test_an_endless_head_is_refused_at_16_kib() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 20000
    with pytest.raises(ProtocolError):
        ws.parse_handshake(head, ws.new_key(), "mqtt")


def test_the_request_offers_one_subprotocol_and_no_extension() -> None:
    request = ws.build_request("127.0.0.1:9001", "/mqtt", "mqttv3.1", b"a2V5")
    assert request.startswith(b"GET /mqtt HTTP/1.1\r\n")
    assert b"Sec-WebSocket-Protocol: mqttv3.1\r\n" in request
    assert b"Extensions" not in request
    with pytest.raises(ValueError):
        ws.build_request("h", "no-slash", "mqtt", b"a2V5")


def test_server_frames_ping_close_and_masking() -> None:
    reader = ws.FrameReader()
    events = reader.feed(b"\x89\x02hi" + b"\x82\x02\x20\x02" + b"\x88\x02\x03\xf3")
    assert events == [ws.Ping(b"hi"), ws.Data(b"\x20\x02"), ws.Close(1011, "")]
    assert reader.closed
    with pytest.raises(ProtocolError):  # a server must not mask its frames
        ws.FrameReader().feed(b"\x82\x82abcd\x00\x00")
    mine = ws.FrameReader().binary(b"\x10\x00")
    assert mine[0] == 0x82 and mine[1] & 0x80  # we mask ours


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_handshakes_only_need_data_or_fail_cleanly(data: bytes) -> None:
    try:
        ws.parse_handshake(data, b"a2V5a2V5a2V5a2V5a2V5aw==", "mqtt")
    except (NeedData, ProtocolError):
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzzed_frames_only_give_events_or_protocol_errors(chunks: list[bytes]) -> None:
    reader = ws.FrameReader()
    try:
        for chunk in chunks:
            for event in reader.feed(chunk):
                assert isinstance(event, ws.Data | ws.Ping | ws.Close)
    except ProtocolError:
        pass


def test_a_banner_that_is_not_http_is_refused_at_once() -> None:
    # an SSH server speaks first and then waits: no end of headers would ever come
    with pytest.raises(ProtocolError, match="not an HTTP response"):
        ws.parse_handshake(b"SSH-2.0-OpenSSH_9.2p1\r\n", ws.new_key(), "mqtt")
    with pytest.raises(NeedData):
        ws.parse_handshake(b"HTT", ws.new_key(), "mqtt")
