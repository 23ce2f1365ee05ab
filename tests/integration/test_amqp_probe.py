"""The AMQP driver end to end through the real transport: RabbitMQ 3.10.8 and tiny servers.

The tiny servers listen on 127.43.0.1 (the AMQP pool of tests/servers.py) on ephemeral
ports and replay recorded replies (tests/fixtures/amqp) or misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from brokerscan.model import Protocol, Status
from tests.waiting import HANG, wait_for_async
from workers.probes.amqp import probe_amqp
from workers.probes.base import Dial, ProbeOptions
from workers.protocols.amqp import PROTOCOL_HEADER
from workers.transport import ProbeError, Scope, Stream, dial

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "amqp"
HOST = "127.43.0.1"
SCOPE = Scope(["127.0.0.0/8"])
IO_TIMEOUT = 0.5

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def dialer(ip: str, port: int, io_timeout: float = IO_TIMEOUT) -> Dial:
    async def _dial() -> Stream:
        return await dial(ip, port, scope=SCOPE, connect_timeout=2.0, io_timeout=io_timeout)
    return _dial


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, HOST, 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def replay(reply: bytes, *, read_header: bool = True) -> Handler:
    """Read our 8-byte header (so that closing sends a FIN, not a RST), answer, close."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if read_header:
            assert await reader.readexactly(8) == PROTOCOL_HEADER
        writer.write(reply)
        await writer.drain()
    return handle


async def probe(handler: Handler, options: ProbeOptions | None = None,
                io_timeout: float = IO_TIMEOUT):
    async with serving(handler) as port:
        return await probe_amqp(dialer(HOST, port, io_timeout), options or ProbeOptions())


async def test_real_rabbitmq_connection_start():
    outcome = await probe_amqp(dialer("127.0.0.1", 5672, io_timeout=5.0), ProbeOptions())
    assert outcome.status is Status.SUCCESS, outcome.error
    assert outcome.protocol is Protocol.AMQP
    amqp = outcome.amqp
    assert amqp is not None and amqp.server_properties is not None
    assert amqp.family == "0-9-1" and amqp.protocol_header is None
    assert (amqp.version_major, amqp.version_minor) == (0, 9)
    assert amqp.server_properties.product == "RabbitMQ"
    assert amqp.server_properties.version == "3.10.8"
    assert "PLAIN" in amqp.mechanisms
    assert amqp.server_properties.capabilities.get("publisher_confirms") is True
    assert outcome.raw[:11] == b"\x01\x00\x00" + outcome.raw[3:7] + b"\x00\x0a\x00\x0a"
    assert outcome.error is None


async def test_recorded_connection_start_replayed():
    start = fixture("rabbitmq-3.10.8-amqp-0-9-1.bin")
    outcome = await probe(replay(start))
    assert outcome.status is Status.SUCCESS
    assert outcome.amqp is not None and outcome.amqp.server_properties is not None
    assert outcome.amqp.server_properties.version == "3.10.8"
    assert outcome.raw == start


async def test_start_larger_than_the_cap_is_a_protocol_error():
    start = fixture("rabbitmq-3.10.8-amqp-0-9-1.bin")
    outcome = await probe(replay(start), ProbeOptions(max_reply_bytes=256))
    assert outcome.status is Status.PROTOCOL_ERROR
    assert outcome.protocol is None and outcome.amqp is None
    assert len(outcome.raw) <= 256 and start.startswith(outcome.raw)


@pytest.mark.parametrize(("name", "family", "header"), [
    ("qpid-proton-0.40.0-amqp-0-9-1.bin", "1.0", "AMQP 0 1 0 0"),
    ("qpid-proton-0.40.0-amqp-1.0-sasl.bin", "1.0-sasl", "AMQP 3 1 0 0"),
    ("rabbitmq-3.10.8-amqp-0-10.bin", "0-9-1", "AMQP 0 0 9 1"),
    # No 0-10 server could be recorded (tests/fixtures/amqp/README.md): the header alone.
    (None, "0-10", "AMQP 1 1 0 10"),
])
async def test_header_replies(name: str | None, family: str, header: str):
    reply = fixture(name) if name else b"AMQP\x01\x01\x00\x0a"
    outcome = await probe(replay(reply))
    assert outcome.status is Status.SUCCESS
    assert outcome.protocol is Protocol.AMQP
    assert outcome.amqp is not None
    assert (outcome.amqp.family, outcome.amqp.protocol_header) == (family, header)
    assert outcome.raw.startswith(reply[:8]) and reply.startswith(outcome.raw)


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    b"\x8f\x13\x00garbage\xff\xfe" * 10,
    b"\x20\x02\x00\x05",  # an MQTT CONNACK (not authorised)
    b"AMQX\x00\x00\x09\x01",
])
async def test_other_replies_are_protocol_errors(reply: bytes):
    outcome = await probe(replay(reply))
    assert outcome.status is Status.PROTOCOL_ERROR
    assert outcome.protocol is None and outcome.amqp is None
    assert outcome.error
    assert outcome.raw and reply.startswith(outcome.raw)


async def test_ssh_banner_is_a_protocol_error():
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)  # before reading anything, as SSH servers do
        await writer.drain()
        await reader.read()

    outcome = await probe(handle)
    assert outcome.status is Status.PROTOCOL_ERROR
    assert outcome.raw == banner


async def test_unexpected_method_is_amqp_with_an_error():
    close = (b"\x01\x00\x00\x00\x00\x00\x0f\x00\x0a\x00\x32\x02\x12"
             b"\x04DENY\x00\x00\x00\x00\xce")  # Connection.Close 530 "DENY"
    outcome = await probe(replay(close))
    assert outcome.status is Status.SUCCESS
    assert outcome.amqp is not None and outcome.amqp.family == "0-9-1"
    assert outcome.error == "unexpected AMQP method Connection.Close"


async def test_close_after_the_header_raises_connection_closed():
    with pytest.raises(ProbeError) as info:
        await probe(replay(b""))
    assert info.value.status is Status.CONNECTION_CLOSED


async def test_close_at_once_raises():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return  # closed before our header arrives: a FIN, or a RST for our data

    with pytest.raises(ProbeError) as info:
        await probe(handle)
    assert info.value.status in (Status.CONNECTION_CLOSED, Status.CONNECTION_RESET)


async def test_partial_reply_then_close_is_a_protocol_error():
    outcome = await probe(replay(b"AMQP\x00"))
    assert outcome.status is Status.PROTOCOL_ERROR
    assert outcome.raw == b"AMQP\x00" and outcome.error == "closed mid-reply"


async def test_partial_reply_then_silence_keeps_the_bytes():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"\x01\x00\x00\x00\x00\x01")
        await writer.drain()
        await reader.read()

    outcome = await probe(handle, io_timeout=0.3)
    assert outcome.status is Status.IO_TIMEOUT
    assert outcome.raw == b"\x01\x00\x00\x00\x00\x01" and outcome.protocol is None


async def test_tarpit_times_out():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    started = time.monotonic()
    with pytest.raises(ProbeError) as info:
        await probe(handle, io_timeout=0.3)
    assert info.value.status is Status.IO_TIMEOUT
    assert time.monotonic() - started < 0.3 + HANG  # io_timeout; the rest: a hang, not speed


async def test_two_gigabyte_frame_trickled_ends_at_once():
    sent, trickle = 0, 500

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readexactly(8)
        writer.write(b"\x01\x00\x00\x80\x00\x00\x00")  # a method frame of 2 GiB
        await writer.drain()
        for _ in range(trickle):  # then one byte every 20 ms (the scenario) for 10 s
            writer.write(b"\x00")
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.02)

    started = time.monotonic()
    outcome = await probe(handle, io_timeout=0.3)
    assert outcome.status is Status.PROTOCOL_ERROR
    assert "exceeds" in (outcome.error or "")
    assert len(outcome.raw) <= 16
    assert sent < trickle  # at once: the probe ended while the trickle went on
    assert time.monotonic() - started < HANG  # a hang, not a speed test


async def test_large_valid_frame_trickled_is_bounded_by_the_cap():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"\x01\x00\x00\x00\x00\x0f\xa0")  # 4000 bytes: under the 4096 cap
        while True:
            writer.write(b"\x00" * 64)
            await writer.drain()
            await asyncio.sleep(0.01)  # the scenario: an endless trickle

    started = time.monotonic()
    outcome = await probe(handle, io_timeout=0.3)
    assert outcome.status is Status.PROTOCOL_ERROR  # the frame never ends in 0xce
    assert len(outcome.raw) <= ProbeOptions().max_reply_bytes
    assert time.monotonic() - started < HANG  # bounded by the cap; the bound: a hang


async def test_only_the_header_is_sent_then_a_polite_close():
    """What the server receives from us: the 8-byte header, then nothing but our FIN."""
    received: list[bytes] = []
    start = fixture("rabbitmq-3.10.8-amqp-0-9-1.bin")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readexactly(8))
        writer.write(start[:5])  # split across two writes: the driver reassembles
        await writer.drain()
        await asyncio.sleep(0.05)  # the scenario: the second part comes later
        writer.write(start[5:])
        await writer.drain()
        received.append(await reader.read())  # b"" once we close: no Start-Ok, no login

    outcome = await probe(handle)
    await wait_for_async(lambda: len(received) == 2, HANG, "the server to read our FIN")
    assert received == [PROTOCOL_HEADER, b""]
    assert outcome.status is Status.SUCCESS and outcome.raw == start


async def test_one_byte_at_a_time_is_reassembled():
    start = fixture("rabbitmq-3.10.8-amqp-0-9-1.bin")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        for i in range(len(start)):
            writer.write(start[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0)  # the scenario: one segment per byte

    outcome = await probe(handle)
    assert outcome.status is Status.SUCCESS and outcome.raw == start


async def test_reset_after_some_bytes_keeps_them():
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"\x01\x00")
        await writer.drain()
        await asyncio.sleep(0.05)  # the scenario: the two bytes arrive before the reset
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST mid-frame

    outcome = await probe(handle)
    assert outcome.status in (Status.CONNECTION_RESET, Status.PROTOCOL_ERROR)
    assert outcome.raw == b"\x01\x00"


async def test_a_refused_dial_is_a_probe_error():
    with pytest.raises(ProbeError) as info:
        await probe_amqp(dialer(HOST, 9), ProbeOptions())  # nothing listens on port 9
    assert info.value.status is Status.CONNECTION_REFUSED
