"""The durable sweep record against the real PostgreSQL (one database for this module)."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest

from scheduler import state
from scheduler.state import ShardRow, SweepState
from storage import db

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(migrated_module_url: str) -> AsyncIterator[db.Conn]:
    c = await db.connect(migrated_module_url)
    try:
        yield c
    finally:
        await c.close()


def new_id() -> str:
    return "sw-" + secrets.token_hex(4)


def plan(n: int, size: int = 100, queue: Callable[[int], str] = lambda i: "q") -> list[ShardRow]:
    return [ShardRow(i, queue(i), i * size, (i + 1) * size) for i in range(n)]


async def new_sweep(conn: db.Conn, shards: int = 4, name: str | None = None) -> str:
    sweep_id = new_id()
    await state.create_sweep(
        conn, sweep_id=sweep_id, name=name, spec={"ports": "1883", "seed": 42},
        target_count=shards * 100, shards=plan(shards),
    )  # fmt: skip
    return sweep_id


async def test_create_and_read_back(conn: db.Conn) -> None:
    sweep_id = new_id()
    spec = {"targets": ["10.0.0.0/8"], "ports": "1883,8883", "rate": 5000, "seed": 7}
    await state.create_sweep(
        conn, sweep_id=sweep_id, name=None, spec=spec, target_count=123, shards=plan(3)
    )
    sweep = await state.get_sweep(conn, sweep_id)
    assert sweep is not None
    assert (sweep.state, sweep.spec, sweep.target_count, sweep.shard_count) == (
        "running", spec, 123, 3
    )  # fmt: skip
    assert sweep.started_at is not None and sweep.finished_at is None
    assert await state.get_sweep(conn, "sw-nothere") is None
    assert sweep_id in [s.id for s in await state.list_sweeps(conn, 1000)]
    counts = await state.shard_counts(conn, sweep_id)
    assert counts.states["pending"] == 3 and sum(counts.states.values()) == 3
    assert (counts.covered, counts.probes, counts.hits) == (0, 0, {})


async def test_create_65536_shards(conn: db.Conn, record_property: Callable[..., None]) -> None:
    sweep_id = new_id()
    shards = plan(65_536, size=65_536, queue=lambda i: "brokerscan.probe-tls" if i % 2 else "q")
    started = time.perf_counter()
    await state.create_sweep(
        conn, sweep_id=sweep_id, name="full", spec={}, target_count=2**32, shards=shards
    )
    elapsed = time.perf_counter() - started
    record_property("create_sweep_65536_seconds", elapsed)
    sys.stderr.write(f"\ncreate_sweep with 65,536 shards: {elapsed:.3f} s\n")
    counts = await state.shard_counts(conn, sweep_id)
    assert counts.states["pending"] == 65_536
    claimed = await state.claim_pending(conn, sweep_id, 3, queue="brokerscan.probe-tls")
    assert [s.index for s in claimed] == [1, 3, 5]
    await state.set_sweep_state(conn, sweep_id, "cancelled")


async def test_same_id_twice_creates_nothing_more(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=2)
    with pytest.raises(state.SweepExists, match=f"^sweep {sweep_id} exists already$"):
        await state.create_sweep(
            conn, sweep_id=sweep_id, name=None, spec={}, target_count=1, shards=plan(5)
        )
    assert (await state.shard_counts(conn, sweep_id)).states["pending"] == 2


async def test_bad_plan_leaves_no_sweep(conn: db.Conn) -> None:
    sweep_id = new_id()
    with pytest.raises(ValueError, match="same index"):
        await state.create_sweep(
            conn, sweep_id=sweep_id, name=None, spec={}, target_count=1,
            shards=[*plan(2), ShardRow(1, "q", 0, 1)],
        )  # fmt: skip
    assert await state.get_sweep(conn, sweep_id) is None


async def test_name_belongs_to_one_unfinished_sweep(conn: db.Conn) -> None:
    name = f"weekly-{secrets.token_hex(3)}"
    first = await new_sweep(conn, name=name)
    await state.set_sweep_state(conn, first, "paused")
    with pytest.raises(state.NameInUse, match=f"named '{name}' is already under way: {first}"):
        await new_sweep(conn, name=name)
    await state.set_sweep_state(conn, first, "cancelled")
    await new_sweep(conn, name=name)  # free again


_PATHS: dict[str, list[SweepState]] = {
    "running": [], "paused": ["paused"], "cancelled": ["cancelled"], "finished": ["finished"],
}  # fmt: skip
_ALLOWED = {
    ("running", "paused"), ("running", "cancelled"), ("running", "finished"),
    ("paused", "running"), ("paused", "cancelled"),
}  # fmt: skip


@pytest.mark.parametrize(("start", "target"), list(itertools.product(_PATHS, repeat=2)))
async def test_transitions(conn: db.Conn, start: SweepState, target: SweepState) -> None:
    sweep_id = await new_sweep(conn)
    for step in _PATHS[start]:
        await state.set_sweep_state(conn, sweep_id, step)
    if (start, target) in _ALLOWED:
        row = await state.set_sweep_state(conn, sweep_id, target)
        assert row.state == target
        assert (row.finished_at is not None) == (target in ("cancelled", "finished"))
    else:
        verb = {"running": "resume", "paused": "pause", "cancelled": "cancel"}.get(
            target, "finish"
        )
        with pytest.raises(state.BadTransition) as info:
            await state.set_sweep_state(conn, sweep_id, target)
        already = "already " if start == target else ""
        assert str(info.value) == f"sweep {sweep_id} is {already}{start}: cannot {verb} it"
        assert (await state.get_sweep(conn, sweep_id)).state == start  # type: ignore[union-attr]


async def test_unknown_sweep(conn: db.Conn) -> None:
    with pytest.raises(state.UnknownSweep, match="^no sweep sw-nothere$"):
        await state.set_sweep_state(conn, "sw-nothere", "paused")
    for call in (state.maybe_finish_sweep, state.shard_counts):
        with pytest.raises(state.UnknownSweep):
            await call(conn, "sw-nothere")
    with pytest.raises(state.UnknownSweep):
        await state.claim_pending(conn, "sw-nothere", 1)
    start = await state.start_shard(conn, "sw-nothere", 0, "w", 3)
    assert (start.run, start.reason) == (False, "unknown shard")
    with pytest.raises(state.UnknownShard):
        await state.finish_shard(
            conn, "sw-nothere", 0, state="done", position=0, probes=0, open=0, hits={},
            statuses={},
        )  # fmt: skip


async def test_concurrent_claims_never_share_a_shard(migrated_module_url: str) -> None:
    conns = [await db.connect(migrated_module_url) for _ in range(6)]
    try:
        sweep_id = await new_sweep(conns[0], shards=1500)

        async def claimer(c: db.Conn) -> list[int]:
            got: list[int] = []
            while batch := await state.claim_pending(c, sweep_id, 7):
                got += [s.index for s in batch]
                assert all(s.state == "queued" and s.queued_at for s in batch)
            return got

        results = await asyncio.gather(*(claimer(c) for c in conns))
        every = [i for r in results for i in r]
        assert sorted(every) == list(range(1500))  # each exactly once
        assert sum(1 for r in results if r) > 1  # the claimers really interleaved
        assert await state.queue_loads(conns[0], [sweep_id]) == {
            (sweep_id, "q"): state.QueueLoad(backlog=1500, pending=0)}
    finally:
        for c in conns:
            await c.close()


async def test_queue_loads_count_backlog_and_pending_per_queue(conn: db.Conn) -> None:
    sweep_id = new_id()
    await state.create_sweep(conn, sweep_id=sweep_id, name=None, spec={}, target_count=900,
                             shards=plan(9, queue=lambda i: "tls" if i % 3 == 0 else "plain"))
    other = await new_sweep(conn, shards=2)
    assert [s.index for s in await state.claim_pending(conn, sweep_id, 2, "tls")] == [0, 3]
    assert [s.index for s in await state.claim_pending(conn, sweep_id, 1, "plain")] == [1]
    start = await state.start_shard(conn, sweep_id, 1, "w1", 5)
    assert start.run
    await state.finish_shard(conn, sweep_id, 3, state="done", position=400, probes=100,
                             open=0, hits={}, statuses={})
    assert await state.queue_loads(conn, [sweep_id, other]) == {
        (sweep_id, "tls"): state.QueueLoad(backlog=1, pending=1),  # 0 queued; 6 pending
        (sweep_id, "plain"): state.QueueLoad(backlog=1, pending=5),  # 1 running
        (other, "q"): state.QueueLoad(backlog=0, pending=2)}
    assert await state.queue_loads(conn, []) == {}


async def test_claims_follow_the_sweep_state(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=4)
    assert [s.index for s in await state.claim_pending(conn, sweep_id, 1)] == [0]
    await state.set_sweep_state(conn, sweep_id, "paused")
    assert await state.claim_pending(conn, sweep_id, 10) == []
    # The queued shard reaches a worker while the sweep is paused: it becomes paused.
    start = await state.start_shard(conn, sweep_id, 0, "w1", 3)
    assert (start.run, start.shard_state, start.attempts) == (False, "paused", 0)
    await state.set_sweep_state(conn, sweep_id, "running")
    assert [s.index for s in await state.claim_pending(conn, sweep_id, 10)] == [0, 1, 2, 3]
    await state.set_sweep_state(conn, sweep_id, "cancelled")
    start = await state.start_shard(conn, sweep_id, 1, "w1", 3)
    assert (start.run, start.shard_state, start.sweep_state) == (False, "cancelled", "cancelled")


async def test_cancel_cancels_waiting_shards(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=3)
    await state.claim_pending(conn, sweep_id, 1)
    await state.set_sweep_state(conn, sweep_id, "cancelled")
    counts = await state.shard_counts(conn, sweep_id)
    assert (counts.states["queued"], counts.states["cancelled"]) == (1, 2)
    assert await state.maybe_finish_sweep(conn, sweep_id) is False  # cancelled stays so


async def test_run_checkpoint_finish_and_redelivery(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=2)
    await state.claim_pending(conn, sweep_id, 2)
    start = await state.start_shard(conn, sweep_id, 0, "w1", 3, run_id="r1")
    assert (start.run, start.position, start.end_exponent, start.attempts) == (True, 0, 100, 0)
    assert await state.checkpoint_shard(
        conn, sweep_id, 0, 40, probes=40, open=3, hits={"mqtt": 2}, statuses={"success": 3},
        run_id="r1", unfinished=[38])
    assert not await state.checkpoint_shard(conn, sweep_id, 0, 30, probes=1)  # backwards
    assert not await state.checkpoint_shard(conn, sweep_id, 0, 50, worker="w2")  # not w2's
    assert not await state.checkpoint_shard(conn, sweep_id, 0, 50, run_id="r0")  # not r0's
    # A duplicate message while w1's run is alive: not run, not an attempt, nothing changes.
    alive: list[tuple[str, str]] = []

    async def holder_alive(worker: str, run: str) -> bool:
        alive.append((worker, run))
        return True

    busy = await state.start_shard(conn, sweep_id, 0, "w2", 3, holder_alive=holder_alive)
    assert (busy.run, busy.busy, busy.attempts, alive) == (False, True, 0, [("w1", "r1")])
    # r1 failed transiently and sent its message again: that costs no attempt.
    again = await state.start_shard(conn, sweep_id, 0, "w1", 3, run_id="r2", released="r1")
    assert (again.run, again.position, again.unfinished, again.attempts,
            again.checkpoints) == (True, 40, (38,), 0, 1)
    # The worker dies; the message comes back to another worker, from the checkpoint: the
    # lost run is one attempt.
    again = await state.start_shard(conn, sweep_id, 0, "w2", 3, run_id="r3", released="r1",
                                    holder_alive=lambda w, r: asyncio.sleep(0, False))
    assert (again.run, again.position, again.attempts) == (True, 40, 1)
    finish = {"position": 100, "probes": 60, "open": 1, "hits": {"mqtt": 1, "amqp": 1},
              "statuses": {"success": 1, "connection-refused": 59}}  # fmt: skip
    assert await state.finish_shard(conn, sweep_id, 0, state="done", **finish)  # type: ignore[arg-type]
    assert not await state.finish_shard(conn, sweep_id, 0, state="done", **finish)  # type: ignore[arg-type]
    redelivered = await state.start_shard(conn, sweep_id, 0, "w3", 3)
    assert (redelivered.run, redelivered.reason, redelivered.attempts) == (
        False, "shard is done already", 1
    )  # fmt: skip
    counts = await state.shard_counts(conn, sweep_id)
    assert (counts.states["done"], counts.states["queued"], counts.covered) == (1, 1, 100)
    assert (counts.probes, counts.open) == (100, 4)
    assert counts.hits == {"amqp": 1, "mqtt": 3}
    assert counts.statuses == {"connection-refused": 59, "success": 4}


async def test_paused_run_resumes_where_it_stopped(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=1)
    await state.claim_pending(conn, sweep_id, 1)
    await state.start_shard(conn, sweep_id, 0, "w1", 3)
    await state.set_sweep_state(conn, sweep_id, "paused")
    assert await state.finish_shard(
        conn, sweep_id, 0, state="paused", position=25, probes=25, open=0, hits={},
        statuses={"io-timeout": 25},
    )  # fmt: skip
    await state.set_sweep_state(conn, sweep_id, "running")
    assert [s.position for s in await state.claim_pending(conn, sweep_id, 5)] == [25]
    start = await state.start_shard(conn, sweep_id, 0, "w1", 3)
    assert (start.run, start.position) == (True, 25)


async def test_handed_back_run_keeps_its_unfinished_targets(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=1)
    await state.claim_pending(conn, sweep_id, 1)
    await state.start_shard(conn, sweep_id, 0, "w1", 3)
    # Shut down: 30 exponents started, 3 of them abandoned when the grace ran out.
    assert await state.finish_shard(
        conn, sweep_id, 0, state="paused", position=30, unfinished=[4, 17, 29], probes=27,
        open=0, hits={}, statuses={"connection-refused": 27}, worker="w1",
    )  # fmt: skip
    counts = await state.shard_counts(conn, sweep_id)
    assert (counts.covered, counts.probes) == (27, 27)
    await state.claim_pending(conn, sweep_id, 1)
    start = await state.start_shard(conn, sweep_id, 0, "w2", 3)
    assert (start.run, start.position, start.unfinished, start.attempts) == (
        True, 30, (4, 17, 29), 0)  # a hand-back is not a failed attempt
    # The next run is handed back before it reaches the walk: 4 done, 17 abandoned again.
    assert await state.finish_shard(
        conn, sweep_id, 0, state="paused", position=30, unfinished=[17, 29], probes=1,
        open=0, hits={}, statuses={"connection-refused": 1}, worker="w2",
    )  # fmt: skip
    assert not await state.finish_shard(  # a stale run of w1: not its shard any more
        conn, sweep_id, 0, state="paused", position=10, unfinished=[], probes=0, open=0,
        hits={}, statuses={}, worker="w1",
    )  # fmt: skip
    await state.claim_pending(conn, sweep_id, 1)
    start = await state.start_shard(conn, sweep_id, 0, "w3", 3)
    assert (start.position, start.unfinished) == (30, (17, 29))
    # A failure keeps the hand-back for the retry; a finish clears it.
    await state.finish_shard(conn, sweep_id, 0, state="failed", position=0, probes=0, open=0,
                             hits={}, statuses={}, error="boom")
    assert (await state.shard_counts(conn, sweep_id)).covered == 28
    await state.retry_failed(conn, sweep_id)
    await state.claim_pending(conn, sweep_id, 1)
    start = await state.start_shard(conn, sweep_id, 0, "w4", 3)
    assert (start.position, start.unfinished) == (30, (17, 29))
    assert await state.finish_shard(
        conn, sweep_id, 0, state="done", position=100, probes=72, open=0, hits={},
        statuses={"connection-refused": 72},
    )  # fmt: skip
    counts = await state.shard_counts(conn, sweep_id)
    assert (counts.covered, counts.probes) == (100, 100)
    assert await conn.fetchval("SELECT unfinished FROM sweep_shards WHERE sweep_id = $1",
                               sweep_id) == []


async def test_attempts_cap(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=1)
    await state.claim_pending(conn, sweep_id, 1)
    assert (await state.start_shard(conn, sweep_id, 0, "w1", 2)).run
    assert (await state.start_shard(conn, sweep_id, 0, "w2", 2)).run
    third = await state.start_shard(conn, sweep_id, 0, "w3", 2)
    assert (third.run, third.shard_state, third.reason) == (
        False, "failed", "gave up after 2 attempts"
    )  # fmt: skip
    assert not (await state.start_shard(conn, sweep_id, 0, "w4", 2)).run
    assert await state.maybe_finish_sweep(conn, sweep_id)
    sweep = await state.get_sweep(conn, sweep_id)
    assert sweep is not None and (sweep.state, sweep.failed_shards) == ("failed", 1)


async def test_lost_runs_are_put_back_and_stale_queued_shards_found(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=3)
    await state.claim_pending(conn, sweep_id, 3)
    await state.start_shard(conn, sweep_id, 0, "w1", 3, run_id="r1")
    assert await state.checkpoint_shard(conn, sweep_id, 0, 10, probes=10, run_id="r1")
    await state.start_shard(conn, sweep_id, 1, "w2", 3, run_id="r2")
    assert await state.running_runs(conn, sweep_id) == {0: ("w1", "r1", 1),
                                                        1: ("w2", "r2", 0)}
    assert await state.running_runs(conn, sweep_id, [1]) == {1: ("w2", "r2", 0)}
    assert not await state.put_back(conn, sweep_id, 0, "r0", "no")  # not r0's any more
    assert await state.put_back(conn, sweep_id, 0, "r1", "worker w1 stopped beating")
    row = (await state.claim_pending(conn, sweep_id, 3))[0]
    assert (row.index, row.position, row.attempts, row.requeues, row.run_id,
            row.last_error) == (0, 10, 1, 1, None, "worker w1 stopped beating")
    counts = await state.shard_counts(conn, sweep_id)
    assert (counts.requeues, counts.probes) == (1, 10)
    # shard 2 (and 0, queued again just now) are queued: stale once older than asked
    assert await state.stale_queued(conn, 3600) == []
    await conn.execute("UPDATE sweep_shards SET queued_at = now() - interval '1 hour'"
                       " WHERE sweep_id = $1 AND shard_index = 2", sweep_id)
    assert [(s, r.index) for s, r in await state.stale_queued(conn, 60)] == [(sweep_id, 2)]
    again = await state.requeue_queued(conn, sweep_id, 2)
    assert again is not None and again.requeues == 1
    assert await state.stale_queued(conn, 60) == []
    assert await state.requeue_queued(conn, sweep_id, 1) is None  # running, not queued


async def test_maybe_finish_sweep(conn: db.Conn) -> None:
    sweep_id = await new_sweep(conn, shards=3)
    assert await state.maybe_finish_sweep(conn, sweep_id) is False
    for shard in await state.claim_pending(conn, sweep_id, 3):
        await state.start_shard(conn, sweep_id, shard.index, "w", 3)
    await state.finish_shard(
        conn, sweep_id, 0, state="failed", position=10, probes=10, open=0, hits={},
        statuses={}, error="probe crashed",
    )  # fmt: skip
    await state.finish_shard(
        conn, sweep_id, 1, state="done", position=0, probes=100, open=0, hits={}, statuses={}
    )
    assert await state.maybe_finish_sweep(conn, sweep_id) is False  # shard 2 still running
    await state.set_sweep_state(conn, sweep_id, "paused")
    await state.finish_shard(
        conn, sweep_id, 2, state="done", position=0, probes=100, open=0, hits={}, statuses={}
    )
    assert await state.maybe_finish_sweep(conn, sweep_id) is False  # paused: resume first
    await state.set_sweep_state(conn, sweep_id, "running")
    assert await state.maybe_finish_sweep(conn, sweep_id) is True
    assert await state.maybe_finish_sweep(conn, sweep_id) is True
    sweep = await state.get_sweep(conn, sweep_id)
    assert sweep is not None
    assert (sweep.state, sweep.failed_shards, sweep.finished_at is not None) == (
        "failed", 1, True
    )  # fmt: skip
