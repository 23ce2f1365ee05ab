"""What a probe driver is: an async function that talks one protocol over streams it dials.

A driver gets a :data:`Dial` (the first call returns the connection the engine already
opened; later calls open new ones, for protocol-level fallbacks) and returns a
:class:`ProbeOutcome`. Transport failures arrive as :class:`workers.transport.ProbeError`,
already mapped to a :class:`~brokerscan.model.Status`; a driver lets them propagate when it
learned nothing, and records them in its result when an earlier attempt did answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol as Interface
from typing import TypeVar

from brokerscan.model import AmqpResult, MqttResult, Protocol, Status, WebSocketInfo
from workers.protocols.base import NeedData
from workers.transport import Stream

__all__ = ["ByteStream", "Dial", "ProbeOptions", "ProbeOutcome", "read_frame"]

Dial = Callable[[], Awaitable[Stream]]


class ByteStream(Interface):
    """What a driver reads and writes: a :class:`~workers.transport.Stream`, or a stream
    carried inside another protocol (MQTT inside a WebSocket)."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self, max_bytes: int = 4096) -> bytes: ...

    async def aclose(self) -> None: ...

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """Knobs of the probes, built from the settings and the command line."""

    client_id_prefix: str = "brokerscan-"
    # MQTT protocol levels to try, in order: 5 = 5.0, 4 = 3.1.1, 3 = 3.1. The probe moves
    # to the next level only when the broker refuses the current one.
    mqtt_levels: tuple[int, ...] = (5, 4, 3)
    # Try every level in mqtt_levels even after one was accepted (more connections).
    mqtt_all_levels: bool = False
    keepalive: int = 60
    max_reply_bytes: int = 4096  # cap on the raw reply kept, and on a frame we accept
    # After an accepted CONNACK, how long to keep reading packets the broker sends unasked
    # (amqtt, for one, may publish its version that way); at most 16 packets, 64 KiB.
    mqtt_unasked_wait: float = 0.25
    # Opt-in: SUBSCRIBE to $SYS/broker/version only, wait <= 2 s and 64 KiB, UNSUBSCRIBE.
    sys_version: bool = False
    # WebSocket upgrade paths, tried in order until one upgrades (at most 8 are used).
    ws_paths: tuple[str, ...] = ("/mqtt", "/", "/ws")
    # AMQP versions to ask for: "0-9-1" always; "1.0" adds the SASL header on its own
    # connection to servers that answered 0-9-1.
    amqp_versions: tuple[str, ...] = ("0-9-1",)


@dataclass(slots=True)
class ProbeOutcome:
    """What one driver learned about one (ip, port)."""

    status: Status
    protocol: Protocol | None = None  # what actually answered (may be the other protocol)
    mqtt: MqttResult | None = None
    amqp: AmqpResult | None = None
    websocket: WebSocketInfo | None = None
    raw: bytes = b""
    error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


async def read_frame(stream: ByteStream, parse: Callable[[bytes], T], buffer: bytearray,
                     max_bytes: int) -> T:
    """Read from ``stream`` into ``buffer`` until ``parse(bytes(buffer))`` stops raising
    :class:`NeedData`.

    :returns: whatever ``parse`` returned.
    :raises EOFError: the peer closed before a whole frame arrived (``buffer`` keeps what
        did arrive).
    :raises workers.protocols.base.ProtocolError: from ``parse``; also when more than
        ``max_bytes`` arrive without completing a frame.
    :raises workers.transport.ProbeError: a read timed out or the connection was reset.
    """
    from workers.protocols.base import ProtocolError

    while True:
        if buffer:
            try:
                return parse(bytes(buffer))
            except NeedData:
                if len(buffer) >= max_bytes:
                    raise ProtocolError(f"no complete frame in {len(buffer)} bytes") from None
        chunk = await stream.receive(max_bytes - len(buffer) if len(buffer) < max_bytes else 1)
        if not chunk:
            raise EOFError
        buffer += chunk
