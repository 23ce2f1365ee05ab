"""Options and argument types that several commands share, defined once: what to probe
(``scan`` and ``sweep plan/start``), the rate (the same meaning everywhere: new
connections per second, ``0`` for no limit) and non-negative numbers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final

from brokerscan.mqttcodes import LEVEL_NAMES, level_of
from brokerscan.settings import Settings

__all__ = ["MAX_RATE", "add_depth_options", "add_discovery_options", "add_metrics_option",
           "add_ops_options", "add_rate_option", "add_target_options", "amqp_versions",
           "mqtt_levels", "non_negative",
           "ops_settings", "positive_int", "ws_paths"]

#: The highest rate any command accepts (a typo guard, far above what a fleet can do).
MAX_RATE: Final = 10_000_000.0


def non_negative(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    """An argparse type: a number of *kind* that is not negative."""
    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or value != value:  # NaN is not a number of anything
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    convert.__name__ = kind.__name__
    return convert


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _rate(text: str) -> float:
    value = float(non_negative(float)(text))
    if value > MAX_RATE:
        raise argparse.ArgumentTypeError(f"{text!r} is above the most allowed, {MAX_RATE:,.0f}")
    return value


def add_rate_option(parser: argparse.ArgumentParser, whom: str) -> None:
    """``-r/--rate``: new connections per second for *whom*; 0 means no limit."""
    parser.add_argument("-r", "--rate", type=_rate, default=10_000.0,
                        help=f"new connections per second for {whom}; 0 = no limit "
                             "(default: %(default)s)")


def mqtt_levels(text: str) -> tuple[int, ...]:
    """An argparse type: MQTT levels in the order to try them (``5.0,3.1.1,3.1``)."""
    try:
        levels = tuple(level_of(item.strip()) for item in text.split(",") if item.strip())
    except KeyError as exc:
        raise argparse.ArgumentTypeError(
            f"unknown MQTT level {exc.args[0]!r} (use {', '.join(LEVEL_NAMES.values())})",
        ) from None
    if not levels:
        raise argparse.ArgumentTypeError("no MQTT level given")
    return levels


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """What to probe: shared by ``scan`` and ``sweep plan/start``."""
    parser.add_argument("-iL", dest="target_files", action="append", default=[],
                        metavar="FILE", help="read targets from FILE, one per line")
    parser.add_argument("-p", "--ports", default="1883,8883,5672,5671",
                        help="ports: numbers or mqtt, mqtts, amqp, amqps; PORT/tls or "
                             "PORT/tcp picks the transport (default: %(default)s)")
    parser.add_argument("--probe", choices=("mqtt", "amqp", "mqtt-ws"),
                        help="use only this probe (default: by port; mqtt and amqp on "
                             "other ports, mqtt-ws first on web ports)")
    parser.add_argument("--allow-reserved", action="store_true",
                        help="lift the built-in IANA blocklist (loopback, private, ...)")
    parser.add_argument("--blocklist", action="append", default=[], metavar="FILE",
                        help="an extra opt-out list in ZMap format (always applied)")


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1..65535)")
    return value


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port``: where a long-running role serves ``/metrics``, ``/healthz`` and
    ``/readyz`` (default: ``BROKERSCAN_METRICS_PORT``)."""
    parser.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                        help="serve /metrics, /healthz and /readyz on this port "
                             "(default: BROKERSCAN_METRICS_PORT; unset: not served)")


def add_ops_options(parser: argparse.ArgumentParser) -> None:
    """What every long-running role shares: its metrics/health port and its log format
    (both default to the settings, ``BROKERSCAN_METRICS_PORT`` and
    ``BROKERSCAN_LOG_FORMAT``)."""
    add_metrics_option(parser)
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log lines as text or JSON objects (default: "
                             "BROKERSCAN_LOG_FORMAT, else text)")


def ops_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """*settings* with the command line's ``--metrics-port`` and ``--log-format`` applied."""
    update: dict[str, object] = {}
    if args.metrics_port is not None:
        update["metrics_port"] = args.metrics_port
    if args.log_format is not None:
        update["log_format"] = args.log_format
    return settings.model_copy(update=update) if update else settings


def amqp_versions(text: str) -> tuple[str, ...]:
    """An argparse type: AMQP versions to ask for (``0-9-1``, ``1.0``); 0-9-1 always."""
    known = ("0-9-1", "1.0")
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item not in known:
            raise argparse.ArgumentTypeError(f"unknown AMQP version {item!r} (use 0-9-1, 1.0)")
    return tuple(v for v in known if v in items or v == "0-9-1")


def ws_paths(text: str) -> tuple[str, ...]:
    """An argparse type: WebSocket upgrade paths in order (``/mqtt,/,/ws``), at most 8."""
    paths = tuple(item.strip() for item in text.split(",") if item.strip())
    if not paths:
        raise argparse.ArgumentTypeError("no WebSocket path given")
    if len(paths) > 8:
        raise argparse.ArgumentTypeError(f"{len(paths)} WebSocket paths; at most 8")
    for path in paths:
        if not path.startswith("/") or not path.isascii() or any(c.isspace() for c in path):
            raise argparse.ArgumentTypeError(f"bad WebSocket path {path!r} (start with /)")
    return paths


def add_depth_options(parser: argparse.ArgumentParser) -> None:
    """How deep the probes go: ``$SYS`` version, AMQP 1.0 SASL, WebSocket paths."""
    parser.add_argument("--sys-version", action="store_true",
                        help="after an accepted MQTT CONNECT, read $SYS/broker/version "
                             "(one SUBSCRIBE to that topic only; at most 2 s)")
    parser.add_argument("--amqp-versions", type=amqp_versions, default=("0-9-1",),
                        help="AMQP versions to ask for: 0-9-1 always; 1.0 adds the SASL "
                             "header on servers that answered 0-9-1 (default: 0-9-1)")
    parser.add_argument("--ws-paths", type=ws_paths, default=("/mqtt", "/", "/ws"),
                        help="WebSocket upgrade paths, tried in order until one upgrades "
                             "(default: /mqtt,/,/ws; at most 8)")


def add_discovery_options(parser: argparse.ArgumentParser) -> None:
    """``--discovery zmap`` and its cooldown: a stateless SYN stage before the probes."""
    parser.add_argument("--discovery", choices=("zmap",), default=None,
                        help="find open ports with ZMap's SYNs first (needs zmap and "
                             "CAP_NET_RAW), then probe only those (default: connect to "
                             "every target)")
    parser.add_argument("--discovery-cooldown", type=non_negative(float), default=8.0,
                        metavar="SECONDS",
                        help="seconds ZMap listens after its last SYN (default: 8)")
