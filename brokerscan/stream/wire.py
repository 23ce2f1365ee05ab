"""How results travel on RabbitMQ: one message carries a batch of results.

One AMQP message per result costs more than storing that result (about 70 µs of delivery
in aio-pika alone), so every stage of the stream speaks in batches:

- ``content_type`` :data:`BATCH_CONTENT_TYPE` (``application/x-ndjson``): the body is one
  :class:`~brokerscan.model.ScanResult` JSON document per line, ``\\n`` between lines (no
  trailing newline needed; empty lines are ignored); header :data:`COUNT_HEADER` holds the
  number of lines;
- any other content type (``application/json``, or none) is one result per message: what
  earlier brokerscan versions and hand-written tools send, still read everywhere.

All results of one message share its routing key (``result.<protocol|none>.<status>``), so
a binding on the topic exchange still selects what it names. The message id of a batch is
:func:`batch_id` of the keys it carries: the same results give the same id, whoever sends
them again. Idempotence does not rest on it (the store keys every observation); it is for
people reading queues and dead letters.

A line that fails validation is dead-lettered on its own (see
:func:`brokerscan.stream.deadletters.dead_letter_line`); the rest of its batch goes on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

import aio_pika
import aio_pika.abc

__all__ = [
    "BATCH_CONTENT_TYPE",
    "COUNT_HEADER",
    "SINGLE_CONTENT_TYPE",
    "batch_id",
    "batch_message",
    "message_lines",
    "result_count",
]

BATCH_CONTENT_TYPE: Final = "application/x-ndjson"
SINGLE_CONTENT_TYPE: Final = "application/json"
#: Header with the number of results in a batch message.
COUNT_HEADER: Final = "results"


def batch_id(keys: Iterable[tuple[str | None, str, int]]) -> str:
    """A deterministic message id for the results with these ``(sweep, ip, port)`` keys:
    ``"<sweep>|<first ip>|<first port>+<n>|<digest>"``, the digest over every key in order.
    """
    digest = hashlib.blake2b(digest_size=8)
    first: tuple[str | None, str, int] | None = None
    count = 0
    for key in keys:
        if first is None:
            first = key
        sweep = key[0] or ""
        digest.update(f"{len(sweep)}:{sweep}|{key[1]}|{key[2]}\n".encode())
        count += 1
    if first is None:
        return "empty"
    return f"{first[0] or ''}|{first[1]}|{first[2]}+{count}|{digest.hexdigest()}"


def batch_message(
    lines: Sequence[bytes], *, message_id: str,
    headers: dict[str, aio_pika.abc.FieldValue] | None = None,
) -> aio_pika.Message:
    """A persistent batch message of JSON *lines* (each one result, without newlines)."""
    all_headers: dict[str, aio_pika.abc.FieldValue] = dict(headers or {})
    all_headers[COUNT_HEADER] = len(lines)
    return aio_pika.Message(
        b"\n".join(lines), content_type=BATCH_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id,
        headers=all_headers, app_id="brokerscan")


def message_lines(message: aio_pika.abc.AbstractMessage) -> list[bytes]:
    """The result documents a message carries: the lines of a batch, else the whole body."""
    if message.content_type != BATCH_CONTENT_TYPE:
        return [message.body]
    return [line for line in message.body.split(b"\n") if line.strip()]


def result_count(message: aio_pika.abc.AbstractMessage) -> int:
    """How many results a message carries, from its header (at least 1; cheap: the body is
    not read). A batch without a usable header counts as 1, so the count only sizes
    batches and never decides what is read."""
    if message.content_type != BATCH_CONTENT_TYPE:
        return 1
    value = (message.headers or {}).get(COUNT_HEADER)
    return value if isinstance(value, int) and value > 0 else 1
