"""The only module that opens sockets or does TLS; the scope check lives here.

Two ways in:

* :class:`Connector` starts many non-blocking ``connect()`` calls at once and reports each
  outcome through a plain callback (no asyncio Task per target). A closed port therefore
  costs a socket, a ``connect()``, one epoll wake-up and a ``close()``: this is what lets a
  Python process reach a good fraction of a C ``connect()`` loop.
* :func:`dial` is the ordinary ``await``-able connect used by probes that need another
  connection (MQTT level fall-back, the second probe of a port).

Both return a :class:`Stream`: ``send``/``receive``/``aclose``, per-operation timeouts,
and TLS started inside it when asked (verification off; what the handshake showed is
kept in :attr:`Stream.tls`). Every OS, TLS and timeout error is mapped to a
:class:`~brokerscan.model.Status` in :func:`status_of`, the one place that does it.

Why one piece: the house rule is that exactly one module opens sockets and does TLS, with
the scope check in front of every connection and one mapping of errors to statuses.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import ipaddress
import select
import socket
import ssl
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from brokerscan.model import Status, TlsInfo
from workers.tlshooks import HandshakeWatch, check_hooks_once, install_watch, watching
from workers.tlsinfo import (
    Describer,
    failed_handshake_info,
    handshake_facts,
    late_handshake_failure,
)
from workers.tlstrust import system_roots

__all__ = [
    "Connector",
    "ProbeError",
    "Scope",
    "Stream",
    "TlsOptions",
    "dial",
    "status_of",
]


class ProbeError(Exception):
    """A transport failure, already mapped to a status."""

    def __init__(self, status: Status, message: str, tls: TlsInfo | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.tls = tls


_ERRNO_STATUS = {
    errno.ECONNREFUSED: Status.CONNECTION_REFUSED,
    errno.ETIMEDOUT: Status.CONNECTION_TIMEOUT,
    errno.ECONNRESET: Status.CONNECTION_RESET,
    errno.EPIPE: Status.CONNECTION_RESET,
    errno.ECONNABORTED: Status.CONNECTION_RESET,
    errno.ENETUNREACH: Status.UNREACHABLE,
    errno.EHOSTUNREACH: Status.UNREACHABLE,
    errno.EADDRNOTAVAIL: Status.UNREACHABLE,
    errno.EACCES: Status.UNREACHABLE,  # a local firewall said no
    errno.EPERM: Status.UNREACHABLE,
}


def status_of(exc: BaseException, *, connected: bool) -> ProbeError:
    """Map any exception raised while talking to a target to a :class:`ProbeError`.

    :param connected: whether the TCP connection was up (a timeout before it is a
        connection-timeout, after it an io-timeout).
    """
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        status = Status.IO_TIMEOUT if connected else Status.CONNECTION_TIMEOUT
        return ProbeError(status, "timed out")
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return ProbeError(Status.HANDSHAKE_ERROR, _ssl_reason(exc))
    if isinstance(exc, EOFError | asyncio.IncompleteReadError):
        return ProbeError(Status.CONNECTION_CLOSED, "closed by peer")
    if isinstance(exc, OSError) and exc.errno is not None:
        status = _ERRNO_STATUS.get(exc.errno, Status.UNKNOWN_ERROR)
        if status is Status.CONNECTION_TIMEOUT and connected:
            status = Status.IO_TIMEOUT
        return ProbeError(status, errno.errorcode.get(exc.errno, str(exc.errno)))
    if isinstance(exc, ConnectionError):
        return ProbeError(Status.CONNECTION_RESET, type(exc).__name__)
    return ProbeError(Status.UNKNOWN_ERROR, f"{type(exc).__name__}: {exc}")


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", "-") if reason else str(exc)


class Scope:
    """The networks this deployment may dial at all, less the networks opted out since the
    sweep was planned (:meth:`without`). Checked before any packet (:meth:`check`)."""

    def __init__(self, networks: Iterable[str | ipaddress.IPv4Network],
                 opted_out: Scope | None = None) -> None:
        nets = [ipaddress.IPv4Network(n, strict=False) for n in networks]
        merged: list[list[int]] = []
        for lo, hi in sorted((int(n.network_address), int(n.broadcast_address)) for n in nets):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self._starts = [lo for lo, _ in merged]
        self._ends = [hi for _, hi in merged]
        self.networks = nets
        self.opted_out = opted_out

    def __contains__(self, ip: int) -> bool:
        i = bisect_right(self._starts, ip) - 1
        return i >= 0 and ip <= self._ends[i]

    def without(self, networks: Iterable[str]) -> Scope:
        """This scope less *networks* (approved opt-outs): a target there is refused as
        ``blocklisted-target`` ("opted out"), before any packet."""
        nets = list(networks)
        return Scope(self.networks, Scope(nets)) if nets else self

    def check(self, ip: int) -> None:
        """:raises ProbeError: *ip* is outside the scope, or opted out (never dial it)"""
        if ip not in self:
            raise ProbeError(Status.OUT_OF_SCOPE, "outside the scope")
        if self.opted_out is not None and ip in self.opted_out:
            raise ProbeError(Status.BLOCKLISTED_TARGET, "opted out")


class TlsOptions:
    """One client TLS context, shared: no verification (we record, we do not trust).

    Making one checks, once per process, that the private ``ssl`` hooks we rely on work
    (:func:`workers.tlshooks.check_hooks`; raises ``TlsSelfCheckError``, one line, if not)
    and loads the system roots, so neither lands on the first probe.

    :param handshake_timeout: bound on the TLS handshake (a tarpit ends as io-timeout).
    :param verdict_timeout: the longest wait, after a TLS 1.3 handshake in which the server
        asked for a client certificate, for the server to accept (session ticket) or
        refuse (alert) it; the wait is also at most 3 handshake times and ``io_timeout``.
    :param describe_timeout: the longest wait for the certificate description and trust
        verdict, which run off the event loop (:class:`workers.tlsinfo.Describer`).
    """

    def __init__(self, *, handshake_timeout: float = 10.0, verdict_timeout: float = 2.0,
                 describe_timeout: float = 5.0) -> None:
        check_hooks_once()
        system_roots()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        try:  # old servers still speak TLS 1.0/1.1: observe them rather than fail
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:  # pragma: no cover - depends on the OpenSSL build
            pass
        install_watch(ctx)
        self.context = ctx
        self.handshake_timeout = handshake_timeout
        self.verdict_timeout = verdict_timeout
        self.describer = Describer(describe_timeout)


class Stream:
    """A connected socket (plain or TLS) with per-operation timeouts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 io_timeout: float, tls: TlsInfo | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self.io_timeout = io_timeout
        self.tls = tls

    @property
    def peer(self) -> tuple[str, int] | None:
        """The remote (ip, port), as the socket reports it (a WebSocket Host header)."""
        name = self._writer.get_extra_info("peername")
        return (str(name[0]), int(name[1])) if name else None

    async def send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            async with asyncio.timeout(self.io_timeout):
                await self._writer.drain()
        except Exception as exc:
            raise self._failure(exc) from None

    async def receive(self, max_bytes: int = 4096) -> bytes:
        """At most ``max_bytes`` bytes; ``b""`` once the peer has closed."""
        try:
            async with asyncio.timeout(self.io_timeout):
                return await self._reader.read(max_bytes)
        except Exception as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: BaseException) -> ProbeError:
        """Map an error met after the handshake. A TLS alert there (a TLS 1.3 server that
        judged our missing client certificate late) is a failed handshake after all."""
        err = status_of(exc, connected=True)
        late = late_handshake_failure(self.tls, exc) if isinstance(exc, ssl.SSLError) else None
        if late is not None:
            self.tls = late
            return ProbeError(Status.HANDSHAKE_ERROR, f"tls: {late.error}", late)
        return err

    async def aclose(self) -> None:
        writer = self._writer
        if writer.is_closing():
            return
        writer.close()
        try:  # a TLS close_notify may never be answered: bound it
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except Exception:  # closing is best effort: the result is already known
            pass
        transport = writer.transport
        if not transport.is_closing():  # pragma: no cover - belt and braces
            transport.abort()


async def _wrap(sock: socket.socket, ip: str, io_timeout: float,
                tls: TlsOptions | None) -> Stream:
    """Turn a connected socket into a :class:`Stream`, doing the TLS handshake if asked.

    A failed handshake raises :class:`ProbeError` with a :class:`TlsInfo` attached
    (status handshake-error, or io-timeout for a server that never finishes it). When a
    TLS 1.3 server asked for a client certificate, the client's side of the handshake
    ends before the server has judged it: wait (briefly) for its verdict, so that a
    refusal is recorded here like a TLS 1.2 one. Any later alert is for the caller to
    turn into a failed handshake with :func:`workers.tlsinfo.late_handshake_failure`.
    """
    if tls is None:
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        return Stream(reader, writer, io_timeout)
    started = time.monotonic()
    with watching() as watch:
        try:
            async with asyncio.timeout(tls.handshake_timeout):
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=tls.context, server_hostname="",  # "": no SNI, we dial IPs
                    ssl_handshake_timeout=tls.handshake_timeout + 1.0, limit=1 << 16)
        except Exception as exc:
            sock.close()
            raise _failed_handshake(exc, status_of(exc, connected=True), watch) from None
    observed = datetime.now(UTC)
    facts = handshake_facts(writer.get_extra_info("ssl_object"))  # cheap: on the loop
    try:
        info = await tls.describer.describe(facts, observed)  # parsing, trust: off the loop
    except BaseException:
        writer.transport.abort()  # cancelled (the probe's deadline): leave nothing open
        raise
    stream = Stream(reader, writer, io_timeout, info)
    closed: str | None = None
    if watch.certificate_requested and info.version == "TLSv1.3" and watch.alert is None:
        wait = min(tls.verdict_timeout, io_timeout, max(0.25, 3 * (time.monotonic() - started)))
        closed = await _await_verdict(watch, reader, writer, wait)
    if watch.alert is not None or closed is not None:
        error = f"alert {watch.alert}" if watch.alert is not None else str(closed)
        refused = info.model_copy(update={
            "handshake_completed": False,
            "client_certificate_required": watch.refused_for_certificate,
            "error": error,
        })
        await stream.aclose()
        raise ProbeError(Status.HANDSHAKE_ERROR, f"tls: {error}", refused)
    return stream


async def _await_verdict(watch: HandshakeWatch, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, wait: float) -> str | None:
    """Wait up to ``wait`` s for the server to accept or refuse the TLS 1.3 handshake.

    It accepts by sending anything (session tickets, usually at once) and refuses with an
    alert (then the watch holds it) or by closing or resetting the connection. Nothing
    public signals a close without reading, hence the short polls of the reader state.

    :returns: how the connection ended if it did ("connection-reset", "closed by peer").
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while not watch.answered.is_set():
        exc = reader.exception()
        if exc is not None:
            return status_of(exc, connected=True).message
        if reader.at_eof() or writer.transport.is_closing():
            return "closed by peer"
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(min(0.02, remaining)):
                await watch.answered.wait()
        except TimeoutError:
            continue
    return None  # an answer, or no word either way: take it as accepted


def _failed_handshake(exc: BaseException, err: ProbeError,
                      watch: HandshakeWatch | None = None) -> ProbeError:
    """The :class:`ProbeError` of a handshake that did not complete, with its TlsInfo."""
    if err.status is Status.IO_TIMEOUT:
        return ProbeError(Status.IO_TIMEOUT, "tls: handshake timed out",
                          failed_handshake_info("handshake timed out", watch))
    # A reply that is not TLS (a plaintext server), a reset or a close mid-handshake: all
    # are handshake errors on a TLS port; the TlsInfo keeps the finer reason.
    info = failed_handshake_info(err.message, watch)
    return ProbeError(Status.HANDSHAKE_ERROR, f"tls: {info.error}", info)


async def dial(ip: str, port: int, *, scope: Scope, connect_timeout: float,
               io_timeout: float, tls: TlsOptions | None = None) -> Stream:
    """Connect (and handshake TLS) to ``ip:port``: the awaitable path used by probes."""
    scope.check(int(ipaddress.IPv4Address(ip)))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.sock_connect(sock, (ip, port))
    except Exception as exc:
        sock.close()
        raise status_of(exc, connected=False) from None
    return await _wrap(sock, ip, io_timeout, tls)


ConnectCallback = Callable[[object, int, socket.socket | None, int], None]

# The C-level socket: no Python __init__, and non-blocking from birth (no setblocking call).
_STREAM_NONBLOCK = _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK
# Level-triggered EPOLLOUT, one-shot: a socket reports once, then stays quiet until closed.
_EPOLLOUT_ONCE = select.EPOLLOUT | select.EPOLLONESHOT


def _adopt(raw: _socket.socket) -> socket.socket:
    """Hand a connected C-level socket over as a :class:`socket.socket` for asyncio."""
    return socket.socket(fileno=raw.detach())


class Connector:
    """Many concurrent non-blocking connects, reported through one callback.

    ``start(ip, port, ctx)`` ends in ``callback(ctx, ip, sock, 0)`` once connected, or
    ``callback(ctx, ip, None, errno)`` on failure (``errno.ETIMEDOUT`` after
    ``connect_timeout``).

    Connecting sockets sit in an epoll set of their own, whose descriptor the event loop
    watches: one wake-up reports a whole batch, and a socket costs one ``epoll_ctl``
    instead of asyncio's per-fd selector bookkeeping (``close()`` removes it from the set).
    Deadlines sit in a FIFO (the timeout is the same for every connect; :meth:`tick`
    stamps a batch) swept a few times a second, instead of a timer handle per socket.
    """

    def __init__(self, scope: Scope, connect_timeout: float, callback: ConnectCallback) -> None:
        self._scope = scope
        self._timeout = connect_timeout
        self._callback = callback
        self._loop = asyncio.get_running_loop()
        self._epoll = select.epoll()
        self._loop.add_reader(self._epoll.fileno(), self._ready)
        self._pending: dict[int, tuple[_socket.socket, object, int]] = {}
        self._deadlines: deque[tuple[float, int, _socket.socket]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadline = time.monotonic() + connect_timeout

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def tick(self) -> None:
        """Stamp the connects started from now on with a fresh deadline."""
        self._deadline = time.monotonic() + self._timeout

    def start(self, ip: int, port: int, ctx: object) -> None:
        self._scope.check(ip)  # the guard of SAFETY.md: nothing leaves for such an ip
        sock = _socket.socket(_socket.AF_INET, _STREAM_NONBLOCK)
        code = sock.connect_ex((_socket.inet_ntoa(ip.to_bytes(4, "big")), port))
        if code == errno.EINPROGRESS:
            fd = sock.fileno()
            self._pending[fd] = (sock, ctx, ip)
            self._epoll.register(fd, _EPOLLOUT_ONCE)
            self._deadlines.append((self._deadline, fd, sock))
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(0.2, self._sweep)
        elif code == 0:
            self._callback(ctx, ip, _adopt(sock), 0)
        else:
            sock.close()
            self._callback(ctx, ip, None, code)

    def _ready(self) -> None:
        pending = self._pending
        for fd, _events in self._epoll.poll(0, 512):
            entry = pending.pop(fd, None)
            if entry is None:  # pragma: no cover - closed by a sweep in the same round
                continue
            sock, ctx, ip = entry
            code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if code:
                sock.close()
                self._callback(ctx, ip, None, code)
            else:
                self._epoll.unregister(fd)
                self._callback(ctx, ip, _adopt(sock), 0)

    def _sweep(self) -> None:
        now = time.monotonic()
        deadlines = self._deadlines
        pending = self._pending
        while deadlines:
            deadline, fd, sock = deadlines[0]
            entry = pending.get(fd)
            if entry is not None and entry[0] is sock and deadline > now:
                break  # the oldest live connect is not due yet
            deadlines.popleft()
            if entry is None or entry[0] is not sock:
                continue  # finished already (the fd may have been reused since)
            del pending[fd]
            sock.close()
            self._callback(entry[1], entry[2], None, errno.ETIMEDOUT)
        self._sweeper = self._loop.call_later(0.2, self._sweep) if deadlines else None

    def pending_targets(self) -> list[tuple[int, object]]:
        """The ``(ip, ctx)`` of every connect in flight (nothing changes)."""
        return [(ip, ctx) for _, ctx, ip in self._pending.values()]

    def abandon(self) -> list[tuple[int, object]]:
        """Close every connect in flight, with no callback for any; return their
        ``(ip, ctx)``. The connector stays usable."""
        abandoned = [(ip, ctx) for sock, ctx, ip in self._pending.values()]
        for sock, _, _ in self._pending.values():
            sock.close()  # closing a socket also takes it out of the epoll set
        self._pending.clear()
        self._deadlines.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        return abandoned

    def close(self) -> None:
        """Abandon every connect in flight (no callbacks)."""
        self.abandon()
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    @staticmethod
    async def wrap(sock: socket.socket, ip: str, *, io_timeout: float,
                   tls: TlsOptions | None) -> Stream:
        """Make a :class:`Stream` of a socket this connector connected."""
        return await _wrap(sock, ip, io_timeout, tls)
