"""Port lists: what ``-p`` / ``--ports`` and ``--probe`` mean.

A port list is a comma-separated list of items. Each item is a port number or a well-known
name, optionally followed by a transport suffix::

    1883,8883,5672,5671          the default
    mqtt,mqtts,amqp,amqps        the same, by name (names are case-insensitive)
    8883/tcp                     MQTT's TLS port, probed in plain TCP
    9000/tls                     a custom port over TLS, trying both probes
    9001/ws, 443/wss             MQTT over WebSocket only (plain, or inside TLS)

Rules:

* Names: ``mqtt`` = 1883, ``mqtts`` = 8883 (TLS), ``amqp`` = 5672, ``amqps`` = 5671 (TLS).
* TLS is on by default for 8883, 5671 and the web TLS ports 443, 8084 and 9443, and off
  for every other port; ``/tls`` and ``/tcp`` override it. ``/ws`` and ``/wss`` ask for
  MQTT over WebSocket alone, plain or inside TLS.
* Probes by port: 1883 and 8883 -> ``("mqtt",)``; 5672 and 5671 -> ``("amqp",)``; the
  ports web servers and WebSocket MQTT listeners use (80, 443, 8000, 8080, 8081, 8083,
  8084, 9001, 9443) -> ``("mqtt-ws", "mqtt", "amqp")`` (the WebSocket first: these ports
  are nearly always HTTP, and a port that answers HTTP is not tried with the raw probes);
  any other port -> ``("mqtt", "amqp")``, tried in that order.
* A plaintext port whose transport was guessed (no default protocol, no suffix) is tried
  again inside TLS, once, when its plaintext probes meet a TLS record
  (:attr:`PortSpec.tls_retry`).
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

PROBE_NAMES: tuple[str, ...] = ("mqtt", "amqp", "mqtt-ws")
"""The probes that exist."""

OTHER_PORT_PROBES: tuple[str, ...] = ("mqtt", "amqp")
"""The probes of a port with no default, in the order they are tried."""

WEB_PORTS: frozenset[int] = frozenset({80, 443, 8000, 8080, 8081, 8083, 8084, 9001, 9443})
"""Ports that get the MQTT-over-WebSocket probe (first) by default."""

WEB_PORT_PROBES: tuple[str, ...] = ("mqtt-ws", "mqtt", "amqp")

DEFAULT_PORTS = "1883,8883,5672,5671"
"""The default ``--ports`` text."""

# name -> (port, tls)
_NAMES: dict[str, tuple[int, bool]] = {
    "mqtt": (1883, False),
    "mqtts": (8883, True),
    "amqp": (5672, False),
    "amqps": (5671, True),
}
_TLS_PORTS = frozenset({8883, 5671, 443, 8084, 9443})
_PORT_PROBES: dict[int, tuple[str, ...]] = {
    1883: ("mqtt",),
    8883: ("mqtt",),
    5672: ("amqp",),
    5671: ("amqp",),
}
_SUFFIXES = {"tls": True, "tcp": False, "ws": False, "wss": True}
_WS_SUFFIXES = frozenset({"ws", "wss"})
_DIGITS = re.compile(r"[0-9]+")


class PortError(ValueError):
    """A port list or probe name that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One port to probe and how.

    :param port: TCP port, 1-65535.
    :param tls: wrap the connection in TLS before the probe speaks.
    :param probes: probe names (from :data:`PROBE_NAMES`) in the order to try.
    :param name: display name, e.g. ``"1883/mqtt"``, ``"8883/mqtts"``, ``"9000/tcp"``,
        ``"9001/ws"``.
    :param websocket: asked for as ``/ws`` or ``/wss``: results are ``ws``/``wss``.
    :param tls_retry: a plaintext port whose transport was a guess: when its probes meet a
        TLS record, they are tried again inside TLS.
    """

    port: int
    tls: bool
    probes: tuple[str, ...]
    name: str
    websocket: bool = False
    tls_retry: bool = False


def _display_name(port: int, tls: bool, probes: tuple[str, ...]) -> str:
    if probes == ("mqtt-ws",):
        return f"{port}/{'wss' if tls else 'ws'}"
    if len(probes) == 1:
        return f"{port}/{probes[0]}{'s' if tls else ''}"
    return f"{port}/{'tls' if tls else 'tcp'}"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_item(item: str) -> tuple[int, bool, str | None]:
    """:returns: ``(port, tls, suffix)`` for one item; :raises PortError: one-line reason."""
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
            hint = _suggest(key, list(_SUFFIXES)) or " (use /tls, /tcp, /ws or /wss)"
            raise PortError(f"bad port {_quote(item)}: unknown suffix {_quote(suffix)}{hint}")
        return port, _SUFFIXES[key], key
    return port, tls, None


def parse_ports(text: str, probe: str | None = None) -> list[PortSpec]:
    """Parse a port list (see the module docstring for the rules).

    :param text: e.g. ``"1883,8883,5672,5671"`` or ``"mqtt, 9000/tls"``.
    :param probe: ``"mqtt"``, ``"amqp"`` or ``"mqtt-ws"`` to use only that probe on every
        port; ``None`` picks probes by port.
    :returns: one :class:`PortSpec` per item, in the order given.
    :raises PortError: e.g. ``bad port 'mqqt': unknown port name 'mqqt' (did you mean
        'mqtt'?) ...``, ``port 1883/tcp listed twice in '1883,mqtt'``,
        ``unknown probe 'http' (expected 'mqtt' or 'amqp')``.
    """
    if probe is not None and probe not in PROBE_NAMES:
        hint = _suggest(probe.lower(), list(PROBE_NAMES)) \
            or " (expected 'mqtt', 'amqp' or 'mqtt-ws')"
        raise PortError(f"unknown probe {_quote(probe)}{hint}")
    if not text.strip():
        raise PortError("no ports given")
    specs: list[PortSpec] = []
    seen: set[tuple[int, bool, bool]] = set()
    for item in text.split(","):
        if not item.strip():
            raise PortError(f"empty item in port list {_quote(text)}")
        port, tls, suffix = _parse_item(item.strip())
        websocket = suffix in _WS_SUFFIXES or probe == "mqtt-ws"
        if (port, tls, websocket) in seen:
            kind = ("wss" if tls else "ws") if websocket else ("tls" if tls else "tcp")
            raise PortError(f"port {port}/{kind} listed twice in {_quote(text)}")
        seen.add((port, tls, websocket))
        if probe is not None:
            probes: tuple[str, ...] = (probe,)
        elif websocket:
            probes = ("mqtt-ws",)
        elif port in WEB_PORTS:
            probes = WEB_PORT_PROBES
        else:
            probes = _PORT_PROBES.get(port, OTHER_PORT_PROBES)
        guessed = suffix is None and probe is None and port not in _PORT_PROBES
        specs.append(PortSpec(port=port, tls=tls, probes=probes,
                              name=_display_name(port, tls, probes), websocket=websocket,
                              tls_retry=guessed and not tls))
    return specs
