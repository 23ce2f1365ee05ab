"""``brokerscan demo``: start a small zoo of brokers on 127.77.0.x, scan it, print the report,
then serve the web dashboard on the results until Ctrl-C (``--no-serve``: stop after the
report).

Real Mosquitto is used where it is installed (anonymous, authenticated and TLS listeners);
brokerscan's own minimal servers (:mod:`brokerscan.cli.minibrokers`) stand in otherwise, and
always provide the AMQP 0-9-1 and 1.0 servers and an HTTP server on an MQTT port. A
RabbitMQ or Mosquitto already listening on 127.0.0.1 is scanned too. The results go to an
embedded store of the demo's own (a temporary SQLite file, gone when the demo ends), which
``brokerscan serve --no-auth`` answers on 127.0.0.1 (port 8080, or a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from brokerscan.cli import minibrokers as mini
from brokerscan.cli import serve
from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.cli.scan import (
    ScanPlan,
    ScanRun,
    open_output,
    print_report,
    run_scan,
    want_progress,
)
from brokerscan.settings import Settings
from scheduler.blocklist import IPSet
from scheduler.ports import parse_ports
from storage.sink import StoreSink
from storage.store import StoreError, open_store
from workers.engine import ScanConfig
from workers.probes.base import ProbeOptions
from workers.transport import Scope

__all__ = ["COMMANDS", "DEMO_NET", "add_commands", "run"]

COMMANDS = frozenset({"demo"})

DEMO_NET = "127.77.0.0/28"
_H = "127.77.0."


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    demo = sub.add_parser("demo", help="start local brokers on 127.x, scan them, report")
    demo.add_argument("--format", choices=("text", "json"), default="text")
    demo.add_argument("-o", "--output", metavar="FILE", help="also write results as JSONL")
    demo.add_argument("--no-serve", action="store_true",
                      help="stop after the report (default: serve the dashboard on the "
                           "results until Ctrl-C)")
    demo.add_argument("--port", type=int, default=DASHBOARD_PORT,
                      help="the dashboard's port on 127.0.0.1, if free (default: "
                           "%(default)s; else any free port)")


#: Where the demo's dashboard listens (a free port instead when it is taken).
DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 8080


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``demo``: start the brokers, scan them into a store of the demo's own, print the
    report, stop the brokers; then serve the dashboard on the store until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="brokerscan-demo-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'demo.db'}"
        _scan_zoo(args, settings, Path(tmp), url)
        if args.no_serve:
            return 0
        port = args.port if _free(DASHBOARD_HOST, args.port) else 0
        print("brokerscan demo: the dashboard of these results follows (Ctrl-C to stop; "
              "--no-serve to skip it)", file=sys.stderr)
        return serve.run(serve.arguments("--store", url, "--host", DASHBOARD_HOST,
                                         "--port", str(port), "--no-auth",
                                         "--log-level", "warning"), settings)


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _scan_zoo(args: argparse.Namespace, settings: Settings, tmp: Path, url: str) -> None:
    """Start the brokers, scan them into the store at *url*, print the report, stop them."""
    with ExitStack() as stack:
        cert, key = _self_signed(tmp)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        servers: list[mini.MiniServer] = [
            mini.MiniServer(_H + "4", 5672, mini.amqp091("brokerscan-demo", "1.0")),
            mini.MiniServer(_H + "5", 5671, mini.amqp091("brokerscan-demo", "1.0"), tls),
            mini.MiniServer(_H + "6", 1883, mini.http()),
            mini.MiniServer(_H + "7", 5672, mini.amqp10_sasl()),
        ]
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if mosquitto:
            stack.callback(_start_mosquitto(mosquitto, tmp, cert, key))
            kind = "Mosquitto"
        else:
            servers += [mini.MiniServer(_H + "1", 1883, mini.mqtt(0)),
                        mini.MiniServer(_H + "2", 1883, mini.mqtt(5)),
                        mini.MiniServer(_H + "3", 8883, mini.mqtt(0), tls)]
            kind = "brokerscan's minimal MQTT servers (Mosquitto is not installed)"
        thread = mini.ServerThread(servers)
        thread.start()
        stack.callback(thread.stop)
        for host, port in ((_H + "1", 1883), (_H + "2", 1883), (_H + "3", 8883)):
            _wait_port(host, port)

        ips = IPSet.from_networks([DEMO_NET])
        extra = [p for p in (1883, 5672) if _answers("127.0.0.1", p)]
        if extra:
            ips = ips.union(IPSet.from_networks(["127.0.0.1/32"]))
        print(f"brokerscan demo: MQTT by {kind}; AMQP 0-9-1 and 1.0 and an HTTP decoy by "
              f"brokerscan; scanning {DEMO_NET}"
              + (" and 127.0.0.1 (local services)" if extra else ""), file=sys.stderr)
        plan = ScanPlan(ips, parse_ports("1883,8883,5672,5671"), [])
        config = ScanConfig(connect_timeout=2.0, io_timeout=2.0, total_timeout=8.0,
                            concurrency=100, rate=0,
                            probe=ProbeOptions(client_id_prefix=settings.client_id_prefix))
        out = open_output(args.output)
        try:
            run = asyncio.run(_scan_into(url, plan, config, out))
        finally:
            if out is not None and out is not sys.stdout:
                out.close()
    print_report(args.format, run.report, run.stats,
                  sys.stderr if out is sys.stdout else sys.stdout)


async def _scan_into(url: str, plan: ScanPlan, config: ScanConfig, out: IO[str] | None,
                     ) -> ScanRun:
    """Scan, writing results to *out* and to the store at *url* (one local scan)."""
    started = dt.datetime.now(dt.UTC)
    config = dataclasses.replace(
        config, sweep_started_at=started,
        sweep_id=f"scan-{started:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    try:
        store = await open_store(url)
    except StoreError as exc:
        raise CliError(f"store: {exc}", EXIT_UNAVAILABLE) from None
    try:
        return await run_scan(plan, config, Scope(["127.0.0.0/8"]), out,
                              progress=want_progress("auto"), store=StoreSink(store))
    finally:
        await store.close()


def _start_mosquitto(binary: str, tmp: Path, cert: str, key: str) -> Callable[[], None]:
    conf = tmp / "mosquitto.conf"
    conf.write_text("\n".join([
        "per_listener_settings true",
        "persistence false",
        f"log_dest file {tmp / 'mosquitto.log'}",
        *(["user root"] if _is_root() else []),
        f"listener 1883 {_H}1", "allow_anonymous true",
        f"listener 1883 {_H}2", "allow_anonymous false",
        f"listener 8883 {_H}3", "allow_anonymous true", f"certfile {cert}", f"keyfile {key}",
        "",
    ]))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return stop


def _is_root() -> bool:
    return os.geteuid() == 0


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"demo server {host}:{port} did not start")


def _self_signed(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "brokerscan-demo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "demo.pem", directory / "demo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
