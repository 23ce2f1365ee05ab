"""AMQP codec: the 8-byte protocol header and the AMQP 0-9-1 Connection.Start reply.

Sans-IO: these functions build and parse bytes; :mod:`workers.probes.amqp` drives them.

Spec sheet
----------

* Default ports: 5672 (plain), 5671 (TLS).
* Bytes sent: the 0-9-1 protocol header ``AMQP 0 0 9 1`` (:data:`PROTOCOL_HEADER`), and
  nothing else: no Start-Ok, so no login is ever attempted (see :func:`build_close`).
* Replies understood (protocol-anchors.md section 6):

  - a method frame (type 1, channel 0) carrying Connection.Start (class 10, method 10): the
    server speaks 0-9-1 (RabbitMQ sends version 0-9);
  - an 8-byte protocol header: the server refused 0-9-1 and named what it speaks instead
    (1.0, 1.0 with SASL or TLS layer, 0-10, ...), then closes.

* Fields recorded (:class:`brokerscan.model.AmqpResult`): ``family``, ``protocol_header``
  (``"AMQP 0 0 9 1"`` style), ``version_major``/``version_minor``, the server properties
  (product, version, platform, copyright, information, cluster_name, capabilities; any other
  key JSON-safe in ``other``), the SASL ``mechanisms`` and ``locales``.

AMQP 0-9-1 frames are decoded by pamqp; this module only checks the frame header first, so
that a hostile length field is refused before a byte of its body is awaited, and maps every
exception pamqp raises on bad input to :class:`ProtocolError`.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pamqp import commands, constants, frame

from brokerscan.model import AmqpResult, AmqpServerProperties
from workers.protocols.base import NeedData, ProtocolError

__all__ = [
    "PROTOCOL_HEADER",
    "ConnectionStart",
    "Family",
    "ProtocolHeader",
    "UnexpectedFrame",
    "build_close",
    "header_result",
    "parse_protocol_header",
    "parse_reply",
    "start_result",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_MAGIC = b"AMQP"
_HEADER_SIZE = 8
_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_MAX_DEPTH = 16  # nested tables/arrays deeper than this are kept as text

Family = Literal["0-9-1", "0-9", "0-8", "0-10", "1.0", "1.0-tls", "1.0-sasl", "unknown"]

# (protocol id, major, minor, revision) -> family, as the servers put it on the wire.
_FAMILIES: dict[tuple[int, int, int, int], Family] = {
    (0, 0, 9, 1): "0-9-1",
    (1, 1, 0, 9): "0-9",
    (1, 1, 8, 0): "0-8",
    (1, 1, 9, 1): "0-8",  # what py-amqplib sends for 0-8
    (1, 1, 0, 10): "0-10",
    (0, 1, 0, 0): "1.0",
    (2, 1, 0, 0): "1.0-tls",
    (3, 1, 0, 0): "1.0-sasl",
}

# Connection.Start's (major, minor) -> family; anything else is "0-9-1" (the frame format).
_START_FAMILIES: dict[tuple[int, int], Family] = {(8, 0): "0-8", (0, 8): "0-8"}

_KNOWN_PROPERTIES = ("product", "version", "platform", "copyright", "information",
                     "cluster_name")


@dataclass(frozen=True, slots=True)
class ProtocolHeader:
    """An 8-byte AMQP protocol header: ``AMQP`` and four version octets."""

    protocol_id: int
    major: int
    minor: int
    revision: int
    raw: bytes

    @property
    def text(self) -> str:
        """The header as ``"AMQP 0 0 9 1"``."""
        return f"AMQP {self.protocol_id} {self.major} {self.minor} {self.revision}"


@dataclass(frozen=True, slots=True)
class ConnectionStart:
    """The fields of a Connection.Start method, as decoded by pamqp.

    ``server_properties`` holds pamqp's values unchanged (str, bytes, int, Decimal,
    datetime, nested dicts and lists); :func:`start_result` makes them JSON-safe.
    """

    version_major: int
    version_minor: int
    server_properties: dict[str, Any]
    mechanisms: str
    locales: str


class UnexpectedFrame(ProtocolError):
    """A well-formed 0-9-1 method frame on channel 0 that is not Connection.Start.

    The peer does speak AMQP 0-9-1 (say, a Connection.Close before Start); the driver may
    record it as such instead of as a protocol error.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"unexpected AMQP method {name}")
        self.name = name


def parse_protocol_header(buf: bytes) -> tuple[int, ProtocolHeader]:
    """Parse an AMQP protocol header at the start of ``buf``.

    :param buf: the bytes received so far.
    :returns: ``(8, header)``: the bytes consumed and the header.
    :raises NeedData: ``buf`` is a proper prefix of a header (``b"AM"``).
    :raises ProtocolError: ``buf`` does not start with ``AMQP``.
    """
    head = bytes(buf[:4])
    if not _MAGIC.startswith(head):
        raise ProtocolError(f"not an AMQP protocol header: {head!r}")
    if len(buf) < _HEADER_SIZE:
        raise NeedData
    raw = bytes(buf[:_HEADER_SIZE])
    return _HEADER_SIZE, ProtocolHeader(raw[4], raw[5], raw[6], raw[7], raw)


def header_result(header: ProtocolHeader) -> AmqpResult:
    """The :class:`AmqpResult` of a server that answered with a protocol header.

    :param header: the header the server sent (it refused the version we asked for).
    :returns: a result with ``family`` from the header table (``"unknown"`` otherwise) and
        ``protocol_header`` as text.
    """
    key = (header.protocol_id, header.major, header.minor, header.revision)
    return AmqpResult(family=_FAMILIES.get(key, "unknown"), protocol_header=header.text)


def parse_reply(buf: bytes, max_size: int = 65536) -> tuple[int, ProtocolHeader | ConnectionStart]:
    """Parse a server's first reply to :data:`PROTOCOL_HEADER`.

    :param buf: the bytes received so far.
    :param max_size: the largest frame payload accepted; a larger size field is refused at
        once, before its body is awaited.
    :returns: ``(consumed, reply)``: a :class:`ProtocolHeader` (the server refused 0-9-1) or
        a :class:`ConnectionStart`.
    :raises NeedData: ``buf`` is a proper prefix of a header or of a method frame.
    :raises UnexpectedFrame: a valid method frame on channel 0 other than Connection.Start.
    :raises ProtocolError: anything else.
    """
    if not buf:
        raise NeedData
    if buf[0] == _MAGIC[0]:
        return parse_protocol_header(buf)
    if buf[0] != constants.FRAME_METHOD:
        raise ProtocolError(f"neither an AMQP header nor a method frame: {bytes(buf[:8])!r}")
    size = _check_frame_header(bytes(buf[: constants.FRAME_HEADER_SIZE]), max_size)
    end = constants.FRAME_HEADER_SIZE + size + 1
    if len(buf) < end:
        raise NeedData
    if buf[end - 1] != constants.FRAME_END:
        raise ProtocolError(f"frame end octet is {buf[end - 1]:#04x}, not 0xce")
    data = bytes(buf[:end])
    try:
        _, _, method = frame.unmarshal(data)
    except Exception as exc:  # pamqp raises many kinds on bad input: all mean "malformed"
        raise ProtocolError(f"bad AMQP method frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(method, commands.Connection.Start):
        raise UnexpectedFrame(str(getattr(method, "name", type(method).__name__)))
    return end, _start_of(method)


def _check_frame_header(head: bytes, max_size: int) -> int:
    """Check a (possibly partial) frame header; return the payload size once complete.

    A partial size field already bounds the size from below, so a ``0x7f...`` prefix is
    refused without waiting for the rest.
    """
    if len(head) >= 3 and head[1:3] != b"\x00\x00":
        raise ProtocolError(f"method frame on channel {int.from_bytes(head[1:3], 'big')}")
    if len(head) > 3:
        low = int.from_bytes(head[3:].ljust(4, b"\x00"), "big")
        if low > max_size:
            raise ProtocolError(f"frame size of at least {low} exceeds {max_size}")
    if len(head) < constants.FRAME_HEADER_SIZE:
        raise NeedData
    _, _, size = _FRAME_HEADER.unpack(head)
    if size < 4:  # a method frame carries at least its class and method ids
        raise ProtocolError(f"method frame of {size} bytes")
    return int(size)


def _start_of(method: commands.Connection.Start) -> ConnectionStart:
    props = method.server_properties
    return ConnectionStart(
        version_major=int(method.version_major),
        version_minor=int(method.version_minor),
        server_properties=dict(props) if isinstance(props, dict) else {},
        mechanisms=_text(method.mechanisms),
        locales=_text(method.locales),
    )


def start_result(start: ConnectionStart) -> AmqpResult:
    """The :class:`AmqpResult` of a server that sent Connection.Start.

    :param start: the decoded Connection.Start.
    :returns: family ``"0-9-1"`` (``"0-8"`` when the server announces version 8-0), the
        version, the server properties and the space-separated mechanisms and locales
        split into lists. Property values are made JSON-safe: bytes become text when they
        are UTF-8, ``"base64:..."`` otherwise; Decimal becomes its string; datetime its ISO
        form; non-finite floats their name; tables and arrays are converted recursively
        (deeper than 16 levels they are kept as their ``repr``). Capabilities that are not
        booleans are kept, converted, under ``other["capabilities"]``.
    """
    props = start.server_properties
    known = {name: _text(props[name]) for name in _KNOWN_PROPERTIES
             if props.get(name) is not None}
    capabilities: dict[str, bool] = {}
    other: dict[str, Any] = {}
    caps = props.get("capabilities")
    if isinstance(caps, dict) and all(isinstance(v, bool) for v in caps.values()):
        capabilities = {str(k): bool(v) for k, v in caps.items()}
    elif caps is not None:
        other["capabilities"] = _json_safe(caps, 0)
    for key, value in props.items():
        if key not in known and key != "capabilities":
            other[str(key)] = _json_safe(value, 0)
    family = _START_FAMILIES.get((start.version_major, start.version_minor), "0-9-1")
    return AmqpResult(
        family=family,
        version_major=start.version_major,
        version_minor=start.version_minor,
        server_properties=AmqpServerProperties(
            product=known.get("product"), version=known.get("version"),
            platform=known.get("platform"), copyright=known.get("copyright"),
            information=known.get("information"), cluster_name=known.get("cluster_name"),
            capabilities=capabilities, other=other),
        mechanisms=start.mechanisms.split(),
        locales=start.locales.split(),
    )


def build_close() -> bytes:
    """The bytes that end a probe politely after Connection.Start: none at all.

    Tried against RabbitMQ 3.10.8 on loopback, the two candidates log as follows:

    * closing the TCP connection (FIN) right after Connection.Start: one ``[warning]``
      "closing AMQP connection ... client unexpectedly closed TCP connection", and the
      server lets go at once;
    * sending Connection.Close (200) before Start-Ok: an ``[error]`` with
      ``{handshake_error,starting,0,{amqp_error,channel_error,"unexpected method in
      connection state starting",'connection.close'}}``, and the server holds the socket
      for 3 s before closing it (its silent-close delay).

    Connection.Close is only valid once the connection is open (after Start-Ok, Tune-Ok and
    Open), which would mean logging in; we never send Start-Ok. So the least noisy correct
    close is the plain TCP close, and this function returns ``b""``: the driver sends it
    only if it is not empty, which keeps the decision in this one place.

    :returns: ``b""``.
    """
    return b""


def _text(value: object) -> str:
    """A property or longstr as text (pamqp hands back bytes when it is not UTF-8)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _json_safe(value: object, depth: int) -> Any:
    """``value`` (a pamqp field value) converted to something JSON can hold."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if depth >= _MAX_DEPTH:
        return repr(value)[:256]
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    return repr(value)[:256]
