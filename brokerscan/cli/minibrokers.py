"""brokerscan's own minimal brokers, for ``brokerscan demo`` on a machine without real ones.

They answer just enough for a scan: an MQTT broker that answers CONNECT with a CONNACK (a
chosen return code, in the format of the level asked), an AMQP 0-9-1 server that sends
Connection.Start (built with pamqp), an AMQP 1.0 server that answers with its SASL
protocol header, and an HTTP server standing on an MQTT port as a decoy. Each runs on
an asyncio loop in a background thread, on the address given, optionally inside TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass

from pamqp import commands, frame

__all__ = ["Handler", "MiniServer", "ServerThread", "amqp091", "amqp10_sasl", "http", "mqtt"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def mqtt(return_code: int) -> Handler:
    """An MQTT broker that answers every CONNECT with ``return_code`` (0 = accepted)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(2)
        if head[0] != 0x10:
            return
        length, shift, byte = head[1] & 0x7F, 7, head[1]
        while byte & 0x80:  # the remaining length is a varint
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
        body = await reader.readexactly(length)
        name_len = int.from_bytes(body[0:2], "big")
        level = body[2 + name_len]
        if level == 5:  # 5.0 CONNACK: flags, reason code, empty properties
            code = {5: 0x87, 4: 0x86}.get(return_code, return_code)
            writer.write(bytes([0x20, 0x03, 0x00, code, 0x00]))
        else:
            writer.write(bytes([0x20, 0x02, 0x00, return_code]))
        await writer.drain()
        await reader.read(64)  # DISCONNECT or EOF

    return handle


def amqp091(product: str, version: str) -> Handler:
    """An AMQP 0-9-1 server that sends Connection.Start and waits for the client to go."""
    start = commands.Connection.Start(
        version_major=0, version_minor=9,
        server_properties={"product": product, "version": version, "platform": "Python",
                           "capabilities": {"publisher_confirms": True}},
        mechanisms="PLAIN", locales="en_US")
    payload = frame.marshal(start, 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(8)
        if header != b"AMQP\x00\x00\x09\x01":
            writer.write(b"AMQP\x00\x00\x09\x01")
            await writer.drain()
            return
        writer.write(payload)
        await writer.drain()
        await reader.read(64)

    return handle


def amqp10_sasl() -> Handler:
    """An AMQP 1.0 server that wants SASL: it answers any header with ``AMQP 3 1 0 0``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(8)
        writer.write(b"AMQP\x03\x01\x00\x00")
        await writer.drain()

    return handle


def http() -> Handler:
    """A web server: whatever comes in, an HTTP 400 goes out."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nServer: demo\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
        await writer.drain()

    return handle


@dataclass(frozen=True)
class MiniServer:
    host: str
    port: int
    handler: Handler
    tls: ssl.SSLContext | None = None


class ServerThread:
    """Runs mini servers on an event loop in a daemon thread until ``stop``."""

    def __init__(self, servers: list[MiniServer]) -> None:
        self._servers = servers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="minibrokers")
        self._running: list[asyncio.Server] = []

    def start(self) -> None:
        self._thread.start()
        future: Future[None] = asyncio.run_coroutine_threadsafe(self._start_all(), self._loop)
        future.result(timeout=10)

    async def _start_all(self) -> None:
        for spec in self._servers:
            self._running.append(await asyncio.start_server(
                _guarded(spec.handler), spec.host, spec.port, ssl=spec.tls,
                reuse_address=True))

    def stop(self) -> None:
        async def close_all() -> None:
            for server in self._running:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _guarded(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                await handler(reader, writer)
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # a scanner hanging up early is normal
        finally:
            writer.close()

    return run
