"""Live state of sweeps and of the fleet, in Redis: counters, control, heartbeats.

Nothing here is durable (Redis runs without persistence); the durable record of a sweep is
in PostgreSQL. Every key comes from :class:`~brokerscan.names.Names`:

``sweep_live``
    a hash that running shards write to about twice a second: ``run:<shard>`` (a JSON
    :class:`RunCounts`: what the shard's current run counted since its last checkpoint,
    tagged with the run's id and the checkpoint's number, *replaced* at every write,
    never added to); plus ``sec:<unix second>`` (probes flushed in that second, by
    Redis's clock, the last ``keep`` seconds only) and ``sec:lo`` / ``sec:hi`` (the range
    of those fields), from which :func:`read_counts` estimates probes/s without any state
    in the CLI.

    Why counts are not added up here: a run replayed from its checkpoint (a worker killed,
    a message delivered again, an outage) would add its targets twice, and a Redis
    restarted empty would lose them. The durable counts are in PostgreSQL, written with
    each checkpoint; the live view is those plus each running shard's ``run:`` entry
    *if* it belongs to the run that holds the shard and to its last checkpoint
    (:mod:`scheduler.status`), so every target counts once, and a lost hash is rebuilt
    by the next write of every run.
``sweep_control``
    the state workers obey: ``running``, ``paused`` or ``cancelled``.
``worker``
    one hash per live worker process, kept alive by :class:`Heartbeat` with a TTL.
``scheduler_heartbeat``
    a JSON string with a TTL, refreshed by the dispatch loop.

Why one piece: it is every Redis key of a sweep's live state (counters, control,
heartbeats) with the Lua scripts that keep them, so that names, TTLs and atomicity are
checked in one place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from brokerscan.names import Names

__all__ = [
    "CONTROL_STATES", "ControlWatch", "Heartbeat", "LiveCounts", "LiveRuns", "RunCounts",
    "WorkerInfo", "beat_scheduler", "drop_run", "get_control", "live_workers",
    "probes_per_second", "put_run", "read_counts", "scheduler_alive", "set_control",
    "worker_heartbeat",
]

log = logging.getLogger(__name__)

CONTROL_STATES = frozenset({"running", "paused", "cancelled"})

# KEYS[1]: the live hash. ARGV[1]: seconds of samples to keep; ARGV[2]: probes new since
# the last write (the rate sample); ARGV[3], ARGV[4]: the run's field and its JSON. One
# round trip, atomic, and the sample is stamped by Redis's clock.
_ADD_LUA = """
local key = KEYS[1]
redis.call('HSET', key, ARGV[3], ARGV[4])
local probes = tonumber(ARGV[2])
if probes <= 0 then return 0 end
local now = tonumber(redis.call('TIME')[1])
local keep = tonumber(ARGV[1])
redis.call('HINCRBY', key, 'sec:' .. now, probes)
local lo = tonumber(redis.call('HGET', key, 'sec:lo') or now)
local hi = tonumber(redis.call('HGET', key, 'sec:hi') or now)
if now < lo then lo = now end
if now > hi then hi = now end
local cut = now - keep
if cut >= lo then
  if math.min(cut, hi) - lo > 4 * keep then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      local s = tonumber(string.match(f, '^sec:(%d+)$'))
      if s and s <= cut then redis.call('HDEL', key, f) end
    end
  else
    for s = lo, math.min(cut, hi) do redis.call('HDEL', key, 'sec:' .. s) end
  end
  lo = cut + 1
end
redis.call('HSET', key, 'sec:lo', lo, 'sec:hi', hi)
return 1
"""
_ADD_SHA = hashlib.sha1(_ADD_LUA.encode()).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- counters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveCounts:
    """A sweep's counts as people watch them.

    :ivar probes_per_second: over the last few seconds; ``None`` before there is a sample.
    """

    probes: int = 0
    open: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    probes_per_second: float | None = None

    def eta(self, total: int) -> float | None:
        """Seconds left to probe ``total`` targets at the current rate (``None``: unknown).

        :param total: the sweep's number of targets.
        """
        if not self.probes_per_second:
            return None
        return max(0, total - self.probes) / self.probes_per_second


@dataclass(frozen=True, slots=True)
class RunCounts:
    """What one run of a shard counted since its last checkpoint.

    :ivar run_id: the run (``sweep_shards.run_id``)
    :ivar checkpoint: the number of the checkpoint these counts follow
        (``sweep_shards.checkpoints``)
    """

    run_id: str
    checkpoint: int
    probes: int = 0
    open: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"run": self.run_id, "cp": self.checkpoint, "probes": self.probes,
                           "open": self.open, "hits": self.hits,
                           "statuses": self.statuses}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RunCounts | None:
        """The entry, or None if it is not one (a foreign or damaged field)."""
        try:
            data = json.loads(text)
            return cls(str(data["run"]), int(data["cp"]), int(data["probes"]),
                       int(data["open"]), {str(k): int(v) for k, v in data["hits"].items()},
                       {str(k): int(v) for k, v in data["statuses"].items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class LiveRuns:
    """A sweep's live hash: each running shard's :class:`RunCounts` and the probe rate."""

    runs: dict[int, RunCounts] = field(default_factory=dict)
    probes_per_second: float | None = None


async def put_run(redis: Redis, names: Names, sweep_id: str, shard: int, counts: RunCounts,
                  *, new_probes: int, keep: int = 60) -> None:
    """Replace a run's counts since its last checkpoint (and add *new_probes* to the
    rate samples).

    :param new_probes: targets probed since the previous write (the rate sample).
    :param keep: seconds of per-second samples to keep.
    """
    if min(counts.probes, counts.open, new_probes) < 0:
        raise ValueError(f"counts cannot be negative: {counts}, {new_probes}")
    key = names.sweep_live(sweep_id)
    args = (keep, new_probes, f"run:{shard}", counts.to_json())
    try:
        await redis.evalsha(_ADD_SHA, 1, key, *args)
    except NoScriptError:  # a restarted Redis, or the first call ever
        await redis.eval(_ADD_LUA, 1, key, *args)


async def drop_run(redis: Redis, names: Names, sweep_id: str, shard: int) -> None:
    """Forget a shard's run counts (its run ended: the durable counts hold them)."""
    await redis.hdel(names.sweep_live(sweep_id), f"run:{shard}")


def probes_per_second(samples: Mapping[int, int], now: int, window: int = 10) -> float | None:
    """The probe rate from per-second samples: the complete seconds of the last ``window``,
    from the first of them that has a sample.

    Seconds without probes before that first sample are left out: they are a pause (or the
    sweep not yet started), and counting them would drag the rate, and so stretch the ETA,
    for a whole window after a resume. A sweep that probes nothing for a whole window (it
    is paused) has no rate at all.

    :param samples: probes flushed in each unix second.
    :param now: the current unix second (partial, so left out).
    :returns: probes per second, or ``None`` when no complete second of the window has a
        sample.
    """
    recent = [s for s, v in samples.items() if now - window <= s < now and v]
    if not recent:
        return None
    start = min(recent)
    return sum(v for s, v in samples.items() if start <= s < now) / (now - start)


async def read_counts(redis: Redis, names: Names, sweep_id: str, *,
                      window: int = 10) -> LiveRuns:
    """Read a sweep's run counts and estimate its current probe rate.

    :param window: seconds the rate is averaged over.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(names.sweep_live(sweep_id))
        pipe.time()
        raw, (now, _micros) = await pipe.execute()
    runs: dict[int, RunCounts] = {}
    samples: dict[int, int] = {}
    for key, value in raw.items():
        kind, _, rest = _text(key).partition(":")
        if kind == "run" and rest.isdigit():
            run = RunCounts.from_json(value)
            if run is not None:
                runs[int(rest)] = run
        elif kind == "sec" and rest.isdigit():
            samples[int(rest)] = int(value)
    return LiveRuns(runs, probes_per_second(samples, int(now), window))


# -- control --------------------------------------------------------------------------


async def set_control(redis: Redis, names: Names, sweep_id: str, state: str) -> None:
    """Tell every worker of a sweep to run, pause or cancel.

    :param state: one of :data:`CONTROL_STATES`.
    """
    if state not in CONTROL_STATES:
        raise ValueError(f"control state must be one of {sorted(CONTROL_STATES)}, not {state!r}")
    await redis.set(names.sweep_control(sweep_id), state)


async def get_control(redis: Redis, names: Names, sweep_id: str) -> str | None:
    """The control state of a sweep, ``None`` if it has none."""
    value = await redis.get(names.sweep_control(sweep_id))
    return None if value is None else _text(value)


class ControlWatch:
    """A worker's cheap view of a sweep's control state: Redis at most once per interval.

    If Redis cannot be reached, the last state read stays in force (the rate budget, which
    needs Redis too, stops the worker soon enough); before any read the error propagates.

    :param interval: seconds a state read is reused.
    :param missing: the state when the key is absent (Redis lost it, or the sweep was not
        started through :func:`set_control`).
    """

    def __init__(self, redis: Redis, names: Names, sweep_id: str, interval: float = 0.5,
                 *, missing: str = "running") -> None:
        self._redis = redis
        self._names = names
        self._sweep_id = sweep_id
        self.interval = interval
        self._missing = missing
        self._state: str | None = None
        self._next = 0.0

    async def state(self) -> str:
        """The control state, at most ``interval`` seconds old."""
        now = asyncio.get_running_loop().time()
        if self._state is not None and now < self._next:
            return self._state
        self._next = now + self.interval
        try:
            value = await get_control(self._redis, self._names, self._sweep_id)
        except (RedisConnectionError, RedisTimeoutError):
            if self._state is None:
                raise
            log.warning("control of sweep %s unreadable; keeping %r", self._sweep_id,
                        self._state, exc_info=True)
            return self._state
        self._state = self._missing if value is None else value
        return self._state


# -- worker heartbeats -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One live worker process, as its heartbeat describes it.

    :ivar fields: every field of the heartbeat hash, as text.
    """

    worker_id: str
    hostname: str
    pid: int | None
    queues: tuple[str, ...]
    started_at: float | None
    sweep_id: str | None
    shard: int | None
    probes: int
    fields: dict[str, str]
    #: shards the process runs at once (``capacity`` in its heartbeat; 1 when absent, as
    #: a Celery pool process with prefetch 1 runs one): what :mod:`scheduler.sizing` sums
    capacity: int = 1

    @property
    def busy(self) -> bool:
        """Whether the process runs a shard now."""
        return bool(self.sweep_id)

    @classmethod
    def parse(cls, worker_id: str, fields: dict[str, str]) -> WorkerInfo:
        """Read a heartbeat hash (every field as text)."""

        def number(name: str) -> int | None:
            text = fields.get(name, "")
            return int(text) if text.lstrip("-").isdigit() else None

        started = fields.get("started_at")
        capacity = number("capacity")
        return cls(worker_id=worker_id, hostname=fields.get("hostname", ""),
                   pid=number("pid"),
                   queues=tuple(q for q in fields.get("queues", "").split(",") if q),
                   started_at=float(started) if started else None,
                   sweep_id=fields.get("sweep_id"), shard=number("shard"),
                   probes=number("probes") or 0, fields=fields,
                   capacity=1 if capacity is None else max(0, capacity))


def _field_text(value: object) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


class Heartbeat:
    """Keeps ``Names.worker(worker_id)`` alive from a daemon thread.

    The thread has its own synchronous Redis client, so the process keeps beating while its
    main thread blocks (a Celery worker waiting for a task) or its event loop is busy.
    Create it after fork (``worker_process_init``). Each beat replaces the whole hash and
    sets its TTL in one transaction; a process killed with -9 vanishes within ``ttl``.

    :param redis_url: the Redis to beat to (``Settings.redis_url``).
    :param info: fields such as ``queues`` and ``capacity`` (shards the process runs at
        once, see :class:`WorkerInfo`); ``hostname``, ``pid`` and ``started_at`` are
        filled in when absent. Lists are stored comma-separated.
    :param ttl: seconds the key lives without a beat.
    :param every: seconds between beats.
    :param on_beat: called by the thread at every turn, whether Redis answered or not (the
        process's liveness: the thread runs).
    """

    def __init__(self, redis_url: str, names: Names, worker_id: str,
                 info: Mapping[str, object], ttl: float = 10, every: float = 2,
                 on_beat: Callable[[], None] | None = None) -> None:
        if not 0 < every < ttl:
            raise ValueError(f"beat every {every} s must be shorter than the ttl {ttl} s")
        self.key = names.worker(worker_id)
        self.ttl = ttl
        self.every = every
        self._fields: dict[str, object] = {"hostname": socket.gethostname(),
                                           "pid": os.getpid(), "started_at": time.time()}
        self._fields.update(info)
        self._on_beat = on_beat
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._client = SyncRedis.from_url(redis_url, socket_timeout=max(1.0, every),
                                            socket_connect_timeout=max(1.0, every))
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{worker_id}",
                                        daemon=True)

    def start(self, *, strict: bool = True) -> Heartbeat:
        """Beat once, then keep beating from the thread.

        :param strict: let a failed first beat raise; otherwise log it, and the thread
            keeps trying.
        """
        try:
            self._beat()
        except RedisError:
            if strict:
                raise
            log.warning("heartbeat of %s failed; retrying", self.key, exc_info=True)
        if self._on_beat is not None:
            self._on_beat()
        self._thread.start()
        return self

    def update(self, **fields: object) -> None:
        """Change fields (``sweep_id``, ``shard``, ``probes``, ...); ``None`` removes one.

        The thread writes them at once, not at the next regular beat.
        """
        with self._lock:
            for name, value in fields.items():
                if value is None:
                    self._fields.pop(name, None)
                else:
                    self._fields[name] = value
        self._wake.set()

    def stop(self) -> None:
        """Stop beating and delete the key. Safe to call twice."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every + 5)
        try:
            self._client.delete(self.key)
        finally:
            self._client.close()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _beat(self) -> None:
        with self._lock:
            mapping = {k: _field_text(v) for k, v in self._fields.items()}
        mapping["seen_at"] = repr(time.time())
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key)
            pipe.hset(self.key, mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(self.key, round(self.ttl * 1000))
            pipe.execute()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._beat()
            except RedisError as exc:
                log.warning("heartbeat of %s failed (%s); retrying", self.key, exc)
            if self._on_beat is not None:
                self._on_beat()


async def live_workers(redis: Redis, names: Names) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired, by worker id."""
    prefix = names.worker("")
    keys = sorted({_text(k) async for k in redis.scan_iter(match=names.workers_pattern(),
                                                            count=500)})
    if not keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        hashes = await pipe.execute()
    return [WorkerInfo.parse(key.removeprefix(prefix),
                             {_text(k): _text(v) for k, v in raw.items()})
            for key, raw in zip(keys, hashes, strict=True)
            if raw]  # an empty one expired between SCAN and HGETALL


async def worker_heartbeat(redis: Redis, names: Names, worker_id: str) -> dict[str, str] | None:
    """One worker's heartbeat fields (``run`` is the run it holds), None if it lapsed."""
    raw = await redis.hgetall(names.worker(worker_id))
    return {_text(k): _text(v) for k, v in raw.items()} if raw else None


# -- scheduler heartbeat ---------------------------------------------------------------


async def beat_scheduler(redis: Redis, names: Names, info: Mapping[str, object], *,
                         ttl: float = 10) -> None:
    """Say the scheduler (dispatch loop) is alive for ``ttl`` seconds.

    :param info: JSON-serialisable facts (hostname, pid, sweeps it drives, ...).
    """
    await redis.set(names.scheduler_heartbeat(), json.dumps(dict(info), default=str),
                    px=round(ttl * 1000))


async def scheduler_alive(redis: Redis, names: Names) -> bool:
    """Whether a scheduler has beaten within its TTL."""
    return bool(await redis.exists(names.scheduler_heartbeat()))
