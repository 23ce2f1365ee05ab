"""Live state in a real Redis: counters under concurrent writers, the rate estimate, the
cached control watch, worker heartbeats from a thread (and their expiry when the process is
killed), the scheduler heartbeat. Each test has its own namespace and deletes its keys.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from brokerscan.names import Names
from scheduler.live import (
    ControlWatch,
    Heartbeat,
    LiveCounts,
    LiveRuns,
    RunCounts,
    beat_scheduler,
    drop_run,
    get_control,
    live_workers,
    probes_per_second,
    put_run,
    read_counts,
    scheduler_alive,
    set_control,
)
from tests.services import REDIS_URL
from tests.waiting import HANG, holds_for_async, wait_for, wait_for_async

pytestmark = pytest.mark.integration



# -- counters ---------------------------------------------------------------------------


async def test_run_counts_are_replaced_per_shard_under_concurrent_writers(redis, names):
    # 16 shards' runs write 40 times each at once: each shard keeps its last write (a run
    # writes what it counted since its checkpoint: a replay replaces, never adds), and the
    # rate samples add up every write's new probes.
    writers, flushes = 16, 40

    async def worker(i: int) -> None:
        client = Redis.from_url(REDIS_URL)  # one connection per writer, like a worker
        try:
            for n in range(1, flushes + 1):
                await put_run(client, names, "s1", i,
                              RunCounts(f"run{i}", 3, probes=10 * n, open=2 * n,
                                        hits={"mqtt": n}, statuses={"success": 2 * n}),
                              new_probes=10)
        finally:
            await client.aclose()

    await asyncio.gather(*(worker(i) for i in range(writers)))
    live = await read_counts(redis, names, "s1")
    assert sorted(live.runs) == list(range(writers))
    assert {r.run_id for r in live.runs.values()} == {f"run{i}" for i in range(writers)}
    assert all(r == RunCounts(r.run_id, 3, 10 * flushes, 2 * flushes, {"mqtt": flushes},
                              {"success": 2 * flushes}) for r in live.runs.values())
    fields = await redis.hgetall(names.sweep_live("s1"))
    assert sum(int(v) for k, v in fields.items()
               if k.decode().startswith("sec:") and k.decode()[4:].isdigit()) == \
        writers * flushes * 10
    await drop_run(redis, names, "s1", 0)
    assert 0 not in (await read_counts(redis, names, "s1")).runs


async def test_negative_counts_are_refused_and_foreign_fields_ignored(redis, names):
    assert await read_counts(redis, names, "s1") == LiveRuns()
    with pytest.raises(ValueError):
        await put_run(redis, names, "s1", 0, RunCounts("r", 0, probes=-1), new_probes=0)
    await redis.hset(names.sweep_live("s1"), mapping={"run:1": "not json", "run:x": "{}"})
    assert (await read_counts(redis, names, "s1")).runs == {}


def test_rate_estimate_from_samples():
    assert probes_per_second({}, now=100) is None
    assert probes_per_second({100: 50}, now=100) is None  # only the current, partial second
    assert probes_per_second({98: 100, 99: 300}, now=100) == 200
    samples = {s: 1000 for s in range(40, 101)}
    samples[100] = 5  # the current second is left out
    assert probes_per_second(samples, now=100, window=10) == 1000
    # old ones out, and the quiet seconds before 95 (a pause) do not drag the rate (issue 8)
    assert probes_per_second({50: 10_000, 95: 100}, now=100, window=10) == 20
    counts = LiveCounts(probes=1000, probes_per_second=100.0)
    assert counts.eta(total=3000) == 20.0
    assert LiveCounts(probes=1).eta(total=10) is None


async def test_rate_estimate_from_real_flushes_and_samples_are_trimmed(redis, names):
    # 200 probes every 0.1 s for ~3.5 s: about 2000/s, less on a loaded machine. A loose
    # check of the estimate (within half of the rate really written either way).
    began = time.monotonic()
    end, flushes = began + 3.5, 0
    while time.monotonic() < end:
        await put_run(redis, names, "s1", 0, RunCounts("r", 0, probes=200 * (flushes + 1)),
                      new_probes=200, keep=2)
        flushes += 1
        await asyncio.sleep(0.1)  # the scenario: a worker's flush interval
    written = 200 * flushes / (time.monotonic() - began)
    counts = await read_counts(redis, names, "s1", window=2)
    assert counts.probes_per_second is not None
    assert 0.5 * written <= counts.probes_per_second <= 1.5 * written
    fields = [k.decode() for k in await redis.hkeys(names.sweep_live("s1"))]
    seconds = sorted(int(f[4:]) for f in fields if f.startswith("sec:") and f[4:].isdigit())
    assert len(seconds) <= 3  # keep=2: the current second and the two before it
    assert seconds[-1] - seconds[0] <= 2


# -- control ------------------------------------------------------------------------------


async def test_control_states(redis, names):
    assert await get_control(redis, names, "s1") is None
    await set_control(redis, names, "s1", "paused")
    assert await get_control(redis, names, "s1") == "paused"
    with pytest.raises(ValueError):
        await set_control(redis, names, "s1", "stopped")


async def test_control_watch_caches_then_sees_a_change_within_its_interval(redis, names):
    await set_control(redis, names, "s1", "running")
    watch = ControlWatch(redis, names, "s1", interval=0.5)
    assert await watch.state() == "running"
    await set_control(redis, names, "s1", "paused")
    assert await watch.state() == "running"  # cached: no round trip
    await asyncio.sleep(0.5)  # the scenario: the interval passes (on a slow machine, more)
    assert await watch.state() == "paused"  # the first read after the interval sees it
    await redis.delete(names.sweep_control("s1"))
    missing = ControlWatch(redis, names, "s1", interval=0.5, missing="cancelled")
    assert await missing.state() == "cancelled"


async def test_control_watch_reads_redis_at_most_once_per_interval(redis, names):
    await set_control(redis, names, "s1", "running")
    watch = ControlWatch(redis, names, "s1", interval=0.3)
    reads = 0
    real_get = redis.get

    async def counting_get(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await real_get(*args, **kwargs)

    redis.get = counting_get
    try:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # the scenario: a second of frequent asks
            await watch.state()
            await asyncio.sleep(0.005)
    finally:
        del redis.get
    assert 1 <= reads <= 1.0 / 0.3 + 2


# -- worker heartbeats -----------------------------------------------------------------------


def test_heartbeat_thread_keeps_the_key_while_the_main_thread_blocks(names):
    client = SyncRedis.from_url(REDIS_URL, decode_responses=True)
    beat = Heartbeat(REDIS_URL, names, "w1", {"queues": ["probe", "probe-tls"]},
                     ttl=1, every=0.25)
    key = names.worker("w1")
    try:
        beat.start()
        for _ in range(6):
            time.sleep(0.4)  # the scenario: the main thread blocks; the key has a 1 s TTL
            assert client.exists(key) == 1
        beat.update(sweep_id="s1", shard=7, probes=1234)
        wait_for(lambda: client.hget(key, "shard") == "7", HANG, "the update in Redis")
        fields = client.hgetall(key)
        assert fields["shard"] == "7" and fields["probes"] == "1234"
        assert fields["queues"] == "probe,probe-tls"
        assert fields["pid"] == str(os.getpid())
        beat.update(shard=None)
        wait_for(lambda: not client.hexists(key, "shard"), HANG, "the shard field removed")
        assert client.hexists(key, "shard") == 0
    finally:
        beat.stop()
    assert client.exists(key) == 0
    beat.stop()  # twice is fine
    client.close()


async def test_live_workers_lists_beating_workers(redis, names):
    beats = [Heartbeat(REDIS_URL, names, f"w{i}", {"queues": ["probe"]}, ttl=5, every=1)
             for i in range(3)]
    for b in beats:
        b.start()
    beats[1].update(sweep_id="s1", shard=3, probes=10)

    async def all_beating() -> bool:
        workers = await live_workers(redis, names)
        return len(workers) == 3 and workers[1].shard == 3

    try:
        await wait_for_async(all_beating, HANG, "3 workers beating, w1 on shard 3")
        workers = await live_workers(redis, names)
        assert [w.worker_id for w in workers] == ["w0", "w1", "w2"]
        w1 = workers[1]
        assert (w1.sweep_id, w1.shard, w1.probes, w1.queues) == ("s1", 3, 10, ("probe",))
        assert w1.pid == os.getpid() and w1.started_at is not None
        beats[0].stop()
        assert [w.worker_id for w in await live_workers(redis, names)] == ["w1", "w2"]
    finally:
        for b in beats:
            b.stop()
    assert await live_workers(redis, names) == []


def beating_child(namespace: str, ready) -> None:
    """A worker process whose main thread only sleeps: the heartbeat thread beats."""
    Heartbeat(REDIS_URL, Names(namespace), "doomed", {"queues": ["probe"]},
              ttl=1.5, every=0.3).start()
    ready.set()
    time.sleep(60)  # the scenario: a blocked main thread, until the test kills the process


async def test_heartbeat_of_a_killed_process_expires_within_its_ttl(redis, names):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=beating_child, args=(names.namespace, ready))
    proc.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30)
        # Longer than a beat: the thread keeps it alive all along.
        await holds_for_async(lambda: redis.exists(names.worker("doomed")), 1.0,
                              "the beating worker's key")
        assert [w.worker_id for w in await live_workers(redis, names)] == ["doomed"]
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.join, 10)
        left = await redis.pttl(names.worker("doomed"))  # -2: already gone
        assert left == -2 or 0 < left <= 1500  # it expires within its TTL...

        async def expired() -> bool:
            return not await redis.exists(names.worker("doomed"))

        await wait_for_async(expired, 1.5 + HANG, "the killed worker's heartbeat to expire")
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert await live_workers(redis, names) == []


def test_heartbeat_refuses_a_beat_slower_than_its_ttl(names):
    with pytest.raises(ValueError):
        Heartbeat(REDIS_URL, names, "w1", {}, ttl=2, every=2)


# -- scheduler heartbeat -----------------------------------------------------------------------


async def test_scheduler_heartbeat_lives_for_its_ttl(redis, names):
    assert not await scheduler_alive(redis, names)
    await beat_scheduler(redis, names, {"hostname": "h", "pid": 1}, ttl=0.5)
    assert await scheduler_alive(redis, names)
    assert 0 < await redis.pttl(names.scheduler_heartbeat()) <= 500  # for its TTL at most

    async def dead() -> bool:
        return not await scheduler_alive(redis, names)

    await wait_for_async(dead, 0.5 + HANG, "the scheduler heartbeat to expire")
    assert not await scheduler_alive(redis, names)
