"""The batch message format (brokerscan/stream/wire.py): pure, no broker."""

from __future__ import annotations

import aio_pika
from hypothesis import given
from hypothesis import strategies as st

from brokerscan.stream.wire import (
    BATCH_CONTENT_TYPE,
    COUNT_HEADER,
    batch_id,
    batch_message,
    message_lines,
    result_count,
)

_KEYS = st.lists(st.tuples(st.none() | st.text(max_size=8), st.ip_addresses().map(str),
                           st.integers(0, 65535)), min_size=1, max_size=30)


@given(_KEYS)
def test_batch_id_is_deterministic_and_names_its_first_key(keys: list[
        tuple[str | None, str, int]]) -> None:
    assert batch_id(keys) == batch_id(iter(list(keys)))
    sweep, ip, port = keys[0]
    assert batch_id(keys).startswith(f"{sweep or ''}|{ip}|{port}+{len(keys)}|")


@given(_KEYS, _KEYS)
def test_different_keys_give_different_ids(one: list[tuple[str | None, str, int]],
                                           two: list[tuple[str | None, str, int]]) -> None:
    norm = [[(s or "", ip, p) for s, ip, p in k] for k in (one, two)]
    if norm[0] != norm[1]:
        assert batch_id(one) != batch_id(two)


def test_a_batch_message_carries_its_lines_and_count() -> None:
    lines = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    message = batch_message(lines, message_id="m", headers={"sweep_id": "s", COUNT_HEADER: 99})
    assert message.content_type == BATCH_CONTENT_TYPE
    assert message.headers == {"sweep_id": "s", COUNT_HEADER: 3}
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message_lines(message) == lines
    assert result_count(message) == 3


def test_blank_lines_are_ignored_and_singles_are_one_result() -> None:
    batch = aio_pika.Message(b'\n{"a":1}\n\n  \n{"b":2}\n', content_type=BATCH_CONTENT_TYPE)
    assert message_lines(batch) == [b'{"a":1}', b'{"b":2}']
    assert result_count(batch) == 1  # no header: counts as one, reading is not affected
    single = aio_pika.Message(b'{"a":1}\n{"b":2}', content_type="application/json")
    assert message_lines(single) == [b'{"a":1}\n{"b":2}']  # one document, valid or not
    assert result_count(single) == 1
    bad_header = aio_pika.Message(b"x", content_type=BATCH_CONTENT_TYPE,
                                  headers={COUNT_HEADER: "many"})
    assert result_count(bad_header) == 1
