"""The search language's meaning, written over the JSON records, for tests: what a query
must return, computed without SQL. Both stores are held to exactly these answers.

It reads the stored JSON (a :class:`~brokerscan.model.ScanResult` as ``to_json`` wrote it)
with its own code, independently of ``storage/rows.py``, and evaluates the tree the parser
made (the parser is tested on its own, against strings).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from brokerscan.model import (
    AmqpResult,
    AmqpSasl,
    AmqpServerProperties,
    AsnInfo,
    GeoInfo,
    MqttProduct,
    MqttResult,
    Protocol,
    ScanResult,
    Status,
    TlsCertificate,
    TlsInfo,
    Transport,
    WebSocketInfo,
    WebSocketTry,
)
from brokerscan.mqttcodes import return_code_name
from storage.search.compile import View, ascii_lower
from storage.search.fields import BARE_COLUMNS, Kind
from storage.search.parse import All, And, Bare, Exists, Match, Node, Not, Or, Prefix, Range

__all__ = ["Item", "evaluate", "items_of", "make_search_results", "reference_counts",
           "reference_keys", "view_items"]

_MECHANISM = re.compile(r"[A-Z0-9_-]{1,64}")


@dataclass(frozen=True)
class Item:
    """One row of a view: the values of every column the search reads."""

    values: dict[str, Any]

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.values["ip_text"], self.values["port"], self.values["transport"])


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def values_of(record: dict[str, Any], first_seen: datetime, last_seen: datetime,
              ) -> dict[str, Any]:
    """What the search sees of one stored record."""
    mqtt, amqp, tls = record.get("mqtt"), record.get("amqp"), record.get("tls")
    cert = (tls or {}).get("certificate")
    props = (amqp or {}).get("server_properties")
    asn, geo = record.get("asn") or {}, record.get("geo") or {}
    mechanisms = None
    if amqp:
        offered = [*((amqp.get("sasl") or {}).get("mechanisms") or []),
                   *amqp.get("mechanisms", [])]
        names = {m.strip().upper() for m in offered if _MECHANISM.fullmatch(m.strip().upper())}
        mechanisms = names or None
    product = version = None
    if props and (props.get("product") or props.get("version")):
        product, version = props.get("product"), props.get("version")
    elif mqtt and mqtt.get("product") and mqtt["product"].get("name") != "unknown":
        product, version = mqtt["product"]["name"], mqtt["product"].get("version")
    levels = {str(level) for level in (mqtt or {}).get("accepted_levels", [])} or None
    return {
        "ip": int(ipaddress.IPv4Address(record["ip"])), "ip_text": record["ip"],
        "port": record["port"], "transport": record["transport"],
        "tls": record["transport"] in ("tls", "wss"), "status": record["status"],
        "protocol": record.get("protocol"),
        "anonymous": mqtt.get("anonymous") if mqtt else None,
        "mqtt_return_code": mqtt.get("return_code") if mqtt else None,
        "mqtt_levels": levels,
        "product": product,
        "version": version,
        "amqp_family": amqp.get("family") if amqp else None,
        "amqp_mechanisms": mechanisms,
        "asn": asn.get("number"), "org": asn.get("organization"),
        "country": geo.get("country"),
        "cert_subject": cert.get("subject") if cert else None,
        "cert_issuer": cert.get("issuer") if cert else None,
        "cert_sha256": cert.get("sha256") if cert else None,
        "cert_self_signed": cert.get("self_signed") if cert else None,
        "cert_expired": cert.get("expired") if cert else None,
        "cert_trusted": tls.get("trusted") if tls else None,
        "tls_version": tls.get("version") if tls else None,
        "sweep_id": record.get("sweep_id"),
        "first_seen": first_seen, "last_seen": last_seen,
        "observed_at": _time(record["observed_at"]),
        "sweep_started_at": _time(record["sweep_started_at"]),
    }


def items_of(records: Iterable[str]) -> list[Item]:
    """Every observation as an item (first and last seen: when it was made)."""
    out = []
    for text in records:
        record = json.loads(text)
        seen = _time(record["observed_at"])
        out.append(Item(values_of(record, seen, seen)))
    return out


def view_items(records: Sequence[str], view: View) -> list[Item]:
    """The rows *view* holds, from every stored observation."""
    observations = items_of(records)
    if view.kind == "sweep":
        return [i for i in observations if i.values["sweep_id"] == view.sweep_id]
    if view.kind == "at":
        assert view.at is not None
        end = datetime(view.at.year, view.at.month, view.at.day, tzinfo=UTC) + timedelta(days=1)
        observations = [i for i in observations if i.values["observed_at"] < end
                        and i.values["sweep_started_at"] < end]
    by_service: dict[tuple[str, int, str], list[Item]] = {}
    for item in observations:
        by_service.setdefault(item.key, []).append(item)
    out = []
    for seen in by_service.values():
        latest = max(seen, key=lambda i: (i.values["observed_at"], i.values["sweep_id"]))
        values = dict(latest.values)
        values["first_seen"] = min(i.values["observed_at"] for i in seen)
        values["last_seen"] = max(i.values["observed_at"] for i in seen)
        out.append(Item(values))
    return out


def evaluate(node: Node, item: Item) -> bool:
    """Whether *item* matches *node*."""
    if isinstance(node, All):
        return True
    if isinstance(node, Not):
        return not evaluate(node.item, item)
    if isinstance(node, And):
        return all(evaluate(n, item) for n in node.items)
    if isinstance(node, Or):
        return any(evaluate(n, item) for n in node.items)
    if isinstance(node, Bare):
        needle = ascii_lower(node.text)
        return any(item.values[c] is not None and needle in ascii_lower(item.values[c])
                   for c in BARE_COLUMNS)
    assert isinstance(node, Match | Prefix | Exists | Range)
    field = node.field
    value = item.values[field.column]
    if isinstance(node, Exists):
        return value is not None
    if value is None:
        return False
    if isinstance(node, Range):
        if node.low is not None and (value < node.low or
                                     (value == node.low and not node.low_inclusive)):
            return False
        return not (node.high is not None and (value > node.high or (
            value == node.high and not node.high_inclusive)))
    if isinstance(node, Prefix):
        if field.kind is Kind.SET:
            return any(m.startswith(node.prefix) for m in value)
        if field.kind is Kind.TEXT:
            return bool(ascii_lower(value).startswith(ascii_lower(node.prefix)))
        return bool(value.startswith(node.prefix))
    if field.kind is Kind.TEXT:
        return bool(ascii_lower(value) == ascii_lower(str(node.value)))
    if field.kind is Kind.SET:
        return node.value in value
    if field.kind is Kind.BOOL:
        return value is node.value
    return bool(value == node.value)


def reference_keys(items: Sequence[Item], node: Node) -> list[tuple[str, int, str]]:
    """The keys of the matching items, in the search's order (address, port, transport)."""
    hits = [i for i in items if evaluate(node, i)]
    hits.sort(key=lambda i: (i.values["ip"], i.values["port"], i.values["transport"]))
    return [i.key for i in hits]


def reference_counts(items: Sequence[Item], node: Node, column: str) -> Counter[Any]:
    """How many matching items have each value of *column* (members of sets count one by
    one; unknown values count under None)."""
    counter: Counter[Any] = Counter()
    for item in items:
        if not evaluate(node, item):
            continue
        value = item.values[column]
        if isinstance(value, set):
            counter.update(value)
        elif isinstance(value, datetime):
            counter[value.date().isoformat()] += 1
        else:
            counter[value] += 1
    return counter


# --------------------------------------------------------------------------- data

_ODD_TEXT = ("RabbitMQ", "rabbitmq", "RABBITMQ", "Mosquitto", "ActiveMQ", "Ärger GmbH",
             "ärger gmbh", "100% pure_broker", "back\\slash", "quote\"d", "it's",
             "CN=broker,O=Example", "cn=BROKER,o=example", "ünïcödé", "x", "", " spaced ")


def make_search_results(n: int, *, seed: int = 7, sweeps: int = 3, hosts: int | None = None,
                        start: date = date(2026, 3, 1)) -> list[ScanResult]:
    """*n* IPv4 results over *sweeps* daily sweeps, with every searchable field varied
    (levels, mechanisms, odd text in product, organisation and certificate names, ...);
    observation times never tie for one service."""
    rng = random.Random(seed)
    hosts = hosts or max(2, n // 3)
    started = [datetime(start.year, start.month, start.day, 6, tzinfo=UTC) + timedelta(days=d)
               for d in range(sweeps)]
    used: set[tuple[int, str, int]] = set()
    times: set[datetime] = set()
    out: list[ScanResult] = []
    while len(out) < n:
        s = rng.randrange(sweeps)
        h = rng.randrange(hosts)
        ip = f"10.{(h >> 8) & 255}.{h & 255}.{rng.choice((1, 2, 200))}"
        port = rng.choice((1883, 8883, 5672, 5671, 9001))
        if (s, ip, port) in used:
            continue
        used.add((s, ip, port))
        seen = started[s] + timedelta(seconds=rng.randrange(1, 6 * 3600))
        while seen in times:
            seen += timedelta(microseconds=1)
        times.add(seen)
        out.append(_result(rng, f"sw-{s:02d}", started[s], ip, port, seen))
    return out


def _result(rng: random.Random, sweep_id: str, started: datetime, ip: str, port: int,
            seen: datetime) -> ScanResult:
    transport = Transport.TLS if port in (8883, 5671) or rng.random() < 0.1 else Transport.TCP
    if port == 9001 and rng.random() < 0.5:
        transport = rng.choice((Transport.WS, Transport.WSS))
    status = Status.SUCCESS if rng.random() < 0.7 else rng.choice(
        (Status.PROTOCOL_ERROR, Status.HANDSHAKE_ERROR, Status.IO_TIMEOUT))
    tls = mqtt = amqp = None
    protocol = None
    if transport in (Transport.TLS, Transport.WSS) and status is not Status.HANDSHAKE_ERROR:
        subject = rng.choice(_ODD_TEXT[5:13])
        cert = TlsCertificate(
            subject=subject, issuer=rng.choice((subject, "CN=Example CA", "O=Let's Encrypt")),
            serial="1", not_before=seen - timedelta(days=9), not_after=seen + timedelta(days=9),
            key_type="EC", sha256=f"{rng.randrange(6):064x}", self_signed=rng.random() < 0.5,
            expired=rng.random() < 0.2)
        tls = TlsInfo(handshake_completed=True, version=rng.choice(("TLSv1.2", "TLSv1.3")),
                      certificate=cert, trusted=rng.choice((True, False, None)))
    if status is Status.SUCCESS:
        if port in (1883, 8883, 9001) and rng.random() < 0.8:
            protocol = Protocol.MQTT
            anonymous = rng.choice((True, False, None))
            levels = rng.sample((3, 4, 5), rng.randrange(0, 4))
            fingerprint = rng.choice((None, MqttProduct(name="unknown"),
                                  MqttProduct(name="Mosquitto", version="2.0.11"),
                                  MqttProduct(name="amqtt"), MqttProduct(name="RabbitMQ")))
            level = rng.choice((4, 5))
            code = rng.choice((0, 5) if level == 4 else (0, 0x87, 0x84))
            mqtt = MqttResult(protocol_level=level, return_code=code,
                              return_code_name=return_code_name(level, code),
                              session_present=False, anonymous=anonymous,
                              accepted_levels=levels, product=fingerprint)
        else:
            protocol = Protocol.AMQP
            product = rng.choice((*_ODD_TEXT, None))
            props = AmqpServerProperties(product=product, version=rng.choice(
                ("3.12.1", "3.8", "5.18.3", None))) if rng.random() < 0.9 else None
            mechanisms = rng.sample(("PLAIN", "AMQPLAIN", "ANONYMOUS", "EXTERNAL", "bad name",
                                     "plain", "SCRAM-SHA-256"), rng.randrange(0, 4))
            sasl = AmqpSasl(mechanisms=rng.sample(("ANONYMOUS", "PLAIN", "AMQPLAIN"),
                                                  rng.randrange(1, 4)),
                            anonymous_offered=True) if rng.random() < 0.3 else None
            amqp = AmqpResult(family=rng.choice(("0-9-1", "1.0-sasl", "0-10")),
                              server_properties=props, mechanisms=mechanisms, sasl=sasl)
    number = rng.choice((None, 3320, 15169, 36375, 4200000000))
    websocket = None
    if transport in (Transport.WS, Transport.WSS):
        path = rng.choice(("/mqtt", "/", "/ws"))
        upgraded = protocol is Protocol.MQTT
        websocket = WebSocketInfo(
            tries=[WebSocketTry(path=path, subprotocol="mqtt", status=101 if upgraded else 404,
                                answer="upgraded" if upgraded else "refused")],
            server=rng.choice(("Cowboy", "nginx", None)), path=path if upgraded else None,
            subprotocol="mqtt" if upgraded else None)
    return ScanResult(
        sweep_id=sweep_id, sweep_started_at=started, ip=ip, port=port, transport=transport,
        observed_at=seen, status=status, protocol=protocol, tls=tls, mqtt=mqtt, amqp=amqp,
        websocket=websocket,
        asn=None if number is None else AsnInfo(number=number, organization=rng.choice(
            (f"AS{number}", *_ODD_TEXT[5:], None))),
        geo=GeoInfo(country=rng.choice((None, "DE", "US", "BR", "NL"))),
    )
