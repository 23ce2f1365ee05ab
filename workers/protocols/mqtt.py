"""MQTT codec: the CONNECT we send, and the CONNACK (or whatever else) that comes back.

Spec sheet
----------

* Default ports: 1883 (plain), 8883 (TLS).
* Bytes sent, one CONNECT per connection (clean session / clean start, no will, no
  username, no password, keep-alive 60 s, a random client id ``<prefix><hex>``):

  - 3.1 (level 3): ``10 <len> 00 06 'MQIsdp' 03 02 00 3C <id>``
  - 3.1.1 (level 4): ``10 <len> 00 04 'MQTT' 04 02 00 3C <id>``
  - 5.0 (level 5): ``10 <len> 00 04 'MQTT' 05 02 00 3C 00 <id>`` (empty properties:
    session expiry 0, so the broker keeps nothing once we leave)

  where ``<id>`` is a 2-byte length and the UTF-8 client id. After a CONNACK, a
  DISCONNECT ``E0 00`` (valid for every level: 5.0 reads an empty body as reason 0x00).
* Only with ``--sys-version`` (opt-in), between CONNACK and DISCONNECT:
  ``82 <len> 00 01 [00] <'$SYS/broker/version'> 00`` (SUBSCRIBE, packet id 1, QoS 0; the
  5.0 form has an empty property length) and the matching UNSUBSCRIBE ``A2 ...``.
* Fields recorded: the CONNACK's format level (3.x: 2-byte body; 5.0: flags, reason code
  and properties), session present, return/reason code and its name, and all 5.0 CONNACK
  properties (:class:`brokerscan.model.MqttProperties`). A DISCONNECT before any CONNACK
  and any other packet are returned as such, so the driver can tell them apart; PUBLISH
  (topic, payload, QoS, retain) and SUBACK (return codes) are decoded on request.

References: OASIS MQTT 3.1.1 (section 3.1, 3.2) and 5.0 (sections 1.5, 2.2, 3.1, 3.2, 3.14).

Why one piece: one codec for three protocol levels that share the fixed header, the
variable-length integers and the property reader; apart, each level would repeat them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brokerscan.model import MqttProperties
from brokerscan.mqttcodes import REASON_CODES_5, RETURN_CODES_3, return_code_name
from workers.protocols.base import NeedData, ProtocolError

__all__ = [
    "RETURN_CODES_3",
    "REASON_CODES_5",
    "ConnAck",
    "Disconnect",
    "MqttProperties",
    "OtherPacket",
    "Packet",
    "Publish",
    "SubAck",
    "build_connect",
    "build_disconnect",
    "build_subscribe",
    "build_unsubscribe",
    "decode_publish",
    "decode_suback",
    "is_anonymous",
    "is_level_refused",
    "parse_packet",
    "return_code_name",
]

CONNECT, CONNACK, PUBLISH, SUBACK, UNSUBACK, DISCONNECT, AUTH = 1, 2, 3, 9, 11, 14, 15

# MQTT 3.1 and 3.1.1 CONNACK return codes (3.1.1 section 3.2.2.3); 6-255 are reserved.
_DENIED_3 = frozenset({4, 5})
_DENIED_5 = frozenset({0x86, 0x87, 0x8C})

_MAX_CLIENT_ID_31 = 23  # MQTT 3.1 section 3.1: servers may reject longer ids


@dataclass(frozen=True, slots=True)
class ConnAck:
    """A CONNACK. ``level`` is the format it came in: 5 for a 5.0 CONNACK, else 3 or 4."""

    level: int
    session_present: bool
    return_code: int
    properties: MqttProperties | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A DISCONNECT: reason code and properties in 5.0, ``None`` for a 3.x ``E0 00``."""

    reason_code: int | None = None
    properties: MqttProperties | None = None


@dataclass(frozen=True, slots=True)
class OtherPacket:
    """Any other well-formed packet: the type (1-15), its raw body and header flags."""

    packet_type: int
    body: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Publish:
    """A decoded PUBLISH (properties of 5.0 are skipped)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class SubAck:
    """A decoded SUBACK: the packet id and one return / reason code per topic filter."""

    packet_id: int
    codes: tuple[int, ...]


Packet = ConnAck | Disconnect | OtherPacket


# -- building --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """The MQTT variable byte integer (1-4 bytes, 7 bits each, low group first)."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def build_connect(level: int, client_id: str, keepalive: int = 60) -> bytes:
    """The CONNECT packet of protocol ``level`` (3 = 3.1, 4 = 3.1.1, 5 = 5.0).

    :param level: the protocol level byte.
    :param client_id: the client identifier (at most 23 bytes for 3.1).
    :param keepalive: keep-alive in seconds, 0-65535.
    :returns: the whole packet, fixed header included.
    :raises ValueError: an unknown level, a too-long client id, or a bad keep-alive.
    """
    if level not in (3, 4, 5):
        raise ValueError(f"unknown MQTT protocol level {level}")
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must fit in 16 bits")
    if level == 3 and len(client_id.encode("utf-8")) > _MAX_CLIENT_ID_31:
        raise ValueError("MQTT 3.1 client ids are limited to 23 bytes")
    variable = (
        _string("MQIsdp" if level == 3 else "MQTT")  # protocol name, 2-byte length first
        + bytes([level])  # protocol level: 03, 04 or 05
        + b"\x02"  # connect flags: only bit 1, clean session / clean start
        + keepalive.to_bytes(2, "big")  # keep-alive seconds, big-endian
        + (b"\x00" if level == 5 else b"")  # 5.0: property length 0, no properties
    )
    payload = _string(client_id)  # the client id is the whole payload (no will, no auth)
    body = variable + payload
    return bytes([CONNECT << 4]) + _varint(len(body)) + body  # 10 <remaining length>


def build_disconnect(level: int) -> bytes:
    """The DISCONNECT packet: ``E0 00`` for every level.

    In 5.0 an empty body means reason 0x00 (normal disconnection) with no properties
    (section 3.14.2.1), so the 2-byte form is right for 5.0 too.

    :param level: the protocol level of the session (3, 4 or 5).
    :raises ValueError: an unknown level.
    """
    if level not in (3, 4, 5):
        raise ValueError(f"unknown MQTT protocol level {level}")
    return bytes([DISCONNECT << 4, 0x00])  # type 14, flags 0; remaining length 0


def _topic_packet(first: int, level: int, packet_id: int, topic: str, tail: bytes) -> bytes:
    if level not in (3, 4, 5):
        raise ValueError(f"unknown MQTT protocol level {level}")
    if not 1 <= packet_id <= 0xFFFF:
        raise ValueError("packet id must be 1-65535")
    body = (packet_id.to_bytes(2, "big")
            + (b"\x00" if level == 5 else b"")  # 5.0: property length 0
            + _string(topic) + tail)
    return bytes([first]) + _varint(len(body)) + body


def build_subscribe(level: int, packet_id: int, topic: str) -> bytes:
    """SUBSCRIBE to one topic filter at QoS 0 (5.0: no options, no properties).

    :raises ValueError: an unknown level or a packet id outside 1-65535.
    """
    return _topic_packet(0x82, level, packet_id, topic, b"\x00")  # type 8, flags 0010


def build_unsubscribe(level: int, packet_id: int, topic: str) -> bytes:
    """UNSUBSCRIBE from one topic filter.

    :raises ValueError: an unknown level or a packet id outside 1-65535.
    """
    return _topic_packet(0xA2, level, packet_id, topic, b"")  # type 10, flags 0010


def decode_publish(packet: OtherPacket, level: int) -> Publish:
    """The fields of a PUBLISH returned by :func:`parse_packet`.

    :raises ValueError: ``packet`` is not a PUBLISH.
    :raises ProtocolError: its body is malformed (a topic or property running past the
        end, a bad topic string).
    """
    if packet.packet_type != PUBLISH:
        raise ValueError(f"packet type {packet.packet_type} is not PUBLISH")
    qos = (packet.flags >> 1) & 3
    r = _Reader(packet.body)
    topic = r.string()
    packet_id = r.uint(2) if qos else None
    if level == 5:
        r.take(r.varint())  # properties: not recorded
    return Publish(topic, r.data[r.pos:], qos, bool(packet.flags & 1),
                   bool(packet.flags & 8), packet_id)


def decode_suback(packet: OtherPacket, level: int) -> SubAck:
    """The packet id and return codes of a SUBACK returned by :func:`parse_packet`.

    :raises ValueError: ``packet`` is not a SUBACK.
    :raises ProtocolError: a body too short, or properties running past its end.
    """
    if packet.packet_type != SUBACK:
        raise ValueError(f"packet type {packet.packet_type} is not SUBACK")
    r = _Reader(packet.body)
    packet_id = r.uint(2)
    if level == 5:
        r.take(r.varint())
    codes = tuple(r.data[r.pos:])
    if not codes:
        raise ProtocolError("SUBACK without a return code")
    return SubAck(packet_id, codes)


# -- return codes ----------------------------------------------------------------------


def is_anonymous(level: int, return_code: int) -> bool | None:
    """Whether an anonymous client may connect, as far as one CONNACK tells.

    :returns: ``True`` when accepted; ``False`` for not-authorised or bad credentials
        (3.x: 4, 5; 5.0: 0x86, 0x87, 0x8C); ``None`` when the code says nothing about it.
    """
    if return_code == 0:
        return True
    denied = _DENIED_5 if level == 5 else _DENIED_3
    return False if return_code in denied else None


def is_level_refused(connack: ConnAck) -> bool:
    """Whether the CONNACK refuses the protocol level (3.x rc 1, 5.0 reason 0x84)."""
    return connack.return_code == (0x84 if connack.level == 5 else 1)


# -- parsing ---------------------------------------------------------------------------


class _Reader:
    """A cursor over one packet body whose length is known: running out is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("field runs past the end of the packet")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def varint(self) -> int:
        value, consumed = _decode_varint(self.data, self.pos)
        if consumed is None:
            raise ProtocolError("variable byte integer runs past the end of the packet")
        self.pos += consumed
        return value

    def string(self) -> str:
        raw = self.take(self.uint(2))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 string: {exc.reason}") from None
        if "\x00" in text:  # [MQTT-1.5.4-2]
            raise ProtocolError("UTF-8 string contains U+0000")
        return text

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _decode_varint(buf: bytes, start: int) -> tuple[int, int | None]:
    """Decode a variable byte integer at ``buf[start:]``.

    :returns: ``(value, bytes used)``, or ``(0, None)`` when ``buf`` ends inside it.
    :raises ProtocolError: more than 4 bytes, or not the shortest encoding.
    """
    value = 0
    for i in range(4):
        if start + i >= len(buf):
            return 0, None
        byte = buf[start + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:  # [MQTT-1.5.5-1]: the minimum number of bytes
                raise ProtocolError("variable byte integer not minimally encoded")
            return value, i + 1
    raise ProtocolError("variable byte integer longer than 4 bytes")


# Fixed-header flags each packet type must carry (3.1.1 table 2.2, 5.0 table 2-2);
# PUBLISH (3) has real flags and is checked apart.
_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0,
          14: 0, 15: 0}

# Property id -> (kind, model field). Kinds: b = byte, b01 = boolean byte, q01 = QoS 0/1,
# u2/u4 = 2/4-byte integer, u2+/u4+ = non-zero, s = UTF-8 string, bin = binary, kv = pair.
_CONNACK_PROPS: dict[int, tuple[str, str | None]] = {
    0x11: ("u4", "session_expiry_interval"),
    0x12: ("s", "assigned_client_identifier"),
    0x13: ("u2", "server_keep_alive"),
    0x15: ("s", "authentication_method"),
    0x16: ("bin", None),  # authentication data: opaque, not recorded
    0x1A: ("s", "response_information"),
    0x1C: ("s", "server_reference"),
    0x1F: ("s", "reason_string"),
    0x21: ("u2+", "receive_maximum"),
    0x22: ("u2", "topic_alias_maximum"),
    0x24: ("q01", "maximum_qos"),
    0x25: ("b01", "retain_available"),
    0x26: ("kv", "user_properties"),
    0x27: ("u4+", "maximum_packet_size"),
    0x28: ("b01", "wildcard_subscription_available"),
    0x29: ("b01", "subscription_identifiers_available"),
    0x2A: ("b01", "shared_subscription_available"),
}
_DISCONNECT_PROPS = {k: _CONNACK_PROPS[k] for k in (0x11, 0x1C, 0x1F, 0x26)}


def _properties(r: _Reader, allowed: dict[int, tuple[str, str | None]],
                what: str) -> MqttProperties:
    """Read a property length and the properties it covers, which must end the body."""
    length = r.varint()
    if length != r.left:
        raise ProtocolError(f"{what} property length {length} != {r.left} bytes left")
    fields: dict[str, Any] = {}
    seen: set[int] = set()
    pairs: list[tuple[str, str]] = []
    while r.left:
        prop = r.varint()
        if prop not in allowed:
            raise ProtocolError(f"property 0x{prop:02X} is not allowed in {what}")
        kind, name = allowed[prop]
        if kind == "kv":
            pairs.append((r.string(), r.string()))
            continue
        if prop in seen:
            raise ProtocolError(f"property 0x{prop:02X} appears twice in {what}")
        seen.add(prop)
        value: object
        if kind == "s":
            value = r.string()
        elif kind == "bin":
            value = r.take(r.uint(2))
        else:
            value = r.uint(4 if kind.startswith("u4") else 2 if kind.startswith("u2") else 1)
            if kind.endswith("+") and value == 0:
                raise ProtocolError(f"property 0x{prop:02X} must not be 0")
            if kind in ("b01", "q01"):
                if value not in (0, 1):
                    raise ProtocolError(f"property 0x{prop:02X} must be 0 or 1, not {value}")
                value = bool(value) if kind == "b01" else value
        if name is not None:
            fields[name] = value
    if pairs:
        fields["user_properties"] = pairs
    return MqttProperties(**fields)


def _parse_connack(body: bytes, level: int) -> ConnAck:
    if len(body) == 2:  # 3.x format; also a 3.1.1-only broker answering a 5.0 CONNECT
        fmt = level if level in (3, 4) else 4
    elif level == 5 and len(body) >= 3:
        fmt = 5
    else:
        raise ProtocolError(f"CONNACK of {len(body)} bytes for a level {level} CONNECT")
    r = _Reader(body)
    flags, code = r.uint(1), r.uint(1)
    if flags & 0xFE:  # bits 7-1 are reserved [MQTT-3.2.2-1]
        raise ProtocolError(f"CONNACK reserved flag bits set: 0x{flags:02X}")
    session_present = bool(flags & 1)
    if session_present and code:  # [MQTT-3.2.2-4], 5.0 section 3.2.2.1.1
        raise ProtocolError("CONNACK refuses the connection but says a session is present")
    props = _properties(r, _CONNACK_PROPS, "CONNACK") if fmt == 5 else None
    return ConnAck(fmt, session_present, code, props)


def _parse_disconnect(body: bytes, level: int) -> Disconnect:
    if not body:  # 5.0: an empty body is reason 0x00 (section 3.14.2.1)
        return Disconnect(0 if level == 5 else None)
    if level != 5:
        raise ProtocolError(f"DISCONNECT with a {len(body)}-byte body before 5.0")
    r = _Reader(body)
    code = r.uint(1)
    if not r.left:
        return Disconnect(code)
    return Disconnect(code, _properties(r, _DISCONNECT_PROPS, "DISCONNECT"))


def parse_packet(buf: bytes, level: int, max_size: int = 65536) -> tuple[int, Packet]:
    """Parse the first MQTT packet in ``buf``, as a reply to a CONNECT of ``level``.

    :param buf: the bytes received so far (may hold more than one packet).
    :param level: the protocol level of the CONNECT we sent (3, 4 or 5).
    :param max_size: the largest remaining length accepted; a larger length field is
        refused at once rather than waited for.
    :returns: ``(bytes consumed, packet)``.
    :raises NeedData: ``buf`` is a valid but incomplete prefix of a packet.
    :raises ProtocolError: the bytes can never be a valid packet.
    """
    if level not in (3, 4, 5):
        raise ValueError(f"unknown MQTT protocol level {level}")
    if not buf:
        raise NeedData
    first = buf[0]
    ptype, flags = first >> 4, first & 0x0F
    if ptype == 0 or (ptype == AUTH and level != 5):
        raise ProtocolError(f"reserved packet type {ptype}")
    if ptype == 3:
        if flags & 0x06 == 0x06:  # PUBLISH with QoS 3
            raise ProtocolError("PUBLISH with QoS 3")
    elif flags != _FLAGS[ptype]:
        raise ProtocolError(f"packet type {ptype} with reserved flags 0x{flags:X}")
    length, used = _decode_varint(buf, 1)
    if used is None:
        raise NeedData
    if length > max_size:
        raise ProtocolError(f"remaining length {length} above the cap of {max_size}")
    end = 1 + used + length
    if len(buf) < end:
        raise NeedData
    body = bytes(buf[1 + used:end])
    packet: Packet
    if ptype == CONNACK:
        packet = _parse_connack(body, level)
    elif ptype == DISCONNECT:
        packet = _parse_disconnect(body, level)
    else:
        packet = OtherPacket(ptype, body, flags)
    return end, packet
