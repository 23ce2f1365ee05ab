"""The AMQP driver over a scripted stream: what crosses its boundary, without a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from pamqp import commands, frame

from brokerscan.model import Status
from workers.probes.amqp import probe_amqp
from workers.probes.base import ProbeOptions
from workers.protocols.amqp import PROTOCOL_HEADER
from workers.transport import ProbeError, Stream

RABBITMQ_START = (Path(__file__).resolve().parents[2] / "fixtures" / "amqp"
                  / "rabbitmq-3.10.8-amqp-0-9-1.bin").read_bytes()


class Scripted:
    """Hands out scripted chunks (or raises scripted exceptions); records what was sent."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.closed = False

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    async def receive(self, max_bytes: int = 4096) -> bytes:
        item = self.script.pop(0) if self.script else b""
        if isinstance(item, BaseException):
            raise item
        assert len(item) <= max_bytes
        return cast(bytes, item)

    async def aclose(self) -> None:
        self.closed = True


async def run(stream: Scripted, options: ProbeOptions | None = None):
    async def dial() -> Stream:
        return cast(Stream, stream)
    return await probe_amqp(dial, options or ProbeOptions())


async def test_header_is_sent_and_nothing_else_after_start():
    start = frame.marshal(commands.Connection.Start(server_properties={"product": "X"},
                                                    mechanisms="ANONYMOUS"), 0)
    stream = Scripted(start[:5], start[5:])
    outcome = await run(stream)
    assert stream.sent == [PROTOCOL_HEADER] and stream.closed
    assert outcome.status is Status.SUCCESS and outcome.raw == start
    assert outcome.amqp is not None and outcome.amqp.mechanisms == ["ANONYMOUS"]


async def test_a_bug_below_becomes_a_probe_error():
    stream = Scripted(RuntimeError("boom"))
    with pytest.raises(ProbeError) as info:
        await run(stream)
    assert info.value.status is Status.UNKNOWN_ERROR and stream.closed


async def test_a_bug_after_some_bytes_keeps_them():
    stream = Scripted(b"AMQ", RuntimeError("boom"))
    outcome = await run(stream)
    assert outcome.status is Status.UNKNOWN_ERROR and outcome.raw == b"AMQ"


async def test_a_failing_dial_becomes_a_probe_error():
    async def dial() -> Stream:
        raise ValueError("bad address")
    with pytest.raises(ProbeError) as info:
        await probe_amqp(dial, ProbeOptions())
    assert info.value.status is Status.UNKNOWN_ERROR


async def test_reset_after_some_bytes_is_recorded():
    stream = Scripted(b"\x01\x00", ProbeError(Status.CONNECTION_RESET, "ECONNRESET"))
    outcome = await run(stream)
    assert (outcome.status, outcome.raw, outcome.error) == (
        Status.CONNECTION_RESET, b"\x01\x00", "ECONNRESET")


async def test_one_byte_at_a_time_is_reassembled():
    stream = Scripted(*[RABBITMQ_START[i:i + 1] for i in range(len(RABBITMQ_START))])
    outcome = await run(stream)
    assert outcome.status is Status.SUCCESS and outcome.raw == RABBITMQ_START
