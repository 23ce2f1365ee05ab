"""How many shards the dispatch loop sends: the backlog sized to the live fleet.

Every worker process says in its heartbeat how many shards it runs at once (its
``capacity``, 1 for a Celery pool process: prefetch 1, late acks) and which queues it
consumes. A queue's capacity is the sum over the live processes that consume it. The
scheduler keeps each queue's backlog (its shards queued or running, over every sweep) at
that capacity plus a small margin: every process has a shard and one more is ready for
whoever finishes first, so any number of workers is busy, and RabbitMQ never holds more
than the fleet can take (no unbounded queue for KEDA to misread, nothing to redeliver en
masse when a worker dies).

The room left in a queue goes to the running sweeps that still have shards for it, one
shard at a time to the sweep with the smallest backlog in that queue (ties in a turn that
rotates every round), so that concurrent sweeps hold equal shares of the fleet and a new
sweep gets its share as soon as shards of the others finish. An explicit ``--max-queued``
caps each sweep's backlog (both queues together) on top.

Why a module of its own: this is pure arithmetic on counts, tested on its own
(``tests/unit/scheduler/test_sizing.py``); :mod:`scheduler.dispatch` reads the counts and
sends what it says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["QueueLoad", "allocate", "capacity_by_queue", "fleet_room", "margin", "queue_room"]


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """One sweep's shards in one queue: ``backlog`` queued or running, ``pending`` ready to
    be queued (pending, or paused by a hand-back)."""

    backlog: int
    pending: int


def capacity_by_queue(workers: Iterable[tuple[Sequence[str], int]]) -> dict[str, int]:
    """Shards the live fleet runs at once, per queue.

    :param workers: each live process's queues and capacity; a process that consumes
        two queues counts in both (it takes from whichever has a message).
    """
    found: dict[str, int] = {}
    for queues, capacity in workers:
        for queue in queues:
            found[queue] = found.get(queue, 0) + max(0, capacity)
    return found


def margin(capacity: int) -> int:
    """Shards kept ready beyond a queue's capacity: 2, or a tenth of a large fleet, so that
    a process that finishes finds its next shard waiting while the scheduler's next round
    (every 0.2 s) tops the queue up."""
    return max(2, math.ceil(capacity / 10))


def queue_room(capacity: int, backlog: int) -> int:
    """Shards to send now to a queue with this capacity and backlog (queued + running,
    every sweep): up to capacity plus :func:`margin`, never negative. A queue no live
    worker consumes still gets the margin, so a fleet that starts after the sweep finds
    work at once."""
    return max(0, capacity + margin(capacity) - backlog)


def fleet_room(capacity: Mapping[str, int], processes: int, backlog: Mapping[str, int],
               wanted: Mapping[str, int]) -> dict[str, int]:
    """Shards to send now, per queue.

    Each queue gets up to its :func:`queue_room`; and since a process that consumes both
    queues counts in both capacities but runs one shard at a time, all queues together
    get no more than the processes plus each queue's margin, less the whole backlog. That
    room is dealt one shard at a time to each queue in turn that still wants some, so
    plaintext and TLS shards go out side by side.

    :param capacity: per queue (:func:`capacity_by_queue`)
    :param processes: the live processes' capacity, each counted once
    :param backlog: shards queued or running, per queue
    :param wanted: shards ready to be queued, per queue
    """
    queues = sorted(set(capacity) | set(backlog) | set(wanted))
    rooms = {q: min(wanted.get(q, 0), queue_room(capacity.get(q, 0), backlog.get(q, 0)))
             for q in queues}
    left = max(0, processes + sum(margin(capacity.get(q, 0)) for q in queues)
               - sum(backlog.values()))
    given = dict.fromkeys(queues, 0)
    while left > 0:
        turn = [q for q in queues if given[q] < rooms[q]]
        if not turn:
            break
        step = min(rooms[q] - given[q] for q in turn)  # whole rounds at once
        step = min(step, left // len(turn)) or 1
        for queue in turn:
            if left == 0:
                break
            given[queue] += step
            left -= step
    return {q: n for q, n in given.items() if n}


def allocate(room: int, loads: Mapping[str, QueueLoad], turn: Sequence[str],
             caps: Mapping[str, int] | None = None) -> dict[str, int]:
    """Share *room* shards of one queue among sweeps.

    Each shard goes to the sweep whose backlog in this queue (plus what it was given) is
    smallest, among those with pending shards left and under their cap; ties go to the
    sweep earliest in *turn*.

    :param loads: each sweep's load in this queue
    :param turn: the sweeps in the order that breaks ties (rotate it between rounds)
    :param caps: most further shards a sweep may get (``--max-queued`` less its backlog
        in every queue); absent: no cap
    :returns: shards to send per sweep (only sweeps that get some)
    """
    rank = {sweep: i for i, sweep in enumerate(turn)}
    order = sorted(loads, key=lambda s: rank.get(s, len(rank)))
    given = dict.fromkeys(order, 0)

    def open_(sweep: str) -> bool:
        load = loads[sweep]
        cap = None if caps is None else caps.get(sweep)
        return given[sweep] < load.pending and (cap is None or given[sweep] < cap)

    left = max(0, room)
    while left > 0:
        candidates = [s for s in order if open_(s)]
        if not candidates:
            break
        if len(candidates) == 1:  # one sweep left: all it can take at once
            sweep = candidates[0]
            cap = None if caps is None else caps.get(sweep)
            more = min(left, loads[sweep].pending - given[sweep],
                       left if cap is None else cap - given[sweep])
            given[sweep] += more
            left -= more
            break
        low = min(loads[s].backlog + given[s] for s in candidates)
        level = [s for s in candidates if loads[s].backlog + given[s] == low]
        # Raise every sweep at the lowest level by one, in turn order, as room lasts.
        for sweep in level:
            if left == 0:
                break
            given[sweep] += 1
            left -= 1
    return {s: n for s, n in given.items() if n}
