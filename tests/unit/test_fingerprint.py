"""The product table: every row is well formed and cites a source; matching is strict."""

from __future__ import annotations

import pytest

from brokerscan.model import (
    MqttAttempt,
    MqttProperties,
    MqttResult,
    MqttSys,
    MqttUnasked,
    WebSocketInfo,
)
from workers.fingerprint import Rule, facts, identify, load_rules


def _mqtt(*attempts: tuple[int, str, int | None], props: MqttProperties | None = None,
          sys: str | None = None, unasked: list[MqttUnasked] | None = None) -> MqttResult:
    chosen = next((a for a in attempts if a[1] == "connack"), attempts[-1])
    return MqttResult(
        protocol_level=5 if props is not None else 4, return_code=chosen[2] or 0,
        return_code_name="x", session_present=False, anonymous=True,
        attempts=[MqttAttempt(protocol_level=lv, answer=an, return_code=rc)
                  for lv, an, rc in attempts],
        properties=props, sys=MqttSys(answer="version", version=sys) if sys else None,
        unasked=unasked or [])


def test_every_row_is_well_formed_and_cites_a_source() -> None:
    rules = load_rules()
    assert len({r.id for r in rules}) == len(rules)
    for rule in rules:
        assert rule.source and rule.match and rule.product
        for key in rule.match:
            assert key.rstrip("~") in {"level3", "level4", "level5", "props", "ws.server",
                                       "ws.close_code", "sys.version"} \
                or key.startswith("prop."), key
            if key.startswith("prop."):
                assert key[5:] in MqttProperties.model_fields, key


def test_mosquitto_defaults_must_match_exactly() -> None:
    props = MqttProperties(receive_maximum=20, topic_alias_maximum=10)
    assert identify(_mqtt((5, "connack", 0), props=props)).name == "Mosquitto"
    more = props.model_copy(update={"maximum_qos": 1})
    assert identify(_mqtt((5, "connack", 0), props=more)).name == "unknown"
    other = MqttProperties(receive_maximum=21, topic_alias_maximum=10)
    assert identify(_mqtt((5, "connack", 0), props=other)).name == "unknown"


def test_a_version_from_sys_or_sent_unasked() -> None:
    named = identify(_mqtt((4, "connack", 0), sys="mosquitto version 2.0.18"))
    assert (named.name, named.version) == ("Mosquitto", "2.0.18")
    unasked = [MqttUnasked(packet_type=3, topic="$SYS/broker/version",
                           payload="aMQTT version 0.11.0")]
    named = identify(_mqtt((4, "connack", 0), unasked=unasked))
    assert (named.name, named.version) == ("amqtt", "0.11.0")


def test_attempt_facts() -> None:
    found = facts(_mqtt((5, "connack", 1), (4, "connack", 5), (3, "closed", None)), None)
    assert (found["level5"], found["level4"], found["level3"]) == (
        "refused-level-3.x-format", "denied", "closed")
    found = facts(_mqtt((5, "connack", 0x84), (4, "connack", 1)), None)
    assert (found["level5"], found["level4"], found["level3"]) == (
        "refused-level", "refused-level", "untried")


def test_a_cowboy_server_alone_is_not_enough() -> None:
    ws = WebSocketInfo(server="Cowboy")
    assert identify(_mqtt((5, "connack", 0), (4, "connack", 0)), ws).name == "unknown"
    ws = WebSocketInfo(server="Cowboy", close_code=1011)
    assert identify(_mqtt((5, "closed", None), (4, "connack", 0)), ws).name == "RabbitMQ"


def test_rows_of_two_products_make_it_unknown() -> None:
    rules = (Rule("a", "A", {"level4": "accepted"}, "s", False),
             Rule("b", "B", {"level4": "accepted"}, "s", False))
    named = identify(_mqtt((4, "connack", 0)), rules=rules)
    assert named.name == "unknown" and "A, B" in named.evidence[0]


@pytest.mark.parametrize("props", [
    MqttProperties(retain_available=True, maximum_packet_size=1048576,
                   topic_alias_maximum=65535, wildcard_subscription_available=True,
                   subscription_identifiers_available=True,
                   shared_subscription_available=True, receive_maximum=32),
])
def test_emqx_defaults(props: MqttProperties) -> None:
    assert identify(_mqtt((5, "connack", 0), props=props)).name == "EMQX"
