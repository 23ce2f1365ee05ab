"""The MQTT probe driver: one anonymous, clean-session CONNECT per connection, level by level.

Levels are tried in ``options.mqtt_levels`` order (5.0, 3.1.1, 3.1 by default). The probe
moves on only when the broker refuses the level (3.x rc 1, 5.0 reason 0x84), or ends the
connection without a CONNACK (it closed, or sent a DISCONNECT); it stops at the first
other CONNACK unless ``options.mqtt_all_levels``. What each case becomes:

* a CONNACK: ``success``, protocol ``mqtt``, ``raw`` = the CONNACK reported (the first
  one that did not refuse the level, else the last refusal);
* ``AMQP....`` (RabbitMQ answers a CONNECT with its protocol header): ``success``,
  protocol ``amqp``;
* other bytes (HTTP, an echo, garbage): ``protocol-error``, ``raw`` = the first bytes;
* a DISCONNECT but never a CONNACK: ``protocol-error`` with protocol ``mqtt``;
* closed with no byte at every level: ``ProbeError(connection-closed)``;
* a transport failure (timeout, reset) on the first attempt propagates as ProbeError; on a
  later one it is recorded as that attempt's answer, no further level is tried, and the
  earlier answers stand.

After the first accepted CONNACK the probe reads, for ``options.mqtt_unasked_wait`` seconds
(at most 16 packets, 64 KiB), what the broker sends unasked; with ``options.sys_version``
(opt-in) it then subscribes to ``$SYS/broker/version`` alone, waits at most 2 s and 64 KiB
for it, and unsubscribes. Then DISCONNECT. The broker product is told from all of it
(:mod:`workers.fingerprint`).

:func:`run_levels` is the level loop over any byte stream; :mod:`workers.probes.mqtt_ws`
runs it inside a WebSocket.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal, cast

from brokerscan.model import (
    MqttAttempt,
    MqttResult,
    MqttSys,
    MqttUnasked,
    Protocol,
    Status,
    WebSocketInfo,
)
from workers.fingerprint import identify
from workers.probes.base import ByteStream, Dial, ProbeOptions, ProbeOutcome, read_frame
from workers.probes.mqtt_session import read_sys_version, read_unasked
from workers.protocols import amqp
from workers.protocols.base import ProtocolError
from workers.protocols.mqtt import (
    ConnAck,
    Disconnect,
    OtherPacket,
    Packet,
    build_connect,
    build_disconnect,
    is_anonymous,
    is_level_refused,
    parse_packet,
    return_code_name,
)
from workers.transport import ProbeError

__all__ = ["PROBE", "Connect", "make_client_id", "probe_mqtt", "run_levels", "with_product"]

Connect = Callable[[int], Awaitable[ByteStream]]
"""Opens a stream ready for an MQTT CONNECT of the given level."""

Level = Literal[3, 4, 5]
Answer = Literal["connack", "disconnect", "closed", "timeout", "reset", "other"]

_MAX_CLIENT_ID = 23  # MQTT 3.1's limit: one id that every level accepts
_MIN_RANDOM = 8  # hex digits of randomness kept even when the prefix is long


def make_client_id(prefix: str) -> str:
    """A random client id: ``prefix`` and hex digits, 23 characters in all.

    The prefix is cut to leave at least 8 random hex digits (so the id stays random and
    fits MQTT 3.1); it is meant to be ASCII (non-ASCII characters count as one).
    """
    prefix = prefix[:_MAX_CLIENT_ID - _MIN_RANDOM]
    digits = _MAX_CLIENT_ID - len(prefix)
    return prefix + secrets.token_hex((digits + 1) // 2)[:digits]


@dataclass(slots=True)
class _Reply:
    """What one CONNECT got back. ``raw`` is the packet, or every byte when unparsable."""

    packet: Packet | amqp.ProtocolHeader | None  # None: closed, or not MQTT (error set)
    raw: bytes
    error: str | None = None
    unasked: list[MqttUnasked] = field(default_factory=list)
    sys: MqttSys | None = None


def _parse_reply(buf: bytes, level: int, max_size: int) -> tuple[int, Packet |
                                                                 amqp.ProtocolHeader]:
    """An MQTT packet, or an AMQP protocol header (no MQTT packet starts with ``A``)."""
    if b"AMQP".startswith(buf[:4]) or buf.startswith(b"AMQP"):
        return amqp.parse_protocol_header(buf)
    return parse_packet(buf, level, max_size)


async def _attempt(connect: Connect, level: int, client_id: str, options: ProbeOptions,
                   after: bool) -> _Reply:
    """Connect, send one CONNECT, read one reply, say goodbye, close.

    :param after: when the CONNACK accepts, read what the broker sends unasked (and
        ``$SYS/broker/version`` if opted in) before the goodbye.
    :raises ProbeError: the dial, the send or a read failed.
    """
    stream = await connect(level)
    try:
        keepalive = min(max(options.keepalive, 0), 0xFFFF)  # a bad setting must not raise
        await stream.send(build_connect(level, client_id, keepalive))
        buffer = bytearray()
        cap = options.max_reply_bytes
        try:
            consumed, item = await read_frame(
                stream, lambda buf: _parse_reply(buf, level, cap), buffer, cap)
        except EOFError:
            return _Reply(None, bytes(buffer[:cap]))
        except ProtocolError as exc:
            return _Reply(None, bytes(buffer[:cap]), f"not mqtt: {exc}")
        reply = _Reply(item, bytes(buffer[:consumed]))
        if isinstance(item, ConnAck):
            if after and item.return_code == 0 and not is_level_refused(item):
                rest = bytearray(buffer[consumed:])
                reply.unasked.extend(await read_unasked(stream, rest, level, options))
                if options.sys_version:
                    reply.sys = await read_sys_version(stream, rest, level)
            with suppress(ProbeError):  # polite, not needed: the close ends the session
                await stream.send(build_disconnect(level))
        return reply
    finally:
        await stream.aclose()


def _answer_of(error: ProbeError) -> Answer:
    if error.status in (Status.IO_TIMEOUT, Status.CONNECTION_TIMEOUT):
        return "timeout"
    if error.status is Status.CONNECTION_CLOSED:
        return "closed"
    return "reset"


def _levels(options: ProbeOptions) -> list[Level]:
    """The levels to try: valid ones, once each, in order (the default if none is)."""
    levels: list[Level] = []
    for level in options.mqtt_levels:
        if level in (3, 4, 5) and level not in levels:
            levels.append(cast(Level, level))
    return levels or [5, 4, 3]


async def probe_mqtt(dial: Dial, options: ProbeOptions) -> ProbeOutcome:
    """Probe one (ip, port) for MQTT; see the module docstring for what each case gives.

    :param dial: the first call returns the engine's connection, later ones dial anew.
    :param options: levels to try, client id prefix, keep-alive, reply cap.
    :returns: the outcome (``success`` with an MQTT or AMQP result, or ``protocol-error``).
    :raises ProbeError: a transport failure before the target answered anything, or
        ``connection-closed`` when it closed without a byte at every level.
    """

    async def connect(_level: int) -> ByteStream:
        return await dial()

    return with_product(await run_levels(connect, options), None)


def with_product(outcome: ProbeOutcome, websocket: WebSocketInfo | None) -> ProbeOutcome:
    """``outcome`` with the broker product of its MQTT result filled in."""
    if outcome.mqtt is not None:
        outcome.mqtt = outcome.mqtt.model_copy(
            update={"product": identify(outcome.mqtt, websocket)})
    return outcome


async def run_levels(connect: Connect, options: ProbeOptions) -> ProbeOutcome:
    """The level loop of :func:`probe_mqtt` over streams from ``connect``.

    :raises ProbeError: as :func:`probe_mqtt`.
    """
    client_id = make_client_id(options.client_id_prefix)
    attempts: list[MqttAttempt] = []
    accepted: list[Level] = []
    refused: list[Level] = []
    chosen: tuple[ConnAck, bytes] | None = None  # the CONNACK reported
    extras: _Reply | None = None  # the reply that carries unasked packets and $SYS
    refusal: tuple[ConnAck, bytes] | None = None  # the last level refusal, as a fallback
    leftover: _Reply | None = None  # a DISCONNECT, or bytes of an incomplete reply
    failure: ProbeError | None = None
    for level in _levels(options):
        try:
            reply = await _attempt(connect, level, client_id, options, after=not accepted)
        except ProbeError as exc:
            if not attempts:
                raise
            attempts.append(MqttAttempt(protocol_level=level, answer=_answer_of(exc)))
            failure = exc
            break
        packet = reply.packet
        if isinstance(packet, amqp.ProtocolHeader):
            return ProbeOutcome(status=Status.SUCCESS, protocol=Protocol.AMQP,
                                amqp=amqp.header_result(packet), raw=reply.raw)
        if reply.error is not None or isinstance(packet, OtherPacket):
            attempts.append(MqttAttempt(protocol_level=level, answer="other"))
            if chosen is None and refusal is None and leftover is None:
                error = (f"not mqtt: packet type {packet.packet_type} before CONNACK"
                         if isinstance(packet, OtherPacket) else reply.error)
                return ProbeOutcome(status=Status.PROTOCOL_ERROR, raw=reply.raw, error=error)
            break
        if isinstance(packet, Disconnect):
            attempts.append(MqttAttempt(protocol_level=level, answer="disconnect",
                                        return_code=packet.reason_code))
            leftover = reply
            continue
        if packet is None:
            attempts.append(MqttAttempt(protocol_level=level, answer="closed"))
            if reply.raw and leftover is None:
                leftover = reply
            continue
        attempts.append(MqttAttempt(protocol_level=level, answer="connack",
                                    return_code=packet.return_code))
        if is_level_refused(packet):
            refused.append(level)
            refusal = (packet, reply.raw)
            continue
        if packet.return_code == 0:
            if not accepted:
                extras = reply
            accepted.append(level)
        if chosen is None:
            chosen = (packet, reply.raw)
        if not options.mqtt_all_levels:
            break
    report = chosen or refusal
    if report is not None:
        connack, raw = report
        result = MqttResult(
            protocol_level=cast(Level, connack.level),
            return_code=connack.return_code,
            return_code_name=return_code_name(connack.level, connack.return_code),
            session_present=connack.session_present,
            anonymous=is_anonymous(connack.level, connack.return_code),
            accepted_levels=accepted, refused_levels=refused, attempts=attempts,
            properties=connack.properties, client_id=client_id,
            unasked=extras.unasked if extras is not None else [],
            sys=extras.sys if extras is not None else None)
        return ProbeOutcome(status=Status.SUCCESS, protocol=Protocol.MQTT, mqtt=result, raw=raw)
    if leftover is not None and isinstance(leftover.packet, Disconnect):
        return ProbeOutcome(status=Status.PROTOCOL_ERROR, protocol=Protocol.MQTT,
                            raw=leftover.raw, error="mqtt: DISCONNECT without a CONNACK")
    if leftover is not None:
        return ProbeOutcome(status=Status.PROTOCOL_ERROR, raw=leftover.raw,
                            error=f"not mqtt: closed after {len(leftover.raw)} bytes "
                                  "of an incomplete reply")
    if failure is not None:
        raise failure
    levels = ", ".join(str(a.protocol_level) for a in attempts)
    raise ProbeError(Status.CONNECTION_CLOSED, f"closed without a reply to CONNECT ({levels})")


PROBE = probe_mqtt
