"""Session set-up and the fixtures for real servers on loopback (logic in tests/servers.py).

- The whole session runs with ``BROKERSCAN_SCOPE=127.0.0.0/8`` (restored afterwards).
- Integration tests never skip silently: a skip inside a test marked ``integration`` is
  reported as a failure.
- A test needs only the server programs it starts: starting one that is missing raises
  ``servers.MissingServerBinary``, which fails that test (never a skip) with the one line
  of its message. A test that needs only PostgreSQL, Redis or RabbitMQ needs no program.
- Shared fixtures: ``names`` (a namespace of the test's own), ``redis`` (a client whose
  namespace keys are deleted afterwards), the PostgreSQL databases of tests/pg.py
  (``pg_url``, ``migrated_url``, ``migrated_module_url``) and the servers below.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from brokerscan.names import Names
from tests import servers
from tests.certs import Pki, make_pki
from tests.pg import (  # noqa: F401  (fixtures)
    migrated_module_url,
    migrated_url,
    pg_url,
    store_url,
)
from tests.services import REDIS_URL, delete_redis_keys, new_names

SCOPE = "127.0.0.0/8"
_saved: list[dict[str, str | None]] = []


def pytest_configure(config: pytest.Config) -> None:
    # The scope every brokerscan process in the tests obeys, and an embedded store of the
    # run's own (so that scans started by tests leave no brokerscan.db in the checkout).
    store = Path(tempfile.mkdtemp(prefix="brokerscan-tests-")) / "store.db"
    wanted = {"BROKERSCAN_SCOPE": SCOPE, "BROKERSCAN_STORE_URL": f"sqlite:///{store}"}
    _saved.append({name: os.environ.get(name) for name in wanted})
    os.environ.update(wanted)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved:
        for name, previous in _saved.pop().items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and item.get_closest_marker("integration") and not hasattr(
        report, "wasxfail"
    ):
        report.outcome = "failed"
        report.longrepr = f"integration test skipped, which is not allowed: {report.longrepr}"
    if call.excinfo is not None and call.excinfo.errisinstance(servers.MissingServerBinary):
        report.longrepr = f"{item.nodeid}: {call.excinfo.value}"  # one line, no traceback
    return report


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def names() -> Names:
    """A namespace of the test's own (queues, exchanges, Redis keys)."""
    return new_names()


@pytest.fixture
async def redis(names: Names) -> AsyncIterator[Redis]:
    """A client of the machine's Redis; every key of ``names`` is deleted afterwards."""
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await delete_redis_keys(client, names)
        await client.aclose()



@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test PKI of tests/certs.py (CA, server, client, self-signed, expired, ...)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _mosquitto(tmp_path: Path, **options: object) -> Iterator[servers.MosquittoServer]:
    port = 8883 if options.get("certfile") else 1883
    host, port = servers.allocate("mosquitto", port)
    server = servers.start_mosquitto(tmp_path / "mosquitto", host, port, **options)  # type: ignore[arg-type]
    yield server
    server.stop()


@pytest.fixture
def mosquitto_anon(tmp_path: Path) -> Iterator[servers.MosquittoServer]:
    """Mosquitto on 127.50.x.y:1883 letting anonymous clients in."""
    yield from _mosquitto(tmp_path)


@pytest.fixture
def mosquitto_password(tmp_path: Path) -> Iterator[servers.MosquittoServer]:
    """Mosquitto on 127.50.x.y:1883 with a password file (``.users``); anonymous gets rc 5."""
    yield from _mosquitto(tmp_path, users={"brokerscan": "test-password"})


@pytest.fixture
def mosquitto_tls(tmp_path: Path, pki: Pki) -> Iterator[servers.MosquittoServer]:
    """Mosquitto on 127.50.x.y:8883, TLS with ``pki.selfsigned``, anonymous allowed."""
    yield from _mosquitto(tmp_path, certfile=pki.selfsigned.cert_path,
                           keyfile=pki.selfsigned.key_path)


@pytest.fixture
def mosquitto_tls_client_cert(
    tmp_path: Path, pki: Pki
) -> Iterator[servers.MosquittoServer]:
    """Mosquitto on 127.50.x.y:8883, ``pki.server``; clients need a cert from ``pki.ca``."""
    yield from _mosquitto(
        tmp_path, certfile=pki.server.cert_path, keyfile=pki.server.key_path,
        cafile=pki.ca.cert_path,
        require_certificate=True,
    )


@pytest.fixture(scope="module")
def amqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.ServerProcess]:
    """An amqtt broker on 127.51.x.y:1883 letting anonymous clients in (one per module)."""
    host, port = servers.allocate("amqtt", 1883)
    server = servers.start_amqtt(tmp_path_factory.mktemp("amqtt"), host, port)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq() -> servers.Endpoint:
    """The machine's RabbitMQ at 127.0.0.1:5672 (guest/guest), checked to answer."""
    try:
        return servers.check_rabbitmq()
    except servers.ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def rabbitmq_tls(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> Iterator[servers.ServerProcess]:
    """A second RabbitMQ node, AMQPS only, on 127.52.x.y:5671 with ``pki.server``."""
    host, port = servers.allocate("rabbitmq", 5671)
    server = servers.start_rabbitmq_tls(
        tmp_path_factory.mktemp("rabbitmq-tls"), host, port, pki.server.cert_path,
        pki.server.key_path, pki.ca.cert_path,
    )
    yield server
    server.stop()


@pytest.fixture
def decoys(pki: Pki) -> Iterator[servers.DecoyFactory]:
    """Starts decoys on demand (``decoys.tarpit()``, ``decoys.http()``, ...); stops them all."""
    factory = servers.DecoyFactory(pki)
    yield factory
    factory.stop_all()
