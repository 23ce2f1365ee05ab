"""Validating what arrives on the stream, and dead-lettering what cannot be used.

Both consumers read bodies with :func:`parse_results` (every result a message carries,
validated one by one) and send what they cannot use to the dead-letter exchange with
:func:`dead_letter` or :func:`dead_letter_line` instead of dropping it:

- a dead letter keeps the original body, message id, headers and routing key (also in the
  header ``x-brokerscan-routing-key``) and adds ``x-brokerscan-error`` (the one-line
  reason) and ``x-brokerscan-stage`` (``enrich`` or ``store``);
- a bad line of a batch is dead-lettered alone (id ``<batch id>#<line>``), the rest of its
  batch goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aio_pika
import aio_pika.abc
import pydantic

from brokerscan.model import READABLE_VERSIONS, ScanResult
from brokerscan.oneline import one_line
from brokerscan.stream.wire import (
    BATCH_CONTENT_TYPE,
    COUNT_HEADER,
    SINGLE_CONTENT_TYPE,
    message_lines,
)

__all__ = [
    "ERROR_HEADER",
    "ROUTING_KEY_HEADER",
    "STAGE_HEADER",
    "BadLine",
    "GoodLine",
    "InvalidResult",
    "dead_letter",
    "dead_letter_line",
    "parse_line",
    "parse_result",
    "parse_results",
]

ERROR_HEADER = "x-brokerscan-error"
ROUTING_KEY_HEADER = "x-brokerscan-routing-key"
STAGE_HEADER = "x-brokerscan-stage"


class InvalidResult(ValueError):
    """A message body that is not a ScanResult this brokerscan understands; ``str()`` is the
    one-line reason that goes into the dead letter."""



def parse_result(message: aio_pika.abc.AbstractMessage) -> ScanResult:
    """Validate a single-result message body as a :class:`ScanResult` we understand.

    :raises InvalidResult: with the one-line reason (unknown schema version, bad JSON, or
        the first validation error and how many there were).
    """
    _check_schema_header(message)
    return parse_line(message.body)


def parse_line(body: bytes) -> ScanResult:
    """Validate one JSON document as a :class:`ScanResult`.

    :raises InvalidResult: with the one-line reason.
    """
    try:
        return ScanResult.model_validate_json(body)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "literal_error" and first["loc"] == ("schema_version",):
            reason = f"unknown schema_version {first.get('input')!r}"
        else:
            reason = f"invalid result: {where}: {first['msg']}"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidResult(one_line(reason) + more) from None


def _check_schema_header(message: aio_pika.abc.AbstractMessage) -> None:
    header = (message.headers or {}).get("schema_version")
    if header is not None and header not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise InvalidResult(f"unknown schema_version {header!r} (this brokerscan reads "
                            f"{readable})")


@dataclass(frozen=True, slots=True)
class BadLine:
    """A result document of a message that failed validation: its index in the message,
    its bytes, and the one-line reason."""

    index: int
    line: bytes
    reason: str


#: A valid result of a message: its index in the message, its bytes, the result.
GoodLine = tuple[int, bytes, ScanResult]


async def parse_results(message: aio_pika.abc.AbstractMessage, *, every: int = 0,
                        ) -> tuple[list[GoodLine], list[BadLine]]:
    """Every result a message carries (:func:`brokerscan.stream.wire.message_lines`), validated.

    :param every: if not 0, yield to the event loop every *every* results (so that other
        work of the loop, such as a database write in flight, keeps moving).
    :returns: the valid results in order, and the lines that failed with their reasons
        (a message whose ``schema_version`` header is unknown fails as a whole: every line;
        a message without any result is one bad line, its whole body).
    """
    lines = message_lines(message)
    if not lines:
        return [], [BadLine(0, message.body, "empty message: no result in it")]
    try:
        _check_schema_header(message)
    except InvalidResult as exc:
        return [], [BadLine(i, line, str(exc)) for i, line in enumerate(lines)]
    good: list[GoodLine] = []
    bad: list[BadLine] = []
    for index, line in enumerate(lines):
        if every and index and not index % every:
            await asyncio.sleep(0)
        try:
            good.append((index, line, parse_line(line)))
        except InvalidResult as exc:
            bad.append(BadLine(index, line, str(exc)))
    return good, bad


def dead_letter(message: aio_pika.abc.AbstractIncomingMessage, reason: str,
                stage: str) -> aio_pika.Message:
    """The dead letter of ``message``: same body, id and headers, plus the reason."""
    headers: dict[str, aio_pika.abc.FieldValue] = dict(message.headers or {})
    headers[ERROR_HEADER] = one_line(reason)
    headers[STAGE_HEADER] = stage
    headers[ROUTING_KEY_HEADER] = message.routing_key or ""
    return aio_pika.Message(
        message.body, content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message.message_id,
        headers=headers, app_id="brokerscan")


def dead_letter_line(message: aio_pika.abc.AbstractIncomingMessage, bad: BadLine,
                     stage: str) -> aio_pika.Message:
    """The dead letter of one result of a message: that result's bytes alone (one
    ``application/json`` document), the message's headers and reason as in
    :func:`dead_letter`, message id ``<message id>#<index>`` when the message was a batch.
    """
    headers: dict[str, aio_pika.abc.FieldValue] = dict(message.headers or {})
    headers.pop(COUNT_HEADER, None)
    headers[ERROR_HEADER] = one_line(bad.reason)
    headers[STAGE_HEADER] = stage
    headers[ROUTING_KEY_HEADER] = message.routing_key or ""
    single = message.content_type != BATCH_CONTENT_TYPE
    message_id = message.message_id
    if not single:
        message_id = f"{message_id or ''}#{bad.index}"
    return aio_pika.Message(
        bad.line, content_type=message.content_type if single else SINGLE_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id,
        headers=headers, app_id="brokerscan")
