"""Pure mapping from a :class:`~brokerscan.model.ScanResult` to a stored row.

One row per observation, the same for every backend: :data:`COLUMNS` names the columns
of ``observations`` in order and :func:`observation_row` gives the values, as Python
objects that asyncpg's binary COPY encodes directly. :func:`sqlite_row` turns them into
what the stdlib ``sqlite3`` stores (text timestamps that sort, 0/1 booleans).

Derived dimensions, defined here once:

- ``day``: the UTC date of ``sweep_started_at`` (a sweep counts on the day it started);
- ``tls``: the service was probed over TLS (``transport`` is ``tls`` or ``wss``), whatever
  the outcome;
- ``anonymous``: the MQTT CONNACK verdict (true, false, or unknown); AMQP results carry
  no such verdict and are unknown;
- ``asn``/``org``/``country``: from enrichment, unknown when absent;
- ``product``/``version`` (:func:`product_of`): what AMQP's Connection.Start announces, or
  the MQTT broker product the fingerprint named (never ``"unknown"``);
- ``amqp_mechanisms`` (:func:`mechanisms_of`): the SASL mechanisms, upper-case, one space
  apart;
- ``census``: what the observation counts for in the census report
  (:func:`brokerscan.report.census_facts`), which the rollups of the report add up
  (PostgreSQL ``text[]``, SQLite a JSON array: :func:`census_json`).

Addresses are stored in canonical form (``2001:db8::``, not ``2001:db8::0``), so one host
is one host in every backend.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

from brokerscan.model import ScanResult
from brokerscan.report import census_facts

__all__ = [
    "COLUMNS",
    "SERVICE_KEY",
    "TIME_FORMAT",
    "as_utc",
    "canonical_ip",
    "census_json",
    "check_writable",
    "day_of",
    "format_time",
    "mechanisms_of",
    "observation_row",
    "ip_number",
    "parse_time",
    "product_of",
    "sqlite_row",
]

#: The columns of ``observations``, in the order of :func:`observation_row`.
COLUMNS: Final = (
    "sweep_started_at",
    "sweep_id",
    "ip",
    "port",
    "transport",
    "observed_at",
    "day",
    "status",
    "protocol",
    "tls",
    "anonymous",
    "duration_ms",
    "mqtt_level",
    "mqtt_return_code",
    "amqp_family",
    "product",
    "version",
    "amqp_mechanisms",
    "mqtt_levels",
    "tls_version",
    "tls_handshake",
    "cert_sha256",
    "cert_subject",
    "cert_issuer",
    "cert_self_signed",
    "cert_expired",
    "cert_trusted",
    "asn",
    "org",
    "country",
    "error",
    "record",
    "census",
)

#: What identifies a service in the current view.
SERVICE_KEY: Final = ("ip", "port", "transport")

#: Timestamps as SQLite stores them: fixed width, UTC, so text order is time order.
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

_Row = tuple[object, ...]
_ZERO: Final = timedelta(0)


def as_utc(moment: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is taken to be UTC already (one already
    at offset zero is returned as it is)."""
    zone = moment.tzinfo
    if zone is UTC or (zone is not None and zone.utcoffset(moment) == _ZERO):
        return moment
    if zone is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """*moment* as fixed-width UTC text (:data:`TIME_FORMAT`)."""
    return as_utc(moment).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time` (an aware UTC datetime).

    ``fromisoformat`` reads the fixed-width text exactly as ``strptime(TIME_FORMAT)``
    would, 100 times faster (every time a search or an export decodes goes through here).
    """
    return as_utc(datetime.fromisoformat(text))


def day_of(moment: datetime) -> date:
    """The UTC day of *moment*: the ``day`` dimension of a sweep that started then."""
    return as_utc(moment).date()


def check_writable(result: ScanResult) -> tuple[str, datetime]:
    """Refuse a result the stores cannot key deterministically.

    :returns: ``(sweep_id, sweep_started_at)``
    :raises ValueError: ``sweep_id`` or ``sweep_started_at`` is missing
    """
    if result.sweep_id is None or result.sweep_started_at is None:
        missing = "sweep_id" if result.sweep_id is None else "sweep_started_at"
        raise ValueError(
            f"result for {result.ip}:{result.port} has no {missing}: stores key every "
            "observation by (sweep_started_at, sweep_id, ip, port)"
        )
    return result.sweep_id, result.sweep_started_at


def _over_tls(result: ScanResult) -> bool:
    return result.transport.value in ("tls", "wss")


def product_of(result: ScanResult) -> tuple[str | None, str | None]:
    """``(product, version)`` of the service: AMQP's announced product and version, or the
    MQTT product the fingerprint named (None when it said "unknown") and its version."""
    amqp = result.amqp
    if amqp is not None and amqp.server_properties is not None:
        props = amqp.server_properties
        if props.product or props.version:
            return props.product, props.version
    mqtt = result.mqtt
    if mqtt is not None and mqtt.product is not None and mqtt.product.name != "unknown":
        return mqtt.product.name, mqtt.product.version
    return None, None


def mechanisms_of(result: ScanResult) -> str | None:
    """The SASL mechanisms the service offers, upper-case, separated by single spaces:
    the AMQP 1.0 ``sasl-mechanisms`` first, then any other one of 0-9-1's Connection.Start,
    each once (``"ANONYMOUS PLAIN AMQPLAIN"``); None when no list was read."""
    amqp = result.amqp
    if amqp is None:
        return None
    names: list[str] = []
    for name in [*(amqp.sasl.mechanisms if amqp.sasl is not None else []), *amqp.mechanisms]:
        upper = name.strip().upper()
        # RFC 4422 names only (letters, digits, - and _): a member never holds the space
        # between members; anything else stays in the record as it was sent
        if _MECHANISM.fullmatch(upper) and upper not in names:
            names.append(upper)
    return " ".join(names) or None


_MECHANISM: Final = re.compile(r"[A-Z0-9_-]{1,64}")


def canonical_ip(text: str) -> str:
    """*text* as the canonical address text (what PostgreSQL's ``inet`` prints).

    :raises ValueError: not an IPv4 or IPv6 address
    """
    try:  # the common case, cheaply: dotted-quad IPv4 already canonical
        if socket.inet_ntoa(socket.inet_aton(text)) == text:
            return text
    except OSError:
        pass
    return str(ipaddress.ip_address(text))


def observation_row(result: ScanResult, record: str | None = None) -> _Row:
    """The row of *result* in ``observations``, in :data:`COLUMNS` order.

    :param record: ``result.to_json()`` when the caller already has it (the stream carries
        exactly that text from the enrichment worker); computed when None.
    :raises ValueError: the result has no ``sweep_id`` or ``sweep_started_at``, or its
        ``ip`` is not an address
    """
    sweep_id, started = check_writable(result)
    started = as_utc(started)
    mqtt, amqp, tls, asn = result.mqtt, result.amqp, result.tls, result.asn
    cert = None if tls is None else tls.certificate
    transport = result.transport.value
    protocol = result.protocol
    return (
        started,
        sweep_id,
        canonical_ip(result.ip),
        result.port,
        transport,
        as_utc(result.observed_at),
        started.date(),
        result.status.value,
        None if protocol is None else protocol.value,
        _over_tls(result),
        None if mqtt is None else mqtt.anonymous,
        result.duration_ms,
        None if mqtt is None else mqtt.protocol_level,
        None if mqtt is None else mqtt.return_code,
        None if amqp is None else amqp.family,
        *product_of(result),
        mechanisms_of(result),
        None if mqtt is None or not mqtt.accepted_levels
        else " ".join(str(level) for level in sorted(set(mqtt.accepted_levels))),
        None if tls is None else tls.version,
        None if tls is None else tls.handshake_completed,
        None if cert is None else cert.sha256,
        None if cert is None else cert.subject,
        None if cert is None else cert.issuer,
        None if cert is None else cert.self_signed,
        None if cert is None else cert.expired,
        None if tls is None else tls.trusted,
        None if asn is None else asn.number,
        None if asn is None else asn.organization,
        None if result.geo is None else result.geo.country,
        result.error,
        result.to_json() if record is None else record,
        census_facts(result),
    )


def census_json(record: str) -> str:
    """The census facts of a stored record (JSON text), as the JSON array SQLite keeps."""
    return json.dumps(census_facts(ScanResult.model_validate_json(record)))


def ip_number(ip: str) -> int | None:
    """An IPv4 address as an integer (the embedded store's ``ip_num``: ranges and CIDR
    blocks compare numbers); None for IPv6."""
    try:
        return int.from_bytes(socket.inet_aton(ip), "big") if ":" not in ip else None
    except OSError:
        return None


def sqlite_row(row: Sequence[object]) -> _Row:
    """An :func:`observation_row` as SQLite stores it (times and days as sortable text)."""
    out: list[object] = []
    for value in row:
        if isinstance(value, datetime):
            out.append(format_time(value))
        elif isinstance(value, date):
            out.append(value.isoformat())
        elif isinstance(value, list):  # the census facts
            out.append(json.dumps(value))
        else:
            out.append(value)
    return tuple(out)
