"""The MQTT-over-WebSocket probe driver: find a path that upgrades, then run the MQTT probe
inside the WebSocket.

1. Paths ``options.ws_paths`` (``/mqtt``, ``/``, ``/ws`` by default; at most 8) are tried
   in order, each on its own connection, with ``Sec-WebSocket-Protocol: mqtt``. The first
   that upgrades is kept. A refusal (404, 426, ...) moves on to the next path; an answer
   that is not HTTP, a close or a timeout stops there (not a web server).
2. The MQTT level loop (:func:`workers.probes.mqtt.run_levels`) runs over WebSockets on
   that path, one upgrade per CONNECT, offering ``mqtt`` for 3.1.1 and 5.0 and
   ``mqttv3.1`` for 3.1. The first CONNECT reuses the connection of step 1.

What each case becomes (``websocket`` always holds every try, its status and the
``Server`` header):

* a CONNACK inside the WebSocket: ``success``, protocol ``mqtt``, transport ``ws``/``wss``;
* no path upgrades: ``protocol-error`` (the HTTP answers are recorded), protocol ``None``;
  when no try got any answer at all, the transport failure as :class:`ProbeError`;
* an upgrade, then no MQTT (an echo server, a proxy that upgrades and closes, another
  subprotocol): ``protocol-error``, protocol ``None`` -- never MQTT.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal

from brokerscan.model import Status, WebSocketInfo, WebSocketTry
from workers.probes.base import ByteStream, Dial, ProbeOptions, ProbeOutcome, read_frame
from workers.probes.mqtt import run_levels, with_product
from workers.protocols import ws
from workers.protocols.base import ProtocolError
from workers.transport import ProbeError, Stream

__all__ = ["MAX_PATHS", "WsStream", "probe_mqtt_ws", "subprotocol_for"]

MAX_PATHS = 8
_HEAD_CAP = 16 * 1024

Answer = Literal["upgraded", "refused", "bad-upgrade", "not-http", "closed", "timeout",
                 "reset"]


def subprotocol_for(level: int) -> str:
    """The WebSocket subprotocol for an MQTT level (MQTT 3.1.1 section 6, 5.0 section 6)."""
    return "mqttv3.1" if level == 3 else "mqtt"


@dataclass(slots=True)
class _Seen:
    """What the WebSocket side showed, across every connection of one probe."""

    tries: list[WebSocketTry] = field(default_factory=list)
    server: str | None = None
    close_code: int | None = None  # the first close frame before any CONNACK
    first_reply: bytes = b""

    def info(self, path: str | None, subprotocol: str | None) -> WebSocketInfo:
        return WebSocketInfo(tries=list(self.tries), server=self.server, path=path,
                             subprotocol=subprotocol, close_code=self.close_code)


class WsStream:
    """A :class:`~workers.probes.base.ByteStream` carried in binary WebSocket messages."""

    def __init__(self, stream: Stream, reader: ws.FrameReader, leftover: bytes,
                 seen: _Seen) -> None:
        self._stream = stream
        self._reader = reader
        self._pending = bytearray()
        self._closed = False
        self._seen = seen
        self._leftover = leftover

    async def send(self, data: bytes) -> None:
        await self._stream.send(self._reader.binary(data))

    async def receive(self, max_bytes: int = 4096) -> bytes:
        """Message bytes as they arrive; ``b""`` once the server closed (frame or TCP).

        :raises ProtocolError: a frame the server must not send.
        :raises ProbeError: the transport failed.
        """
        while not self._pending and not self._closed:
            if self._leftover:
                chunk, self._leftover = self._leftover, b""
            else:
                chunk = await self._stream.receive(4096)
            if not chunk:
                self._closed = True
                break
            for event in self._reader.feed(chunk):
                if isinstance(event, ws.Data):
                    self._pending += event.data
                elif isinstance(event, ws.Ping):
                    await self._stream.send(self._reader.pong(event.payload))
                else:
                    self._closed = True
                    if self._seen.close_code is None:
                        self._seen.close_code = event.code
        taken = bytes(self._pending[:max_bytes])
        del self._pending[:max_bytes]
        return taken

    async def aclose(self) -> None:
        if not self._closed and not self._reader.closed:
            with suppress(ProbeError):
                await self._stream.send(self._reader.close(1000))
        await self._stream.aclose()


async def _upgrade(stream: Stream, path: str, subprotocol: str,
                   seen: _Seen) -> tuple[Answer, WsStream | None]:
    """Send one upgrade request on ``stream`` and record the answer as a try.

    :returns: the answer, and the WebSocket stream when it upgraded (``stream`` is closed
        otherwise).
    """
    peer = stream.peer
    host = f"{peer[0]}:{peer[1]}" if peer else "localhost"
    key = ws.new_key()
    buffer = bytearray()
    answer: Answer
    status: int | None = None
    error: str | None = None
    result: WsStream | None = None
    try:
        await stream.send(ws.build_request(host, path, subprotocol, key))
        consumed, reply = await read_frame(
            stream, lambda buf: ws.parse_handshake(buf, key, subprotocol), buffer, _HEAD_CAP)
    except EOFError:
        answer, error = "closed", "closed before an HTTP answer"
    except ws.BadUpgrade as exc:
        answer, status, error = "bad-upgrade", exc.status, str(exc)
        seen.server = exc.server or seen.server
    except ProtocolError as exc:
        answer, error = "not-http", str(exc)
    except ProbeError as exc:
        answer = "timeout" if exc.status is Status.IO_TIMEOUT else "reset"
        error = exc.message
    else:
        status = 101 if isinstance(reply, ws.Upgraded) else reply.status
        seen.server = reply.server or seen.server
        if isinstance(reply, ws.Upgraded):
            answer = "upgraded"
            result = WsStream(stream, ws.FrameReader(), bytes(buffer[consumed:]), seen)
        else:
            answer, error = "refused", reply.reason or None
    if not seen.first_reply and buffer:
        seen.first_reply = bytes(buffer[:4096])
    seen.tries.append(WebSocketTry(path=path, subprotocol=subprotocol, status=status,
                                   answer=answer, error=error))
    if result is None:
        await stream.aclose()
    return answer, result


async def probe_mqtt_ws(dial: Dial, options: ProbeOptions) -> ProbeOutcome:
    """Probe one (ip, port) for MQTT over WebSocket (see the module docstring).

    :raises ProbeError: the first connection failed, or no try got any answer.
    """
    seen = _Seen()
    paths = [p for p in options.ws_paths if p.startswith("/")][:MAX_PATHS] or ["/mqtt"]
    found: tuple[str, WsStream] | None = None
    first_failure: ProbeError | None = None
    for path in paths:
        try:
            stream = await dial()
        except ProbeError as exc:
            if not seen.tries:
                raise
            first_failure = exc
            break
        answer, opened = await _upgrade(stream, path, "mqtt", seen)
        if opened is not None:
            found = (path, opened)
            break
        if answer not in ("refused", "bad-upgrade"):
            break  # not HTTP, closed or silent: no other path will do better
    if found is None:
        return _no_upgrade(seen, first_failure)
    path, first = found
    spare: list[WsStream] = [first]

    async def connect(level: int) -> ByteStream:
        subprotocol = subprotocol_for(level)
        if spare and subprotocol == "mqtt":
            return spare.pop()
        answer, opened = await _upgrade(await dial(), path, subprotocol, seen)
        if opened is None:
            raise ProbeError(Status.CONNECTION_CLOSED,
                             f"websocket upgrade for {subprotocol} {answer}")
        return opened

    try:
        outcome = await run_levels(connect, options)
    except ProbeError as exc:
        return ProbeOutcome(status=Status.PROTOCOL_ERROR, websocket=seen.info(path, "mqtt"),
                            raw=seen.first_reply,
                            error=f"websocket upgraded on {path}, then no MQTT: {exc.message}")
    finally:
        for unused in spare:
            await unused.aclose()
    outcome.websocket = seen.info(path, "mqtt")
    if outcome.protocol is None:
        outcome.error = f"websocket upgraded on {path}, then {outcome.error or 'no MQTT'}"
        return outcome
    if outcome.mqtt is None:  # an AMQP header inside a WebSocket: not what we look for
        return ProbeOutcome(status=Status.PROTOCOL_ERROR, websocket=outcome.websocket,
                            raw=outcome.raw, error="websocket carried no MQTT")
    return with_product(outcome, outcome.websocket)


def _no_upgrade(seen: _Seen, failure: ProbeError | None) -> ProbeOutcome:
    answered = [t for t in seen.tries if t.answer in ("refused", "bad-upgrade", "not-http")]
    if not answered:
        last = seen.tries[-1]
        if last.answer == "closed":
            raise ProbeError(Status.CONNECTION_CLOSED, "closed before an HTTP answer")
        if last.answer == "timeout":
            raise ProbeError(Status.IO_TIMEOUT, last.error or "timed out")
        if failure is not None:
            raise failure
        raise ProbeError(Status.CONNECTION_RESET, last.error or "reset")
    statuses = ", ".join(f"{t.path} {t.status if t.status is not None else t.answer}"
                         for t in seen.tries)
    return ProbeOutcome(status=Status.PROTOCOL_ERROR, websocket=seen.info(None, None),
                        raw=seen.first_reply, error=f"no websocket upgrade: {statuses}")


PROBE = probe_mqtt_ws
