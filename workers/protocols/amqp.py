"""AMQP codec: the 8-byte protocol header and the AMQP 0-9-1 Connection.Start reply.

Spec sheet
----------

* Default ports: 5672 (plain), 5671 (TLS).
* Bytes sent: the 0-9-1 protocol header ``AMQP 0 0 9 1`` (first version of this module;
  the full reply parser follows).
* Fields recorded: the server's protocol header when it refuses 0-9-1 (family from the
  header table of protocol-anchors.md section 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from brokerscan.model import AmqpResult
from workers.protocols.base import NeedData, ProtocolError

__all__ = [
    "PROTOCOL_HEADER",
    "ProtocolHeader",
    "header_result",
    "parse_protocol_header",
]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_MAGIC = b"AMQP"
_HEADER_SIZE = 8

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
