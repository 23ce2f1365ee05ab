"""TLS observation against real servers on 127.44.x.x: Python ``ssl`` servers, ``openssl
s_server`` and Mosquitto 2.0 TLS listeners, all dialled through ``workers.transport.dial``.

Every server is started here and stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from brokerscan.model import Status
from tests import servers
from tests.certs import Issued, Pki, make_pki
from tests.waiting import HANG
from workers.transport import ProbeError, Scope, Stream, TlsOptions, dial

pytestmark = pytest.mark.integration

SCOPE = Scope(["127.0.0.0/8"])
# MQTT 3.1.1 CONNECT, clean session, keep-alive 60, client id "bs-tls-test"
CONNECT = bytes([0x10, 23]) + b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(
    "!H", 11) + b"bs-tls-test"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls-pki"))


async def _dial(ip: str, port: int, tls: TlsOptions | None = None) -> Stream:
    return await dial(ip, port, scope=SCOPE, connect_timeout=2, io_timeout=2,
                      tls=tls or TlsOptions())


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(args: list[str], host: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    # stdin stays open: s_server takes end of input as "quit"
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        servers.wait_for_port(host, port, 10, alive=lambda: proc.poll() is None)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


@contextlib.contextmanager
def _s_server(pki: Pki, host: str, *flags: str) -> Iterator[int]:
    port = _free_port(host)
    args = [servers.require_binary("openssl"), "s_server", "-accept", f"{host}:{port}", "-quiet",
            "-cert", str(pki.server.cert_path), "-key", str(pki.server.key_path),
            "-CAfile", str(pki.ca.cert_path), *flags]
    with _process(args, host, port):
        yield port


@contextlib.contextmanager
def _mosquitto(pki: Pki, tmp_path: Path, host: str, *, leaf: Issued,
               require_certificate: bool) -> Iterator[int]:
    port = _free_port(host)
    conf = tmp_path / f"mosquitto-{host}.conf"
    lines = ["user root",  # else it drops to "mosquitto", who cannot read tmp_path
             f"listener {port} {host}", "allow_anonymous true",
             f"certfile {leaf.cert_path}", f"keyfile {leaf.key_path}"]
    if require_certificate:
        lines += [f"cafile {pki.ca.cert_path}", "require_certificate true"]
    conf.write_text("\n".join(lines) + "\n")
    mosquitto = servers.require_binary("mosquitto", "/usr/sbin/mosquitto")
    with _process([mosquitto, "-c", str(conf)], host, port):
        yield port


@contextlib.asynccontextmanager
async def _server(host: str, handler: Handler,
                  ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            writer.transport.abort()  # whatever the handler did, nothing stays open

    server = await asyncio.start_server(tracked, host, 0, ssl=ctx)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def _server_ctx(leaf: Issued, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(leaf.cert_path, leaf.key_path)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _http_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _observe(pki: Pki, leaf: Issued, host: str,
                   version: ssl.TLSVersion | None = None) -> Stream:
    async with _server(host, _http_reply, _server_ctx(leaf, version)) as port:
        stream = await _dial(host, port)
        await stream.aclose()
        return stream


# --- certificate facts over a real handshake -----------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_server_certificate_facts(tls_pki: Pki, version: ssl.TLSVersion) -> None:
    stream = await _observe(tls_pki, tls_pki.server, "127.44.0.10", version)
    info = stream.tls
    assert info is not None and info.handshake_completed
    assert info.version == ("TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    assert info.cipher and info.alpn is None and info.error is None
    cert = info.certificate
    assert cert is not None
    assert cert.sha256 == hashlib.sha256(tls_pki.server.der).hexdigest()
    assert cert.subject_cn == "broker.test" and "IP:127.44.0.1" in cert.sans
    assert (cert.key_type, cert.key_bits) == ("RSA", 2048)
    assert not cert.self_signed and not cert.expired
    assert info.chain_length == 1
    assert (info.trusted, info.trust_error) == (False, "unknown-issuer")


async def test_presented_chain_is_counted(tls_pki: Pki) -> None:
    stream = await _observe(tls_pki, tls_pki.chained, "127.44.0.11")
    assert stream.tls is not None and stream.tls.chain_length == 2
    assert stream.tls.certificate is not None
    assert stream.tls.certificate.subject_cn == "chained.test"
    assert (stream.tls.trusted, stream.tls.trust_error) == (False, "unknown-issuer")


@pytest.mark.parametrize(("leaf", "key_type", "curve"), [("ec", "EC", "secp256r1"),
                                                          ("ed25519", "Ed25519", None)])
async def test_key_types(tls_pki: Pki, leaf: str, key_type: str, curve: str | None) -> None:
    stream = await _observe(tls_pki, getattr(tls_pki, leaf), "127.44.0.12")
    assert stream.tls is not None and stream.tls.certificate is not None
    assert stream.tls.certificate.key_type == key_type
    assert stream.tls.certificate.key_curve == curve


async def test_self_signed_expired_not_yet_valid(tls_pki: Pki) -> None:
    selfsigned = await _observe(tls_pki, tls_pki.selfsigned, "127.44.0.13")
    assert selfsigned.tls is not None and selfsigned.tls.certificate is not None
    assert selfsigned.tls.certificate.self_signed
    assert (selfsigned.tls.trusted, selfsigned.tls.trust_error) == (False, "self-signed")
    expired = await _observe(tls_pki, tls_pki.expired, "127.44.0.13")
    assert expired.tls is not None and expired.tls.certificate is not None
    assert expired.tls.certificate.expired and expired.tls.handshake_completed
    notyet = await _observe(tls_pki, tls_pki.notyet, "127.44.0.13")
    assert notyet.tls is not None and notyet.tls.certificate is not None
    assert notyet.tls.certificate.not_yet_valid


async def test_tls_server_that_speaks_http(tls_pki: Pki) -> None:
    async with _server("127.44.0.14", _http_reply, _server_ctx(tls_pki.server)) as port:
        stream = await _dial("127.44.0.14", port)
        try:
            await stream.send(CONNECT)
            reply = await stream.receive()
        finally:
            await stream.aclose()
    assert reply.startswith(b"HTTP/1.1 400")
    assert stream.tls is not None and stream.tls.handshake_completed
    assert stream.tls.certificate is not None


async def test_mosquitto_tls_listener(tls_pki: Pki, tmp_path: Path) -> None:
    with _mosquitto(tls_pki, tmp_path, "127.44.2.1", leaf=tls_pki.selfsigned,
                    require_certificate=False) as port:
        stream = await _dial("127.44.2.1", port)
        try:
            await stream.send(CONNECT)
            reply = await stream.receive()
        finally:
            await stream.aclose()
    assert reply == b"\x20\x02\x00\x00"  # CONNACK, accepted
    info = stream.tls
    assert info is not None and info.version == "TLSv1.3"
    assert info.certificate is not None and info.certificate.self_signed
    assert info.certificate.sha256 == hashlib.sha256(tls_pki.selfsigned.der).hexdigest()
    assert info.trust_error == "self-signed" and not info.client_certificate_required


# --- client certificate required -------------------------------------------------------------


def _tls12_only() -> TlsOptions:
    opts = TlsOptions()
    opts.context.maximum_version = ssl.TLSVersion.TLSv1_2
    return opts


async def _refused(host: str, port: int, tls: TlsOptions | None = None) -> ProbeError:
    with pytest.raises(ProbeError) as caught:
        stream = await _dial(host, port, tls)
        await stream.aclose()
    return caught.value


@pytest.mark.parametrize("tls12", [True, False], ids=["tls1.2", "tls1.3"])
async def test_mosquitto_requires_client_certificate(tls_pki: Pki, tmp_path: Path,
                                                     tls12: bool) -> None:
    with _mosquitto(tls_pki, tmp_path, "127.44.2.2", leaf=tls_pki.server,
                    require_certificate=True) as port:
        err = await _refused("127.44.2.2", port, _tls12_only() if tls12 else None)
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None
    assert err.tls.client_certificate_required and not err.tls.handshake_completed
    assert err.tls.error
    if not tls12:  # the client saw the server's certificate before the refusal
        assert err.tls.version == "TLSv1.3" and err.tls.certificate is not None


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
async def test_s_server_requires_client_certificate(tls_pki: Pki, flag: str) -> None:
    with _s_server(tls_pki, "127.44.1.1", flag, "-Verify", "1") as port:
        err = await _refused("127.44.1.1", port)
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None and err.tls.client_certificate_required
    assert not err.tls.handshake_completed


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
async def test_optional_client_certificate_is_not_required(tls_pki: Pki, flag: str) -> None:
    with _s_server(tls_pki, "127.44.1.2", flag, "-verify", "1") as port:
        started = time.monotonic()
        stream = await _dial("127.44.1.2", port)
        elapsed = time.monotonic() - started
        await stream.aclose()
    assert stream.tls is not None and stream.tls.handshake_completed
    assert not stream.tls.client_certificate_required
    # The session tickets answer the TLS 1.3 verdict wait at once; how soon is not checked
    # by the clock here (a loaded machine is slow): this bound only catches a hang.
    assert elapsed < 2.0 + HANG  # connect_timeout + verdict wait (at most io_timeout, 2 s)


async def test_late_tls13_alert_on_first_read(tls_pki: Pki, tmp_path: Path) -> None:
    """Without the verdict wait, the alert shows on the first read; the stream turns it
    into a failed handshake (via late_handshake_failure).

    (Had we sent first, the server's kernel would answer our unread bytes with an RST that
    can destroy the alert: that is why dial waits for the verdict itself.)
    """
    with _mosquitto(tls_pki, tmp_path, "127.44.2.3", leaf=tls_pki.server,
                    require_certificate=True) as port:
        try:
            stream = await _dial("127.44.2.3", port, TlsOptions(verdict_timeout=0))
        except ProbeError as early:  # the alert beat us to it: recorded by dial itself
            assert early.tls is not None and early.tls.client_certificate_required
            return
        try:
            await stream.receive()
            pytest.fail("the server accepted a client without a certificate")
        except ProbeError as err:
            assert err.status is Status.HANDSHAKE_ERROR
            late = err.tls
            assert stream.tls is late
        finally:
            await stream.aclose()
    assert late is not None and late.client_certificate_required
    assert not late.handshake_completed and late.certificate is not None


# --- not TLS, or not finishing it ------------------------------------------------------------


async def test_plaintext_server_on_tls_port() -> None:
    async def mqtt_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _http_reply(reader, writer)

    async with _server("127.44.0.20", mqtt_like) as port:
        err = await _refused("127.44.0.20", port)
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None and not err.tls.handshake_completed
    assert err.tls.error and "version" in err.tls.error  # "wrong-version-number"
    assert not err.tls.client_certificate_required


async def test_plaintext_server_that_hangs_up() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    async with _server("127.44.0.21", hang_up) as port:
        err = await _refused("127.44.0.21", port)
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None and err.tls.error and not err.tls.handshake_completed


async def test_reset_mid_handshake() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(10)  # a bit of the ClientHello
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close with SO_LINGER 0: an RST

    async with _server("127.44.0.22", reset) as port:
        err = await _refused("127.44.0.22", port)
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None and not err.tls.handshake_completed
    assert err.tls.error and "reset" in err.tls.error.lower()


async def test_tls_alert_from_server(tls_pki: Pki) -> None:
    # a TLS 1.3-only server and a TLS 1.2-only client: protocol_version alert
    with _s_server(tls_pki, "127.44.1.3", "-tls1_3") as port:
        err = await _refused("127.44.1.3", port, _tls12_only())
    assert err.status is Status.HANDSHAKE_ERROR
    assert err.tls is not None and err.tls.error and "alert" in err.tls.error
    assert not err.tls.client_certificate_required


async def test_tarpit_during_handshake() -> None:
    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(1 << 16):  # swallow the ClientHello, answer nothing
                pass
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async with _server("127.44.0.23", tarpit) as port:
        started = time.monotonic()
        err = await _refused("127.44.0.23", port, TlsOptions(handshake_timeout=1.0))
        elapsed = time.monotonic() - started
    assert err.status is Status.IO_TIMEOUT
    assert err.tls is not None and err.tls.error == "handshake timed out"
    assert 0.9 < elapsed < 1.0 + HANG  # never before the timeout; the upper bound: a hang


def test_openssl_and_mosquitto_present() -> None:
    assert servers.require_binary("openssl")
    assert servers.require_binary("mosquitto", "/usr/sbin/mosquitto")
