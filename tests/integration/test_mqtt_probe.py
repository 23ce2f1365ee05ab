"""The MQTT probe end to end, through the real transport, against real brokers on loopback.

Mosquitto and amqtt run as processes started here (127.42.1.x, 127.42.2.x); RabbitMQ is the
machine's service at 127.0.0.1:5672; scripted servers (127.42.3.x) replay recorded bytes or
misbehave. Every process and server is stopped in teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from brokerscan.model import MqttAttempt, MqttProperties, Protocol, Status
from tests import servers
from tests.waiting import HANG
from workers.probes.base import ProbeOptions, ProbeOutcome
from workers.probes.mqtt import make_client_id, probe_mqtt
from workers.transport import ProbeError, Scope, dial

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "mqtt"
SCOPE = Scope(["127.0.0.0/8"])


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def _address(third: int, port: int) -> str:
    """A 127.42.<third>.x address where ``port`` is free (steps over leftovers)."""
    for last in range(1, 255):
        ip = f"127.42.{third}.{last}"
        if _bindable(ip, port):
            return ip
    raise RuntimeError(f"no free address in 127.42.{third}.0/24 for port {port}")


@contextlib.contextmanager
def _process(args: list[str], ip: str, port: int, timeout: float) -> Iterator[tuple[str, int]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers.wait_for_port(ip, port, timeout, alive=lambda: proc.poll() is None)
        yield ip, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _mosquitto(tmp: Path, *, anonymous: bool) -> contextlib.AbstractContextManager[
        tuple[str, int]]:
    tmp.chmod(0o755)
    ip = _address(1 if anonymous else 2, 1883)
    lines = [f"listener 1883 {ip}", f"allow_anonymous {str(anonymous).lower()}",
             "persistence false", "log_dest none",
             # as root Mosquitto would become "mosquitto", who cannot read our files
             f"user {'root' if os.geteuid() == 0 else getpass.getuser()}"]
    if not anonymous:
        passwd = tmp / "passwd"
        subprocess.run([servers.require_binary("mosquitto_passwd"), "-c", "-b", str(passwd),
                        "scanner", "secret"],
                       check=True, capture_output=True)
        passwd.chmod(0o600)
        lines.append(f"password_file {passwd}")
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    mosquitto = servers.require_binary("mosquitto", "/usr/sbin/mosquitto")
    return _process([mosquitto, "-c", str(conf)], ip, 1883, 10)


@pytest.fixture(scope="module")
def mq_anonymous(tmp_path_factory):
    with _mosquitto(tmp_path_factory.mktemp("mosq-anon"), anonymous=True) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def mq_denied(tmp_path_factory):
    with _mosquitto(tmp_path_factory.mktemp("mosq-denied"), anonymous=False) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def mq_amqtt(tmp_path_factory):
    servers.require_amqtt()
    ip = _address(4, 1883)
    conf = tmp_path_factory.mktemp("amqtt") / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: {ip}:1883\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n")
    broker = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
    with _process(broker, ip, 1883, 30) as endpoint:
        yield endpoint


def _probe(endpoint: tuple[str, int], options: ProbeOptions | None = None,
           io_timeout: float = 3.0) -> ProbeOutcome:
    ip, port = endpoint

    async def dialer():
        return await dial(ip, port, scope=SCOPE, connect_timeout=2.0, io_timeout=io_timeout)

    async def run() -> ProbeOutcome:
        return await probe_mqtt(dialer, options or ProbeOptions())

    return asyncio.run(run())


# -- real brokers ------------------------------------------------------------------------


def test_mosquitto_anonymous_5(mq_anonymous):
    outcome = _probe(mq_anonymous)
    assert outcome.status is Status.SUCCESS and outcome.protocol is Protocol.MQTT
    mqtt = outcome.mqtt
    assert mqtt is not None
    assert (mqtt.protocol_level, mqtt.return_code, mqtt.return_code_name) == (5, 0, "accepted")
    assert mqtt.anonymous is True and mqtt.session_present is False
    assert mqtt.accepted_levels == [5] and mqtt.refused_levels == []
    assert mqtt.attempts == [MqttAttempt(protocol_level=5, answer="connack", return_code=0)]
    assert mqtt.properties == MqttProperties(receive_maximum=20, topic_alias_maximum=10)
    assert mqtt.client_id is not None and mqtt.client_id.startswith("brokerscan-")
    assert len(mqtt.client_id) == 23
    assert outcome.raw == (FIXTURES / "mosquitto-2.0.11-connack-5-anonymous.bin").read_bytes()


def test_mosquitto_anonymous_311(mq_anonymous):
    outcome = _probe(mq_anonymous, ProbeOptions(mqtt_levels=(4, 3)))
    assert outcome.mqtt is not None
    assert outcome.mqtt.protocol_level == 4 and outcome.mqtt.anonymous is True
    assert outcome.mqtt.properties is None
    assert outcome.raw == b"\x20\x02\x00\x00"


def test_mosquitto_all_levels(mq_anonymous):
    outcome = _probe(mq_anonymous, ProbeOptions(mqtt_all_levels=True))
    mqtt = outcome.mqtt
    assert mqtt is not None
    assert mqtt.accepted_levels == [5, 4, 3] and mqtt.refused_levels == []
    assert [a.protocol_level for a in mqtt.attempts] == [5, 4, 3]
    assert mqtt.protocol_level == 5  # the first definitive answer is the one reported


def test_mosquitto_denied(mq_denied):
    outcome = _probe(mq_denied)
    mqtt = outcome.mqtt
    assert outcome.status is Status.SUCCESS and mqtt is not None
    assert (mqtt.protocol_level, mqtt.return_code, mqtt.return_code_name) == (
        5, 0x87, "not-authorized")
    assert mqtt.anonymous is False and mqtt.accepted_levels == []
    assert len(mqtt.attempts) == 1  # a definitive answer: no other level tried


def test_mosquitto_denied_311(mq_denied):
    outcome = _probe(mq_denied, ProbeOptions(mqtt_levels=(4,)))
    assert outcome.mqtt is not None
    assert (outcome.mqtt.return_code, outcome.mqtt.anonymous) == (5, False)


def test_amqtt_falls_back_from_5_to_311(mq_amqtt):
    outcome = _probe(mq_amqtt)
    mqtt = outcome.mqtt
    assert outcome.status is Status.SUCCESS and mqtt is not None
    assert mqtt.attempts == [MqttAttempt(protocol_level=5, answer="connack", return_code=1),
                             MqttAttempt(protocol_level=4, answer="connack", return_code=0)]
    assert mqtt.refused_levels == [5] and mqtt.accepted_levels == [4]
    assert (mqtt.protocol_level, mqtt.anonymous) == (4, True)


def test_amqtt_all_levels_records_the_31_close(mq_amqtt):
    outcome = _probe(mq_amqtt, ProbeOptions(mqtt_all_levels=True))
    mqtt = outcome.mqtt
    assert mqtt is not None and mqtt.accepted_levels == [4]
    assert mqtt.attempts[2].protocol_level == 3
    assert mqtt.attempts[2].answer in ("closed", "reset")


def test_rabbitmq_amqp_port_is_amqp():
    outcome = _probe(("127.0.0.1", 5672))
    assert outcome.status is Status.SUCCESS and outcome.protocol is Protocol.AMQP
    assert outcome.amqp is not None and outcome.amqp.family == "0-9-1"
    assert outcome.amqp.protocol_header == "AMQP 0 0 9 1"
    assert outcome.raw == b"AMQP\x00\x00\x09\x01" and outcome.mqtt is None


# -- scripted servers --------------------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _reply(data: bytes, *, chunk: int = 0, close: bool = True) -> Behaviour:
    async def behave(reader, writer):
        await reader.read(4096)  # the CONNECT
        parts = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for part in parts:
            writer.write(part)
            await writer.drain()
            if chunk:
                await asyncio.sleep(0.02)  # the scenario: the reply trickles in pieces
        if not close:
            await reader.read()  # until the client leaves
    return behave


async def _close_at_once(reader, writer):
    await reader.read(4096)  # read the CONNECT, then FIN without a word


async def _close_unread(reader, writer):
    return None  # our CONNECT unread: the kernel answers it with RST


async def _silent(reader, writer):
    await reader.read()


async def _echo(reader, writer):
    writer.write(await reader.read(4096))
    await writer.drain()
    await reader.read()


def _scripted(*behaviours: Behaviour, options: ProbeOptions | None = None,
              io_timeout: float = 2.0) -> tuple[ProbeOutcome | ProbeError, int]:
    """Probe a server whose n-th connection runs ``behaviours[n]`` (the last one repeats).

    :returns: the outcome or the ProbeError raised, and how many connections were made.
    """
    count = [0]

    async def run() -> ProbeOutcome | ProbeError:
        async def handle(reader, writer):
            behaviour = behaviours[min(count[0], len(behaviours) - 1)]
            count[0] += 1
            try:
                await behaviour(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        ip = _address(3, 18830)
        server = await asyncio.start_server(handle, ip, 18830)
        try:
            async def dialer():
                return await dial(ip, 18830, scope=SCOPE, connect_timeout=2.0,
                                  io_timeout=io_timeout)
            try:
                return await probe_mqtt(dialer, options or ProbeOptions())
            except ProbeError as exc:
                return exc
        finally:
            server.close()
            await server.wait_closed()

    result = asyncio.run(run())
    return result, count[0]


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_replayed_denied_5_connack():
    outcome, conns = _scripted(_reply(_fixture("mosquitto-2.0.11-connack-5-denied.bin")))
    assert isinstance(outcome, ProbeOutcome) and outcome.mqtt is not None
    assert outcome.mqtt.return_code == 0x87 and outcome.mqtt.anonymous is False
    assert conns == 1


def test_replay_byte_by_byte():
    data = _fixture("mosquitto-2.0.11-connack-5-anonymous.bin")
    outcome, _ = _scripted(_reply(data, chunk=1, close=False))
    assert isinstance(outcome, ProbeOutcome) and outcome.raw == data
    assert outcome.mqtt is not None and outcome.mqtt.properties is not None


def test_garbage_is_a_protocol_error():
    outcome, conns = _scripted(_reply(b"\x00\xffgarbage"))
    assert isinstance(outcome, ProbeOutcome)
    assert outcome.status is Status.PROTOCOL_ERROR and outcome.protocol is None
    assert outcome.raw.startswith(b"\x00\xff") and outcome.error is not None
    assert outcome.error.startswith("not mqtt") and conns == 1


def test_http_is_a_protocol_error():
    http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    outcome, _ = _scripted(_reply(http))
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert outcome.raw == http


def test_raw_is_capped():
    outcome, _ = _scripted(_reply(b"\x00" * 10000, close=False),
                           options=ProbeOptions(max_reply_bytes=64))
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert 0 < len(outcome.raw) <= 64


def test_echo_is_not_mqtt():
    outcome, _ = _scripted(_echo)
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert outcome.error is not None and "packet type 1" in outcome.error


def test_huge_length_is_refused_without_waiting():
    started = time.monotonic()
    io_timeout = 60.0  # waiting for more bytes would take this long
    outcome, _ = _scripted(_reply(b"\x20\xff\xff\xff\x7f", close=False), io_timeout=io_timeout)
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert time.monotonic() - started < HANG < io_timeout  # a hang bound, not a speed test


def test_close_at_once_on_every_level():
    outcome, conns = _scripted(_close_at_once)
    assert isinstance(outcome, ProbeError) and outcome.status is Status.CONNECTION_CLOSED
    assert conns == 3


def test_close_without_reading_on_the_first_attempt_propagates():
    outcome, conns = _scripted(_close_unread)
    assert isinstance(outcome, ProbeError)
    # RST if our CONNECT landed before the close, FIN (then 3 levels) otherwise
    assert outcome.status in (Status.CONNECTION_RESET, Status.CONNECTION_CLOSED)


def test_never_answers_is_an_io_timeout():
    started = time.monotonic()
    outcome, conns = _scripted(_silent, io_timeout=0.3)
    assert isinstance(outcome, ProbeError) and outcome.status is Status.IO_TIMEOUT
    assert conns == 1 and time.monotonic() - started < 0.3 + HANG  # a hang, not speed


def test_closed_then_accepted_falls_back():
    outcome, conns = _scripted(_close_at_once, _reply(b"\x20\x02\x00\x00"))
    assert isinstance(outcome, ProbeOutcome) and outcome.mqtt is not None
    assert [a.answer for a in outcome.mqtt.attempts] == ["closed", "connack"]
    assert outcome.mqtt.accepted_levels == [4] and conns == 2


def test_refusal_then_timeout_keeps_the_refusal():
    outcome, conns = _scripted(_reply(b"\x20\x03\x00\x84\x00"), _silent, io_timeout=0.3)
    assert isinstance(outcome, ProbeOutcome) and outcome.mqtt is not None
    assert outcome.mqtt.return_code_name == "unsupported-protocol-version"
    assert outcome.mqtt.refused_levels == [5]
    assert [a.answer for a in outcome.mqtt.attempts] == ["connack", "timeout"]
    assert conns == 2  # no third level after a timeout


def test_disconnect_without_connack():
    outcome, conns = _scripted(_reply(b"\xe0\x01\x87"), _reply(b"\xe0\x00"))
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert outcome.protocol is Protocol.MQTT and conns == 3
    assert outcome.raw == b"\xe0\x00" and outcome.error is not None


def test_disconnect_then_garbage_is_still_mqtt():
    # a 5.0-style DISCONNECT answers every level: invalid in 3.1.1, so level 4 stops it
    outcome, conns = _scripted(_reply(b"\xe0\x01\x87"))
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert outcome.protocol is Protocol.MQTT and conns == 2
    assert outcome.raw == b"\xe0\x01\x87"


def test_truncated_reply_then_close():
    outcome, _ = _scripted(_reply(b"\x20\x02\x00"))
    assert isinstance(outcome, ProbeOutcome) and outcome.status is Status.PROTOCOL_ERROR
    assert outcome.raw == b"\x20\x02\x00"


def test_replayed_amqp_header():
    outcome, _ = _scripted(_reply(_fixture("rabbitmq-3.10.8-connack-4-amqp-port.bin"),
                                  chunk=3))
    assert isinstance(outcome, ProbeOutcome) and outcome.protocol is Protocol.AMQP


def test_client_ids_are_random_and_fit_31():
    ids = {make_client_id("brokerscan-") for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 23 for i in ids)
    assert len(make_client_id("a-very-long-identifying-prefix-")) == 23
