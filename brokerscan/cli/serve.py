"""``brokerscan serve``: the REST API (and its docs page) on uvicorn.

The store is opened (read-only for PostgreSQL) and the address bound before the server
starts, so a store that cannot be opened or an address that is taken is one line and exit
1. ``--no-auth`` is for one user on their own machine: it is refused on any address that is
not loopback, and answers only loopback Host names.

The server's limits against hostile clients (docs/api.md, "Limits"): allowed Host names,
the body size, the send timeout, read deadlines for a request's head and body
(:mod:`brokerscan.api.connection`), the idle keep-alive time, connections at once, exports
at once, and ``X-Forwarded-For`` read only from the proxies ``--forwarded-allow-ips``
names.

``--metrics-port`` (or ``BROKERSCAN_METRICS_PORT``) serves ``/metrics``, ``/healthz`` and
``/readyz`` on a port of their own, as every other role does (:mod:`brokerscan.health`;
the API's metrics: :mod:`brokerscan.api.instrument`): no token there, and the API's port
answers no ``/metrics``. Readiness there is the store answering.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from brokerscan.api.app import (
    DEFAULT_BURST,
    DEFAULT_COSTLY_SLOTS,
    DEFAULT_EXPORTS_PER_SERVER,
    DEFAULT_EXPORTS_PER_TOKEN,
    DEFAULT_RATE,
    build_app,
)
from brokerscan.api.connection import protocol_with
from brokerscan.api.guard import DEFAULT_MAX_BODY, DEFAULT_SEND_TIMEOUT, Guard
from brokerscan.api.ratelimit import Admission, Slots
from brokerscan.cli.errors import EXIT_UNAVAILABLE, CliError
from brokerscan.cli.options import add_metrics_option, non_negative, positive_int
from brokerscan.cli.services import pg_check, start_ops_server
from brokerscan.health import Health
from brokerscan.settings import Settings
from storage.db import DatabaseError
from storage.sqlitestore import path_of
from storage.store import StoreError, open_store, store_url

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = frozenset({"serve"})


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``."""
    p = sub.add_parser("serve", help="the REST API (docs at /docs)")
    p.add_argument("--store", metavar="URL", default=None,
                   help="the store to answer from (default: settings, else brokerscan.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on "
                                                       "(default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="default: %(default)s")
    p.add_argument("--no-auth", action="store_true",
                   help="no tokens: every request may do anything (loopback addresses only)")
    p.add_argument("--identity-page", action="store_true",
                   help="also serve, without a token, the scanner's public page at /scanner "
                        "(who scans, why, how to opt out) and its opt-out form")
    p.add_argument("--rate-limit", type=non_negative(float), default=DEFAULT_RATE,
                   metavar="N", help="requests per second per token; 0 = no limit "
                                     "(default: %(default)s)")
    p.add_argument("--burst", type=non_negative(float), default=DEFAULT_BURST, metavar="N",
                   help="requests a token may make at once (default: %(default)s)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"),
                   default="info")
    add_metrics_option(p)
    limits = p.add_argument_group("limits against hostile clients (docs/api.md)")
    limits.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a Host name to answer to (repeat; default: any, or with "
                             "--no-auth loopback names only)")
    limits.add_argument("--forwarded-allow-ips", metavar="ADDRS", default=None,
                        help="comma-separated addresses of the proxies whose "
                             "X-Forwarded-For/-Proto to believe (default: none)")
    limits.add_argument("--max-body", type=positive_int, default=DEFAULT_MAX_BODY,
                        metavar="BYTES", help="largest request body (default: %(default)s)")
    seconds = non_negative(float)
    limits.add_argument("--head-timeout", type=seconds, default=10.0, metavar="S",
                        help="seconds for a request's head to arrive (default: %(default)s)")
    limits.add_argument("--body-timeout", type=seconds, default=10.0, metavar="S",
                        help="seconds a request body may stall (default: %(default)s)")
    limits.add_argument("--keep-alive-timeout", type=seconds, default=5.0, metavar="S",
                        help="seconds an idle connection stays open (default: %(default)s)")
    limits.add_argument("--send-timeout", type=seconds, default=DEFAULT_SEND_TIMEOUT,
                        metavar="S", help="seconds a client may leave an answer unread "
                                          "(default: %(default)s)")
    limits.add_argument("--statement-timeout", type=seconds, default=30.0, metavar="S",
                        help="seconds a store statement may run; 0 = no limit "
                             "(default: %(default)s)")
    limits.add_argument("--max-connections", type=positive_int, default=256, metavar="N",
                        help="connections at once; more get a 503 (default: %(default)s)")
    limits.add_argument("--costly-slots", type=non_negative(int), default=DEFAULT_COSTLY_SLOTS,
                        metavar="N",
                        help="costly requests answered at once (a request whose kind ran "
                             "0.5 s or more lately, or whose token's last one did; the "
                             "rest wait their turn); 0 = no limit (default: every core "
                             "but one, %(default)s here)")
    limits.add_argument("--costly-wait", type=seconds, default=30.0, metavar="S",
                        help="seconds a costly request may wait for its turn; then 503 "
                             "(default: %(default)s)")
    limits.add_argument("--exports-per-token", type=positive_int,
                        default=DEFAULT_EXPORTS_PER_TOKEN, metavar="N",
                        help="exports at once per token (default: %(default)s)")
    limits.add_argument("--exports-per-server", type=positive_int,
                        default=DEFAULT_EXPORTS_PER_SERVER, metavar="N",
                        help="exports at once in all (default: %(default)s)")


def arguments(*argv: str) -> argparse.Namespace:
    """``serve``'s arguments as its own command line gives them, every default included
    (the demo serves through this, so an option added here never leaves it behind)."""
    parser = argparse.ArgumentParser(prog="brokerscan")
    add_commands(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise CliError(f"--port: {port} is not a port (0 to 65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise CliError(f"--host: cannot use {host!r}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                       EXIT_UNAVAILABLE) from None
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``serve`` until interrupted."""
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    if args.no_auth and not _is_loopback(args.host):
        raise CliError(f"--no-auth serves without tokens, so only on a loopback address, "
                       f"not {args.host}")
    url = store_url(settings, args.store)
    if url.startswith("sqlite:"):
        try:
            path = path_of(url)
        except StoreError as exc:
            raise CliError(str(exc)) from None
        if path != ":memory:" and not Path(path).is_file():
            raise CliError(f"no store at {path}: scan first, or name one with --store")
    sock = _bind(args.host, args.port)
    try:
        checks = {"store": pg_check(url)} if url.startswith("postgres") else {}
        ops = start_ops_server(settings, Health("serve", checks=checks))
        try:
            return asyncio.run(_serve(args, settings, url, sock))
        finally:
            if ops is not None:
                ops.stop()
    finally:
        sock.close()


async def _serve(args: argparse.Namespace, settings: Settings, url: str,
                 sock: socket.socket) -> int:
    import uvicorn  # the server is needed only here

    try:
        store = await open_store(url, read_only=True,
                                 statement_timeout=args.statement_timeout or None)
    except (StoreError, DatabaseError) as exc:
        raise CliError(str(exc), EXIT_UNAVAILABLE) from None
    try:
        guard = Guard.of(loopback_only=args.no_auth, hosts=args.allowed_host,
                         max_body=args.max_body, send_timeout=args.send_timeout)
        app = build_app(settings, url, auth=not args.no_auth, rate=args.rate_limit,
                        burst=args.burst, store=store, guard=guard,
                        exports=Slots(args.exports_per_token, args.exports_per_server),
                        admission=Admission(args.costly_slots, patience=args.costly_wait),
                        identity=args.identity_page)
        # A query of MAX_LENGTH characters, percent-encoded, can be 24 KB of URL: more than
        # h11's default 16 KiB for a request head.
        proxies = args.forwarded_allow_ips
        config = uvicorn.Config(app, log_level=args.log_level,
                                proxy_headers=proxies is not None,
                                forwarded_allow_ips=proxies or "",
                                server_header=False, lifespan="on",
                                http=protocol_with(args.head_timeout, args.body_timeout),
                                timeout_keep_alive=int(max(1, args.keep_alive_timeout)),
                                limit_concurrency=args.max_connections,
                                h11_max_incomplete_event_size=64 * 1024)
        stopped_by: list[int] = []

        class Server(uvicorn.Server):
            """uvicorn's server, remembering the signals that stopped it."""

            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                stopped_by.append(sig)
                super().handle_exit(sig, frame)

        server = Server(config)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        sys.stderr.write(f"brokerscan: serving http://{shown}:{port} (the dashboard; API "
                         "docs: /docs)" + (", no tokens (--no-auth)" if args.no_auth else "")
                         + (", the scanner's public page: /scanner" if args.identity_page
                            else "")
                         + "\n")
        sys.stderr.flush()
        await server.serve(sockets=[sock])
    finally:
        await store.close()
    if stopped_by[:1] == [signal.SIGINT]:
        # Ctrl-C: exit 130 as any interrupted command, whether or not asyncio's own
        # SIGINT handler (which uvicorn hands the signal back to) got to cancel us first
        raise KeyboardInterrupt
    return 0
