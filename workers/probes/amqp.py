"""The AMQP probe driver: send the 0-9-1 header, read one reply, close without logging in.

The codec (:mod:`workers.protocols.amqp`) does the parsing; this module only moves bytes
and turns what came back into a :class:`~workers.probes.base.ProbeOutcome`:

* Connection.Start → ``success``, protocol ``amqp``, the Start's fields;
* an AMQP protocol header (the server refused 0-9-1) → ``success``, the header's family;
* another well-formed 0-9-1 method on channel 0 → ``success``, family ``0-9-1`` and the
  method's name in ``error`` (the peer does speak AMQP);
* any other bytes (HTTP, an SSH banner, MQTT, garbage, a frame too large) →
  ``protocol-error``, protocol ``None``, the first bytes in ``raw``;
* some bytes, then a close before the reply was whole → ``protocol-error`` (truncated);
* some bytes, then a timeout or reset → that status, with the bytes in ``raw``;
* a close before any byte → :class:`~workers.transport.ProbeError` ``connection-closed``
  (nothing was learned), like every transport failure before the first byte.

AMQP 1.0: a server that answered with a 1.0 header (``AMQP 3 1 0 0`` or ``AMQP 0 1 0 0``)
gets the SASL header ``AMQP 3 1 0 0`` on a connection of its own, and its
``sasl-mechanisms`` are recorded in ``amqp.sasl`` (``sasl-init`` is never sent). With
``"1.0"`` in ``options.amqp_versions``, a server that answered 0-9-1 gets the same try
(RabbitMQ with its AMQP 1.0 plugin, say).

Only :class:`~workers.transport.ProbeError` escapes; the stream is closed in every case.
"""

from __future__ import annotations

from brokerscan.model import AmqpResult, AmqpSasl, Protocol, Status
from workers.probes.base import Dial, ProbeOptions, ProbeOutcome, read_frame
from workers.protocols.amqp import (
    PROTOCOL_HEADER,
    ProtocolHeader,
    UnexpectedFrame,
    build_close,
    header_result,
    parse_reply,
    start_result,
)
from workers.protocols.amqp10 import SASL_HEADER, parse_sasl_reply
from workers.protocols.base import ProtocolError
from workers.transport import ProbeError, Stream, status_of

__all__ = ["probe_amqp", "probe_sasl"]

_FRAME_OVERHEAD = 8  # frame header (7) and frame-end octet (1)


async def probe_amqp(dial: Dial, options: ProbeOptions) -> ProbeOutcome:
    """Probe one AMQP port: the server's Connection.Start or protocol header.

    :param dial: the first call returns the connection the engine opened.
    :param options: ``max_reply_bytes`` caps both the frame accepted and the raw bytes kept.
    :returns: the outcome (see the module docstring for every case).
    :raises ProbeError: a transport failure before any reply byte, including a close
        (``connection-closed``).
    """
    try:
        stream = await dial()
    except ProbeError:
        raise
    except Exception as exc:
        raise status_of(exc, connected=False) from None
    buffer = bytearray()
    try:
        outcome = await _exchange(stream, buffer, options)
    except ProbeError as exc:
        if not buffer:
            raise
        return _failed(exc.status, buffer, options, exc.message)
    except Exception as exc:  # a bug must not escape as anything but ProbeError
        err = status_of(exc, connected=True)
        if not buffer:
            raise err from None
        return _failed(err.status, buffer, options, err.message)
    finally:
        await stream.aclose()
    amqp = outcome.amqp
    if amqp is not None and (amqp.family in ("1.0", "1.0-sasl") or (
            amqp.family == "0-9-1" and "1.0" in options.amqp_versions)):
        outcome.amqp = amqp.model_copy(update={"sasl": await probe_sasl(dial, options)})
    return outcome


async def probe_sasl(dial: Dial, options: ProbeOptions) -> AmqpSasl:
    """Send the AMQP 1.0 SASL header on a new connection and read ``sasl-mechanisms``.

    :returns: what came back; a failure is recorded in ``error``, never raised.
    """
    cap = options.max_reply_bytes
    try:
        stream = await dial()
    except ProbeError as exc:
        return AmqpSasl(error=f"{exc.status.value}: {exc.message}")
    buffer = bytearray()
    try:
        await stream.send(SASL_HEADER)
        _, header, mechanisms = await read_frame(
            stream, lambda b: parse_sasl_reply(b, cap), buffer, cap)
    except EOFError:
        return AmqpSasl(protocol_header=_header_text(buffer),
                        error="closed before sasl-mechanisms")
    except ProtocolError as exc:
        return AmqpSasl(protocol_header=_header_text(buffer), error=str(exc))
    except ProbeError as exc:
        return AmqpSasl(protocol_header=_header_text(buffer),
                        error=f"{exc.status.value}: {exc.message}")
    finally:
        await stream.aclose()
    if mechanisms is None:
        return AmqpSasl(protocol_header=header.text)
    return AmqpSasl(protocol_header=header.text, mechanisms=mechanisms,
                    anonymous_offered=any(m.upper() == "ANONYMOUS" for m in mechanisms))


def _header_text(buffer: bytearray) -> str | None:
    if len(buffer) >= 8 and buffer.startswith(b"AMQP"):
        return " ".join(["AMQP", *(str(b) for b in buffer[4:8])])
    return None


async def _exchange(stream: Stream, buffer: bytearray, options: ProbeOptions) -> ProbeOutcome:
    """Send the header and turn the one reply into an outcome; ``buffer`` keeps the bytes."""
    cap = options.max_reply_bytes
    max_size = max(cap - _FRAME_OVERHEAD, 0)
    await stream.send(PROTOCOL_HEADER)
    try:
        _, reply = await read_frame(stream, lambda b: parse_reply(b, max_size), buffer, cap)
    except EOFError:
        if not buffer:
            raise ProbeError(Status.CONNECTION_CLOSED, "closed before any reply") from None
        return _failed(Status.PROTOCOL_ERROR, buffer, options, "closed mid-reply")
    except UnexpectedFrame as exc:
        await _close_politely(stream)
        return ProbeOutcome(status=Status.SUCCESS, protocol=Protocol.AMQP,
                            amqp=AmqpResult(family="0-9-1"), raw=bytes(buffer[:cap]),
                            error=str(exc))
    except ProtocolError as exc:
        return _failed(Status.PROTOCOL_ERROR, buffer, options, str(exc))
    if isinstance(reply, ProtocolHeader):
        result = header_result(reply)
    else:
        result = start_result(reply)
        await _close_politely(stream)
    return ProbeOutcome(status=Status.SUCCESS, protocol=Protocol.AMQP, amqp=result,
                        raw=bytes(buffer[:cap]))


async def _close_politely(stream: Stream) -> None:
    """Send what :func:`build_close` asks for (nothing, today); the result is known."""
    data = build_close()
    if data:
        try:
            await stream.send(data)
        except ProbeError:
            pass


def _failed(status: Status, buffer: bytearray, options: ProbeOptions,
            error: str) -> ProbeOutcome:
    return ProbeOutcome(status=status, protocol=None, raw=bytes(buffer[:options.max_reply_bytes]),
                        error=error)
