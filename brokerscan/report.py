"""The end-of-scan report: counts in the shape of Censys's 2019 MQTT/AMQP census.

:class:`Report` is fed one :class:`~brokerscan.model.ScanResult` at a time and keeps only
counters, so its memory does not grow with the number of targets. ``as_dict`` gives the
JSON report; ``render`` the text one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from brokerscan.model import Protocol, ScanResult, Status
from brokerscan.mqttcodes import LEVEL_NAMES

__all__ = ["Report", "render"]

_TOP = 10


class Report:
    """Counters over a stream of results."""

    def __init__(self) -> None:
        self.mqtt = 0
        self.mqtt_plain_1883 = 0
        self.mqtt_tls_8883 = 0
        self.mqtt_tls = 0
        self.mqtt_anonymous = 0
        self.mqtt_auth_required = 0
        self.mqtt_by_port: Counter[str] = Counter()
        self.mqtt_codes: Counter[str] = Counter()
        self.mqtt_levels: Counter[str] = Counter()
        self.mqtt_products: Counter[str] = Counter()
        self.mqtt_websocket = 0
        self.mqtt_ws_paths: Counter[str] = Counter()
        self.websocket_other = 0  # answered the WebSocket probe in HTTP, no MQTT
        self.websocket_servers: Counter[str] = Counter()
        self.amqp = 0
        self.amqp_by_port: Counter[str] = Counter()
        self.amqp_products: Counter[str] = Counter()
        self.amqp_families: Counter[str] = Counter()
        self.amqp10_mechanisms: Counter[str] = Counter()
        self.amqp10_anonymous = 0
        self.tls_handshakes = 0
        self.tls_self_signed = 0
        self.tls_expired = 0
        self.tls_trusted = 0
        self.tls_client_cert_required = 0
        self.tls_versions: Counter[str] = Counter()
        self.other_open = 0
        self.other_by_port: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()

    def add(self, result: ScanResult) -> None:
        """Count one result."""
        port = f"{result.port}/{result.transport.value}"
        tls = result.tls
        if tls is not None:
            if tls.handshake_completed:
                self.tls_handshakes += 1
                if tls.version:
                    self.tls_versions[tls.version] += 1
                cert = tls.certificate
                if cert is not None:
                    self.tls_self_signed += cert.self_signed
                    self.tls_expired += cert.expired
                self.tls_trusted += tls.trusted is True
            self.tls_client_cert_required += tls.client_certificate_required
        if result.protocol is Protocol.MQTT and result.mqtt is not None:
            mqtt = result.mqtt
            self.mqtt += 1
            self.mqtt_by_port[port] += 1
            is_tls = result.transport.value in ("tls", "wss")
            self.mqtt_tls += is_tls
            self.mqtt_plain_1883 += result.port == 1883 and not is_tls
            self.mqtt_tls_8883 += result.port == 8883 and is_tls
            self.mqtt_anonymous += mqtt.anonymous is True
            self.mqtt_auth_required += mqtt.anonymous is False
            self.mqtt_codes[mqtt.return_code_name] += 1
            for level in mqtt.accepted_levels:
                self.mqtt_levels[LEVEL_NAMES.get(level, str(level))] += 1
            product = mqtt.product  # no fingerprint (an older record): unknown too
            name = "unknown" if product is None or product.name == "unknown" else product.name
            if product is not None and product.version is not None:
                name = f"{name} {product.version}"
            self.mqtt_products[name] += 1
            if result.transport.value in ("ws", "wss") and result.websocket is not None:
                self.mqtt_websocket += 1
                self.mqtt_ws_paths[f"{result.transport.value} {result.websocket.path}"] += 1
        elif result.protocol is Protocol.AMQP and result.amqp is not None:
            amqp = result.amqp
            self.amqp += 1
            self.amqp_by_port[port] += 1
            self.amqp_families[amqp.family] += 1
            props = amqp.server_properties
            if props is not None and (props.product or props.version):
                self.amqp_products[f"{props.product or '?'} {props.version or '?'}"] += 1
            else:
                self.amqp_products[f"(AMQP {amqp.family}, no Connection.Start)"] += 1
            sasl = amqp.sasl
            if sasl is not None and sasl.mechanisms:
                self.amqp10_mechanisms[" ".join(sasl.mechanisms)] += 1
                self.amqp10_anonymous += sasl.anonymous_offered is True
        elif result.status is Status.PROTOCOL_ERROR:
            self.other_open += 1
            self.other_by_port[port] += 1
        ws = result.websocket
        if ws is not None and result.protocol is None \
                and any(t.status is not None for t in ws.tries):
            self.websocket_other += 1
            self.websocket_servers[ws.server or "(no Server header)"] += 1

    def as_dict(self, stats: Any = None) -> dict[str, Any]:
        """The report as JSON-ready data; ``stats`` is the engine's ScanStats, if any."""
        data: dict[str, Any] = {
            "mqtt": {
                "servers": self.mqtt,
                "plaintext_on_1883": self.mqtt_plain_1883,
                "tls_on_8883": self.mqtt_tls_8883,
                "tls_any_port": self.mqtt_tls,
                "anonymous_accepted": self.mqtt_anonymous,
                "auth_required": self.mqtt_auth_required,
                "by_port": dict(self.mqtt_by_port.most_common()),
                "by_return_code": dict(self.mqtt_codes.most_common()),
                "by_accepted_level": dict(self.mqtt_levels.most_common()),
                "by_product": dict(self.mqtt_products.most_common()),
                "over_websocket": self.mqtt_websocket,
                "websocket_endpoints": dict(self.mqtt_ws_paths.most_common()),
            },
            "websocket": {
                "http_without_mqtt": self.websocket_other,
                "by_server": dict(self.websocket_servers.most_common()),
            },
            "amqp": {
                "services": self.amqp,
                "by_port": dict(self.amqp_by_port.most_common()),
                "by_product": dict(self.amqp_products.most_common()),
                "by_family": dict(self.amqp_families.most_common()),
                "amqp10_sasl_mechanisms": dict(self.amqp10_mechanisms.most_common()),
                "amqp10_anonymous_offered": self.amqp10_anonymous,
            },
            "tls": {
                "handshakes": self.tls_handshakes,
                "self_signed": self.tls_self_signed,
                "expired": self.tls_expired,
                "trusted": self.tls_trusted,
                "client_certificate_required": self.tls_client_cert_required,
                "by_version": dict(self.tls_versions.most_common()),
            },
            "other_open": {"ports": self.other_open, "by_port": dict(self.other_by_port)},
        }
        if stats is not None:
            statuses = Counter(stats.statuses)
            data["scan"] = {
                "targets": stats.total,
                "probed": stats.done,
                "open": stats.open,
                "seconds": round(stats.elapsed, 3),
                "probes_per_second": round(stats.rate, 1),
                "by_status": dict(statuses.most_common()),
            }
        return data

    def render(self, stats: Any = None) -> str:
        """The report as text for a terminal."""
        return render(self.as_dict(stats))


def render(d: dict[str, Any]) -> str:
    """A report (:meth:`Report.as_dict`'s shape, or a store's census report) as text."""
    m, a, t, w = d["mqtt"], d["amqp"], d["tls"], d["websocket"]
    lines = ["brokerscan report" + (f": {d['view']}" if "view" in d else ""), ""]
    if "scan" in d:
        s = d["scan"]
        lines += [f"targets probed       {s['probed']:>10}   open {s['open']}   "
                  f"in {s['seconds']:.1f} s ({s['probes_per_second']:.0f} probes/s)", ""]
    lines += [
        f"MQTT servers         {m['servers']:>10}",
        f"  on 1883 without TLS{m['plaintext_on_1883']:>10}",
        f"  on 8883 with TLS   {m['tls_on_8883']:>10}",
        f"  accepting anonymous{m['anonymous_accepted']:>10}",
        f"  requiring auth     {m['auth_required']:>10}",
    ]
    lines += _section("  by port", m["by_port"])
    lines += _section("  by CONNACK", m["by_return_code"])
    lines += _section("  protocol levels accepted", m["by_accepted_level"])
    lines += _section("  by broker product", m["by_product"])
    lines += [f"  over WebSocket     {m['over_websocket']:>10}"]
    lines += _section("  WebSocket endpoints (transport, path)", m["websocket_endpoints"])
    lines += ["", f"AMQP services        {a['services']:>10}"]
    lines += _section("  by port", a["by_port"])
    lines += _section("  by product/version", a["by_product"])
    lines += _section("  by protocol family", a["by_family"])
    lines += _section("  AMQP 1.0 SASL mechanisms", a["amqp10_sasl_mechanisms"])
    if a["amqp10_sasl_mechanisms"]:
        lines += [f"  AMQP 1.0 offering ANONYMOUS{a['amqp10_anonymous_offered']:>4}"]
    lines += [
        "",
        f"TLS handshakes       {t['handshakes']:>10}",
        f"  self-signed        {t['self_signed']:>10}",
        f"  expired            {t['expired']:>10}",
        f"  trusted (system)   {t['trusted']:>10}",
        f"  client cert needed {t['client_certificate_required']:>10}",
    ]
    lines += _section("  by version", t["by_version"])
    lines += ["", f"open, neither MQTT nor AMQP {d['other_open']['ports']:>3}"]
    lines += _section("  by port", d["other_open"]["by_port"])
    if w["http_without_mqtt"]:
        lines += [f"  HTTP, no MQTT over WebSocket {w['http_without_mqtt']:>2}"]
        lines += _section("  by Server header", w["by_server"])
    if "scan" in d:
        lines += [""] + _section("outcomes by status", d["scan"]["by_status"])
    return "\n".join(lines) + "\n"


def _section(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    items = list(counts.items())
    lines = [title]
    lines += [f"    {name:<32}{count:>8}" for name, count in items[:_TOP]]
    if len(items) > _TOP:
        lines.append(f"    ... and {len(items) - _TOP} more")
    return lines
