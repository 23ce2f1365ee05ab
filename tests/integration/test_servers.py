"""The test servers of tests/servers.py serve what they claim, checked with plain clients."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from pathlib import Path

import aio_pika
import aiomqtt
import pytest

from tests import servers
from tests.certs import Pki

pytestmark = pytest.mark.integration

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def mqtt_connect(client_id: str = "brokerscan-test", user: str = "", password: str = "") -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (and credentials if given)."""
    flags = 0x02 | (0xC0 if user else 0)
    payload = len(client_id).to_bytes(2, "big") + client_id.encode()
    if user:
        payload += len(user).to_bytes(2, "big") + user.encode()
        payload += len(password).to_bytes(2, "big") + password.encode()
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + payload
    assert len(body) < 128
    return bytes([0x10, len(body)]) + body


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def connack_code(sock: socket.socket, user: str = "", password: str = "") -> int:
    sock.sendall(mqtt_connect(user=user, password=password))
    reply = recv_exactly(sock, 4)
    assert reply[:3] == b"\x20\x02\x00", reply
    return reply[3]


def tls_client(cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client context that checks nothing (we look at the certificate ourselves)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def tls_connect(host: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


# --------------------------------------------------------------------------- plan


def test_pools_hand_out_distinct_loopback_addresses() -> None:
    first = servers.allocate("scratch", 1883)
    second = servers.allocate("scratch", 1883)
    assert first != second
    for host, port in (first, second):
        assert ipaddress.IPv4Address(host) in ipaddress.IPv4Network("127.54.0.0/16")
        assert port == 1883


def test_pool_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        servers.AddressPool("10.0.0.0/24")


def test_allocator_steps_over_a_taken_port() -> None:
    pool = servers.AddressPool("127.54.200.0/24")
    worker, step = servers.xdist_worker()  # this process's addresses: every step-th
    first, second = (f"127.54.200.{1 + worker + n * step}" for n in (0, 1))
    with socket.socket() as squatter:
        squatter.bind((first, 1883))
        squatter.listen()
        assert pool.take(1883) == (second, 1883)


def test_processes_of_a_parallel_run_never_share_an_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    taken = []
    for worker in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        pool = servers.AddressPool("127.54.201.0/24")
        taken += [pool.take(0)[0] for _ in range(20)]
    assert len(set(taken)) == len(taken) == 60


# --------------------------------------------------------------------------- Mosquitto


def test_mosquitto_anonymous_accepts_connect(mosquitto_anon: servers.MosquittoServer) -> None:
    assert mosquitto_anon.host.startswith("127.50.")
    with socket.create_connection((mosquitto_anon.host, mosquitto_anon.port), timeout=5) as s:
        assert connack_code(s) == 0


def test_mosquitto_anonymous_with_a_real_client(mosquitto_anon: servers.MosquittoServer) -> None:
    async def publish() -> None:
        async with aiomqtt.Client(mosquitto_anon.host, mosquitto_anon.port,
                                  identifier="brokerscan-test") as client:
            await client.publish("brokerscan/test", b"hello")

    asyncio.run(publish())


def test_mosquitto_password_refuses_anonymous(mosquitto_password: servers.MosquittoServer) -> None:
    (user, password), = mosquitto_password.users.items()
    address = (mosquitto_password.host, mosquitto_password.port)
    with socket.create_connection(address, timeout=5) as s:
        assert connack_code(s) == 5  # not authorised
    with socket.create_connection(address, timeout=5) as s:
        assert connack_code(s, user, "wrong") == 5
    with socket.create_connection(address, timeout=5) as s:
        assert connack_code(s, user, password) == 0


def test_mosquitto_tls_presents_the_self_signed_cert(
    mosquitto_tls: servers.MosquittoServer, pki: Pki
) -> None:
    assert mosquitto_tls.port == 8883
    with tls_connect(mosquitto_tls.host, mosquitto_tls.port, tls_client()) as s:
        assert s.getpeercert(binary_form=True) == pki.selfsigned.der
        assert connack_code(s) == 0


def test_mosquitto_client_cert_listener_rejects_a_client_without_one(
    mosquitto_tls_client_cert: servers.MosquittoServer, pki: Pki
) -> None:
    server = mosquitto_tls_client_cert
    # With TLS 1.3 the refusal arrives after the handshake, on the first read.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(server.host, server.port, tls_client()) as s:
            s.sendall(mqtt_connect())
            if not s.recv(4):
                raise ConnectionResetError("closed without a CONNACK")
    with_cert = tls_client((pki.client.cert_path, pki.client.key_path))
    with tls_connect(server.host, server.port, with_cert) as s:
        assert s.getpeercert(binary_form=True) == pki.server.der
        assert connack_code(s) == 0


# --------------------------------------------------------------------------- amqtt


def test_amqtt_answers_connack(amqtt_broker: servers.ServerProcess) -> None:
    assert amqtt_broker.host.startswith("127.51.")
    with socket.create_connection((amqtt_broker.host, amqtt_broker.port), timeout=5) as s:
        assert connack_code(s) == 0


# --------------------------------------------------------------------------- RabbitMQ


def test_rabbitmq_sends_connection_start(rabbitmq: servers.Endpoint) -> None:
    with socket.create_connection((rabbitmq.host, rabbitmq.port), timeout=5) as s:
        s.sendall(AMQP_HEADER)
        frame = recv_exactly(s, 11)
    assert frame[:3] == b"\x01\x00\x00"
    assert frame[7:11] == b"\x00\x0a\x00\x0a"  # class 10 (connection), method 10 (start)


def test_rabbitmq_login_with_aio_pika(rabbitmq: servers.Endpoint) -> None:
    async def login() -> None:
        url = f"amqp://guest:guest@{rabbitmq.host}:{rabbitmq.port}/"
        connection = await aio_pika.connect(url, timeout=10)
        await connection.close()

    asyncio.run(login())


def test_rabbitmq_tls_node(rabbitmq_tls: servers.ServerProcess, pki: Pki) -> None:
    assert rabbitmq_tls.host.startswith("127.52.")
    with tls_connect(rabbitmq_tls.host, rabbitmq_tls.port, tls_client()) as s:
        assert s.getpeercert(binary_form=True) == pki.server.der
        s.sendall(AMQP_HEADER)
        frame = recv_exactly(s, 11)
    assert frame[:3] == b"\x01\x00\x00"
    assert frame[7:11] == b"\x00\x0a\x00\x0a"


# --------------------------------------------------------------------------- decoys


def test_http_decoy_answers_anything_with_http(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.http()
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        s.sendall(mqtt_connect())
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert decoy.accepted == 1


def test_tarpit_never_sends(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.tarpit()
    with socket.create_connection((decoy.host, decoy.port), timeout=0.5) as s:
        s.sendall(mqtt_connect())
        with pytest.raises(TimeoutError):
            s.recv(1)


def test_garbage_sender_is_bounded(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.garbage(total=100_000)
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        data = recv_exactly(s, 200_000)
    assert len(data) == 100_000
    assert len(set(data)) > 200  # random, not a pattern


def test_trickler_sends_one_byte_at_a_time(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.trickle(interval=0.2)
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        started = time.monotonic()
        first = s.recv(100)
        second = s.recv(100)
        elapsed = time.monotonic() - started
    assert (first, second) == (b"H", b"T")
    assert elapsed >= 0.15


def test_close_at_once_sends_fin(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.close_at_once()
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        assert s.recv(10) == b""


def test_reset_at_once_sends_rst(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.reset_at_once()
    # The reset may already be there when connect() returns (then connect raises it).
    with pytest.raises(ConnectionResetError):
        with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
            s.recv(10)  # blocks until the reset arrives (or raises it at once)
    assert decoy.accepted == 1


def test_ssh_decoy_sends_a_banner(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.ssh()
    assert decoy.port == 5672
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        assert s.recv(100) == servers.SSH_BANNER


def test_tls_http_decoy(decoys: servers.DecoyFactory, pki: Pki) -> None:
    decoy = decoys.tls_http()
    with tls_connect(decoy.host, decoy.port, tls_client()) as s:
        assert s.getpeercert(binary_form=True) == pki.selfsigned.der
        s.sendall(mqtt_connect())
        assert s.recv(4096).startswith(b"HTTP/1.1 ")


def test_huge_length_decoy(decoys: servers.DecoyFactory) -> None:
    decoy = decoys.huge_length(interval=0.05)
    with socket.create_connection((decoy.host, decoy.port), timeout=5) as s:
        s.sendall(AMQP_HEADER)
        assert recv_exactly(s, len(servers.AMQP_HUGE_FRAME)) == servers.AMQP_HUGE_FRAME
        assert recv_exactly(s, 3) == b"\x00\x00\x00"


def test_decoys_stop_cleanly(decoys: servers.DecoyFactory) -> None:
    tarpit = decoys.tarpit()
    client = socket.create_connection((tarpit.host, tarpit.port), timeout=5)
    tarpit.stop()
    assert client.recv(10) == b""  # the held connection was closed
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((tarpit.host, tarpit.port), timeout=5).close()
