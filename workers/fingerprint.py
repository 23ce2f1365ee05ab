"""The MQTT broker product, named from what the standard probe already saw, or "unknown".

No packet is sent for this: the facts come from the CONNECT attempts (which levels were
accepted, refused, and how), the 5.0 CONNACK properties and their values, the WebSocket
``Server`` header and close code, and a ``$SYS/broker/version`` payload when one was read
(opt-in) or sent unasked. The table of products lives beside this module as data
(``data/mqtt_products.toml``, every row citing its source); :func:`identify` names a
product only when rows of exactly one product match, and lists the facts that decided it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from brokerscan.model import MqttProduct, MqttResult, WebSocketInfo

__all__ = ["Rule", "facts", "identify", "load_rules"]

UNKNOWN = "unknown"
_SYS_VERSION_TOPIC = "$SYS/broker/version"

_DENIED = {4: frozenset({4, 5}), 3: frozenset({4, 5}), 5: frozenset({0x86, 0x87, 0x8C})}


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table."""

    id: str
    product: str
    match: dict[str, Any]
    source: str
    tested: bool
    version: str | None = None


@cache
def load_rules() -> tuple[Rule, ...]:
    """The rows of ``data/mqtt_products.toml``, in file order.

    :raises ValueError: a row without an id, product, source or match.
    """
    text = resources.files("workers").joinpath("data/mqtt_products.toml").read_text("utf-8")
    rules = []
    for row in tomllib.loads(text).get("rule", []):
        try:
            rules.append(Rule(id=row["id"], product=row["product"], match=dict(row["match"]),
                              source=row["source"], tested=bool(row.get("tested", False)),
                              version=row.get("version")))
        except KeyError as exc:
            raise ValueError(f"fingerprint row {row.get('id', '?')} lacks {exc}") from None
    return tuple(rules)


def _attempt_fact(level: int, answer: str, code: int | None) -> str:
    if answer != "connack" or code is None:
        return answer
    if code == 0:
        return "accepted"
    if level == 5 and code == 1:  # no 5.0 CONNACK reason is 1: a 3.1.1-only broker's rc 1
        return "refused-level-3.x-format"
    if code == (0x84 if level == 5 else 1):
        return "refused-level"
    if code in _DENIED[level]:
        return "denied"
    return f"connack-{code}"


def facts(mqtt: MqttResult, websocket: WebSocketInfo | None) -> dict[str, Any]:
    """The facts a rule can test (see the table's header for their meaning)."""
    found: dict[str, Any] = {f"level{level}": "untried" for level in (3, 4, 5)}
    for attempt in mqtt.attempts:
        found[f"level{attempt.protocol_level}"] = _attempt_fact(
            attempt.protocol_level, attempt.answer, attempt.return_code)
    if mqtt.properties is not None and mqtt.protocol_level == 5:
        present = mqtt.properties.model_dump(exclude_defaults=True)
        found["props"] = sorted(present)
        for name, value in present.items():
            found[f"prop.{name}"] = value
    if websocket is not None:
        if websocket.server is not None:
            found["ws.server"] = websocket.server
        if websocket.close_code is not None:
            found["ws.close_code"] = websocket.close_code
    version = mqtt.sys.version if mqtt.sys is not None else None
    if version is None:
        version = next((u.payload for u in mqtt.unasked
                        if u.topic == _SYS_VERSION_TOPIC and u.payload is not None), None)
    if version is not None:
        found["sys.version"] = version
    return found


def _holds(key: str, expected: Any, found: dict[str, Any]) -> bool:
    if key.endswith("~"):
        value = found.get(key[:-1])
        return value is not None and re.search(str(expected), str(value)) is not None
    if key not in found:
        return False
    value = found[key]
    if key == "props":
        return bool(sorted(expected) == value)
    if isinstance(expected, list):
        return value in expected
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    same: bool = value == expected
    return same


def _evidence(key: str, found: dict[str, Any]) -> str:
    name = key.rstrip("~")
    value = found[name]
    if name == "props":
        return "5.0 CONNACK properties: " + (", ".join(value) or "none")
    return f"{name} = {value!r}"


def identify(mqtt: MqttResult, websocket: WebSocketInfo | None = None,
             rules: tuple[Rule, ...] | None = None) -> MqttProduct:
    """Name the broker product behind ``mqtt`` (and its WebSocket endpoint, if any).

    :returns: the product of the matching rows with the facts that decided it, or
        ``"unknown"`` when no row matches or rows of several products do.
    """
    table = load_rules() if rules is None else rules
    found = facts(mqtt, websocket)
    matched = [rule for rule in table
               if all(_holds(key, want, found) for key, want in rule.match.items())]
    products = {rule.product for rule in matched}
    if len(products) != 1:
        several = [f"rules of several products match: {', '.join(sorted(products))}"]
        return MqttProduct(name=UNKNOWN, evidence=several if products else [])
    rule = matched[0]
    version = None
    for candidate in matched:
        if candidate.version and "sys.version" in found:
            hit = re.search(candidate.version, str(found["sys.version"]))
            if hit:
                version = hit.group(1)
                break
    evidence: list[str] = []
    for candidate in matched:
        for key in candidate.match:
            line = _evidence(key, found)
            if line not in evidence:
                evidence.append(line)
    return MqttProduct(name=rule.product, version=version,
                       rule=", ".join(r.id for r in matched), evidence=evidence,
                       source=rule.source)
