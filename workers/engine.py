"""The probe engine: many targets, bounded concurrency, a rate limit, one result per target.

The engine pulls ``(ip, PortSpec)`` pairs lazily from any iterable (so 10^6 targets are
never 10^6 objects), starts a non-blocking connect for each within the rate budget and the
concurrency bound, and for every port that accepts runs the probes its spec names (MQTT,
AMQP, MQTT over WebSocket, inside TLS when asked). A port that answered the WebSocket
probe in HTTP is not tried with the raw MQTT and AMQP probes; a guessed plaintext port
whose probes met a TLS record is tried once more inside TLS (``tls_retried``). Connection
failures are counted without an asyncio Task; only open ports get one. Every outcome is
a :class:`~brokerscan.model.ScanResult` passed to a sink; failures before a connection
(refused, timed out) reach the sink only when ``ScanConfig.emit_failures`` is set, and are
always counted in :class:`ScanStats`.

The Celery shard task runs this same engine over its shard; the CLI runs it over a range.
One piece: the connect loop, its table of targets in flight and the counters it keeps are
one state that ``run``, ``settle`` (discovery's verdicts), ``stop`` and ``abort`` all touch.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from brokerscan.model import (
    CLOSED_STATUSES,
    Probe,
    Protocol,
    ScanResult,
    Status,
    TlsInfo,
    Transport,
    WebSocketInfo,
)
from scheduler.ports import PortSpec
from workers.probes.base import ProbeOptions, ProbeOutcome
from workers.probes.registry import PROBES
from workers.protocols.tlsrecord import is_tls_record
from workers.ratebudget import LocalRateLimiter, RateLimiter
from workers.transport import Connector, ProbeError, Scope, Stream, TlsOptions, dial, status_of

__all__ = ["Engine", "RateLimiter", "ScanConfig", "ScanStats", "Sink"]

Sink = Callable[[ScanResult], None]


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """How one scan behaves. Defaults are polite for the Internet and fine on loopback."""

    connect_timeout: float = 3.0
    io_timeout: float = 5.0  # any single read or write once connected
    total_timeout: float = 20.0  # everything done for one (ip, port), fall-backs included
    tls_handshake_timeout: float = 5.0
    concurrency: int = 1000  # connections in flight, connects and probes together
    rate: float = 10_000.0  # new connections per second (each one SYN); 0 = unlimited
    sweep_id: str | None = None
    sweep_started_at: datetime | None = None
    emit_failures: bool = False  # also emit results for refused/timed-out connects
    discovered_by: Literal["zmap"] | None = None  # a discovery stage chose the targets
    probe: ProbeOptions = field(default_factory=ProbeOptions)


@dataclass(slots=True)
class ScanStats:
    """Live counters, readable at any time (progress) and final at the end (report)."""

    total: int | None = None
    started: int = 0  # connects started
    done: int = 0  # targets finished, whatever the outcome
    open: int = 0  # of the targets done, those whose TCP connection was established
    abandoned: int = 0  # started, then given up by ``Engine.abort``: no result, not done
    statuses: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)  # by protocol
    began: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.began

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0


def _now() -> datetime:
    return datetime.now(UTC)


def _ip_text(ip: int) -> str:
    return socket.inet_ntoa(ip.to_bytes(4, "big"))


class Engine:
    """Runs a scan. One engine per event loop; ``run`` may be called once."""

    def __init__(self, config: ScanConfig, scope: Scope,
                 ready: Callable[[], Awaitable[None]] | None = None,
                 limiter: RateLimiter | None = None,
                 observe_connect: Callable[[float], None] | None = None) -> None:
        """:param ready: awaited before each batch of new connects: a sink that cannot keep
            up (a results publisher waiting for confirms) holds the scan back through it.
        :param limiter: the rate budget (default: ``config.rate`` in this process; a sweep
            passes the fleet-wide one).
        :param observe_connect: called with the seconds each connect took, whatever its
            outcome (metrics); it must be cheap: it runs once per target."""
        self.config = config
        self._observe_connect = observe_connect
        self.scope = scope
        self.stats = ScanStats()
        self._ready = ready
        self._limiter = limiter or LocalRateLimiter(config.rate)
        self._tls = TlsOptions(handshake_timeout=config.tls_handshake_timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        # Probes running, with their target and the socket not yet handed to them (an
        # entry leaves the moment its result is emitted, see ``_probe``).
        self._probing: dict[asyncio.Task[Any], tuple[int, PortSpec, list[socket.socket]]] = {}
        self._connector: Connector | None = None
        self._in_flight = 0
        self._wake: asyncio.Event | None = None
        self._sink: Sink = lambda _r: None
        self._stopping = False

    @property
    def in_flight(self) -> int:
        """Targets started and not finished (connecting or being probed)."""
        return self._in_flight

    def stop(self) -> None:
        """Start no new target; those in flight finish. ``run`` then returns."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def in_flight_targets(self) -> list[tuple[int, PortSpec]]:
        """The targets started and not finished (connecting or being probed), as they are
        now: what a checkpoint leaves unfinished. Nothing changes."""
        targets: list[tuple[int, PortSpec]] = []
        if self._connector is not None:
            targets += [(ip, self._spec_of(ctx)) for ip, ctx in self._connector.pending_targets()]
        targets += [(ip, spec) for ip, spec, _ in self._probing.values()]
        return targets

    def abort(self) -> list[tuple[int, PortSpec]]:
        """Stop now: start no new target and abandon every target in flight (its connect
        closed, its probe cancelled), with no result and not counted as done. ``run``
        then returns at once.

        :returns: the abandoned targets, for the caller to run again some other time
        """
        self._stopping = True
        abandoned: list[tuple[int, PortSpec]] = []
        if self._connector is not None:
            abandoned += [(ip, self._spec_of(ctx)) for ip, ctx in self._connector.abandon()]
        for task, (ip, spec, unused) in self._probing.items():
            task.cancel()
            for sock in unused:  # not handed to the probe yet (it may not have begun)
                sock.close()
            abandoned.append((ip, spec))
        self._probing.clear()
        self._in_flight -= len(abandoned)
        self.stats.abandoned += len(abandoned)
        if self._wake is not None:
            self._wake.set()
        return abandoned

    async def run(self, targets: Iterable[tuple[int, PortSpec]], sink: Sink,
                  total: int | None = None) -> ScanStats:
        """Probe every target and pass each result to ``sink``; return the final stats."""
        self._sink = sink
        self.stats = ScanStats(total=total)
        self._wake = asyncio.Event()
        connector = self._connector = Connector(self.scope, self.config.connect_timeout,
                                                self._connected)
        iterator: Iterator[tuple[int, PortSpec]] = iter(targets)
        exhausted = False
        try:
            while True:
                if self._ready is not None:
                    await self._ready()
                free = self.config.concurrency - self._in_flight
                if not exhausted and not self._stopping and free > 0:
                    granted = await self._limiter.acquire(free)
                    if self._stopping:
                        continue
                    connector.tick()
                    launched = 0
                    for ip, spec in iterator:
                        self._start(connector, ip, spec)
                        launched += 1
                        if launched >= granted:
                            break
                    else:
                        exhausted = True
                    continue
                if (exhausted or self._stopping) and self._in_flight == 0:
                    break
                self._wake.clear()
                await self._wake.wait()
        finally:
            self._connector = None
            connector.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.stats.ended = time.monotonic()
        return self.stats

    # -- the connect phase: plain callbacks, no Task ------------------------------------

    def _start(self, connector: Connector, ip: int, spec: PortSpec) -> None:
        self.stats.started += 1
        self._in_flight += 1
        try:
            connector.start(ip, spec.port, spec if self._observe_connect is None
                            else (spec, time.monotonic()))
        except ProbeError as exc:  # out of scope: refused before any packet
            self._finish_failure(ip, spec, exc.status, exc.message)
        except OSError as exc:  # e.g. EMFILE: out of file descriptors
            err = status_of(exc, connected=False)
            self._finish_failure(ip, spec, err.status, err.message)

    def settle(self, ip: int, spec: PortSpec, status: Status, message: str) -> None:
        """Count a target that a discovery stage already found closed (refused or
        silent), as if its connect had ended so: started, done, counted, and written
        with ``emit_failures``; no socket. Called from the target iterator."""
        self.stats.started += 1
        self._in_flight += 1
        self._finish_failure(ip, spec, status, message)

    def _spec_of(self, ctx: object) -> PortSpec:
        """The target's spec from the context its connect carries."""
        if self._observe_connect is None:
            return cast(PortSpec, ctx)
        return cast(tuple[PortSpec, float], ctx)[0]

    def _connected(self, ctx: object, ip: int, sock: socket.socket | None, code: int) -> None:
        if self._observe_connect is None:
            spec = cast(PortSpec, ctx)
        else:
            spec, began = cast(tuple[PortSpec, float], ctx)
            self._observe_connect(time.monotonic() - began)
        if sock is None:
            status = _CONNECT_ERRNO.get(code)
            if status is None:
                err = status_of(OSError(code, errno.errorcode.get(code, str(code))),
                                connected=False)
                status = err.status
            self._finish_failure(ip, spec, status, errno.errorcode.get(code, str(code)))
            return
        first = [sock]
        task = asyncio.ensure_future(self._probe(ip, spec, first))
        self._probing[task] = (ip, spec, first)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish_failure(self, ip: int, spec: PortSpec, status: Status, message: str) -> None:
        self.stats.statuses[status.value] += 1
        if self.config.emit_failures or status not in _CLOSED:
            self._emit(ScanResult(
                sweep_id=self.config.sweep_id, sweep_started_at=self.config.sweep_started_at,
                ip=_ip_text(ip), port=spec.port,
                transport=_transport(spec.tls, spec.websocket), observed_at=_now(),
                status=status, error=message, discovered_by=self.config.discovered_by))
        self._release()

    def _release(self) -> None:
        self.stats.done += 1
        self._in_flight -= 1
        if self._wake is not None:
            self._wake.set()

    def _emit(self, result: ScanResult) -> None:
        if result.protocol is not None:
            self.stats.hits[result.protocol.value] += 1
        self._sink(result)

    # -- the probe phase: one Task per open port ----------------------------------------

    async def _probe(self, ip: int, spec: PortSpec, first: list[socket.socket]) -> None:
        """Probe one open port; ``first`` holds its connected socket until a probe dials."""
        started = time.monotonic()
        address = _ip_text(ip)
        observed_at = _now()
        tls_seen: list[TlsInfo | None] = [None]
        tls = [self._tls if spec.tls else None]
        cfg = self.config

        async def dial_target() -> Stream:
            if first:
                stream = await Connector.wrap(first.pop(), address, io_timeout=cfg.io_timeout,
                                              tls=tls[0])
            else:
                stream = await dial(address, spec.port, scope=self.scope,
                                    connect_timeout=cfg.connect_timeout,
                                    io_timeout=cfg.io_timeout, tls=tls[0])
            if tls_seen[0] is None:
                tls_seen[0] = stream.tls
            return stream

        outcome: ProbeOutcome | None = None
        tried: list[Probe] = []
        websocket: list[WebSocketInfo | None] = [None]
        retried = False

        async def run_probes() -> ProbeOutcome | None:
            best: ProbeOutcome | None = None
            for name in spec.probes:
                if name != "mqtt-ws" and _spoke_http(websocket[0]):
                    continue  # an HTTP server: raw MQTT and AMQP cannot answer there
                tried.append(Probe(name))
                try:
                    candidate = await PROBES[name](dial_target, cfg.probe)
                except ProbeError as exc:
                    if exc.tls is not None:  # a failed (or late-failed) handshake
                        tls_seen[0] = exc.tls
                    candidate = ProbeOutcome(status=exc.status, error=exc.message)
                if candidate.websocket is not None:
                    websocket[0] = candidate.websocket
                best = _better(best, candidate)
                if best.protocol is not None or best.status in _FINAL:
                    break
            return best

        try:
            async with asyncio.timeout(cfg.total_timeout):
                outcome = await run_probes()
                if (spec.tls_retry and tls[0] is None and outcome is not None
                        and outcome.protocol is None and is_tls_record(outcome.raw)):
                    tls[0], tls_seen[0], retried = self._tls, None, True
                    websocket[0] = None
                    outcome = await run_probes() or outcome
        except TimeoutError:
            if outcome is None or outcome.protocol is None:
                outcome = ProbeOutcome(status=Status.IO_TIMEOUT, error="total timeout",
                                       raw=outcome.raw if outcome else b"")
        except Exception as exc:  # a bug in a probe must not stop the scan: record it
            outcome = ProbeOutcome(status=Status.UNKNOWN_ERROR,
                                   error=f"{type(exc).__name__}: {exc}")
        finally:
            for leftover in first:
                leftover.close()
        assert outcome is not None
        # Nothing awaits from here on: a probe either emits its result in this step or
        # is abandoned by ``abort`` (cancelled, and out of ``_probing``): then no result.
        me = asyncio.current_task()
        if me is None or self._probing.pop(me, None) is None:
            return
        self.stats.open += 1
        ws_info = outcome.websocket or websocket[0]
        over_ws = spec.websocket or (outcome.websocket is not None
                                     and outcome.protocol is Protocol.MQTT)
        self.stats.statuses[outcome.status.value] += 1
        self._emit(ScanResult(
            sweep_id=cfg.sweep_id, sweep_started_at=cfg.sweep_started_at, ip=address,
            port=spec.port, transport=_transport(tls[0] is not None, over_ws),
            observed_at=observed_at,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            status=outcome.status, protocol=outcome.protocol, probes=tried,
            tls_retried=retried, discovered_by=cfg.discovered_by,
            error=outcome.error, tls=tls_seen[0], mqtt=outcome.mqtt, amqp=outcome.amqp,
            websocket=ws_info, raw=outcome.raw[: cfg.probe.max_reply_bytes] or None))
        self._release()


def _transport(tls: bool, websocket: bool) -> Transport:
    if websocket:
        return Transport.WSS if tls else Transport.WS
    return Transport.TLS if tls else Transport.TCP


def _spoke_http(info: WebSocketInfo | None) -> bool:
    """Whether the WebSocket probe got an HTTP answer (any status) on this port."""
    return info is not None and any(t.status is not None for t in info.tries)


# Connect failures that say "nothing there": counted, written only with emit_failures.
# Anything else (a reset right after the handshake, out of scope, opted out) is always
# written.
_CLOSED = CLOSED_STATUSES

# The common connect failures, without building an exception each time.
_CONNECT_ERRNO = {errno.ECONNREFUSED: Status.CONNECTION_REFUSED,
                  errno.ETIMEDOUT: Status.CONNECTION_TIMEOUT}

# A TLS failure or an unreachable host will not change with the other probe: stop there.
_FINAL = frozenset({Status.HANDSHAKE_ERROR, Status.UNREACHABLE, Status.OUT_OF_SCOPE,
                    Status.BLOCKLISTED_TARGET, Status.CONNECTION_REFUSED})


def _better(old: ProbeOutcome | None, new: ProbeOutcome) -> ProbeOutcome:
    """The more informative of two outcomes for the same port."""
    if old is None:
        return new
    if new.protocol is not None:
        return new
    if old.protocol is not None:
        return old
    if old.raw and not new.raw:  # the first probe saw bytes; keep them as the record
        return old
    return new
