"""WebSocket client codec (RFC 6455) for MQTT over WebSocket: the HTTP upgrade, then frames.

Sans-IO: the upgrade request and response go through h11, the frames through wsproto's
frame layer; neither touches a socket, and :mod:`workers.probes.mqtt_ws` moves the bytes.
Nothing here is MQTT-specific: the subprotocol is a parameter.

Spec sheet
----------

* Ports: whatever carries HTTP (``80``, ``443``, ``8080``, ``8083``, ``8084``, ``9001``, ...;
  see :mod:`scheduler.ports`).
* Bytes sent: ``GET <path> HTTP/1.1`` with ``Host``, ``Upgrade: websocket``,
  ``Connection: Upgrade``, ``Sec-WebSocket-Key`` (16 random bytes, base64),
  ``Sec-WebSocket-Version: 13``, ``Sec-WebSocket-Protocol: <subprotocol>`` and a
  ``User-Agent``; no extension is offered (no compression). Then masked binary frames, a
  pong for every ping, and a close frame (1000) at the end.
* Replies understood: ``101 Switching Protocols`` that names our subprotocol (or none) and
  carries the right ``Sec-WebSocket-Accept`` is an upgrade; any other final response is a
  refusal (its status and ``Server`` header are kept); a 101 that fails a check is a bad
  upgrade; bytes that are not HTTP are a :class:`ProtocolError`.
* Fields recorded: the status, the ``Server`` header, the subprotocol accepted, the close
  code a server sends.

h11 bounds the response head (16 KiB); frame payloads are handed on as they arrive, so a
huge length field never makes this codec buffer it (the driver caps what it reads).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import h11
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

from workers.protocols.base import NeedData, ProtocolError

__all__ = [
    "BadUpgrade",
    "Close",
    "Data",
    "FrameReader",
    "Ping",
    "Refused",
    "Upgraded",
    "accept_token",
    "build_request",
    "new_key",
    "parse_handshake",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_MAX_HEAD = 16 * 1024
_USER_AGENT = b"brokerscan"


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A valid ``101 Switching Protocols``: the WebSocket is open."""

    subprotocol: str | None
    server: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    """A final HTTP response other than 101: the server would not upgrade this path."""

    status: int
    server: str | None
    reason: str


class BadUpgrade(ProtocolError):
    """An HTTP answer that claims an upgrade but is not a valid WebSocket handshake for us
    (wrong accept token, another subprotocol, no ``Upgrade: websocket``)."""

    def __init__(self, message: str, status: int, server: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.server = server


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (section 4.1)."""
    return base64.b64encode(os.urandom(16))


def accept_token(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _client(host: str, path: str, subprotocol: str, key: bytes) -> tuple[h11.Connection, bytes]:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
    request = h11.Request(method="GET", target=path.encode("ascii"), headers=[
        (b"Host", host.encode("ascii")),
        (b"User-Agent", _USER_AGENT),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", key),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Protocol", subprotocol.encode("ascii")),
    ])
    data = conn.send(request) + (conn.send(h11.EndOfMessage()) or b"")
    return conn, data


def build_request(host: str, path: str, subprotocol: str, key: bytes) -> bytes:
    """The upgrade request.

    :param host: the ``Host`` header (``ip`` or ``ip:port``).
    :param path: the request target, starting with ``/``.
    :param subprotocol: the one ``Sec-WebSocket-Protocol`` offered (``mqtt``).
    :param key: from :func:`new_key`.
    :raises ValueError: a path or host that is not printable ASCII, or a path without ``/``.
    """
    if not path.startswith("/") or not (path + host + subprotocol).isascii() \
            or any(c.isspace() for c in path + host + subprotocol):
        raise ValueError(f"bad WebSocket path, host or subprotocol: {path!r} {host!r}")
    return _client(host, path, subprotocol, key)[1]


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def parse_handshake(buf: bytes, key: bytes, subprotocol: str) -> tuple[int, Upgraded | Refused]:
    """Parse the server's answer to :func:`build_request` at the start of ``buf``.

    :param buf: the bytes received so far on the connection.
    :param key: the key the request carried.
    :param subprotocol: the subprotocol the request offered.
    :returns: ``(consumed, answer)``; after an :class:`Upgraded` the bytes from ``consumed``
        on are WebSocket frames. After a :class:`Refused` only the head was read.
    :raises NeedData: the response head is not complete yet.
    :raises BadUpgrade: a 101 that is not a valid upgrade for this request.
    :raises ProtocolError: the bytes are not an HTTP/1.x response (or the head is over
        16 KiB).
    """
    if not buf:
        raise NeedData
    head = bytes(buf[:5])
    if not (b"HTTP/".startswith(head) or head.startswith(b"HTTP/")):
        # An SSH banner, an AMQP header, a TLS alert: say so now rather than wait for an
        # end of headers that will never come.
        raise ProtocolError(f"not an HTTP response: {head!r}")
    conn, _ = _client("x", "/", subprotocol, key)
    try:
        conn.receive_data(bytes(buf))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                raise NeedData
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    continue  # 100 Continue and friends: the real answer follows
                server = _header(event.headers, b"server")
                _check_upgrade(event.headers, key, subprotocol, server)
                trailing, _closed = conn.trailing_data
                return len(buf) - len(trailing), Upgraded(
                    _header(event.headers, b"sec-websocket-protocol"), server)
            if isinstance(event, h11.Response):
                return len(buf), Refused(event.status_code, _header(event.headers, b"server"),
                                         event.reason.decode("latin-1"))
            if event is h11.PAUSED:  # pragma: no cover - a 101 returns above
                raise ProtocolError("HTTP parser paused before a response")
            raise ProtocolError(f"unexpected HTTP event {type(event).__name__}")
    except h11.RemoteProtocolError as exc:
        raise ProtocolError(f"not an HTTP response: {exc}") from None


def _check_upgrade(headers: Sequence[tuple[bytes, bytes]], key: bytes, subprotocol: str,
                   server: str | None) -> None:
    upgrade = (_header(headers, b"upgrade") or "").strip().lower()
    connection = (_header(headers, b"connection") or "").lower()
    accept = (_header(headers, b"sec-websocket-accept") or "").strip()
    chosen = _header(headers, b"sec-websocket-protocol")
    if upgrade != "websocket":
        raise BadUpgrade(f"101 with Upgrade {upgrade!r}", 101, server)
    if "upgrade" not in [token.strip() for token in connection.split(",")]:
        raise BadUpgrade("101 without Connection: Upgrade", 101, server)
    if accept.encode("latin-1") != accept_token(key):
        raise BadUpgrade("101 with a wrong Sec-WebSocket-Accept", 101, server)
    if chosen is not None and chosen.strip() != subprotocol:
        raise BadUpgrade(f"101 for another subprotocol {chosen.strip()!r}", 101, server)
    if _header(headers, b"sec-websocket-extensions"):
        raise BadUpgrade("101 with an extension we did not offer", 101, server)


# -- frames --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    """Message bytes (binary or text frames alike; a frame may be part of a message)."""

    data: bytes
    text: bool = False


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int | None
    reason: str


Event = Data | Ping | Close


class FrameReader:
    """The client side of the frame layer: feed server bytes, get events; build frames.

    Wraps wsproto's :class:`~wsproto.frame_protocol.FrameProtocol` (client mode: frames we
    send are masked, frames we receive must not be). A frame the server must not send
    (masked, a bad opcode, reserved bits, bad UTF-8 in a text frame, a bad close payload)
    raises :class:`ProtocolError`; nothing else escapes.
    """

    def __init__(self) -> None:
        self._proto = FrameProtocol(client=True, extensions=[])
        self.closed = False

    def feed(self, data: bytes) -> list[Event]:
        """Events for ``data`` (and any bytes fed before that did not make a frame yet).

        :raises ProtocolError: a frame the server must not send.
        """
        events: list[Event] = []
        if self.closed:
            return events
        try:
            self._proto.receive_bytes(bytes(data))
            for frame in self._proto.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.CLOSE:
                    code, reason = frame.payload  # type: ignore[str-unpack]
                    self.closed = True
                    events.append(Close(None if code == CloseReason.NO_STATUS_RCVD
                                        else int(code), str(reason)))
                    break
                if opcode is Opcode.PING:
                    events.append(Ping(bytes(frame.payload)))  # type: ignore[arg-type]
                elif opcode is Opcode.PONG:
                    continue
                elif opcode is Opcode.TEXT:
                    events.append(Data(str(frame.payload).encode("utf-8"), text=True))
                else:
                    events.append(Data(bytes(frame.payload)))  # type: ignore[arg-type]
        except ParseFailed as exc:
            raise ProtocolError(f"bad WebSocket frame: {exc}") from None
        except (ValueError, TypeError, AssertionError) as exc:
            raise ProtocolError(f"bad WebSocket frame: {type(exc).__name__}: {exc}") from None
        return events

    def binary(self, data: bytes) -> bytes:
        """One masked binary frame carrying ``data`` (a whole message)."""
        return bytes(self._proto.send_data(data, fin=True))

    def pong(self, payload: bytes) -> bytes:
        """The masked pong answering a ping with ``payload``."""
        return bytes(self._proto.pong(payload))

    def close(self, code: int = 1000) -> bytes:
        """A masked close frame (1000: normal closure)."""
        return bytes(self._proto.close(code))
