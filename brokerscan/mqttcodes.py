"""MQTT protocol levels and CONNACK return codes (3.1, 3.1.1) and reason codes (5.0) by
name: what every stage calls them, from the codec that reads them to the report that counts
them and the search that finds them."""

from __future__ import annotations

from typing import Final

__all__ = ["LEVEL_NAMES", "REASON_CODES_5", "RETURN_CODES_3", "level_of", "return_code_name"]

#: The MQTT version each protocol level (the CONNECT's level byte) stands for.
LEVEL_NAMES: Final = {3: "3.1", 4: "3.1.1", 5: "5.0"}
_LEVELS: Final = {**{str(n): n for n in LEVEL_NAMES}, **{v: n for n, v in LEVEL_NAMES.items()}}


def level_of(text: str) -> int:
    """The protocol level a version (``3.1``, ``3.1.1``, ``5.0``) or a level (``3``, ``4``,
    ``5``) names.

    :raises KeyError: neither
    """
    return _LEVELS[text]


RETURN_CODES_3: dict[int, str] = {
    0: "accepted",
    1: "unacceptable-protocol-version",
    2: "identifier-rejected",
    3: "server-unavailable",
    4: "bad-username-or-password",
    5: "not-authorized",
}

# MQTT 5.0 reason codes (section 2.4). 0x00 is "accepted" as in 3.x, so that dashboards
# group the levels; the 0x80+ names cover the whole table, not just the CONNACK subset,
# because brokers are not always careful which one they send.
REASON_CODES_5: dict[int, str] = {
    0x00: "accepted",
    0x80: "unspecified-error",
    0x81: "malformed-packet",
    0x82: "protocol-error",
    0x83: "implementation-specific-error",
    0x84: "unsupported-protocol-version",
    0x85: "client-identifier-not-valid",
    0x86: "bad-username-or-password",
    0x87: "not-authorized",
    0x88: "server-unavailable",
    0x89: "server-busy",
    0x8A: "banned",
    0x8B: "server-shutting-down",
    0x8C: "bad-authentication-method",
    0x8D: "keep-alive-timeout",
    0x8E: "session-taken-over",
    0x8F: "topic-filter-invalid",
    0x90: "topic-name-invalid",
    0x91: "packet-identifier-in-use",
    0x92: "packet-identifier-not-found",
    0x93: "receive-maximum-exceeded",
    0x94: "topic-alias-invalid",
    0x95: "packet-too-large",
    0x96: "message-rate-too-high",
    0x97: "quota-exceeded",
    0x98: "administrative-action",
    0x99: "payload-format-invalid",
    0x9A: "retain-not-supported",
    0x9B: "qos-not-supported",
    0x9C: "use-another-server",
    0x9D: "server-moved",
    0x9E: "shared-subscriptions-not-supported",
    0x9F: "connection-rate-exceeded",
}


def return_code_name(level: int, code: int) -> str:
    """The name of a CONNACK return code (3.x) or reason code (5.0); ``reserved-N`` else."""
    table = REASON_CODES_5 if level == 5 else RETURN_CODES_3
    return table.get(code, f"reserved-{code}")
