"""The fields of the search language: one table, with the census's names as aliases.

Every field names a column that ``observations`` and ``services`` both have (the current
view and the history answer the same query) and a :class:`Kind` that says how a value is
read and compared. A new record field joins the search by one row here, one column in the
stores (:mod:`storage.rows`) and one line in the reference evaluator of the tests.

Kinds:

- ``text``: case-insensitive (ASCII) equality; ``value*`` matches a prefix;
- ``keyword``: a closed or canonical vocabulary (``mqtt``, ``US``, ``success``): the value
  is brought to its canonical case, then compared exactly (indexes work);
- ``int``: whole numbers, ranges;
- ``bool``: ``true`` or ``false``;
- ``ip``: an address, a CIDR block (``141.211.0.0/16``) or a range of addresses;
- ``time``: a day (``2026-12-01``, the whole UTC day) or an ISO timestamp, ranges;
- ``set``: the column holds several space-separated members (``ANONYMOUS PLAIN``); a value
  matches when it is one of them (``amqp.mechanisms:PLAIN``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from enum import StrEnum
from typing import Final

from brokerscan.mqttcodes import LEVEL_NAMES, level_of

__all__ = ["BARE_COLUMNS", "FIELDS", "Field", "Kind", "canonical_level", "canonical_mechanism",
           "lookup", "names"]


class Kind(StrEnum):
    TEXT = "text"
    KEYWORD = "keyword"
    INT = "int"
    BOOL = "bool"
    IP = "ip"
    TIME = "time"
    SET = "set"


def _upper(text: str) -> str:
    return text.upper()


def _lower(text: str) -> str:
    return text.lower()


def canonical_level(text: str) -> str:
    """An MQTT level as stored (``3``, ``4``, ``5``) from ``3.1``, ``3.1.1``, ``5.0`` or the
    number itself; raises ValueError for anything else."""
    try:
        return str(level_of(text))
    except KeyError:
        raise ValueError(f"an MQTT level ({', '.join(LEVEL_NAMES.values())}, or "
                         f"{', '.join(map(str, LEVEL_NAMES))})") from None


_MECHANISM: Final = re.compile(r"[A-Z0-9_-]{1,64}")


def canonical_mechanism(text: str) -> str:
    """A SASL mechanism name as stored: upper case; RFC 4422 allows letters, digits, ``-``
    and ``_`` only (so a member never holds the space that separates members)."""
    upper = text.upper()
    if not _MECHANISM.fullmatch(upper):
        raise ValueError("a SASL mechanism name (letters, digits, - and _)")
    return upper


def _tls_version(text: str) -> str:
    """``TLSv1.3`` as OpenSSL names it, from ``tlsv1.3``, ``1.3`` or ``TLSv1.3``."""
    bare = text.lower().removeprefix("tlsv").removeprefix("tls")
    return f"TLSv{bare}" if bare else text


@dataclass(frozen=True, slots=True)
class Field:
    """One searchable field.

    :ivar name: its name in queries
    :ivar column: the column of ``observations`` and ``services`` it reads
    :ivar kind: how values are read and compared
    :ivar help: one line for the field list
    :ivar aliases: other names (the census's)
    :ivar canonical: for ``keyword`` and ``set`` fields, the value as stored; raises
        ValueError, whose text says what was expected, for a value that cannot be one
    :ivar choices: the values there are, when the vocabulary is closed
    :ivar bounds: for ``int`` fields, the least and greatest value the column can hold
        (a value outside is a bad query, never an overflow in the store)
    """

    name: str
    column: str
    kind: Kind
    help: str
    aliases: tuple[str, ...] = ()
    canonical: Callable[[str], str] | None = dataclasses.field(default=None, repr=False)
    choices: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    bounds: tuple[int, int] = dataclasses.field(default=(-(2**63), 2**63 - 1), repr=False)


_STATUSES: Final = (
    "success", "connection-refused", "connection-timeout", "connection-reset",
    "connection-closed", "io-timeout", "handshake-error", "protocol-error", "unreachable",
    "blocklisted-target", "out-of-scope", "unknown-error",
)
_FAMILIES: Final = ("0-9-1", "0-9", "0-8", "0-10", "1.0", "1.0-tls", "1.0-sasl", "unknown")

#: Every field, in the order the field list shows them.
FIELDS: Final[tuple[Field, ...]] = (
    Field("protocol", "protocol", Kind.KEYWORD, "what answered: mqtt or amqp",
          ("tags",), _lower, ("mqtt", "amqp")),
    Field("port", "port", Kind.INT, "TCP port", bounds=(0, 65535)),
    Field("transport", "transport", Kind.KEYWORD, "how it was reached: tcp, tls, ws, wss",
          (), _lower, ("tcp", "tls", "ws", "wss")),
    Field("tls", "tls", Kind.BOOL, "true when the service is behind TLS"),
    Field("status", "status", Kind.KEYWORD, "how the probe ended (success, ...)",
          (), _lower, _STATUSES),
    Field("anonymous", "anonymous", Kind.BOOL,
          "true when the MQTT broker accepted an anonymous CONNECT", ("mqtt.anonymous",)),
    Field("mqtt.return_code", "mqtt_return_code", Kind.INT,
          "CONNACK return code (3.x) or reason code (5.0)",
          bounds=(0, 255)),  # one byte on the wire; a smallint column
    Field("mqtt.level", "mqtt_levels", Kind.SET,
          "an MQTT level the broker accepted: 3.1, 3.1.1 or 5.0", (), canonical_level,
          tuple(LEVEL_NAMES.values())),
    Field("product", "product", Kind.TEXT, "broker product (RabbitMQ, Mosquitto, ...)"),
    Field("version", "version", Kind.TEXT, "broker version, as the broker tells it"),
    Field("amqp.family", "amqp_family", Kind.KEYWORD,
          "AMQP protocol family (0-9-1, 1.0-sasl, ...)", (), _lower, _FAMILIES),
    Field("amqp.mechanisms", "amqp_mechanisms", Kind.SET,
          "a SASL mechanism the server offers (PLAIN, AMQPLAIN, ANONYMOUS, ...)", (),
          canonical_mechanism),
    Field("asn", "asn", Kind.INT, "autonomous system number", ("autonomous_system.asn",),
          bounds=(0, 2**32 - 1)),  # 32-bit AS numbers (RFC 6793)
    Field("org", "org", Kind.TEXT, "autonomous system organisation",
          ("autonomous_system.name",)),
    Field("country", "country", Kind.KEYWORD, "ISO 3166-1 alpha-2 country code",
          ("location.country_code",), _upper),
    Field("ip", "ip", Kind.IP, "IPv4 address, CIDR block or range"),
    Field("cert.subject", "cert_subject", Kind.TEXT, "leaf certificate subject (RFC 4514)"),
    Field("cert.issuer", "cert_issuer", Kind.TEXT, "leaf certificate issuer (RFC 4514)"),
    Field("cert.sha256", "cert_sha256", Kind.KEYWORD, "SHA-256 of the leaf certificate (hex)",
          (), _lower),
    Field("cert.self_signed", "cert_self_signed", Kind.BOOL, "the leaf signs itself"),
    Field("cert.expired", "cert_expired", Kind.BOOL, "the leaf had expired when observed"),
    Field("cert.trusted", "cert_trusted", Kind.BOOL,
          "the chain verifies against the system roots"),
    Field("tls.version", "tls_version", Kind.KEYWORD, "negotiated TLS version (TLSv1.3, ...)",
          (), _tls_version),
    Field("sweep", "sweep_id", Kind.KEYWORD, "the sweep (or local scan) that observed it",
          ("sweep_id",)),
    Field("first_seen", "first_seen", Kind.TIME, "first observed (a day or a time, UTC)"),
    Field("last_seen", "last_seen", Kind.TIME, "last observed (a day or a time, UTC)"),
)

#: What a bare term (no field) is looked for in, as a case-insensitive substring.
BARE_COLUMNS: Final = ("product", "org", "cert_subject", "cert_issuer")

_BY_NAME: Final[dict[str, Field]] = {
    name: field for field in FIELDS for name in (field.name, *field.aliases)
}


def names() -> list[str]:
    """Every name a field can be given, aliases included."""
    return list(_BY_NAME)


def lookup(name: str) -> Field:
    """The field called *name* (case-insensitive).

    :raises KeyError: with a one-line message naming the nearest field
    """
    field = _BY_NAME.get(name.lower())
    if field is not None:
        return field
    close = get_close_matches(name.lower(), list(_BY_NAME), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"unknown field {name!r}{hint}")
