"""Port lists: what ``-p`` / ``--ports`` and ``--probe`` mean.

A port list is a comma-separated list of items. Each item is a port number or a well-known
name, optionally followed by a transport suffix::

    1883,8883,5672,5671          the default
    mqtt,mqtts,amqp,amqps        the same, by name (names are case-insensitive)
    8883/tcp                     MQTT's TLS port, probed in plain TCP
    9000/tls                     a custom port over TLS, trying both probes

Rules:

* Names: ``mqtt`` = 1883, ``mqtts`` = 8883 (TLS), ``amqp`` = 5672, ``amqps`` = 5671 (TLS).
* TLS is on by default for 8883 and 5671 and off for every other port; ``/tls`` and
  ``/tcp`` override it.
* Probes by port: 1883 and 8883 -> ``("mqtt",)``; 5672 and 5671 -> ``("amqp",)``; any other
  port -> ``("mqtt", "amqp")``, tried in that order.
* ``probe`` (the CLI's ``--probe``) overrides the probes for **every** port, well-known ones
  included: ``-p 5672 --probe mqtt`` really sends MQTT to 5672. Asking for one probe is an
  explicit choice, so it wins over a guess made from the port number.
* The same port with the same transport twice (``1883,mqtt``) is an error rather than a
  silent merge: it is almost always a typo for another port. The same port over both
  transports (``8883,8883/tcp``) is fine and yields two specs.
* Order is kept as given.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "PROBE_NAMES", "PortError", "PortSpec", "parse_ports"]

PROBE_NAMES: tuple[str, ...] = ("mqtt", "amqp")
"""The probes that exist, in the order they are tried on a port with no default."""

DEFAULT_PORTS = "1883,8883,5672,5671"
"""The default ``--ports`` text."""

# name -> (port, tls)
_NAMES: dict[str, tuple[int, bool]] = {
    "mqtt": (1883, False),
    "mqtts": (8883, True),
    "amqp": (5672, False),
    "amqps": (5671, True),
}
_TLS_PORTS = frozenset({8883, 5671})
_PORT_PROBES: dict[int, tuple[str, ...]] = {
    1883: ("mqtt",),
    8883: ("mqtt",),
    5672: ("amqp",),
    5671: ("amqp",),
}
_SUFFIXES = {"tls": True, "tcp": False}
_DIGITS = re.compile(r"[0-9]+")


class PortError(ValueError):
    """A port list or probe name that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port to probe and how.

    :param port: TCP port, 1-65535.
    :param tls: wrap the connection in TLS before the probe speaks.
    :param probes: probe names (from :data:`PROBE_NAMES`) in the order to try.
    :param name: display name, e.g. ``"1883/mqtt"``, ``"8883/mqtts"``, ``"9000/tcp"``.
    """

    port: int
    tls: bool
    probes: tuple[str, ...]
    name: str


def _display_name(port: int, tls: bool, probes: tuple[str, ...]) -> str:
    if len(probes) == 1:
        return f"{port}/{probes[0]}{'s' if tls else ''}"
    return f"{port}/{'tls' if tls else 'tcp'}"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_item(item: str) -> tuple[int, bool]:
    """:returns: ``(port, tls)`` for one item; :raises PortError: one-line reason."""
    base, slash, suffix = item.partition("/")
    base = base.strip()
    if _DIGITS.fullmatch(base):
        port = int(base) if len(base) <= 5 else 0
        if not 1 <= port <= 65535:
            raise PortError(f"bad port {_quote(item)}: port {_quote(base, 12)[1:-1]} out of range"
                            " (1-65535)")
        tls = port in _TLS_PORTS
    elif base.lower() in _NAMES:
        port, tls = _NAMES[base.lower()]
    else:
        if not base:
            raise PortError(f"bad port {_quote(item)}: missing port before '/'")
        hint = _suggest(base.lower(), list(_NAMES)) or " (use a number or mqtt, mqtts, amqp, amqps)"
        raise PortError(f"bad port {_quote(item)}: unknown port name {_quote(base)}{hint}")
    if slash:
        key = suffix.strip().lower()
        if key not in _SUFFIXES:
            hint = _suggest(key, list(_SUFFIXES)) or " (use /tls or /tcp)"
            raise PortError(f"bad port {_quote(item)}: unknown suffix {_quote(suffix)}{hint}")
        tls = _SUFFIXES[key]
    return port, tls


def parse_ports(text: str, probe: str | None = None) -> list[PortSpec]:
    """Parse a port list (see the module docstring for the rules).

    :param text: e.g. ``"1883,8883,5672,5671"`` or ``"mqtt, 9000/tls"``.
    :param probe: ``"mqtt"`` or ``"amqp"`` to use only that probe on every port; ``None``
        picks probes by port.
    :returns: one :class:`PortSpec` per item, in the order given.
    :raises PortError: e.g. ``bad port 'mqqt': unknown port name 'mqqt' (did you mean
        'mqtt'?) ...``, ``port 1883/tcp listed twice in '1883,mqtt'``,
        ``unknown probe 'http' (expected 'mqtt' or 'amqp')``.
    """
    if probe is not None and probe not in PROBE_NAMES:
        hint = _suggest(probe.lower(), list(PROBE_NAMES)) or " (expected 'mqtt' or 'amqp')"
        raise PortError(f"unknown probe {_quote(probe)}{hint}")
    if not text.strip():
        raise PortError("no ports given")
    specs: list[PortSpec] = []
    seen: set[tuple[int, bool]] = set()
    for item in text.split(","):
        if not item.strip():
            raise PortError(f"empty item in port list {_quote(text)}")
        port, tls = _parse_item(item.strip())
        if (port, tls) in seen:
            raise PortError(f"port {port}/{'tls' if tls else 'tcp'} listed twice in "
                            f"{_quote(text)}")
        seen.add((port, tls))
        probes = (probe,) if probe is not None else _PORT_PROBES.get(port, PROBE_NAMES)
        specs.append(PortSpec(port=port, tls=tls, probes=probes,
                              name=_display_name(port, tls, probes)))
    return specs
