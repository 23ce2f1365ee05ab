"""The result model: one versioned record per probed (ip, port), spoken by every stage.

A probe worker builds a :class:`ScanResult`; enrichment fills ``asn``/``geo``; storage
persists it. The JSON Schema of :class:`ScanResult` is committed as
``brokerscan/result.schema.json`` and a test diffs it, so a change to this module is a
deliberate, versioned change (bump :data:`SCHEMA_VERSION`).

Version 2 only added: WebSocket transports (``ws``, ``wss``) and the ``websocket`` object,
the ``mqtt-ws`` probe, ``tls_retried``, the MQTT broker product, ``$SYS`` version and
unasked packets, and the AMQP 1.0 SASL mechanisms. Version 3 only added
``discovered_by``: the stateless discovery stage (ZMap) that found the port open before the
probe dialled it, or null for the connect engine alone. Every earlier record is therefore a
valid record still (``schema_version`` accepts 1, 2 and 3), so consumers read them all.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

__all__ = [
    "CLOSED_STATUSES",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "AmqpResult",
    "AmqpSasl",
    "AmqpServerProperties",
    "AsnInfo",
    "GeoInfo",
    "MqttAttempt",
    "MqttProduct",
    "MqttProperties",
    "MqttResult",
    "MqttSys",
    "MqttUnasked",
    "Probe",
    "Protocol",
    "ScanResult",
    "Status",
    "TlsCertificate",
    "TlsInfo",
    "Transport",
    "WebSocketInfo",
    "WebSocketTry",
    "result_schema",
]

SCHEMA_VERSION: Final = 3
#: The versions this model reads (an older record is a valid version-3 record).
READABLE_VERSIONS: Final = (1, 2, 3)


class Status(StrEnum):
    """How a probe ended: a closed set in the spirit of zgrab2's ``ScanStatus``."""

    SUCCESS = "success"  # the broker answered in its protocol (any return code)
    CONNECTION_REFUSED = "connection-refused"  # RST to our SYN
    CONNECTION_TIMEOUT = "connection-timeout"  # no answer to the SYN in time
    CONNECTION_RESET = "connection-reset"  # RST after the connection was up
    CONNECTION_CLOSED = "connection-closed"  # FIN before any reply byte
    IO_TIMEOUT = "io-timeout"  # connected, but a read/write or the total deadline ran out
    HANDSHAKE_ERROR = "handshake-error"  # the TLS handshake failed
    PROTOCOL_ERROR = "protocol-error"  # bytes came back, but not MQTT or AMQP
    UNREACHABLE = "unreachable"  # network/host unreachable (ICMP or no route)
    BLOCKLISTED_TARGET = "blocklisted-target"  # refused by the blocklist, never dialled
    OUT_OF_SCOPE = "out-of-scope"  # outside the deployment's scope, never dialled
    UNKNOWN_ERROR = "unknown-error"


#: Connect failures that say "nothing there": a scan counts them, and writes a result for
#: them only when asked to (``emit_failures``). Every other outcome is always written.
CLOSED_STATUSES: Final = frozenset({Status.CONNECTION_REFUSED, Status.CONNECTION_TIMEOUT,
                                    Status.UNREACHABLE})


class Protocol(StrEnum):
    MQTT = "mqtt"
    AMQP = "amqp"


class Transport(StrEnum):
    TCP = "tcp"
    TLS = "tls"
    WS = "ws"  # a WebSocket over TCP (MQTT inside it)
    WSS = "wss"  # a WebSocket inside TLS


class Probe(StrEnum):
    """The probes a port can get (``probes`` of a result lists those tried, in order)."""

    MQTT = "mqtt"
    AMQP = "amqp"
    MQTT_WS = "mqtt-ws"  # MQTT inside a WebSocket (HTTP upgrade first)


def _b64_validate(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value.encode("ascii"), validate=True)
    raise ValueError("expected bytes or a base64 string")


# Raw bytes in memory, base64 in JSON: the stored reply can always be re-parsed later.
RawBytes = Annotated[
    bytes,
    PlainValidator(_b64_validate),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str,
                    when_used="json"),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsCertificate(_Frozen):
    """The leaf certificate the server presented."""

    subject: str  # RFC 4514
    issuer: str
    subject_cn: str | None = None
    sans: list[str] = Field(default_factory=list)  # "DNS:x", "IP:x", "URI:x", "email:x"
    serial: str  # hex, no leading zeros
    not_before: datetime
    not_after: datetime
    key_type: str  # "RSA", "EC", "Ed25519", "Ed448", "DSA", ...
    key_bits: int | None = None
    key_curve: str | None = None
    signature_algorithm: str | None = None
    sha256: str  # hex fingerprint of the DER
    self_signed: bool
    expired: bool  # not_after before the observation time
    not_yet_valid: bool = False


class TlsInfo(_Frozen):
    """What the TLS handshake showed (verification off; trust judged separately)."""

    handshake_completed: bool
    version: str | None = None  # "TLSv1.3"
    cipher: str | None = None
    alpn: str | None = None
    certificate: TlsCertificate | None = None
    chain_length: int = 0
    trusted: bool | None = None  # would the chain verify against the system store?
    trust_error: str | None = None
    client_certificate_required: bool = False
    error: str | None = None  # the handshake failure, as OpenSSL named it


class MqttAttempt(_Frozen):
    """One CONNECT we sent, and what came back."""

    protocol_level: Literal[3, 4, 5]
    answer: Literal["connack", "disconnect", "closed", "timeout", "reset", "other"]
    return_code: int | None = None


class MqttProperties(_Frozen):
    """MQTT 5.0 CONNACK properties (section 3.2.2.3); unset ones are null."""

    session_expiry_interval: int | None = None
    receive_maximum: int | None = None
    maximum_qos: int | None = None
    retain_available: bool | None = None
    maximum_packet_size: int | None = None
    assigned_client_identifier: str | None = None
    topic_alias_maximum: int | None = None
    reason_string: str | None = None
    user_properties: list[tuple[str, str]] = Field(default_factory=list)
    wildcard_subscription_available: bool | None = None
    subscription_identifiers_available: bool | None = None
    shared_subscription_available: bool | None = None
    server_keep_alive: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    authentication_method: str | None = None


class MqttUnasked(_Frozen):
    """A packet the broker sent after CONNACK that we did not ask for (or a ``$SYS`` one)."""

    packet_type: int  # 3 = PUBLISH, 14 = DISCONNECT, ...
    topic: str | None = None  # PUBLISH only
    payload: str | None = None  # UTF-8 text, or "base64:..." when it is not text; capped
    retain: bool = False
    qos: int = 0


class MqttSys(_Frozen):
    """The opt-in read of ``$SYS/broker/version`` (``--sys-version``): one SUBSCRIBE to that
    topic only, at most 2 s and 64 KiB of waiting, then UNSUBSCRIBE and DISCONNECT."""

    answer: Literal["version", "no-version", "refused", "closed", "timeout", "capped",
                    "malformed"]
    suback: int | None = None  # granted QoS (0-2) or the failure code (0x80, 0x87, ...)
    version: str | None = None  # the payload published on $SYS/broker/version
    packets: int = 0  # PUBLISH packets read while waiting (on any topic)


class MqttProduct(_Frozen):
    """The broker product, told from the packets the probe exchanged anyway.

    ``name`` is ``"unknown"`` unless one fingerprint row matched; ``evidence`` lists the
    facts that decided it, ``source`` where the row's values come from."""

    name: str  # "Mosquitto", "RabbitMQ", "amqtt", "EMQX", ... or "unknown"
    version: str | None = None  # from $SYS/broker/version, when it was read
    rule: str | None = None  # the fingerprint row that matched
    evidence: list[str] = Field(default_factory=list)
    source: str | None = None


class MqttResult(_Frozen):
    """The broker's answer to an anonymous, clean-session CONNECT."""

    protocol_level: Literal[3, 4, 5]  # the level of the CONNACK recorded below
    return_code: int  # CONNACK return code (3.1/3.1.1) or reason code (5.0)
    return_code_name: str  # "accepted", "not-authorized", ...
    session_present: bool
    anonymous: bool | None  # True: accepted; False: not authorised/bad credentials
    accepted_levels: list[Literal[3, 4, 5]] = Field(default_factory=list)
    refused_levels: list[Literal[3, 4, 5]] = Field(default_factory=list)
    attempts: list[MqttAttempt] = Field(default_factory=list)
    properties: MqttProperties | None = None  # 5.0 CONNACK only
    client_id: str | None = None
    unasked: list[MqttUnasked] = Field(default_factory=list)  # after CONNACK, capped
    sys: MqttSys | None = None  # only with --sys-version, after an accepted CONNECT
    product: MqttProduct | None = None


class AmqpServerProperties(_Frozen):
    product: str | None = None
    version: str | None = None
    platform: str | None = None
    copyright: str | None = None
    information: str | None = None
    cluster_name: str | None = None
    capabilities: dict[str, bool] = Field(default_factory=dict)
    other: dict[str, Any] = Field(default_factory=dict)  # any other key, JSON-safe


class AmqpSasl(_Frozen):
    """What an AMQP 1.0 server said to the SASL header ``AMQP 3 1 0 0`` (we never send
    ``sasl-init``, so nothing is ever tried)."""

    protocol_header: str | None = None  # the header it answered with ("AMQP 3 1 0 0")
    mechanisms: list[str] = Field(default_factory=list)  # from its sasl-mechanisms frame
    anonymous_offered: bool | None = None  # None: no sasl-mechanisms frame was read
    error: str | None = None


class AmqpResult(_Frozen):
    """Connection.Start of an AMQP 0-9-1 server, or the header of any other AMQP server."""

    family: Literal["0-9-1", "0-9", "0-8", "0-10", "1.0", "1.0-tls", "1.0-sasl", "unknown"]
    protocol_header: str | None = None  # "AMQP 0 0 9 1": the server's header, if it sent one
    version_major: int | None = None
    version_minor: int | None = None
    server_properties: AmqpServerProperties | None = None
    mechanisms: list[str] = Field(default_factory=list)
    locales: list[str] = Field(default_factory=list)
    sasl: AmqpSasl | None = None  # AMQP 1.0 SASL layer, when the server speaks 1.0


class WebSocketTry(_Frozen):
    """One HTTP upgrade request we sent, and what came back."""

    path: str
    subprotocol: str  # the Sec-WebSocket-Protocol we offered ("mqtt", "mqttv3.1")
    status: int | None = None  # the HTTP status; None when no HTTP response came
    answer: Literal["upgraded", "refused", "bad-upgrade", "not-http", "closed", "timeout",
                    "reset"]
    error: str | None = None


class WebSocketInfo(_Frozen):
    """The WebSocket side of a port: every upgrade tried, and the one that worked."""

    tries: list[WebSocketTry] = Field(default_factory=list)
    server: str | None = None  # the Server header of the last HTTP response
    path: str | None = None  # the path that upgraded
    subprotocol: str | None = None  # the subprotocol the server accepted
    close_code: int | None = None  # a WebSocket close frame's code, if the server sent one


class AsnInfo(_Frozen):
    number: int | None = None
    organization: str | None = None
    network: str | None = None  # the announced prefix, if known
    reserved: bool = False  # loopback/private/... : no owner to look up
    source: str | None = None
    source_date: str | None = None


class GeoInfo(_Frozen):
    country: str | None = None  # ISO 3166-1 alpha-2
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    reserved: bool = False
    source: str | None = None
    source_date: str | None = None


class ScanResult(_Frozen):
    """One probed (ip, port): the record every stage of brokerscan speaks."""

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION
    sweep_id: str | None = None
    # When the sweep (or local scan) began: the same for every record of it, so storage can
    # partition on it and keep (sweep_started_at, sweep_id, ip, port) unique across re-runs.
    sweep_started_at: datetime | None = None
    ip: str
    port: int = Field(ge=0, le=65535)
    transport: Transport
    observed_at: datetime
    duration_ms: float = 0.0
    status: Status
    protocol: Protocol | None = None
    probes: list[Probe] = Field(default_factory=list)  # what we tried, in order
    # The plaintext probes met a TLS record, so they were tried again inside TLS.
    tls_retried: bool = False
    # The stateless discovery stage that saw the port answer SYN-ACK first ("zmap"); null
    # when the connect engine dialled the target without one.
    discovered_by: Literal["zmap"] | None = None
    error: str | None = None  # supplementary text; query on status, not this
    tls: TlsInfo | None = None
    mqtt: MqttResult | None = None
    amqp: AmqpResult | None = None
    websocket: WebSocketInfo | None = None
    raw: RawBytes | None = None  # the identifying reply (or first bytes), capped
    asn: AsnInfo | None = None
    geo: GeoInfo | None = None

    @property
    def key(self) -> tuple[str | None, str, int]:
        """The deterministic identity of this observation: (sweep, ip, port)."""
        return (self.sweep_id, self.ip, self.port)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=False)


def result_schema() -> str:
    """The JSON Schema of :class:`ScanResult`, as committed in result.schema.json."""
    return json.dumps(ScanResult.model_json_schema(mode="serialization"), indent=2,
                      sort_keys=True) + "\n"
