"""A fault-injecting TCP proxy for tests: cut, stall or refuse connections to a real server.

Modelled on asyncpg's ``TCPFuzzingProxy`` (MagicStack/asyncpg, ``asyncpg/_testbase/fuzzer.py``):
faults come from a real TCP hop between client and server, not from mocks, so the client
library's own error paths run. The proxy listens on a loopback address (by default a fresh
one from the ``scratch`` pool of ``tests/servers.py``) and forwards every connection to
``target``. It runs its own event loop in a daemon thread, so sync tests, async tests (any
loop) and worker processes started by a test can all use it; its methods are thread-safe
and return once the fault is in place.

Faults:

- :meth:`FaultProxy.cut` resets every open connection at once (RST to both sides);
- :meth:`FaultProxy.stall` stops forwarding bytes in both directions but keeps the
  connections (and accepts new ones, which stall too); :meth:`FaultProxy.resume` undoes it;
- :meth:`FaultProxy.refuse_new` closes the listener, so new connections are refused by the
  kernel (ECONNREFUSED) while existing ones carry on; ``refuse_new(False)`` listens again.

Counters: ``accepted`` (connections taken in total), ``active`` (open now), ``cut_count``
(connections reset by :meth:`FaultProxy.cut`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

_T = TypeVar("_T")
_CHUNK = 65536
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side, the server side and their pumps."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """A TCP proxy on loopback that can cut, stall or refuse connections to ``target``.

    :param target_host: the server to forward to; must be in 127.0.0.0/8.
    :param target_port: its port.
    :param host: the address to listen on; default: a fresh 127.54.x.y address.
    :param port: the port to listen on; 0 picks a free one.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str | None = None,
                 port: int = 0) -> None:
        for address in (target_host, host):
            if address is not None and ipaddress.IPv4Address(address) not in _LOOPBACK:
                raise ValueError(f"{address} is not loopback: the proxy stays on 127.0.0.0/8")
        if host is None:
            from tests.servers import allocate

            host, port = allocate("scratch", port)
        self.target = (target_host, target_port)
        self.accepted = 0
        self.cut_count = 0
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"faultproxy->{target_host}:{target_port}")
        self._thread.start()
        self.host, self.port = self._call(self._listen(host, port))

    # ------------------------------------------------------------------ public API

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` where clients connect."""
        return self.host, self.port

    @property
    def active(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._links)

    def url(self, scheme: str = "amqp", userinfo: str = "guest:guest", path: str = "/%2F") -> str:
        """A URL that points at the proxy, e.g. ``amqp://guest:guest@127.54.0.3:40001/%2F``."""
        return f"{scheme}://{userinfo}@{self.host}:{self.port}{path}"

    def cut(self) -> int:
        """Reset every open connection, both sides, at once.

        :returns: the number of connections reset.
        """
        return self._call(self._cut())

    def stall(self) -> None:
        """Stop forwarding bytes (both directions); connections stay open."""
        self._call(self._set_flowing(False))

    def resume(self) -> None:
        """Forward bytes again after :meth:`stall`, including what waited meanwhile."""
        self._call(self._set_flowing(True))

    def refuse_new(self, refuse: bool = True) -> None:
        """Refuse new connections (close the listener) or accept them again.

        :param refuse: True: connects get ECONNREFUSED; False: listen again, same address.
        """
        if refuse:
            self._call(self._close_listener())
        else:
            self._call(self._listen(self.host, self.port))

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread and its loop."""
        if self._loop.is_closed():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ on the proxy loop

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FaultProxy methods must not be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self, host: str, port: int) -> tuple[str, int]:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        if self._listener is not None:
            return host, port
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError:
            listener.close()
            raise
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener, self._accept)
        bound_host, bound_port = listener.getsockname()
        return str(bound_host), int(bound_port)

    def _accept(self) -> None:
        """Take every waiting connection (runs on the loop when the listener is readable).

        Synchronous on purpose: a cancelled ``sock_accept`` can lose a socket it already
        accepted (the same reason tests/servers.py accepts by hand).
        """
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self.accepted += 1
            task = asyncio.get_running_loop().create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        link: _Link | None = None
        failed = True
        try:
            client_reader, client = await asyncio.open_connection(sock=conn, limit=_CHUNK)
            link = _Link(client)
            self._links.add(link)
            server_reader, link.server = await asyncio.open_connection(*self.target)
            if link not in self._links:
                return  # cut() while we dialled: the finally resets the new server side
            loop = asyncio.get_running_loop()
            link.pumps = [
                loop.create_task(self._pump(client_reader, link.server)),
                loop.create_task(self._pump(server_reader, client)),
            ]
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_EXCEPTION)
            failed = any(p.done() and not p.cancelled() and p.exception() for p in link.pumps)
        except OSError:
            pass  # the target refused, or a side failed: reset both (below)
        finally:
            if link is None:
                conn.close()
            else:
                for pump in link.pumps:
                    pump.cancel()
                self._links.discard(link)
                for writer in (link.client, link.server):
                    # A reset on one side is passed on as a reset; a clean close as a close.
                    if writer is None or writer.transport.is_closing():
                        continue
                    if failed:
                        _reset(writer)
                    else:
                        writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until EOF (passed on as a half-close) or an error (raised)."""
        assert self._flowing is not None
        while True:
            await self._flowing.wait()
            data = await reader.read(_CHUNK)
            await self._flowing.wait()  # a stall that began during the read holds the data
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    async def _cut(self) -> int:
        links = list(self._links)
        self._links.clear()
        for link in links:
            for pump in link.pumps:
                pump.cancel()
            _reset(link.client)
            if link.server is not None:
                _reset(link.server)
        self.cut_count += len(links)
        await asyncio.sleep(0)
        return len(links)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _close_listener(self) -> None:
        listener = self._listener
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener)
            self._accept()  # connections already in the backlog are served, not leaked
            self._listener = None
            listener.close()

    async def _stop(self) -> None:
        await self._close_listener()
        await self._cut()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
