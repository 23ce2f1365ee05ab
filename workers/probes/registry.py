"""Probe drivers by name: adding a protocol is one module and one line here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from workers.probes.amqp import probe_amqp
from workers.probes.base import Dial, ProbeOptions, ProbeOutcome
from workers.probes.mqtt import probe_mqtt
from workers.probes.mqtt_ws import probe_mqtt_ws

__all__ = ["PROBES", "ProbeFn"]

ProbeFn = Callable[[Dial, ProbeOptions], Awaitable[ProbeOutcome]]

PROBES: dict[str, ProbeFn] = {
    "mqtt": probe_mqtt,
    "amqp": probe_amqp,
    "mqtt-ws": probe_mqtt_ws,
}
