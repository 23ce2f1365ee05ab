"""What an accepted MQTT session shows before the probe leaves: packets the broker sends
unasked right after CONNACK, and (opt-in) the payload of ``$SYS/broker/version``.

Both reads are bounded in time, packets and bytes, so a broker that streams ``$SYS``
without end costs at most 2 s and 64 KiB. The only packets sent are one SUBSCRIBE to
``$SYS/broker/version`` (never ``#``) and its UNSUBSCRIBE, and only with ``--sys-version``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from contextlib import suppress
from typing import Literal, cast

from brokerscan.model import MqttSys, MqttUnasked, Status
from workers.probes.base import ByteStream, ProbeOptions
from workers.protocols.base import NeedData, ProtocolError
from workers.protocols.mqtt import (
    PUBLISH,
    SUBACK,
    ConnAck,
    Disconnect,
    OtherPacket,
    Packet,
    build_subscribe,
    build_unsubscribe,
    decode_publish,
    decode_suback,
    parse_packet,
)
from workers.transport import ProbeError

__all__ = ["SYS_VERSION_TOPIC", "read_sys_version", "read_unasked"]

SYS_VERSION_TOPIC = "$SYS/broker/version"
_UNASKED_PACKETS = 16
_UNASKED_BYTES = 64 * 1024
_SYS_WAIT = 2.0
_SYS_BYTES = 64 * 1024
_PAYLOAD_CAP = 256  # bytes of a PUBLISH payload kept in the record


Ending = Literal["done", "timeout", "capped", "closed", "malformed"]


async def _read_packets(stream: ByteStream, buffer: bytearray, level: int, wait: float,
                        max_bytes: int, take: Callable[[Packet], bool]) -> Ending:
    """Hand packets to ``take`` until it returns True, ``wait`` seconds pass, ``max_bytes``
    were read, or the stream ends. ``buffer`` holds bytes read already."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    read = 0
    while True:
        while buffer:
            try:
                used, packet = parse_packet(bytes(buffer), level, max_bytes)
            except NeedData:
                break
            except ProtocolError:
                return "malformed"
            del buffer[:used]
            if take(packet):
                return "done"
        if read >= max_bytes:
            return "capped"
        remaining = deadline - loop.time()
        if remaining <= 0:
            return "timeout"
        try:
            async with asyncio.timeout(remaining):
                chunk = await stream.receive(min(4096, max_bytes - read))
        except TimeoutError:
            return "timeout"
        except ProtocolError:
            return "malformed"
        except ProbeError as exc:
            return "timeout" if exc.status is Status.IO_TIMEOUT else "closed"
        if not chunk:
            return "closed"
        read += len(chunk)
        buffer += chunk


def _payload_text(data: bytes) -> str:
    kept = data[:_PAYLOAD_CAP]
    try:
        return kept.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(kept).decode("ascii")


def _unasked_of(packet: Packet, level: int) -> MqttUnasked:
    if isinstance(packet, OtherPacket) and packet.packet_type == PUBLISH:
        try:
            publish = decode_publish(packet, level)
        except ProtocolError:
            return MqttUnasked(packet_type=PUBLISH)
        return MqttUnasked(packet_type=PUBLISH, topic=publish.topic,
                           payload=_payload_text(publish.payload), retain=publish.retain,
                           qos=publish.qos)
    if isinstance(packet, Disconnect):
        return MqttUnasked(packet_type=14)
    if isinstance(packet, ConnAck):
        return MqttUnasked(packet_type=2)
    return MqttUnasked(packet_type=packet.packet_type)


async def read_unasked(stream: ByteStream, buffer: bytearray, level: int,
                   options: ProbeOptions) -> list[MqttUnasked]:
    """Packets the broker sends right after CONNACK without being asked (bounded)."""
    seen: list[MqttUnasked] = []

    def take(packet: Packet) -> bool:
        seen.append(_unasked_of(packet, level))
        return len(seen) >= _UNASKED_PACKETS

    wait = max(0.0, options.mqtt_unasked_wait)
    await _read_packets(stream, buffer, level, wait, _UNASKED_BYTES, take)
    return seen


async def read_sys_version(stream: ByteStream, buffer: bytearray, level: int) -> MqttSys:
    """SUBSCRIBE to ``$SYS/broker/version`` only, wait for it (2 s, 64 KiB), UNSUBSCRIBE."""
    try:
        await stream.send(build_subscribe(level, 1, SYS_VERSION_TOPIC))
    except ProbeError:
        return MqttSys(answer="closed")
    state: dict[str, object] = {"suback": None, "version": None, "packets": 0, "refused": False}

    def take(packet: Packet) -> bool:
        if not isinstance(packet, OtherPacket):
            return isinstance(packet, Disconnect)
        if packet.packet_type == SUBACK:
            try:
                code = decode_suback(packet, level).codes[0]
            except ProtocolError:
                return False
            state["suback"] = code
            if code >= 0x80:
                state["refused"] = True
                return True
        elif packet.packet_type == PUBLISH:
            state["packets"] = cast(int, state["packets"]) + 1
            try:
                publish = decode_publish(packet, level)
            except ProtocolError:
                return False
            if publish.topic == SYS_VERSION_TOPIC:
                state["version"] = publish.payload[:_PAYLOAD_CAP].decode("utf-8", "replace")
                return True
        return False

    ending = await _read_packets(stream, buffer, level, _SYS_WAIT, _SYS_BYTES, take)
    suback = cast("int | None", state["suback"])
    if suback is not None and suback < 0x80:
        with suppress(ProbeError):
            await stream.send(build_unsubscribe(level, 2, SYS_VERSION_TOPIC))
    version = cast("str | None", state["version"])
    answer: Literal["version", "no-version", "refused", "closed", "timeout", "capped",
                    "malformed"]
    if version is not None:
        answer = "version"
    elif state["refused"]:
        answer = "refused"
    elif ending == "done":
        answer = "closed"  # a DISCONNECT
    elif ending == "timeout":
        answer = "no-version" if suback is not None else "timeout"
    else:
        answer = ending
    return MqttSys(answer=answer, suback=suback, version=version,
                   packets=cast(int, state["packets"]))
