"""Row mapping (storage/rows.py): pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import rows
from tests.unit.storage.gen import make_results


def test_a_row_has_every_column_and_the_record() -> None:
    for result in make_results(50, seed=1):
        row = rows.observation_row(result)
        assert len(row) == len(rows.COLUMNS)
        named = dict(zip(rows.COLUMNS, row, strict=True))
        assert named["record"] == result.to_json()
        assert named["sweep_id"] == result.sweep_id and named["port"] == result.port
        assert result.sweep_started_at is not None
        assert named["day"] == result.sweep_started_at.astimezone(UTC).date()
        assert named["protocol"] == (result.protocol and result.protocol.value)
        assert named["anonymous"] == (result.mqtt and result.mqtt.anonymous)
        assert named["country"] == (result.geo and result.geo.country)
        assert named["asn"] == (result.asn and result.asn.number)
        assert named["status"] == result.status.value
        assert named["tls"] == (result.transport.value in ("tls", "wss"))


def test_addresses_are_canonical() -> None:
    result = make_results(1)[0].model_copy(update={"ip": "2001:DB8:0::0"})
    assert rows.observation_row(result)[2] == "2001:db8::"


def test_results_without_sweep_are_refused() -> None:
    result = make_results(1)[0]
    with pytest.raises(ValueError, match="no sweep_id"):
        rows.observation_row(result.model_copy(update={"sweep_id": None}))
    with pytest.raises(ValueError, match="no sweep_started_at"):
        rows.observation_row(result.model_copy(update={"sweep_started_at": None}))


def test_day_is_the_utc_day_the_sweep_started() -> None:
    cet = timezone(timedelta(hours=1))
    assert rows.day_of(datetime(2026, 3, 2, 0, 30, tzinfo=cet)) == date(2026, 3, 1)
    assert rows.day_of(datetime(2026, 3, 1, 23, 59, 59)) == date(2026, 3, 1)  # naive = UTC


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 1, 1),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))])))
def test_sqlite_times_round_trip_and_sort(moment: datetime) -> None:
    text = rows.format_time(moment)
    assert rows.parse_time(text) == moment
    later = rows.format_time(moment + timedelta(microseconds=1))
    assert later > text and len(later) == len(text)


def test_sqlite_row_turns_times_and_days_into_text() -> None:
    row = rows.sqlite_row(rows.observation_row(make_results(1)[0]))
    named = dict(zip(rows.COLUMNS, row, strict=True))
    assert named["sweep_started_at"] == "2026-03-01T23:59:59.000000Z"
    assert named["day"] == "2026-03-01"


_ADDRESS_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: str(a).replace(".", ".0", 1)),  # a leading zero
    st.integers(0, 2**32 - 1).map(str),  # "3232235777": inet_aton reads it, ipaddress not
    st.lists(st.integers(0, 255), min_size=1, max_size=3).map(
        lambda parts: ".".join(map(str, parts))),  # "127.1" and the like
    st.text("0123456789abcdefx.: ", max_size=20),
)


@given(_ADDRESS_TEXT)
def test_canonical_ip_agrees_with_ipaddress(text: str) -> None:
    """The fast path gives exactly what ``ipaddress`` gives, and refuses what it refuses."""
    import ipaddress

    try:
        expected = str(ipaddress.ip_address(text))
    except ValueError:
        with pytest.raises(ValueError):
            rows.canonical_ip(text)
        return
    assert rows.canonical_ip(text) == expected


def test_a_record_given_is_stored_as_given() -> None:
    result = make_results(1)[0]
    row = rows.observation_row(result, record=result.to_json())
    assert row[rows.COLUMNS.index("record")] == result.to_json()
    assert rows.observation_row(result, record="{}")[rows.COLUMNS.index("record")] == "{}"


def test_product_and_mechanisms_of_amqp_and_mqtt() -> None:
    from brokerscan.model import (
        AmqpResult,
        AmqpSasl,
        AmqpServerProperties,
        MqttProduct,
        MqttResult,
        Transport,
    )

    base = make_results(1)[0]
    amqp = AmqpResult(family="0-9-1", mechanisms=["PLAIN", "AMQPLAIN"],
                      server_properties=AmqpServerProperties(product="RabbitMQ",
                                                             version="3.10.8"),
                      sasl=AmqpSasl(mechanisms=["ANONYMOUS", "plain", "AMQPLAIN"],
                                    anonymous_offered=True))
    rabbit = base.model_copy(update={"amqp": amqp, "mqtt": None})
    assert rows.product_of(rabbit) == ("RabbitMQ", "3.10.8")
    assert rows.mechanisms_of(rabbit) == "ANONYMOUS PLAIN AMQPLAIN"
    mqtt = MqttResult(protocol_level=5, return_code=0, return_code_name="accepted",
                      session_present=False, anonymous=True,
                      product=MqttProduct(name="Mosquitto", version="2.0.11"))
    mosquitto = base.model_copy(update={"amqp": None, "mqtt": mqtt,
                                        "transport": Transport.WSS})
    assert rows.product_of(mosquitto) == ("Mosquitto", "2.0.11")
    assert rows.mechanisms_of(mosquitto) is None
    assert dict(zip(rows.COLUMNS, rows.observation_row(mosquitto), strict=True))["tls"] is True
    unknown = mqtt.model_copy(update={"product": MqttProduct(name="unknown")})
    assert rows.product_of(base.model_copy(update={"amqp": None, "mqtt": unknown})) == (
        None, None)
