"""The dispatcher's backlog arithmetic (:mod:`scheduler.sizing`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.sizing import (
    QueueLoad,
    allocate,
    capacity_by_queue,
    fleet_room,
    margin,
    queue_room,
)


def test_capacity_sums_live_processes_per_queue() -> None:
    workers = [(("probe",), 1)] * 20 + [(("probe-tls",), 1)] * 3 + [(("probe", "probe-tls"), 2)]
    assert capacity_by_queue(workers) == {"probe": 22, "probe-tls": 5}
    assert capacity_by_queue([]) == {}
    assert capacity_by_queue([(("probe",), -3)]) == {"probe": 0}  # nonsense counts as none


def test_room_is_capacity_plus_margin_less_backlog() -> None:
    assert [margin(c) for c in (0, 1, 20, 21, 24, 300)] == [2, 2, 2, 3, 3, 30]
    assert queue_room(24, 0) == 27  # 24 workers, none busy: every one fed, 3 waiting
    assert queue_room(24, 24) == 3
    assert queue_room(24, 27) == 0
    assert queue_room(24, 40) == 0  # workers left: never negative
    assert queue_room(0, 0) == 2  # no worker yet: a little is ready for the first


def test_one_sweep_takes_the_room_up_to_its_pending_shards() -> None:
    assert allocate(27, {"a": QueueLoad(0, 48)}, ["a"]) == {"a": 27}
    assert allocate(27, {"a": QueueLoad(0, 5)}, ["a"]) == {"a": 5}
    assert allocate(0, {"a": QueueLoad(0, 5)}, ["a"]) == {}
    assert allocate(5, {"a": QueueLoad(3, 0)}, ["a"]) == {}


def test_sweeps_level_up_to_equal_backlogs() -> None:
    # a holds 10 of the queue's slots; b, new, gets the room until it catches up
    loads = {"a": QueueLoad(10, 100), "b": QueueLoad(0, 100)}
    assert allocate(6, loads, ["a", "b"]) == {"b": 6}
    assert allocate(14, loads, ["a", "b"]) == {"a": 2, "b": 12}
    # equal backlogs: the room alternates, and an odd one goes to whoever's turn it is
    even = {"a": QueueLoad(4, 100), "b": QueueLoad(4, 100)}
    assert allocate(5, even, ["a", "b"]) == {"a": 3, "b": 2}
    assert allocate(5, even, ["b", "a"]) == {"a": 2, "b": 3}


def test_a_sweep_that_runs_dry_leaves_the_room_to_the_others() -> None:
    loads = {"a": QueueLoad(0, 2), "b": QueueLoad(0, 100), "c": QueueLoad(0, 100)}
    assert allocate(20, loads, ["a", "b", "c"]) == {"a": 2, "b": 9, "c": 9}


def test_max_queued_caps_a_sweep() -> None:
    loads = {"a": QueueLoad(0, 100), "b": QueueLoad(0, 100)}
    assert allocate(20, loads, ["a", "b"], caps={"a": 3}) == {"a": 3, "b": 17}
    assert allocate(20, loads, ["a", "b"], caps={"a": 0, "b": 4}) == {"b": 4}


@given(room=st.integers(0, 500),
       loads=st.dictionaries(st.sampled_from("abcdef"),
                             st.tuples(st.integers(0, 50), st.integers(0, 200)), max_size=6))
def test_allocation_never_exceeds_room_or_pending_and_is_fair(
        room: int, loads: dict[str, tuple[int, int]]) -> None:
    loaded = {s: QueueLoad(b, p) for s, (b, p) in loads.items()}
    got = allocate(room, loaded, sorted(loaded))
    assert sum(got.values()) == min(room, sum(load.pending for load in loaded.values()))
    assert all(0 < n <= loaded[s].pending for s, n in got.items())
    # Fair: a sweep that could have taken more ends no higher than one level above any
    # other that got shards (water-filling).
    after = {s: loaded[s].backlog + got.get(s, 0) for s in loaded}
    for s in loaded:
        if got.get(s, 0) < loaded[s].pending:
            assert all(after[t] <= after[s] + 1 for t in got)


def test_dual_queue_processes_are_not_counted_twice() -> None:
    # 24 processes on both queues: each queue alone could take 24 + 3, together 24 + 6
    capacity = {"probe": 24, "probe-tls": 24}
    room = fleet_room(capacity, 24, {}, {"probe": 100, "probe-tls": 100})
    assert room == {"probe": 15, "probe-tls": 15}
    # only plaintext shards left: they get the plaintext queue's whole room
    assert fleet_room(capacity, 24, {}, {"probe": 100}) == {"probe": 27}
    # busy fleet: the backlog of both queues counts against the processes
    assert fleet_room(capacity, 24, {"probe": 20, "probe-tls": 9}, {"probe": 50,
                                                                    "probe-tls": 50}) == {
        "probe": 1}


def test_dedicated_pools_keep_their_own_room() -> None:
    capacity = {"probe": 7, "probe-tls": 3}
    wanted = {"probe": 96, "probe-tls": 96}
    assert fleet_room(capacity, 10, {}, wanted) == {"probe": 9, "probe-tls": 5}
    assert fleet_room(capacity, 10, {"probe": 9, "probe-tls": 2}, wanted) == {"probe-tls": 3}
    assert fleet_room({}, 0, {}, wanted) == {"probe": 2, "probe-tls": 2}  # no worker yet


@given(capacity=st.dictionaries(st.sampled_from(["p", "t"]), st.integers(0, 40)),
       backlog=st.dictionaries(st.sampled_from(["p", "t"]), st.integers(0, 60)),
       wanted=st.dictionaries(st.sampled_from(["p", "t"]), st.integers(0, 100)),
       processes=st.integers(0, 80))
def test_fleet_room_respects_every_bound(capacity: dict[str, int], backlog: dict[str, int],
                                         wanted: dict[str, int], processes: int) -> None:
    room = fleet_room(capacity, processes, backlog, wanted)
    queues = set(capacity) | set(backlog) | set(wanted)
    assert sum(room.values()) <= max(0, processes + sum(margin(capacity.get(q, 0))
                                                        for q in queues)
                                     - sum(backlog.values()))
    for q, n in room.items():
        assert 0 < n <= min(wanted.get(q, 0), queue_room(capacity.get(q, 0),
                                                         backlog.get(q, 0)))
