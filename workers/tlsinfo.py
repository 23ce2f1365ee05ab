"""What a TLS handshake showed: version, cipher, the server's certificate, and trust.

The transport handshakes with verification off (we record, we do not trust). On the event
loop it only reads what the handshake left (:func:`handshake_facts`: version, cipher, ALPN,
the presented chain as DER); describing the leaf and judging trust
(:func:`describe_facts`, trust in :mod:`workers.tlstrust`) is CPU work that a hostile
server can make dearer, so :class:`Describer` runs it on one worker thread, off the loop,
with a deadline. Private ``ssl`` hooks live in :mod:`workers.tlshooks`.

Spec sheet:

* recorded: protocol version, cipher suite, ALPN, the leaf certificate (names, SANs,
  serial, validity, key, signature algorithm, SHA-256 of the DER, self-signed, expired /
  not yet valid at the observation time), the chain length as sent, trusted +
  ``trust_error`` (values in :mod:`workers.tlstrust`, plus ``verdict-timeout`` when the
  description was not ready within :attr:`Describer.timeout`);
* client certificates: the transport uses :class:`~workers.tlshooks.HandshakeWatch` to tell
  "client certificate required" apart from other handshake failures, in TLS 1.2 (alert
  during the handshake) and TLS 1.3 (alert after the client's Finished);
* nothing here opens a socket or fetches anything (no AIA chasing, no OCSP, no CRL).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dh, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, PublicKeyAlgorithmOID

from brokerscan.model import TlsCertificate, TlsInfo
from workers.tlshooks import HandshakeWatch, peer_chain
from workers.tlspath import load_der, signed_by
from workers.tlstrust import trust_of

__all__ = [
    "Describer",
    "HandshakeFacts",
    "describe_certificate",
    "describe_facts",
    "describe_tls",
    "failed_handshake_info",
    "handshake_facts",
    "late_handshake_failure",
]


# --- certificates ------------------------------------------------------------------------


def _name_text(get: object) -> str:
    try:
        return get.rfc4514_string() if isinstance(get, x509.Name) else str(get)
    except Exception:
        return "<unparseable>"


def _subject_cn(cert: x509.Certificate) -> str | None:
    try:
        values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        return None
    if not values:
        return None
    value = values[-1].value  # the most specific CN, as OpenSSL's host check takes it
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _general_name(gn: x509.GeneralName) -> str:
    if isinstance(gn, x509.DNSName):
        return f"DNS:{gn.value}"
    if isinstance(gn, x509.IPAddress):
        return f"IP:{gn.value}"
    if isinstance(gn, x509.UniformResourceIdentifier):
        return f"URI:{gn.value}"
    if isinstance(gn, x509.RFC822Name):
        return f"email:{gn.value}"
    if isinstance(gn, x509.DirectoryName):
        return f"DirName:{_name_text(gn.value)}"
    if isinstance(gn, x509.RegisteredID):
        return f"RID:{gn.value.dotted_string}"
    if isinstance(gn, x509.OtherName):
        return f"othername:{gn.type_id.dotted_string}"
    return str(gn)  # pragma: no cover - the GeneralName union is closed


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except Exception:  # absent, duplicated or malformed: nothing we can list
        return []
    return [_general_name(gn) for gn in ext.value]


def _key(cert: x509.Certificate) -> tuple[str, int | None, str | None]:
    try:
        if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA:
            return "DSA", _dsa_key_size(cert), None
        key = cert.public_key()
    except Exception:  # an algorithm cryptography does not load (GOST, SM2, ...)
        try:
            oid = cert.public_key_algorithm_oid
            return (oid._name if oid._name != "Unknown OID" else oid.dotted_string), None, None
        except Exception:
            return "unknown", None, None
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size, None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.key_size, key.curve.name
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456, None
    if isinstance(key, dh.DHPublicKey):
        return "DH", key.key_size, None
    if isinstance(key, x25519.X25519PublicKey):
        return "X25519", 256, None
    if isinstance(key, x448.X448PublicKey):
        return "X448", 448, None
    return type(key).__name__, None, None


def _dsa_key_size(cert: x509.Certificate) -> int | None:
    """A DSA key's size. DSA is still seen on old brokers and is recorded as such, but
    cryptography >= 51 deprecates it and warns on every load: the warning is silenced for
    this one load only (trust never loads DSA keys, :func:`workers.tlstrust._cheap_to_check`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        key = cert.public_key()
    size = getattr(key, "key_size", None)
    return size if isinstance(size, int) else None


def _signature_algorithm(cert: x509.Certificate) -> str | None:
    try:
        oid = cert.signature_algorithm_oid
    except Exception:
        return None
    return oid._name if oid._name != "Unknown OID" else oid.dotted_string


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        if cert.issuer != cert.subject:
            return False
    except Exception:
        return False
    return signed_by(cert, cert)


def describe_certificate(der: bytes, now: datetime) -> TlsCertificate | None:
    """Describe one DER certificate; None when it does not parse at all.

    :param der: the certificate as the server sent it.
    :param now: the observation time (tz-aware) for ``expired`` / ``not_yet_valid``.
    """
    cert = load_der(der)
    if cert is None:
        return None
    try:
        not_before = cert.not_valid_before_utc
        not_after = cert.not_valid_after_utc
        with warnings.catch_warnings():  # a negative serial warns (RFC 5280 forbids it)
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            serial = cert.serial_number
    except Exception:
        return None
    key_type, key_bits, key_curve = _key(cert)
    return TlsCertificate(
        subject=_name_text(_attr(cert, "subject")),
        issuer=_name_text(_attr(cert, "issuer")),
        subject_cn=_subject_cn(cert),
        sans=_sans(cert),
        serial=f"{serial:x}" if serial >= 0 else f"-{-serial:x}",
        not_before=not_before,
        not_after=not_after,
        key_type=key_type,
        key_bits=key_bits,
        key_curve=key_curve,
        signature_algorithm=_signature_algorithm(cert),
        sha256=hashlib.sha256(der).hexdigest(),
        self_signed=_self_signed(cert),
        expired=now > not_after,
        not_yet_valid=now < not_before,
    )


def _attr(cert: x509.Certificate, name: str) -> object:
    try:
        return getattr(cert, name)
    except Exception:  # names are parsed lazily: a malformed one raises here
        return None


# --- the handshake -----------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeFacts:
    """What a completed handshake left, read cheaply on the event loop."""

    version: str | None
    cipher: str | None
    alpn: str | None
    chain: tuple[bytes, ...]  # as the server sent it, leaf first, DER


def handshake_facts(ssl_object: ssl.SSLObject | None) -> HandshakeFacts | None:
    """Read version, cipher, ALPN and the presented chain (None without an ssl object).

    Must run where the connection lives (the event loop); costs microseconds per
    certificate: no parsing.
    """
    if ssl_object is None:
        return None
    try:
        version = ssl_object.version()
        cipher_info = ssl_object.cipher()
        alpn = ssl_object.selected_alpn_protocol()
    except Exception:
        version, cipher_info, alpn = None, None, None
    return HandshakeFacts(version, cipher_info[0] if cipher_info else None, alpn,
                          tuple(peer_chain(ssl_object)))


def describe_facts(facts: HandshakeFacts | None, now: datetime) -> TlsInfo:
    """Describe the leaf and judge trust: pure CPU work, safe on any thread.

    Bounded whatever the server sent (see :mod:`workers.tlstrust`); a leaf with thousands
    of subjectAltNames costs a few milliseconds and is recorded whole.
    """
    if facts is None:
        return TlsInfo(handshake_completed=True, error="no ssl object")
    chain = list(facts.chain)
    certificate = describe_certificate(chain[0], now) if chain else None
    trusted, trust_error = trust_of(chain, now) if chain else (False, "no-certificate")
    return TlsInfo(
        handshake_completed=True,
        version=facts.version,
        cipher=facts.cipher,
        alpn=facts.alpn,
        certificate=certificate,
        chain_length=len(chain),
        trusted=trusted,
        trust_error=trust_error,
    )


def describe_tls(ssl_object: ssl.SSLObject | None, now: datetime) -> TlsInfo:
    """:func:`describe_facts` of :func:`handshake_facts`, all on the caller's thread."""
    return describe_facts(handshake_facts(ssl_object), now)


class Describer:
    """Runs :func:`describe_facts` off the event loop, on one thread shared by the process.

    One thread is enough: a fresh verdict costs about a millisecond, the cache answers
    repeats, and the library's signature checks release the GIL. The queue is bounded by
    the callers: each waits at most ``timeout`` seconds, and a job still queued when its
    caller gives up is cancelled, never run.

    :param timeout: the longest wait for a description; then the :class:`TlsInfo` keeps the
        handshake facts, no certificate, and ``trust_error="verdict-timeout"``.
    """

    _pool: ThreadPoolExecutor | None = None

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout

    @classmethod
    def pool(cls) -> ThreadPoolExecutor:
        if cls._pool is None:
            cls._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brokerscan-tls")
        return cls._pool

    async def describe(self, facts: HandshakeFacts | None, now: datetime) -> TlsInfo:
        if facts is None:
            return describe_facts(facts, now)
        job = asyncio.wrap_future(self.pool().submit(describe_facts, facts, now))
        try:
            async with asyncio.timeout(self.timeout):
                return await job
        except TimeoutError:
            job.cancel()
            return TlsInfo(handshake_completed=True, version=facts.version,
                           cipher=facts.cipher, alpn=facts.alpn,
                           chain_length=len(facts.chain), trust_error="verdict-timeout")


# --- handshakes that did not complete -------------------------------------------------


def failed_handshake_info(reason: str, watch: HandshakeWatch | None) -> TlsInfo:
    """The :class:`TlsInfo` of a handshake that did not complete.

    :param reason: the failure as the transport names it (``"sslv3-alert-handshake-failure"``).
    :param watch: what the message callback saw, if it ran.
    """
    wants_cert = "certificate-required" in reason or "certificate required" in reason
    error = reason
    if watch is not None:
        wants_cert = wants_cert or watch.refused_for_certificate
        if watch.alert is not None and watch.alert not in reason:
            error = f"{reason} (alert {watch.alert})"
    return TlsInfo(handshake_completed=False, error=error,
                   client_certificate_required=wants_cert)


def late_handshake_failure(info: TlsInfo | None,
                           error: BaseException | str) -> TlsInfo | None:
    """Turn a TLS alert met on the first read/write after the handshake into a failed one.

    A TLS 1.3 client finishes its side of the handshake before the server has checked the
    client's (absent) certificate; the server's "certificate required" alert then surfaces
    on the first read. Call this with the stream's :attr:`TlsInfo` and the error (the
    exception, or the message of the transport's ``ProbeError``).

    :returns: the :class:`TlsInfo` to record instead (``handshake_completed=False``, the
        certificate facts kept), or None when the error is not a TLS alert.
    """
    if info is None or not info.handshake_completed:
        return None
    if isinstance(error, BaseException):
        reason = getattr(error, "reason", None)
        text = (str(reason) if reason else str(error)).lower().replace("_", "-")
        if not isinstance(error, ssl.SSLError):
            return None
    else:
        text = error.lower().replace("_", "-")
    text = text.removeprefix("tls: ")
    if "alert" not in text:
        return None
    return info.model_copy(update={
        "handshake_completed": False,
        "client_certificate_required": "certificate-required" in text,
        "error": text,
    })
