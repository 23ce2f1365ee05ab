"""Real servers for the protocol-depth tests (issue 12), all on 127.63.0.0/16.

* :func:`start_mosquitto_ws`: Mosquitto with a plain MQTT listener and a ``websockets``
  listener (the Debian build has libwebsockets inside; Mosquitto 2.0.11 refuses to start
  with a websockets listener alone, so a plain one always comes with it).
* :func:`start_amqtt_ws`: amqtt with a tcp and a ``ws`` listener, its ``$SYS`` plugin on.
* :func:`start_rabbitmq_plugins`: a RabbitMQ node of its own with the MQTT, Web MQTT and
  AMQP 1.0 plugins (``tests/servers.py`` starts the TLS node the same way).
* :func:`start_proton`: a bare Qpid Proton container (Debian's ``python3-qpid-proton``,
  run by the system Python): a real AMQP 1.0 engine offering SASL ANONYMOUS.
* Decoys for WebSocket probing: HTTP answers, a WebSocket echo server, a server of another
  subprotocol, one that upgrades and closes, an MQTT broker that streams ``$SYS`` forever.

Every helper returns an object with ``host``, ``port`` and ``stop()`` (see tests/servers.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.servers import (
    AddressPool,
    DecoyServer,
    Handler,
    ServerProcess,
    _free_port,
    _spawn,
    require_binary,
)

__all__ = [
    "POOL",
    "RabbitNode",
    "endless_sys",
    "http_answer",
    "start_amqtt_ws",
    "start_mosquitto_ws",
    "start_proton",
    "start_rabbitmq_plugins",
    "upgrade_then_close",
    "ws_echo",
]

POOL = AddressPool("127.63.0.0/16")

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------- brokers


@dataclass
class WsBroker(ServerProcess):
    """A broker with a plain MQTT listener (``port``) and a WebSocket one (``ws_port``)."""

    ws_port: int = 0


def start_mosquitto_ws(workdir: Path, *, anonymous: bool = True,
                       users: Mapping[str, str] | None = None) -> WsBroker:
    """Mosquitto on a fresh 127.63.x address: MQTT on 1883, WebSocket MQTT on a free port.

    Its libwebsockets listener binds every address whatever the ``listener`` line says, so
    the WebSocket port is one that is free on all of them (never 9001: that would take
    9001 from every other test)."""
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    host, port = POOL.take(1883)
    ws_port = _need_port("0.0.0.0")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    lines = [
        "per_listener_settings false",
        "persistence false",
        f"log_dest file {workdir / 'mosquitto.log'}",
        "log_type all",
        f"user {'root' if os.geteuid() == 0 else os.environ.get('USER', 'root')}",
        f"allow_anonymous {'true' if anonymous else 'false'}",
        f"listener {port} {host}",
        f"listener {ws_port} {host}",
        "protocol websockets",
    ]
    if users:
        import subprocess

        passwd = require_binary("mosquitto_passwd")
        password_file = workdir / "passwd"
        for index, (name, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run([passwd, "-b", *create, str(password_file), name, password],
                           check=True, capture_output=True)
        lines.append(f"password_file {password_file}")
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    proc = _spawn([binary, "-c", str(config), "-v"], workdir, host, port)
    broker = WsBroker(proc.host, proc.port, proc.workdir, proc.process, proc.log, ws_port)
    broker.wait_until_listening()
    _wait_other(broker, ws_port)
    return broker


def start_amqtt_ws(workdir: Path) -> WsBroker:
    """amqtt on a fresh 127.63.x address: MQTT on 1883, ``ws`` on 9001, ``$SYS`` every 5 s."""
    host, port = POOL.take(1883)
    ws_port = 9001 if _free_port(host, 9001) else _need_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    config = {  # JSON is YAML
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}"},
            "ws": {"type": "ws", "bind": f"{host}:{ws_port}"},
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 5},
        },
    }
    path = workdir / "amqtt.yaml"
    path.write_text(json.dumps(config, indent=2))
    proc = _spawn([sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(path)],
                  workdir, host, port)
    broker = WsBroker(proc.host, proc.port, proc.workdir, proc.process, proc.log, ws_port)
    broker.wait_until_listening()
    _wait_other(broker, ws_port)
    return broker


@dataclass
class RabbitNode(ServerProcess):
    """A RabbitMQ node with AMQP (``port``), MQTT, Web MQTT and AMQP 1.0."""

    mqtt_port: int = 0
    web_mqtt_port: int = 0
    tls_port: int = 0


def start_rabbitmq_plugins(workdir: Path, certfile: Path | None = None,
                           keyfile: Path | None = None) -> RabbitNode:
    """A RabbitMQ node of its own: AMQP 0-9-1 and 1.0 on 5672, MQTT on 1883, Web MQTT on
    15675 (path ``/ws``, its default), anonymous MQTT allowed (as the guest user, which
    RabbitMQ lets in from loopback addresses only); with a certificate, AMQPS on 9104 (a
    port with no default, for the TLS retry). Starts in 10-20 s."""
    require_binary("rabbitmq-server", "/usr/sbin/rabbitmq-server")
    script = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not os.access(script, os.X_OK):
        script = require_binary("rabbitmq-server")
    host, port = POOL.take(5672)
    mqtt_port = 1883 if _free_port(host, 1883) else _need_port(host)
    web_port = 15675 if _free_port(host, 15675) else _need_port(host)
    tls_port = 9104 if _free_port(host, 9104) else _need_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    dist_port = _need_port("127.0.0.1")
    config = textwrap.dedent(f"""\
        listeners.tcp.default = {host}:{port}
        mqtt.listeners.tcp.default = {host}:{mqtt_port}
        mqtt.allow_anonymous = true
        web_mqtt.tcp.ip = {host}
        web_mqtt.tcp.port = {web_port}
        log.console = false
        """)
    if certfile is not None and keyfile is not None:
        config += textwrap.dedent(f"""\
            listeners.ssl.default = {host}:{tls_port}
            ssl_options.certfile = {certfile}
            ssl_options.keyfile = {keyfile}
            ssl_options.verify = verify_none
            ssl_options.fail_if_no_peer_cert = false
            """)
    (workdir / "rabbitmq.conf").write_text(config)
    (workdir / "enabled_plugins").write_text(
        "[rabbitmq_mqtt,rabbitmq_web_mqtt,rabbitmq_amqp1_0].\n")
    env = {
        "HOME": str(workdir),
        "RABBITMQ_NODENAME": f"bsproto{os.getpid()}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": host,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(workdir / "plugins-expand"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        "ERL_CRASH_DUMP": str(workdir / "erl_crash.dump"),
    }
    proc = _spawn([script], workdir, host, port, env)
    node = RabbitNode(proc.host, proc.port, proc.workdir, proc.process, proc.log,
                      mqtt_port, web_port, tls_port if certfile is not None else 0)
    node.wait_until_listening(timeout=90)
    _wait_other(node, mqtt_port, 60)
    _wait_other(node, web_port, 60)
    if node.tls_port:
        _wait_other(node, node.tls_port, 60)
    return node


def start_proton(workdir: Path) -> ServerProcess:
    """A bare Qpid Proton container listening on 127.63.x:5672 (AMQP 1.0, SASL ANONYMOUS).

    Runs under the system Python, which has Debian's ``python3-qpid-proton``."""
    python = "/usr/bin/python3"
    host, port = POOL.take(5672)
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "proton_server.py"
    script.write_text(textwrap.dedent(f"""\
        import ipaddress
        from proton.handlers import MessagingHandler
        from proton.reactor import Container
        assert ipaddress.IPv4Address({host!r}).is_loopback

        class Listen(MessagingHandler):
            def on_start(self, event):
                event.container.listen("{host}:{port}")

        Container(Listen()).run()
        """))
    proc = _spawn([python, str(script)], workdir, host, port)
    proc.wait_until_listening()
    return proc


def _need_port(host: str) -> int:
    found = _free_port(host, 0)
    assert found is not None
    return found


def _wait_other(proc: ServerProcess, port: int, timeout: float = 30.0) -> None:
    from tests.servers import ServerStartError, wait_for_port

    try:
        wait_for_port(proc.host, port, timeout, proc.alive, proc.log_tail)
    except ServerStartError:
        proc.stop()
        raise


# --------------------------------------------------------------------------- decoys


async def _read_request(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """Read one HTTP request head; its headers (lower-case names), or None if not HTTP."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {"_request": lines[0]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if value:
            headers[name.strip().lower()] = value.strip()
    return headers


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()


def http_answer(status: str = "404 Not Found", server: str = "nginx/1.22.1") -> Handler:
    """An HTTP server that answers every request with ``status``, keep-alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await _read_request(reader) is not None:
            body = b"<html>hello</html>\n"
            writer.write(f"HTTP/1.1 {status}\r\nServer: {server}\r\nContent-Type: text/html\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()

    return handle


def _upgrade(headers: dict[str, str], subprotocol: str | None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {_accept_key(headers.get('sec-websocket-key', ''))}",
             "Server: decoy-ws/1.0"]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (masked): ``(opcode, payload)``."""
    head = await reader.readexactly(2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(length)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _frame(opcode: int, payload: bytes) -> bytes:
    """One server frame (unmasked, FIN set)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def ws_echo(subprotocol: str | None = "mqtt") -> Handler:
    """A WebSocket echo server: upgrades (naming ``subprotocol``, or none), echoes frames."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await _read_request(reader)
        if headers is None:
            return
        writer.write(_upgrade(headers, subprotocol))
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                opcode, payload = await _read_frame(reader)
                writer.write(_frame(opcode, payload))
                await writer.drain()
                if opcode == 8:
                    return

    return handle


def upgrade_then_close() -> Handler:
    """A proxy that answers 101 Switching Protocols and closes at once."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await _read_request(reader)
        if headers is not None:
            writer.write(_upgrade(headers, "mqtt"))
            await writer.drain()

    return handle


def endless_sys(over_websocket: bool = False, publish_first: bool = True) -> Handler:
    """An MQTT 3.1.1 "broker" that accepts anyone, then streams PUBLISH packets on
    ``$SYS/...`` topics without end (and never the version), over TCP or a WebSocket."""
    connack = b"\x20\x02\x00\x00"

    def publish(i: int) -> bytes:
        topic = f"$SYS/broker/load/messages/{i}".encode()
        payload = b"x" * 200
        body = len(topic).to_bytes(2, "big") + topic + payload
        return b"\x30" + _varint(len(body)) + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if over_websocket:
            headers = await _read_request(reader)
            if headers is None:
                return
            writer.write(_upgrade(headers, "mqtt"))
            await _read_frame(reader)
            send = lambda data: writer.write(_frame(2, data))  # noqa: E731
        else:
            await reader.read(4096)
            send = writer.write
        send(connack)
        i = 0
        while True:
            send(publish(i))
            i += 1
            await writer.drain()
            await asyncio.sleep(0.001)

    return handle


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def start_decoy(handler: Handler, port: int) -> DecoyServer:
    """A decoy on a fresh 127.63.x address."""
    host, port = POOL.take(port)
    return DecoyServer(handler, host, port)
