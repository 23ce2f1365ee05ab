"""AMQP 1.0 codec: the SASL header, frames, the type system, and ``sasl-mechanisms``.

Written against OASIS AMQP 1.0 (29 October 2012): part 1 (types: section 1.6 encodings),
part 2 (transport: 2.2 protocol header, 2.3 frames) and part 5 (security: 5.3 SASL). Sans-IO
and bounded: a frame's declared size is checked before its body is awaited, nesting is
limited to 16 levels and every length is checked against the bytes it claims.

Spec sheet
----------

* Default ports: 5672 (plain), 5671 (TLS).
* Bytes sent: the SASL protocol header ``AMQP 3 1 0 0`` (:data:`SASL_HEADER`) and nothing
  else: never ``sasl-init``, so no mechanism is ever tried.
* Replies understood: the server's 8-byte header, then (for ``AMQP 3 1 0 0``) a SASL frame
  (type 0x01) whose body is the described list ``sasl-mechanisms`` (descriptor
  ``0x00000000:0x00000040`` or ``amqp:sasl-mechanisms:list``) with the field
  ``sasl-server-mechanisms``: one symbol, or an array of symbols.
* Fields recorded: the header and the mechanisms, as the server spelled them.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

from workers.protocols.amqp import ProtocolHeader, parse_protocol_header
from workers.protocols.base import NeedData, ProtocolError

__all__ = [
    "SASL_HEADER",
    "SASL_MECHANISMS",
    "Described",
    "Frame",
    "Symbol",
    "decode_value",
    "parse_frame",
    "parse_sasl_reply",
    "sasl_mechanisms",
]

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
SASL_MECHANISMS = 0x40  # part 5, section 5.3.3.1: descriptor code 0x00000000:0x00000040
_SASL_MECHANISMS_NAME = "amqp:sasl-mechanisms:list"
_SASL_FRAME = 0x01
_MIN_FRAME = 8  # part 2, section 2.3.1: a frame is at least its 8-byte header
_MAX_DEPTH = 16
_MAX_EMPTY_ELEMENTS = 4096  # an array of zero-width elements (nulls) holds at most this many


class Symbol(str):
    """An AMQP ``symbol`` (ASCII), told apart from a ``string``."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Described:
    """A described type (part 1, section 1.2): a descriptor and a value."""

    descriptor: Any
    value: Any


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame (part 2, section 2.3.1): type (0 AMQP, 1 SASL), channel, body."""

    type: int
    channel: int
    body: bytes


# Fixed-width primitive encodings: code -> (width, struct format or None for raw bytes).
_FIXED: dict[int, tuple[int, str | None]] = {
    0x50: (1, ">B"), 0x51: (1, ">b"), 0x52: (1, ">B"), 0x53: (1, ">B"), 0x54: (1, ">b"),
    0x55: (1, ">b"), 0x56: (1, ">B"),
    0x60: (2, ">H"), 0x61: (2, ">h"),
    0x70: (4, ">I"), 0x71: (4, ">i"), 0x72: (4, ">f"), 0x73: (4, ">I"), 0x74: (4, None),
    0x80: (8, ">Q"), 0x81: (8, ">q"), 0x82: (8, ">d"), 0x83: (8, ">q"), 0x84: (8, None),
    0x94: (16, None), 0x98: (16, None),
}
_CONSTANTS: dict[int, Any] = {0x40: None, 0x41: True, 0x42: False, 0x43: 0, 0x44: 0}
_VARIABLE = {0xA0: 1, 0xA1: 1, 0xA3: 1, 0xB0: 4, 0xB1: 4, 0xB3: 4}  # code -> size width
_COMPOUND = {0xC0: 1, 0xC1: 1, 0xD0: 4, 0xD1: 4}  # list8, map8, list32, map32
_ARRAY = {0xE0: 1, 0xF0: 4}


class _Reader:
    """A cursor over bytes that are all there: running out is malformed, not NeedData."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise ProtocolError(f"AMQP 1.0 value runs past its end ({n} bytes wanted)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")


def _constructor(r: _Reader, depth: int) -> tuple[int, Any, bool]:
    """Read a constructor: ``(format code, descriptor, described?)``."""
    code = r.uint(1)
    if code != 0x00:
        return code, None, False
    descriptor = _value(r, depth + 1)
    code = r.uint(1)
    if code == 0x00:
        raise ProtocolError("a descriptor may not itself be described here")
    return code, descriptor, True


def _value(r: _Reader, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ProtocolError(f"AMQP 1.0 values nested deeper than {_MAX_DEPTH}")
    code, descriptor, described = _constructor(r, depth)
    value = _body(r, code, depth)
    return Described(descriptor, value) if described else value


def _body(r: _Reader, code: int, depth: int) -> Any:
    """The value of format ``code`` at the cursor (the constructor already read)."""
    if code in _CONSTANTS:
        return _CONSTANTS[code]
    if code == 0x45:  # list0
        return []
    if code in _FIXED:
        width, fmt = _FIXED[code]
        raw = r.take(width)
        if code == 0x56:
            if raw[0] > 1:
                raise ProtocolError(f"boolean octet {raw[0]}")
            return bool(raw[0])
        if code == 0x98:
            return uuid.UUID(bytes=raw)
        if fmt is None:
            return raw  # decimals: kept as their octets
        return struct.unpack(fmt, raw)[0]
    if code in _VARIABLE:
        raw = r.take(r.uint(_VARIABLE[code]))
        if code in (0xA0, 0xB0):
            return raw
        try:
            text = raw.decode("ascii" if code in (0xA3, 0xB3) else "utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"bad {'symbol' if code in (0xA3, 0xB3) else 'string'}: "
                                f"{exc.reason}") from None
        return Symbol(text) if code in (0xA3, 0xB3) else text
    if code in _COMPOUND:
        inner, count = _sized(r, _COMPOUND[code], "compound")
        items = [_value(inner, depth + 1) for _ in range(count)]
        _ended(inner, "compound")
        if code in (0xC1, 0xD1):
            if count % 2:
                raise ProtocolError(f"map with an odd count {count}")
            return {_key(items[i]): items[i + 1] for i in range(0, count, 2)}
        return items
    if code in _ARRAY:
        inner, count = _sized(r, _ARRAY[code], "array")
        element, descriptor, described = _constructor(inner, depth)
        if element in _ARRAY and depth + 1 > _MAX_DEPTH:
            raise ProtocolError(f"AMQP 1.0 values nested deeper than {_MAX_DEPTH}")
        if count > max(inner.end - inner.pos, _MAX_EMPTY_ELEMENTS):
            # elements of no width (null, true, list0, ...) cost no bytes: bound their count
            raise ProtocolError(f"array of {count} elements in {inner.end - inner.pos} bytes")
        values = []
        for _ in range(count):
            item = _body(inner, element, depth + 1)
            values.append(Described(descriptor, item) if described else item)
        _ended(inner, "array")
        return values
    raise ProtocolError(f"unknown AMQP 1.0 format code 0x{code:02x}")


def _sized(r: _Reader, width: int, what: str) -> tuple[_Reader, int]:
    """Read a compound's or array's size and count: a reader over its bytes, the count."""
    size = r.uint(width)
    if size < width:
        raise ProtocolError(f"{what} of size {size} cannot hold its count")
    inner = _Reader(r.data, r.pos, r.pos + size)
    r.take(size)
    return inner, inner.uint(width)


def _ended(inner: _Reader, what: str) -> None:
    if inner.pos != inner.end:
        raise ProtocolError(f"{what} has {inner.end - inner.pos} bytes after its last element")


def _key(value: Any) -> Any:
    """A map key as Python can hash it (lists and maps as their repr)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def decode_value(data: bytes) -> Any:
    """Decode one AMQP 1.0 value that fills ``data`` exactly.

    :returns: None, bool, int, float, str, :class:`Symbol`, bytes, UUID, list, dict or
        :class:`Described`.
    :raises ProtocolError: malformed, truncated, nested too deep, or bytes left over.
    """
    r = _Reader(bytes(data))
    value = _value(r, 0)
    if r.pos != r.end:
        raise ProtocolError(f"{r.end - r.pos} bytes after the AMQP 1.0 value")
    return value


def parse_frame(buf: bytes, max_size: int = 65536) -> tuple[int, Frame]:
    """Parse the frame at the start of ``buf`` (part 2, section 2.3.1).

    :param max_size: the largest frame accepted; a larger size field is refused at once.
    :returns: ``(consumed, frame)``.
    :raises NeedData: ``buf`` is a proper prefix of a frame.
    :raises ProtocolError: a size below 8 or above ``max_size``, a data offset below 2 or
        past the frame.
    """
    if len(buf) < 4:
        at_least = int.from_bytes(bytes(buf[:4]).ljust(4, b"\0"), "big")
        if at_least > max_size:  # a partial size field already bounds the size from below
            raise ProtocolError(f"AMQP 1.0 frame size of at least {at_least} exceeds cap")
        raise NeedData
    size = int.from_bytes(buf[:4], "big")
    if size < _MIN_FRAME:
        raise ProtocolError(f"AMQP 1.0 frame size {size} is below 8")
    if size > max_size:
        raise ProtocolError(f"AMQP 1.0 frame size {size} exceeds {max_size}")
    if len(buf) < 6:
        raise NeedData
    doff = buf[4]
    if doff < 2 or doff * 4 > size:
        raise ProtocolError(f"AMQP 1.0 data offset {doff} for a frame of {size} bytes")
    if len(buf) < size:
        raise NeedData
    frame = Frame(buf[5], int.from_bytes(buf[6:8], "big"), bytes(buf[doff * 4:size]))
    return size, frame


def sasl_mechanisms(frame: Frame) -> list[str]:
    """The mechanisms of a ``sasl-mechanisms`` frame (part 5, section 5.3.3.1).

    :raises ProtocolError: not a SASL frame, not ``sasl-mechanisms``, or a field of the
        wrong type.
    """
    if frame.type != _SASL_FRAME:
        raise ProtocolError(f"frame type {frame.type}, not SASL")
    body = decode_value(frame.body)
    if not isinstance(body, Described) or body.descriptor not in (
            SASL_MECHANISMS, _SASL_MECHANISMS_NAME):
        raise ProtocolError(f"SASL frame is not sasl-mechanisms: {str(body)[:80]}")
    fields = body.value
    if not isinstance(fields, list) or not fields:
        raise ProtocolError("sasl-mechanisms without its mechanisms field")
    mechanisms = fields[0]
    if isinstance(mechanisms, Symbol):
        return [str(mechanisms)]
    if isinstance(mechanisms, list) and all(isinstance(m, Symbol) for m in mechanisms):
        if not mechanisms:
            raise ProtocolError("sasl-mechanisms with no mechanism")
        return [str(m) for m in mechanisms]
    raise ProtocolError(f"sasl-server-mechanisms is not symbols: {str(mechanisms)[:80]}")


def parse_sasl_reply(buf: bytes, max_size: int = 65536) -> tuple[int, ProtocolHeader,
                                                                   list[str] | None]:
    """Parse a server's answer to :data:`SASL_HEADER`.

    :returns: ``(consumed, header, mechanisms)``; ``mechanisms`` is None when the header
        is not ``AMQP 3 1 0 0`` (the server refused SASL and named what it speaks).
    :raises NeedData: the header, or the frame after a SASL header, is incomplete.
    :raises ProtocolError: not an AMQP header, or a bad first SASL frame.
    """
    used, header = parse_protocol_header(buf)
    if header.raw != SASL_HEADER:
        return used, header, None
    size, frame = parse_frame(bytes(buf[used:]), max_size)
    return used + size, header, sasl_mechanisms(frame)
