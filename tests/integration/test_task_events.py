"""Celery task events, the opt-in for Flower and celery-exporter (``BROKERSCAN_TASK_EVENTS``):
with it, a real scheduler and a real worker process send the events those tools read
(``task-sent`` from the scheduler, ``task-received``, ``task-started``, ``task-succeeded``
and ``worker-heartbeat`` from the worker), caught by Celery's own event receiver on the
real RabbitMQ while a small sweep runs; without it (the default) nothing is configured to
send them."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from celery import Celery

from brokerscan.settings import Settings
from tests.integration.sweepfleet import Fleet
from tests.waiting import wait_for
from workers.celery_app import make_app

pytestmark = pytest.mark.integration


def test_events_are_off_by_default() -> None:
    conf = make_app(Settings()).conf
    assert conf.worker_send_task_events is False and conf.task_send_sent_event is False
    conf = make_app(Settings(task_events=True)).conf
    assert conf.worker_send_task_events is True and conf.task_send_sent_event is True


@pytest.mark.timeout(240)
def test_opted_in_fleet_sends_the_events_flower_reads(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.env["BROKERSCAN_TASK_EVENTS"] = "true"
    fleet.setup()
    seen: Counter[str] = Counter()
    app = Celery(broker=fleet.env["BROKERSCAN_BROKER_URL"], set_as_current=False)
    receiving = threading.Event()
    receivers: list[object] = []

    def on_event(event: dict[str, object]) -> None:
        kind = str(event["type"])
        if kind.startswith("task-") and event.get("name") not in (None, "brokerscan.run_shard"):
            return  # another fleet's tasks (none send events, but be sure)
        seen[kind] += 1

    def receive() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": on_event})
            receivers.append(receiver)
            # called once the consumer is declared: events from then on arrive
            receiver.on_consume_ready = lambda *_, **__: receiving.set()
            receiver.capture(limit=None, wakeup=False)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        wait_for(receiving.is_set, 30, "the event receiver to bind")
        fleet.start_scheduler()
        fleet.start_worker("w1", "--queues", "probe")
        sweep_id = fleet.start_sweep("127.62.56.0/28", "--ports", "1883", "--allow-reserved",
                                     "--shards", "2", "--connect-timeout", "1",
                                     "--timeout", "2")
        fleet.wait_state(sweep_id, {"finished"}, timeout=150)
        wanted = ("task-sent", "task-received", "task-started", "task-succeeded",
                  "worker-heartbeat")
        wait_for(lambda: all(seen[k] for k in wanted), 30,
                 f"the events {', '.join(wanted)}", detail=lambda: str(seen))
        assert seen["task-sent"] >= 2 and seen["task-succeeded"] >= 2, seen
    finally:
        for receiver in receivers:
            receiver.should_stop = True  # type: ignore[attr-defined]
        thread.join(timeout=10)
        fleet.teardown()
