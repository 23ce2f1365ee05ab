"""What happens around an evaluation (scheduler/watchloop.py, scheduler/notify.py): it
starts only once the store holds every result of the sweep (no false ``gone``), and a
webhook receiver that accepts and never answers holds up no other watch's deliveries.
Real stores, a real HTTP receiver and a real silent TCP server, on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from brokerscan.settings import Settings
from scheduler.notify import Deliverer, check_allowed, pinned
from scheduler.watchloop import WatchLoop, published
from storage.store import open_store
from storage.watches import create_watch, list_deliveries
from storage.watcheval import evaluate_sweep
from tests import servers
from tests.integration.test_watches import FIRST, RANGE, SECOND, SECRET, Receiver, mqtt
from tests.waiting import HANG, wait_for_async

pytestmark = pytest.mark.integration

HOSTS = [f"127.60.0.{n}" for n in range(1, 9)]


def test_the_count_published_leaves_out_what_a_scan_does_not_write() -> None:
    statuses = {"success": 5, "connection-refused": 3, "connection-timeout": 2,
                "io-timeout": 1, "unreachable": 1}
    assert published(statuses, emit_failures=False) == 6
    assert published(statuses, emit_failures=True) == 12


async def test_an_evaluation_waits_until_the_store_holds_the_whole_sweep(
        store_url: str) -> None:
    """Half of sweep 2 is stored when it finishes: the loop waits (the old rule, an empty
    stream, would have evaluated now and called the other half gone), and evaluates once
    the rest arrives: nothing is gone."""
    first = [mqtt("sw-1", FIRST, ip, anonymous=True) for ip in HOSTS]
    second = [mqtt("sw-2", SECOND, ip, anonymous=True) for ip in HOSTS]
    store = await open_store(store_url)
    loop = WatchLoop(Settings(store_url=store_url, watch_allow=["127.54.0.0/16"]),
                     settle=0.05)
    try:
        await store.write(first)
        await store.write(second[:4])
        await create_watch(store, "owner", "protocol:mqtt anonymous:true",
                           networks=[RANGE], email="owner@example.org")
        task = loop.sweep_finished("sw-2", expected=len(second))
        await wait_for_async(lambda: loop.waiting.get("sw-2") == 4, HANG,
                             "the loop waiting with 4 of 8 results stored")
        assert not task.done()
        await store.write(second[4:])
        await asyncio.wait_for(task, HANG)
        rows = await store.fetch("SELECT kind FROM watch_events WHERE sweep_id = 'sw-2'", [])
        assert rows == []  # all eight answered in both sweeps: nothing new, nothing gone
        assert "sw-2" not in loop.waiting
    finally:
        await loop.close()
        await store.close()


class Silent:
    """A TCP server on loopback that accepts every connection, reads what it is sent and
    never answers (a webhook receiver that hangs)."""

    def __init__(self) -> None:
        host, port = servers.allocate("scratch", 0)
        self.sock = socket.create_server((host, port))
        self.url = f"http://{host}:{port}/hook"
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


async def test_a_receiver_that_never_answers_delays_no_other_watch(
        tmp_path: Path, silent: Silent) -> None:
    receiver = Receiver()
    store = await open_store(f"sqlite:///{tmp_path}/store.db")
    timeout = 3.0
    settings = Settings(watch_allow=["127.54.0.0/16"], watch_timeout_seconds=timeout,
                        watch_attempts=2, watch_retry_seconds=0.05)
    deliverer = Deliverer(store, settings)
    try:
        await store.write([mqtt("sw-1", FIRST, ip, anonymous=True) for ip in HOSTS])
        await create_watch(store, "hangs", "anonymous:true", webhook_url=silent.url,
                           secret=SECRET)
        await create_watch(store, "fine", "anonymous:true", webhook_url=receiver.url + "/ok",
                           secret=SECRET)
        await evaluate_sweep(store, "sw-1")
        began = time.monotonic()

        async def fine_delivered() -> bool:
            await deliverer.round()
            log = await list_deliveries(store, "fine")
            return len(log) == len(HOSTS) and all(d.status == "delivered" for d in log)
        await wait_for_async(fine_delivered, HANG, "the other watch's deliveries")
        assert time.monotonic() - began < timeout  # before the silent one's first timeout
        hanging = await list_deliveries(store, "hangs")
        assert len(hanging) == len(HOSTS) and all(d.attempts == 0 for d in hanging)
        assert silent.accepted >= 1  # its tries are under way, not waiting behind

        async def hang_failed() -> bool:
            await deliverer.round()
            log = await list_deliveries(store, "hangs")
            return all(d.status == "failed" for d in log)
        await wait_for_async(hang_failed, 4 * timeout + HANG,
                             "the silent receiver's deliveries to time out twice")
        for delivery in await list_deliveries(store, "hangs"):
            assert delivery.attempts == 2 and "Timeout" in (delivery.last_error or "")
        assert silent.accepted >= 2 * len(HOSTS)  # every try connected: retried
        assert len(receiver.delivered()) == len(HOSTS)  # the other one got each once
    finally:
        await deliverer.close()
        await store.close()
        receiver.stop()


async def test_the_address_checked_is_the_one_dialled() -> None:
    """No DNS rebinding: a name is resolved once, checked against the allow list, and that
    address is dialled, the name kept in ``Host`` and the TLS server name."""
    assert await check_allowed("http://127.54.0.9:81/x", ["127.54.0.0/16"]) == "127.54.0.9"
    assert await check_allowed("https://hooks.example/x", ["hooks.example"]) is None
    assert pinned("https://hooks.example:8443/x?a=1", "127.54.0.9") == (
        "https://127.54.0.9:8443/x?a=1", {"Host": "hooks.example:8443"},
        {"sni_hostname": "hooks.example"})
    assert pinned("http://[::1]:80/", "::1") == ("http://[::1]:80/", {}, {})
    receiver = Receiver()
    try:
        port = receiver.url.rpartition(":")[2]
        target, host, extensions = pinned(f"http://hooks.example:{port}/hook",
                                          receiver.url.split("//")[1].split(":")[0])
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.post(target, content=b"{}", headers=host, extensions=extensions)
        assert [(path, headers["Host"]) for path, headers, *_ in receiver.requests] == [
            ("/hook", f"hooks.example:{port}")]
    finally:
        receiver.stop()
