"""The one-pass evaluation of watches (storage/watcheval.py) against the per-watch one it
replaced (``diff_sweeps`` under each watch's effective query), on both stores: the same
events, kinds and details, for watches on ranges, AS numbers, both, none, with
``certificates``; and ``cert_expiry_days`` (every sweep, once per service).

The reference is bench/watches.py's baseline, ``per_watch_found``.

The data: 600 results at the census's proportions (bench/readside_data.py), two sweeps of
nine in ten of them each; between them some brokers changed: anonymous access flipped,
an AS number moved, TLS removed, a product replaced.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.readside_data import base_results, present
from bench.watches import per_watch_found
from brokerscan.model import ScanResult, Status
from storage.store import open_store
from storage.watches import create_watch, list_watches
from storage.watcheval import evaluate_sweep, previous_sweep, sweep_stored

pytestmark = pytest.mark.integration

FIRST = datetime(2026, 11, 2, 6, tzinfo=UTC)
SECOND = FIRST + timedelta(days=7, hours=3)
HOOK = "http://127.0.0.1:9/never"  # never dialled: nothing is delivered here


def _changed(n: int, r: ScanResult) -> ScanResult:
    """Sweep 2's view of base result *n*: most unchanged, some brokers changed."""
    update: dict[str, Any] = {}
    if r.mqtt is not None and n % 5 == 0:
        update["mqtt"] = r.mqtt.model_copy(update={"anonymous": not r.mqtt.anonymous})
    if r.asn is not None and n % 11 == 0:
        update["asn"] = r.asn.model_copy(update={"number": 64512})
    if r.tls is not None and n % 13 == 0:
        update["tls"] = None
    if n % 17 == 0:
        update["status"] = Status.IO_TIMEOUT
    return r.model_copy(update=update)


def sweeps() -> tuple[list[ScanResult], list[ScanResult]]:
    base = list(base_results(600, seed=20))
    one = [r.model_copy(update={"sweep_id": "ev-1", "sweep_started_at": FIRST,
                                "observed_at": FIRST + timedelta(seconds=n)})
           for n, r in enumerate(base) if present(n, 0)]
    two = [_changed(n, r).model_copy(update={
        "sweep_id": "ev-2", "sweep_started_at": SECOND,
        "observed_at": SECOND + timedelta(hours=n % 30)})
        for n, r in enumerate(base) if present(n, 1)]
    return one, two


async def test_one_pass_finds_exactly_what_each_watch_found_alone(store_url: str) -> None:
    one, two = sweeps()
    store = await open_store(store_url)
    try:
        await store.write(one)
        await store.write(two)
        nets = sorted({str(ipaddress.IPv4Network(f"{r.ip}/5", strict=False))
                       for r in one[:40]})
        asns = Counter(r.asn.number for r in one if r.asn is not None and r.asn.number)
        top = [n for n, _ in asns.most_common(3)] + [64512]
        specs: list[tuple[str, dict[str, Any]]] = [
            ("protocol:mqtt anonymous:true", {"networks": nets[:3]}),
            ("protocol:mqtt anonymous:true", {"networks": nets[3:5] + ["10.0.0.0/8"]}),
            ("protocol:mqtt anonymous:true", {"asns": top[:2]}),
            ("anonymous:true", {"asns": [64512]}),
            ("protocol:amqp", {"networks": nets[:6], "asns": top}),
            ("", {}), ("protocol:amqp", {}), ("tls:true", {"certificates": True}),
            ("port:8883 NOT anonymous:true", {}), ("product:mosquitto OR tls:false", {}),
            ("cert.expired:true", {"networks": nets[:10], "certificates": True}),
        ]
        for i, (query, options) in enumerate(specs):
            await create_watch(store, f"w{i:02d}", query, webhook_url=HOOK, secret="k",
                               **options)
        watches = await list_watches(store)
        assert await previous_sweep(store, "ev-2") == "ev-1"
        assert await sweep_stored(store, "ev-2") == len(two)

        expected: set[tuple[Any, ...]] = set()
        for watch in watches:
            expected |= await per_watch_found(store, watch, "ev-1", "ev-2")
        events = await evaluate_sweep(store, "ev-2")
        got = {(e.watch, e.kind, e.ip, e.port, str(e.detail.get("changes", "")))
               for e in events}
        assert len(events) == len(got)  # one event per (watch, service, kind)
        assert got == expected
        kinds = Counter(kind for _, kind, *_ in got)
        assert all(kinds[k] for k in ("new", "gone", "now_matching", "stopped_matching",
                                      "certificate_expired")), kinds
        assert {w for w, *_ in got} == {w.name for w in watches}  # every watch has work
        assert await evaluate_sweep(store, "ev-2") == []  # once per (watch, sweep, ...)
        count = "SELECT count(*) AS n FROM watch_deliveries"
        assert int((await store.fetch(count, []))[0]["n"]) == len(events)  # one per event
        # an evaluation stopped after the events, before their deliveries: the next mends
        await store.fetch("DELETE FROM watch_deliveries WHERE watch IN ('w00', 'w05')", [])
        assert int((await store.fetch(count, []))[0]["n"]) < len(events)
        assert await evaluate_sweep(store, "ev-2") == []
        assert int((await store.fetch(count, []))[0]["n"]) == len(events)
    finally:
        await store.close()


async def test_certificates_expiring_within_n_days_are_reported_every_sweep(
        store_url: str) -> None:
    one, two = sweeps()
    store = await open_store(store_url)
    try:
        await store.write(one)
        await store.write(two)
        await create_watch(store, "soon", "tls:true", webhook_url=HOOK, secret="k",
                           cert_expiry_days=30)
        await create_watch(store, "plain", "tls:true", webhook_url=HOOK, secret="k")
        expected = set()
        for r in two:
            cert = r.tls.certificate if r.tls is not None else None
            if r.status is Status.SUCCESS and cert is not None and \
                    cert.not_after < r.observed_at + timedelta(days=30):
                expected.add((r.ip, r.port))
        assert expected and any(  # some expired, some not yet
            r.tls is not None and r.tls.certificate is not None
            and not r.tls.certificate.expired and (r.ip, r.port) in expected for r in two)
        events = await evaluate_sweep(store, "ev-2")
        expiring = [e for e in events if e.kind == "certificate_expiring"]
        assert {(e.ip, e.port) for e in expiring} == expected
        assert len(expiring) == len(expected) and {e.watch for e in expiring} == {"soon"}
        assert all(e.detail["days"] == 30 and e.detail["not_after"] for e in expiring)
        # once per sweep and service; the first sweep has its own
        assert [e for e in await evaluate_sweep(store, "ev-2")] == []
        first = await evaluate_sweep(store, "ev-1")
        assert any(e.kind == "certificate_expiring" for e in first)
    finally:
        await store.close()


async def test_a_sweep_with_nothing_stored_has_no_events(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        await store.write(sweeps()[0])
        await create_watch(store, "all", "", webhook_url=HOOK, secret="k")
        assert await evaluate_sweep(store, "no-such-sweep") == []
        assert await previous_sweep(store, "no-such-sweep") is None
        assert await sweep_stored(store, "no-such-sweep") == 0
    finally:
        await store.close()
