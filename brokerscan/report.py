"""The census report: counts in the shape of Censys's 2019 MQTT/AMQP census, defined once.

:func:`census_facts` says what one :class:`~brokerscan.model.ScanResult` counts for (its
*facts*: ``mqtt.servers``, ``mqtt.by_port=1883/tcp``, ...); a report is the count of each
fact over a set of results, shaped by :func:`report_of`. A scan feeds :class:`Report` one
result at a time (counters only, so its memory does not grow with the targets); the stores
keep the same counts as rollups, written with the rows (``storage/rollups.py``), and shape
them with the same function. ``render`` gives the text report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from brokerscan.model import Protocol, ScanResult, Status
from brokerscan.mqttcodes import LEVEL_NAMES

__all__ = ["Report", "census_facts", "render", "report_of"]

_TOP = 10

#: The report's breakdowns, by section (facts ``section.name=key``).
_BREAKDOWNS: Final = {
    "mqtt": ("by_port", "by_return_code", "by_accepted_level", "by_product",
             "websocket_endpoints"),
    "websocket": ("by_server",),
    "amqp": ("by_port", "by_product", "by_family", "amqp10_sasl_mechanisms"),
    "tls": ("by_version",),
    "other_open": ("by_port",),
}
#: The order of each section's keys in the report.
_ORDER: Final = {
    "mqtt": ("servers", "plaintext_on_1883", "tls_on_8883", "tls_any_port",
             "anonymous_accepted", "auth_required", "by_port", "by_return_code",
             "by_accepted_level", "by_product", "over_websocket", "websocket_endpoints"),
    "websocket": ("http_without_mqtt", "by_server"),
    "amqp": ("services", "by_port", "by_product", "by_family", "amqp10_sasl_mechanisms",
             "amqp10_anonymous_offered"),
    "tls": ("handshakes", "self_signed", "expired", "trusted", "client_certificate_required",
            "by_version"),
    "other_open": ("ports", "by_port"),
}


def census_facts(result: ScanResult) -> list[str]:
    """What *result* counts for in the census report, each fact once: ``section.count``
    for a single count, ``section.breakdown=key`` for a line of a breakdown."""
    facts: list[str] = []
    port = f"{result.port}/{result.transport.value}"
    tls = result.tls
    if tls is not None:
        if tls.handshake_completed:
            facts.append("tls.handshakes")
            if tls.version:
                facts.append(f"tls.by_version={tls.version}")
            cert = tls.certificate
            if cert is not None:
                if cert.self_signed:
                    facts.append("tls.self_signed")
                if cert.expired:
                    facts.append("tls.expired")
            if tls.trusted is True:
                facts.append("tls.trusted")
        if tls.client_certificate_required:
            facts.append("tls.client_certificate_required")
    if result.protocol is Protocol.MQTT and result.mqtt is not None:
        mqtt = result.mqtt
        is_tls = result.transport.value in ("tls", "wss")
        facts += ["mqtt.servers", f"mqtt.by_port={port}",
                  f"mqtt.by_return_code={mqtt.return_code_name}"]
        if is_tls:
            facts.append("mqtt.tls_any_port")
        if result.port == 1883 and not is_tls:
            facts.append("mqtt.plaintext_on_1883")
        if result.port == 8883 and is_tls:
            facts.append("mqtt.tls_on_8883")
        if mqtt.anonymous is not None:
            facts.append("mqtt.anonymous_accepted" if mqtt.anonymous else "mqtt.auth_required")
        facts += [f"mqtt.by_accepted_level={LEVEL_NAMES.get(level, str(level))}"
                  for level in sorted(set(mqtt.accepted_levels))]
        product = mqtt.product  # no fingerprint (an older record): unknown too
        name = "unknown" if product is None or product.name == "unknown" else product.name
        if product is not None and product.version is not None:
            name = f"{name} {product.version}"
        facts.append(f"mqtt.by_product={name}")
        if result.transport.value in ("ws", "wss") and result.websocket is not None:
            facts += ["mqtt.over_websocket",
                      f"mqtt.websocket_endpoints={result.transport.value} "
                      f"{result.websocket.path}"]
    elif result.protocol is Protocol.AMQP and result.amqp is not None:
        amqp = result.amqp
        facts += ["amqp.services", f"amqp.by_port={port}", f"amqp.by_family={amqp.family}"]
        props = amqp.server_properties
        if props is not None and (props.product or props.version):
            facts.append(f"amqp.by_product={props.product or '?'} {props.version or '?'}")
        else:
            facts.append(f"amqp.by_product=(AMQP {amqp.family}, no Connection.Start)")
        sasl = amqp.sasl
        if sasl is not None and sasl.mechanisms:
            facts.append(f"amqp.amqp10_sasl_mechanisms={' '.join(sasl.mechanisms)}")
            if sasl.anonymous_offered is True:
                facts.append("amqp.amqp10_anonymous_offered")
    elif result.status is Status.PROTOCOL_ERROR:
        facts += ["other_open.ports", f"other_open.by_port={port}"]
    ws = result.websocket
    if ws is not None and result.protocol is None \
            and any(t.status is not None for t in ws.tries):
        facts += ["websocket.http_without_mqtt",
                  f"websocket.by_server={ws.server or '(no Server header)'}"]
    return list(dict.fromkeys(facts))


def report_of(counts: Mapping[str, int]) -> dict[str, Any]:
    """The report (sections of counts and breakdowns, each breakdown largest first) from
    the count of each fact; facts counted 0 are left out, unknown facts ignored."""
    singles: Counter[str] = Counter()
    lines: dict[str, Counter[str]] = {}
    for fact, n in counts.items():
        name, has_key, key = fact.partition("=")
        if not n:
            continue
        if has_key:
            lines.setdefault(name, Counter())[key] += n
        else:
            singles[name] += n
    out: dict[str, Any] = {}
    for section, order in _ORDER.items():
        out[section] = {}
        for name in order:
            fact = f"{section}.{name}"
            if name in _BREAKDOWNS[section]:
                counted = lines.get(fact, Counter())
                out[section][name] = dict(sorted(counted.items(), key=lambda i: (-i[1], i[0])))
            else:
                out[section][name] = singles[fact]
    return out


class Report:
    """Counters over a stream of results: the count of each fact."""

    def __init__(self) -> None:
        self.facts: Counter[str] = Counter()

    def add(self, result: ScanResult) -> None:
        """Count one result."""
        self.facts.update(census_facts(result))

    def as_dict(self, stats: Any = None) -> dict[str, Any]:
        """The report as JSON-ready data; ``stats`` is the engine's ScanStats, if any."""
        data = report_of(self.facts)
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
