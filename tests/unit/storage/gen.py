"""Random but reproducible scan results for the store tests and the write benchmark."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from brokerscan.model import (
    AmqpResult,
    AmqpServerProperties,
    AsnInfo,
    GeoInfo,
    MqttResult,
    Protocol,
    ScanResult,
    Status,
    TlsCertificate,
    TlsInfo,
    Transport,
)

__all__ = ["Sweep", "import_lines", "make_result", "make_results", "sweeps"]

Sweep = tuple[str, datetime]

_PORTS = (1883, 8883, 5672, 5671, 61613)
_FAILURES = (Status.CONNECTION_REFUSED, Status.IO_TIMEOUT, Status.PROTOCOL_ERROR,
             Status.HANDSHAKE_ERROR)


def sweeps(count: int = 3, start: datetime | None = None) -> list[Sweep]:
    """*count* sweeps, one a day, the first starting a second before midnight."""
    first = start or datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    return [(f"sw-test{i:04d}", first + timedelta(days=i, hours=i)) for i in range(count)]


def _cert(rng: random.Random, when: datetime) -> TlsCertificate:
    return TlsCertificate(
        subject="CN=broker", issuer="CN=broker", serial=f"{rng.getrandbits(32):x}",
        not_before=when - timedelta(days=30), not_after=when + timedelta(days=30),
        key_type="EC", sha256=f"{rng.choice((1, 2, 3)):064x}", self_signed=True,
        expired=False,
    )


def make_result(
    rng: random.Random, sweep: Sweep, ip: str, port: int,
    observed_at: datetime | None = None,
) -> ScanResult:
    """One plausible result of *sweep* for ``ip:port``."""
    sweep_id, started = sweep
    seen = observed_at or started + timedelta(seconds=rng.randrange(3 * 3600))
    transport = Transport.TLS if port in (8883, 5671) else Transport.TCP
    status = Status.SUCCESS if rng.random() < 0.6 else rng.choice(_FAILURES)
    protocol = mqtt = amqp = tls = None
    if transport is Transport.TLS and status is not Status.HANDSHAKE_ERROR:
        tls = TlsInfo(handshake_completed=True, version="TLSv1.3", certificate=_cert(rng, seen))
    if status is Status.SUCCESS:
        if port in (1883, 8883):
            protocol = Protocol.MQTT
            anonymous = rng.choice((True, False, None))
            mqtt = MqttResult(protocol_level=4, return_code=0 if anonymous else 5,
                              return_code_name="x", session_present=False, anonymous=anonymous)
        else:
            protocol = Protocol.AMQP
            amqp = AmqpResult(family="0-9-1", server_properties=AmqpServerProperties(
                product=rng.choice(("RabbitMQ", "ActiveMQ")), version="3.12"))
    number = rng.choice((None, 3320, 15169, 36375))
    return ScanResult(
        sweep_id=sweep_id, sweep_started_at=started, ip=ip, port=port, transport=transport,
        observed_at=seen, duration_ms=rng.random() * 100, status=status, protocol=protocol,
        probes=[Protocol.MQTT], tls=tls, mqtt=mqtt, amqp=amqp,
        raw=b"\x20\x02\x00\x00" if mqtt else None,
        asn=None if number is None else AsnInfo(number=number, organization=f"AS{number}"),
        geo=GeoInfo(country=rng.choice((None, "DE", "US", "BR"))),
    )


def make_results(
    n: int, *, seed: int = 1, sweep_list: Sequence[Sweep] | None = None,
    hosts: int | None = None,
) -> list[ScanResult]:
    """*n* results spread over *sweep_list*, distinct (sweep, ip, port) each; addresses
    drawn from *hosts* hosts (default: enough that services repeat across sweeps)."""
    rng = random.Random(seed)
    sweep_list = list(sweep_list or sweeps())
    hosts = hosts or max(1, n // 4)
    keys: set[tuple[str, str, int]] = set()
    out: list[ScanResult] = []
    while len(out) < n:
        sweep = rng.choice(sweep_list)
        h = rng.randrange(hosts)
        ip = f"10.{h >> 16 & 255}.{h >> 8 & 255}.{h & 255}" if h % 7 else f"2001:db8::{h:x}"
        port = rng.choice(_PORTS)
        if (sweep[0], ip, port) in keys:
            continue
        keys.add((sweep[0], ip, port))
        out.append(make_result(rng, sweep, ip, port))
    return out


def import_lines(count: int, seed: int = 7) -> list[str]:
    """*count* JSON lines for ``brokerscan import``: over two sweeps that straddle a UTC
    midnight, one loopback address each (data only, never dialled); as ``scan -o`` writes
    them (``to_json()``), but every third without a sweep and without enrichment, in
    another JSON style, as an older tool might write it."""
    rng = random.Random(seed)
    plan = sweeps(2)
    lines = []
    for i in range(count):
        ip = f"127.{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"
        result = make_result(rng, rng.choice(plan), ip, 1883)
        if i % 3:
            lines.append(result.to_json() + "\n")
            continue
        record = json.loads(result.to_json())
        record.update(sweep_id=None, sweep_started_at=None, asn=None, geo=None)
        lines.append(json.dumps(record) + "\n")
    return lines
