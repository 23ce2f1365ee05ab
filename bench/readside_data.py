"""The read side's benchmark data: results at the census's proportions, over several sweeps.

    .venv/bin/python -m bench.readside_data --store postgresql://127.0.0.1/brokerscan_bench_readside
    .venv/bin/python -m bench.readside_data --store sqlite:////tmp/readside.db --services 100000

What one service looks like (a fixed seed, so two builds are the same data):

* its address is a random public unicast IPv4 address (reserved ranges skipped), one in
  five hosts with a second port; owner and country come from the shipped ``builtin:``
  table, as the enrichment workers would attach them, so AS numbers and countries spread
  as the address space does;
* ports as the 2019 census found them: AMQP 5672 the most (102k of ~170k), MQTT 1883
  (57k), MQTT over TLS 8883 (15k), a few AMQPS 5671 and MQTT over WebSocket (9001);
* about one in eight probes ends in a timeout, a protocol or a handshake error;
* about half the MQTT brokers accept an anonymous CONNECT (35k of 64k); products and
  versions for MQTT (Mosquitto, EMQX, HiveMQ, VerneMQ, RabbitMQ, unknown) and AMQP
  (RabbitMQ of many versions, ActiveMQ Artemis, Qpid, nothing said), SASL mechanisms,
  TLS versions and certificates (self-signed, expired, trusted by the system store or not).

Each of ``--sweeps`` weekly sweeps sees nine in ten of the services (a different tenth each
time), so the current view, the history and the differences between sweeps all have work.

PostgreSQL: the base results are made by the model (``ScanResult``, the records a sweep
stores) and written once to a staging table with ``observation_row``; each sweep is then an
``INSERT ... SELECT`` from it into ``observations`` in slices of 200,000 rows (the record's
sweep and times rewritten), through the store's own trigger, which keeps ``services`` and
both rollups as a real ingest does. 10^6 services x 10 sweeps take about 15 minutes here.
SQLite: every result goes through ``store.write`` (the embedded store's only write path).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brokerscan.model import (
    AmqpResult,
    AmqpSasl,
    AmqpServerProperties,
    AsnInfo,
    GeoInfo,
    MqttProduct,
    MqttResult,
    Protocol,
    ScanResult,
    Status,
    TlsCertificate,
    TlsInfo,
    Transport,
    WebSocketInfo,
    WebSocketTry,
)
from brokerscan.mqttcodes import return_code_name
from enrichment.lookup import open_enricher
from storage.db import DatabaseError, connect
from storage.migrate import migrate
from storage.partitions import ensure_partitions
from storage.rows import COLUMNS, observation_row
from storage.store import StoreError, open_store

START = datetime(2026, 9, 1, 0, 0, tzinfo=UTC)
SLICE = 200_000

# (port, transport, weight): the census's mix, a few WebSocket endpoints beside.
_PORTS = ((5672, Transport.TCP, 100), (1883, Transport.TCP, 57), (8883, Transport.TLS, 15),
          (5671, Transport.TLS, 6), (9001, Transport.WS, 3), (9001, Transport.WSS, 1))
_MQTT_PRODUCTS = (("Mosquitto", ("1.4.15", "1.6.12", "2.0.11", "2.0.18", None), 50),
                  ("EMQX", ("4.4.19", "5.3.0", None), 12), ("HiveMQ", (None,), 5),
                  ("VerneMQ", (None,), 3), ("RabbitMQ", (None,), 5), ("unknown", (None,), 25))
_AMQP_PRODUCTS = (("RabbitMQ", ("3.6.10", "3.7.28", "3.8.9", "3.9.29", "3.10.25", "3.11.28",
                                "3.12.14", "3.13.7", "4.0.5"), 85),
                  ("ActiveMQ Artemis", ("2.31.2",), 4), ("qpidd", ("1.39.0",), 3),
                  (None, (None,), 8))
_MECHANISMS = ((["PLAIN", "AMQPLAIN"], 70), (["AMQPLAIN", "PLAIN", "EXTERNAL"], 10),
               (["PLAIN"], 12), (["ANONYMOUS", "PLAIN"], 5), (["EXTERNAL"], 3))
_ISSUERS = (("CN=R3,O=Let's Encrypt,C=US", 40), ("CN=R11,O=Let's Encrypt,C=US", 15),
            ("CN=DigiCert TLS RSA SHA256 2020 CA1,O=DigiCert Inc,C=US", 8),
            ("CN=Amazon RSA 2048 M02,O=Amazon,C=US", 7), ("self", 30))


def _pick(rng: random.Random, table: Sequence[tuple[Any, ...]]) -> Any:
    """One row of *table* by its last item, the weight (the row's one value, or the rest)."""
    return rng.choices([row[:-1] if len(row) > 2 else row[0] for row in table],
                       weights=[row[-1] for row in table])[0]


def public_addresses(rng: random.Random) -> Iterator[str]:
    """Random public unicast IPv4 addresses, never the same twice."""
    seen: set[int] = set()
    while True:
        number = rng.randrange(1 << 24, 224 << 24)
        address = ipaddress.IPv4Address(number)
        if number in seen or not address.is_global:
            continue
        seen.add(number)
        yield str(address)


def _tls(rng: random.Random, ip: str, seen: datetime) -> TlsInfo:
    issuer = str(_pick(rng, _ISSUERS))
    host = f"mq{rng.randrange(10**6)}.example-{rng.randrange(5000)}.net"
    subject = f"CN={host}"
    self_signed = issuer == "self"
    expired = rng.random() < (0.3 if self_signed else 0.08)
    ends = seen + (timedelta(days=-rng.randrange(1, 900)) if expired
                   else timedelta(days=rng.randrange(1, 398)))
    cert = TlsCertificate(
        subject=subject, issuer=subject if self_signed else issuer, subject_cn=host,
        sans=[f"DNS:{host}"], serial=f"{rng.getrandbits(64):x}",
        not_before=ends - timedelta(days=397), not_after=ends, key_type="RSA", key_bits=2048,
        signature_algorithm="sha256WithRSAEncryption", sha256=f"{rng.getrandbits(256):064x}",
        self_signed=self_signed, expired=expired)
    return TlsInfo(handshake_completed=True,
                   version=str(_pick(rng, (("TLSv1.2", 60), ("TLSv1.3", 36), ("TLSv1", 4)))),
                   cipher="TLS_AES_256_GCM_SHA384", certificate=cert, chain_length=2,
                   trusted=not self_signed and not expired and rng.random() < 0.9)


def _service(rng: random.Random, ip: str, port: int, transport: Transport,
             asn: AsnInfo | None, geo: GeoInfo | None) -> ScanResult:
    seen = START
    roll = rng.random()
    status = Status.SUCCESS if roll < 0.875 else Status.IO_TIMEOUT if roll < 0.93 \
        else Status.HANDSHAKE_ERROR if transport in (Transport.TLS, Transport.WSS) \
        and roll < 0.97 else Status.PROTOCOL_ERROR
    over_tls = transport in (Transport.TLS, Transport.WSS)
    tls = _tls(rng, ip, seen) if over_tls and status is not Status.HANDSHAKE_ERROR else None
    protocol = mqtt = amqp = websocket = None
    if status is Status.SUCCESS and port in (1883, 8883, 9001):
        protocol = Protocol.MQTT
        name, versions = _pick(rng, _MQTT_PRODUCTS)
        anonymous = rng.random() < 0.55
        level = 5 if rng.random() < 0.3 else 4
        code = 0 if anonymous else (5 if level == 4 else 0x87)
        mqtt = MqttResult(protocol_level=level, return_code=code,
                          return_code_name=return_code_name(level, code),
                          session_present=False, anonymous=anonymous,
                          accepted_levels=[4, 5][: 1 + (level == 5)] if anonymous else [],
                          product=MqttProduct(name=name, version=rng.choice(versions)))
    elif status is Status.SUCCESS:
        protocol = Protocol.AMQP
        product, versions = _pick(rng, _AMQP_PRODUCTS)
        props = None if product is None else AmqpServerProperties(
            product=product, version=rng.choice(versions), platform="Erlang/OTP 25.3")
        if rng.random() < 0.05:
            amqp = AmqpResult(family="1.0-sasl", server_properties=props,
                              sasl=AmqpSasl(mechanisms=["ANONYMOUS", "PLAIN"],
                                            anonymous_offered=True))
        else:
            amqp = AmqpResult(family="0-9-1", protocol_header=None, version_major=0,
                              version_minor=9, server_properties=props,
                              mechanisms=list(_pick(rng, _MECHANISMS)), locales=["en_US"])
    if transport in (Transport.WS, Transport.WSS):
        upgraded = protocol is Protocol.MQTT
        websocket = WebSocketInfo(
            tries=[WebSocketTry(path="/mqtt", subprotocol="mqtt",
                                status=101 if upgraded else 404,
                                answer="upgraded" if upgraded else "refused")],
            server="nginx", path="/mqtt" if upgraded else None,
            subprotocol="mqtt" if upgraded else None)
    return ScanResult(
        sweep_id="bench-00", sweep_started_at=START, ip=ip, port=port, transport=transport,
        observed_at=seen, duration_ms=round(rng.uniform(20, 900), 1), status=status,
        protocol=protocol, tls=tls, mqtt=mqtt, amqp=amqp, websocket=websocket,
        error=None if status is Status.SUCCESS else "synthetic", asn=asn, geo=geo)


def base_results(services: int, seed: int = 2019) -> Iterator[ScanResult]:
    """*services* results of the first sweep (see the module docstring)."""
    rng = random.Random(seed)
    enricher = open_enricher(["builtin:"])
    made = 0
    try:
        for ip in public_addresses(rng):
            asn, geo = enricher.lookup(ip)
            asn_info = asn if asn.number is not None else None
            chosen: dict[int, Transport] = dict([_pick(rng, _PORTS)])
            if rng.random() < 0.2:  # a second port (one transport a port, as stored)
                chosen.update([_pick(rng, _PORTS)])
            for port, transport in sorted(chosen.items()):
                yield _service(rng, ip, port, transport, asn_info, geo)
                made += 1
                if made == services:
                    return
    finally:
        enricher.close()


def sweep_times(k: int) -> datetime:
    return START + timedelta(days=7 * k)


def present(n: int, k: int) -> bool:
    """Whether base result *n* is seen by sweep *k* (nine in ten; the same rule as SQL)."""
    return (n * 2654435761 + k * 40503) % 10 != 0


# -- PostgreSQL ---------------------------------------------------------------------------

async def build_postgres(url: str, services: int, sweeps: int) -> None:
    admin_url, _, name = url.rpartition("/")
    admin = await asyncpg.connect(admin_url + "/postgres")
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            raise SystemExit(f"readside_data: database {name} exists; drop it first "
                             f"(dropdb -h 127.0.0.1 -U postgres {name})")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await migrate(url)
    conn = await connect(url)
    try:
        await conn.execute("CREATE UNLOGGED TABLE bench_base (LIKE observations)")
        await conn.execute("ALTER TABLE bench_base ADD COLUMN n bigint")
        began = time.perf_counter()
        batch: list[tuple[object, ...]] = []
        count = 0
        for result in base_results(services):
            batch.append((*observation_row(result), count))
            count += 1
            if len(batch) == 20_000:
                await conn.copy_records_to_table("bench_base", records=batch,
                                                 columns=[*COLUMNS, "n"])
                batch = []
        if batch:
            await conn.copy_records_to_table("bench_base", records=batch,
                                             columns=[*COLUMNS, "n"])
        await conn.execute("CREATE INDEX ON bench_base (n)")
        print(f"{count:,} base results in {time.perf_counter() - began:.0f} s", flush=True)
        await ensure_partitions(conn, 0, [sweep_times(k).date() for k in range(sweeps)])
        columns = ", ".join(COLUMNS)
        rewritten = {
            "sweep_started_at": "$1::timestamptz", "sweep_id": "$2::text",
            "observed_at": "$1::timestamptz + make_interval(secs => n % 86400)",
            "day": "$1::date",
            "record": "record || jsonb_build_object('sweep_id', $2::text, "
                      "'sweep_started_at', to_char($1::timestamptz AT TIME ZONE 'UTC', "
                      "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'observed_at', "
                      "to_char(($1::timestamptz + make_interval(secs => n % 86400)) "
                      "AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))",
        }
        select = ", ".join(rewritten.get(c, c) for c in COLUMNS)
        insert = (f"INSERT INTO observations ({columns}) SELECT {select} FROM bench_base "
                  f"WHERE n >= $3 AND n < $4 AND (n * 2654435761 + $5 * 40503) % 10 <> 0 "
                  f"ORDER BY n")
        for k in range(sweeps):
            began = time.perf_counter()
            sweep_id, started = f"bench-{k:02d}", sweep_times(k)
            await conn.execute(
                "INSERT INTO sweeps (id, name, spec, state, created_at, started_at, "
                "finished_at, target_count, shard_count) VALUES ($1, $1, $2::jsonb, "
                "'finished', $3::timestamptz, $3, $3::timestamptz + interval '20 hours', "
                "3700000000, 0)",
                sweep_id, '{"targets": ["0.0.0.0/0"], "ports": [1883, 8883, 5672, 5671, '
                '9001]}', started)
            for low in range(0, count, SLICE):
                await conn.execute(insert, started, sweep_id, low, low + SLICE, k)
            print(f"sweep {sweep_id}: {time.perf_counter() - began:.0f} s", flush=True)
        await conn.execute("DROP TABLE bench_base")
        await conn.execute("VACUUM ANALYZE")
        totals = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM observations) AS o, "
            "(SELECT count(*) FROM services) AS s")
        assert totals is not None
        print(f"{totals['o']:,} observations, {totals['s']:,} services")
    finally:
        await conn.close()


# -- SQLite -------------------------------------------------------------------------------

async def build_sqlite(url: str, services: int, sweeps: int) -> None:
    store = await open_store(url)
    try:
        base = list(base_results(services))
        written = 0
        for k in range(sweeps):
            started = sweep_times(k)
            batch = []
            for n, result in enumerate(base):
                if present(n, k):
                    batch.append(result.model_copy(update={
                        "sweep_id": f"bench-{k:02d}", "sweep_started_at": started,
                        "observed_at": started + timedelta(seconds=n % 86400)}))
            for low in range(0, len(batch), 5000):
                await store.write(batch[low:low + 5000])
            written += len(batch)
            print(f"sweep bench-{k:02d}: {len(batch):,} results", flush=True)
        print(f"{written:,} observations")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True,
                        help="postgresql://.../NEW_DATABASE or sqlite:////path/new.db")
    parser.add_argument("--services", type=int, default=1_100_000,
                        help="results of one sweep before churn (default: 1,100,000)")
    parser.add_argument("--sweeps", type=int, default=10)
    args = parser.parse_args()
    if not args.store.startswith(("sqlite:", "postgresql:", "postgres:")):
        parser.error(f"--store {args.store!r}: use postgresql://... or sqlite:////...")
    if args.services < 1 or args.sweeps < 1:
        parser.error("--services and --sweeps must be at least 1")
    began = time.perf_counter()
    try:
        if args.store.startswith("sqlite:"):
            asyncio.run(build_sqlite(args.store, args.services, args.sweeps))
        else:
            asyncio.run(build_postgres(args.store, args.services, args.sweeps))
    except (StoreError, DatabaseError, asyncpg.PostgresError, OSError) as exc:
        raise SystemExit(f"readside_data: {exc}") from None
    print(f"built in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
