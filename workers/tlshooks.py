"""The two private CPython hooks TLS observation needs, and the self-check that proves them.

Python's ``ssl`` has no public way, on 3.11, to see

* the whole chain a server sent: ``SSLObject.get_unverified_chain`` is public from 3.13;
  before that only the private ``_sslobj`` has it (:func:`peer_chain`);
* a CertificateRequest, or which alert a server sent: only ``SSLContext._msg_callback``,
  CPython's debugging hook (present since 3.8, private), shows handshake messages
  (:class:`HandshakeWatch`, :func:`install_watch`).

Were either to vanish or change, the scan would go on silently poorer: chains of length 1,
and no ``client_certificate_required``. :func:`check_hooks` therefore makes one real TLS
handshake in memory, against a server that asks for a client certificate and sends a
two-certificate chain, and raises :class:`TlsSelfCheckError` (one line) unless both hooks
saw what was sent. ``workers.transport.TlsOptions`` runs it once per process, so a scan or
a worker fails at start rather than mid-sweep.

Message types are compared as RFC 8446 numbers, not through CPython's private enums.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import platform
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "HandshakeWatch",
    "TlsSelfCheckError",
    "check_hooks",
    "check_hooks_once",
    "install_watch",
    "peer_chain",
    "watching",
]

CALLBACK_ATTRIBUTE = "_msg_callback"
CHAIN_METHOD = "get_unverified_chain"

# RFC 8446 content and handshake message types; 0x100 is CPython's pseudo type for a
# record header.
_ALERT, _HANDSHAKE, _HEADER = 21, 22, 0x100
_CERTIFICATE_REQUEST, _FINISHED = 13, 20

# Alerts a server sends when the client certificate it asked for is missing: OpenSSL sends
# handshake_failure (TLS 1.2) or certificate_required (TLS 1.3); other stacks send these.
_NO_CERT_ALERTS = frozenset({"certificate-required", "handshake-failure", "bad-certificate",
                             "certificate-unknown", "unsupported-certificate",
                             "access-denied", "unknown-ca"})


class TlsSelfCheckError(RuntimeError):
    """A private ``ssl`` hook does not work on this Python; the message is one line."""


# --- the chain the server sent ---------------------------------------------------------------


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, *,
               method: str = CHAIN_METHOD) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER.

    Python 3.11 has the full presented chain only on the private ``_sslobj``
    (``get_unverified_chain``, public from 3.13); otherwise the leaf alone.

    :param method: the name of the chain getter (the self-check's seam).
    """
    if ssl_object is None:
        return []
    for owner in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(owner, method, None)
        if getter is None:
            continue
        try:
            chain = getter()
        except Exception:
            continue
        if chain:
            out: list[bytes] = []
            for item in chain:
                if isinstance(item, bytes):  # 3.13: DER already
                    out.append(item)
                else:  # 3.11/3.12: _ssl.Certificate, PEM by default
                    out.append(ssl.PEM_cert_to_DER_cert(item.public_bytes()))
            return out
    try:
        leaf = ssl_object.getpeercert(binary_form=True)
    except Exception:
        return []
    return [leaf] if leaf else []


# --- handshake messages ----------------------------------------------------------------------


@dataclass
class HandshakeWatch:
    """Per-connection notes taken by OpenSSL's message callback (see :func:`install_watch`).

    :ivar certificate_requested: the server sent a CertificateRequest.
    :ivar alert: the first fatal alert the server sent, e.g. ``"certificate-required"``.
    :ivar client_finished: we sent our Finished (the client's side of the handshake is done).
    :ivar answered: set once the server sent anything after our Finished (a session ticket,
        an alert, data): in TLS 1.3 that is when a refused client certificate shows.
    """

    certificate_requested: bool = False
    alert: str | None = None
    client_finished: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def refused_for_certificate(self) -> bool:
        """The server asked for a client certificate and then refused the handshake."""
        return self.certificate_requested and (self.alert is None
                                               or self.alert in _NO_CERT_ALERTS)


_WATCH: contextvars.ContextVar[HandshakeWatch | None] = contextvars.ContextVar(
    "brokerscan_tls_watch", default=None)


def _on_message(conn: object, direction: str, version: object, content_type: object,
                msg_type: object, data: bytes) -> None:
    # Runs inside OpenSSL calls made by asyncio's SSL protocol; those run in a copy of the
    # context of the task that opened the connection, where watching() set the watch.
    watch = _WATCH.get()
    if watch is None:
        return
    if direction == "write":
        if content_type == _HANDSHAKE and msg_type == _FINISHED:
            watch.client_finished = True
        return
    if content_type == _ALERT:
        name = getattr(msg_type, "name", None)
        text = name.lower().replace("_", "-") if isinstance(name, str) else f"alert-{msg_type}"
        # close_notify and user_canceled (warning level) end a connection, not a handshake.
        fatal = data[:1] == b"\x02" and text not in ("close-notify", "user-canceled")
        if fatal and watch.alert is None:
            watch.alert = text
        watch.answered.set()
    elif content_type == _HANDSHAKE:
        if msg_type == _CERTIFICATE_REQUEST:
            watch.certificate_requested = True
        elif watch.client_finished:
            watch.answered.set()
    elif watch.client_finished and content_type != _HEADER:
        watch.answered.set()


def install_watch(context: ssl.SSLContext, *, attribute: str = CALLBACK_ATTRIBUTE) -> bool:
    """Let :class:`HandshakeWatch` see this context's handshakes.

    Sets ``SSLContext._msg_callback`` (CPython's debugging hook, private). Setting it can
    succeed and still do nothing (an ``SSLContext`` takes any attribute): only
    :func:`check_hooks` tells.

    :param attribute: the hook's name (the self-check's seam).
    :returns: False if the context refused the attribute.
    """
    try:
        setattr(context, attribute, _on_message)
    except (AttributeError, TypeError):
        return False
    return True


@contextlib.contextmanager
def watching() -> Iterator[HandshakeWatch]:
    """Watch the TLS connections opened inside this block (in this task)."""
    watch = HandshakeWatch()
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


# --- the self-check --------------------------------------------------------------------------


def _issue(cn: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey,
           issuer: str, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


def _server_context(directory: Path) -> tuple[ssl.SSLContext, list[bytes]]:
    """A server that asks for a client certificate and sends leaf + CA; the DER it sends."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _issue("brokerscan self-check CA", ca_key, ca_key, "brokerscan self-check CA", True)
    leaf = _issue("self-check.invalid", leaf_key, ca_key, "brokerscan self-check CA", False)
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca)))
    key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    context.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    context.verify_mode = ssl.CERT_OPTIONAL  # ask, and finish the handshake without one
    return context, [c.public_bytes(serialization.Encoding.DER) for c in (leaf, ca)]


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, c_in: ssl.MemoryBIO,
               c_out: ssl.MemoryBIO, s_in: ssl.MemoryBIO, s_out: ssl.MemoryBIO) -> None:
    done = [False, False]
    for _ in range(20):  # a TLS 1.3 handshake takes three flights
        for index, (side, out, peer_in) in enumerate(((client, c_out, s_in),
                                                      (server, s_out, c_in))):
            if not done[index]:
                try:
                    side.do_handshake()
                    done[index] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            return
    raise TlsSelfCheckError("TLS self-check: the in-memory handshake did not finish")


def check_hooks(*, attribute: str = CALLBACK_ATTRIBUTE, method: str = CHAIN_METHOD) -> None:
    """Prove that both private hooks work, with one real handshake in memory (~10 ms).

    :param attribute: the message-callback attribute to install (a seam for tests).
    :param method: the chain getter to read the chain with (a seam for tests).
    :raises TlsSelfCheckError: with one line saying which hook failed and what it costs.
    """
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    installed = install_watch(client_context, attribute=attribute)
    with tempfile.TemporaryDirectory(prefix="brokerscan-tls-check-") as tmp:
        server_context, sent = _server_context(Path(tmp))
    bios = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c_in, c_out, s_in, s_out = bios
    client = client_context.wrap_bio(c_in, c_out, server_side=False)
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    with watching() as watch:
        try:
            _handshake(client, server, c_in, c_out, s_in, s_out)
        except ssl.SSLError as exc:
            raise TlsSelfCheckError(f"TLS self-check: in-memory handshake failed: {exc}") from None
    if not installed or not watch.certificate_requested:
        raise TlsSelfCheckError(
            f"TLS self-check: SSLContext.{attribute} did not report the server's "
            f"CertificateRequest on Python {_python()}; client-certificate detection "
            "would silently stop")
    chain = peer_chain(client, method=method)
    if chain != sent:
        raise TlsSelfCheckError(
            f"TLS self-check: {method} gave {len(chain)} of the {len(sent)} certificates "
            f"the server sent on Python {_python()}; chains would be recorded as leaf only")


def _python() -> str:
    return platform.python_version()


@cache
def check_hooks_once() -> None:
    """:func:`check_hooks`, once per process (a failure is not cached: it raises again)."""
    check_hooks()
