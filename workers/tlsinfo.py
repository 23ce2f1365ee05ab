"""What a TLS handshake showed: version, cipher, the server's certificate, and trust.

The transport handshakes with verification off (we record, we do not trust) and hands the
result to :func:`describe_tls`. Trust is judged here, separately and offline: would the
presented chain verify against the system store, ignoring the host name (we dial IPs)?
:func:`verify_chain` is a small pure path builder over ``cryptography.x509``; the system
roots are loaded once, lazily, and verdicts are cached per presented chain.

Spec sheet:

* recorded: protocol version, cipher suite, ALPN, the leaf certificate (names, SANs,
  serial, validity, key, signature algorithm, SHA-256 of the DER, self-signed, expired /
  not yet valid at the observation time), the chain length, trusted + ``trust_error``;
* client certificates: :class:`HandshakeWatch` notes, through OpenSSL's message callback,
  whether the server sent a CertificateRequest and which alert it sent; the transport
  uses it to tell "client certificate required" apart from other handshake failures, in
  TLS 1.2 (alert during the handshake) and TLS 1.3 (alert after the client's Finished).
* nothing here opens a socket or fetches anything (no AIA chasing, no OCSP, no CRL).

``trust_error`` values: ``no-certificate``, ``unparseable``, ``self-signed``,
``self-signed-in-chain``, ``unknown-issuer``, ``bad-signature``, ``not-a-ca``,
``path-too-long``, ``expired``, ``not-yet-valid``, ``no-roots``.

Why one piece (for now): describing, judging and watching a handshake share the parsed
certificates and the verdict cache; the bounded trust check of issue 8 splits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import re
import ssl
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dh, dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from brokerscan.model import TlsCertificate, TlsInfo

__all__ = [
    "HandshakeWatch",
    "describe_certificate",
    "describe_tls",
    "failed_handshake_info",
    "install_watch",
    "late_handshake_failure",
    "peer_chain",
    "system_roots",
    "trust_of",
    "verify_chain",
    "watching",
]

MAX_DEPTH = 8  # certificates in a path, leaf and root included
TRUST_CACHE_SIZE = 4096

_SHA256 = SHA256()
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----",
                       re.DOTALL)


# --- certificates ------------------------------------------------------------------------


def _load(der: bytes) -> x509.Certificate | None:
    """Parse DER, or None. Negative serials warn in cryptography: still record them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return x509.load_der_x509_certificate(der)
    except Exception:
        return None


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
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size, None
    if isinstance(key, dh.DHPublicKey):
        return "DH", key.key_size, None
    if isinstance(key, x25519.X25519PublicKey):
        return "X25519", 256, None
    if isinstance(key, x448.X448PublicKey):
        return "X448", 448, None
    return type(key).__name__, None, None


def _signature_algorithm(cert: x509.Certificate) -> str | None:
    try:
        oid = cert.signature_algorithm_oid
    except Exception:
        return None
    return oid._name if oid._name != "Unknown OID" else oid.dotted_string


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Does ``issuer``'s name and key account for ``cert``'s issuer and signature?"""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    except Exception:
        return False
    return True


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        if cert.issuer != cert.subject:
            return False
    except Exception:
        return False
    return _signed_by(cert, cert)


def describe_certificate(der: bytes, now: datetime) -> TlsCertificate | None:
    """Describe one DER certificate; None when it does not parse at all.

    :param der: the certificate as the server sent it.
    :param now: the observation time (tz-aware) for ``expired`` / ``not_yet_valid``.
    """
    cert = _load(der)
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


# --- trust -------------------------------------------------------------------------------


class RootStore(tuple[x509.Certificate, ...]):
    """Trust anchors, indexed by subject name (a tuple, so any Sequence works too)."""

    by_subject: dict[x509.Name, list[x509.Certificate]]

    def __new__(cls, certs: Iterable[x509.Certificate]) -> RootStore:
        self = super().__new__(cls, certs)
        self.by_subject = {}
        for cert in self:
            try:
                self.by_subject.setdefault(cert.subject, []).append(cert)
            except Exception:  # a root whose name does not parse anchors nothing
                continue
        return self


def _valid_at(cert: x509.Certificate, now: datetime) -> str | None:
    if now > cert.not_valid_after_utc:
        return "expired"
    if now < cert.not_valid_before_utc:
        return "not-yet-valid"
    return None


def _can_issue(cert: x509.Certificate, below: int, anchor: bool) -> str | None:
    """Why ``cert`` may not sign a certificate with ``below`` CA certificates under it."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        # v1 roots predate extensions; a store that lists one trusts it as a CA.
        return None if anchor and cert.version is x509.Version.v1 else "not-a-ca"
    except Exception:
        return "not-a-ca"
    if not bc.ca:
        return "not-a-ca"
    if bc.path_length is not None and below > bc.path_length:
        return "path-too-long"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except Exception:
        return "not-a-ca"
    return None if ku.key_cert_sign else "not-a-ca"


# Failures of path building, most telling first: when several paths fail, report this one.
_RANK = ["expired", "not-yet-valid", "not-a-ca", "path-too-long", "bad-signature",
         "self-signed-in-chain", "self-signed", "unknown-issuer"]


@dataclass
class _Search:
    roots: RootStore
    presented: list[x509.Certificate]
    now: datetime
    errors: list[str] = field(default_factory=list)

    def extend(self, path: list[x509.Certificate]) -> bool:
        """Depth-first: can ``path`` (leaf first) be completed up to a trust anchor?"""
        child = path[-1]
        if len(path) >= MAX_DEPTH:
            self.errors.append("path-too-long")
            return False
        below = sum(1 for c in path[1:] if not _self_issued(c))
        try:
            wanted = child.issuer
        except Exception:
            self.errors.append("unknown-issuer")
            return False
        named = False
        for root in self.roots.by_subject.get(wanted, ()):
            named = True
            if not _signed_by(child, root):
                self.errors.append("bad-signature")
                continue
            problem = _can_issue(root, below, anchor=True) or self._times([*path, root])
            if problem is None:
                return True
            self.errors.append(problem)
        for cand in self.presented:
            if any(cand is c for c in path) or not _names_equal(cand, wanted):
                continue
            named = True
            if not _signed_by(child, cand):
                self.errors.append("bad-signature")
                continue
            problem = _can_issue(cand, below, anchor=False)
            if problem is not None:
                self.errors.append(problem)
                continue
            if self.extend([*path, cand]):
                return True
        if not named:
            if len(path) == 1 and _self_signed(child):
                self.errors.append("self-signed")
            elif _self_signed(child):
                self.errors.append("self-signed-in-chain")
            else:
                self.errors.append("unknown-issuer")
        return False

    def _times(self, path: list[x509.Certificate]) -> str | None:
        for cert in path:
            problem = _valid_at(cert, self.now)
            if problem is not None:
                return problem
        return None


def _self_issued(cert: x509.Certificate) -> bool:
    try:
        return cert.issuer == cert.subject
    except Exception:
        return False


def _names_equal(cert: x509.Certificate, name: x509.Name) -> bool:
    try:
        return cert.subject == name
    except Exception:
        return False


def verify_chain(chain_der: list[bytes], roots: Sequence[x509.Certificate],
                 now: datetime) -> tuple[bool, str | None]:
    """Would this chain verify against ``roots`` at ``now``, host name aside?

    Builds a path from the leaf (``chain_der[0]``) through the presented certificates to a
    root: names must chain, each signature must verify with the issuer's key, issuers must
    be CAs (basicConstraints, path length, keyUsage), every certificate on the path must be
    valid at ``now``, and the path may hold at most :data:`MAX_DEPTH` certificates. A leaf
    that is itself one of ``roots`` is trusted. Never raises.

    :param chain_der: the certificates as the server sent them, leaf first.
    :param roots: the trust anchors (a :class:`RootStore` saves re-indexing them).
    :param now: the time to judge validity at (tz-aware).
    :returns: ``(True, None)`` or ``(False, reason)``; reasons as in the module docstring.
    """
    if not chain_der:
        return False, "no-certificate"
    leaf = _load(chain_der[0])
    if leaf is None:
        return False, "unparseable"
    store = roots if isinstance(roots, RootStore) else RootStore(roots)
    if not store:
        return False, "no-roots"
    try:
        if any(leaf == root for root in store.by_subject.get(leaf.subject, ())):
            problem = _valid_at(leaf, now)
            return problem is None, problem
    except Exception:  # an odd subject: fall through to path building
        pass
    presented = [c for c in (_load(d) for d in chain_der[1:]) if c is not None]
    search = _Search(store, presented, now)
    try:
        if search.extend([leaf]):
            return True, None
    except Exception:  # belt and braces: odd certificates must not break a scan
        return False, "unparseable"
    errors = search.errors or ["unknown-issuer"]
    return False, min(errors, key=lambda e: _RANK.index(e) if e in _RANK else len(_RANK))


def _split_pem(data: bytes) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for match in _PEM_CERT.finditer(data):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                out.extend(x509.load_pem_x509_certificates(match.group(0)))
        except Exception:  # skip the odd bad root, keep the rest
            continue
    return out


@cache
def system_roots() -> RootStore:
    """The system trust store, loaded once (the OpenSSL default cafile, else capath).

    Call it at start-up to take the few milliseconds of loading off the first probe.
    """
    paths = ssl.get_default_verify_paths()
    certs: list[x509.Certificate] = []
    for cafile in (paths.cafile, paths.openssl_cafile):
        if cafile and Path(cafile).is_file():
            certs = _split_pem(Path(cafile).read_bytes())
            if certs:
                break
    if not certs:
        for capath in (paths.capath, paths.openssl_capath):
            if capath and Path(capath).is_dir():
                for entry in sorted(Path(capath).iterdir()):
                    if entry.is_file() and entry.suffix in (".pem", ".crt", ".0", ".1"):
                        certs.extend(_split_pem(entry.read_bytes()))
                if certs:
                    break
    unique: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        unique.setdefault(cert.fingerprint(_SHA256), cert)
    return RootStore(unique.values())


@dataclass(frozen=True)
class _Verdict:
    trusted: bool
    error: str | None
    since: datetime | None  # the verdict holds for since <= now < until
    until: datetime | None


_verdicts: OrderedDict[bytes, _Verdict] = OrderedDict()


def _window(chain_der: list[bytes], roots: RootStore,
            now: datetime) -> tuple[datetime | None, datetime | None]:
    """The span around ``now`` in which no certificate involved changes validity."""
    bounds: list[datetime] = []
    certs = [c for c in (_load(d) for d in chain_der) if c is not None]
    issuers: list[x509.Certificate] = []
    for cert in certs:
        try:
            issuers.extend(roots.by_subject.get(cert.issuer, ()))
        except Exception:
            continue
    for cert in [*certs, *issuers]:
        try:
            bounds += [cert.not_valid_before_utc, cert.not_valid_after_utc]
        except Exception:
            continue
    since = max((b for b in bounds if b <= now), default=None)
    until = min((b for b in bounds if b > now), default=None)
    return since, until


def trust_of(chain_der: list[bytes], now: datetime,
             roots: RootStore | None = None) -> tuple[bool, str | None]:
    """:func:`verify_chain` against the system store, cached per presented chain.

    Scans see the same certificate again and again; the cache (LRU, at most
    :data:`TRUST_CACHE_SIZE` chains) keeps each verdict together with the time span in
    which it holds, so an expiry in the middle of a sweep is still noticed.

    :param chain_der: leaf first.
    :param now: the observation time (tz-aware).
    :param roots: another store instead of the system one (tests).
    """
    store = system_roots() if roots is None else roots
    key = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in chain_der)
                         + id(store).to_bytes(8, "little")).digest()
    hit = _verdicts.get(key)
    if hit is not None and (hit.since is None or hit.since <= now) and (
            hit.until is None or now < hit.until):
        _verdicts.move_to_end(key)
        return hit.trusted, hit.error
    trusted, error = verify_chain(chain_der, store, now)
    since, until = _window(chain_der, store, now)
    _verdicts[key] = _Verdict(trusted, error, since, until)
    _verdicts.move_to_end(key)
    while len(_verdicts) > TRUST_CACHE_SIZE:
        _verdicts.popitem(last=False)
    return trusted, error


# --- the handshake -----------------------------------------------------------------------


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER.

    Python 3.11 has the full presented chain only on the private ``_sslobj``
    (``get_unverified_chain``, public from 3.13); otherwise the leaf alone.
    """
    if ssl_object is None:
        return []
    for owner in (ssl_object, getattr(ssl_object, "_sslobj", None)):
        getter = getattr(owner, "get_unverified_chain", None)
        if getter is None:
            continue
        try:
            chain = getter()
        except Exception:
            continue
        if chain:
            out = []
            for item in chain:
                if isinstance(item, bytes):
                    out.append(item)
                else:
                    out.append(item.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
            return out
    try:
        leaf = ssl_object.getpeercert(binary_form=True)
    except Exception:
        return []
    return [leaf] if leaf else []


def describe_tls(ssl_object: ssl.SSLObject | None, ip: str, now: datetime) -> TlsInfo:
    """What a completed handshake showed (verification was off).

    :param ssl_object: the connection's ``ssl_object`` (``get_extra_info``).
    :param ip: the peer (kept for the signature transport calls; names are not checked
        against it: scanned brokers rarely carry their address in a certificate).
    :param now: the observation time (tz-aware).
    """
    if ssl_object is None:
        return TlsInfo(handshake_completed=True, error="no ssl object")
    try:
        version = ssl_object.version()
        cipher_info = ssl_object.cipher()
        alpn = ssl_object.selected_alpn_protocol()
    except Exception:
        version, cipher_info, alpn = None, None, None
    chain = peer_chain(ssl_object)
    certificate = describe_certificate(chain[0], now) if chain else None
    trusted, trust_error = trust_of(chain, now) if chain else (False, "no-certificate")
    return TlsInfo(
        handshake_completed=True,
        version=version,
        cipher=cipher_info[0] if cipher_info else None,
        alpn=alpn,
        certificate=certificate,
        chain_length=len(chain),
        trusted=trusted,
        trust_error=trust_error,
    )


# --- client certificates: what the server asked for, and how it said no ---------------------

# Alerts a server sends when the client certificate it asked for is missing: OpenSSL sends
# handshake_failure (TLS 1.2) or certificate_required (TLS 1.3); other stacks send these.
_NO_CERT_ALERTS = frozenset({"certificate-required", "handshake-failure", "bad-certificate",
                             "certificate-unknown", "unsupported-certificate",
                             "access-denied", "unknown-ca"})


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
        if (content_type == ssl._TLSContentType.HANDSHAKE  # type: ignore[attr-defined]
                and msg_type == ssl._TLSMessageType.FINISHED):  # type: ignore[attr-defined]
            watch.client_finished = True
        return
    if content_type == ssl._TLSContentType.ALERT:  # type: ignore[attr-defined]
        name = getattr(msg_type, "name", None)
        text = name.lower().replace("_", "-") if isinstance(name, str) else f"alert-{msg_type}"
        # close_notify and user_canceled (warning level) end a connection, not a handshake.
        fatal = data[:1] == b"\x02" and text not in ("close-notify", "user-canceled")
        if fatal and watch.alert is None:
            watch.alert = text
        watch.answered.set()
    elif content_type == ssl._TLSContentType.HANDSHAKE:  # type: ignore[attr-defined]
        if msg_type == ssl._TLSMessageType.CERTIFICATE_REQUEST:  # type: ignore[attr-defined]
            watch.certificate_requested = True
        elif watch.client_finished:
            watch.answered.set()
    elif watch.client_finished and content_type != ssl._TLSContentType.HEADER:  # type: ignore[attr-defined]
        watch.answered.set()


def install_watch(context: ssl.SSLContext) -> bool:
    """Let :class:`HandshakeWatch` see this context's handshakes.

    Uses ``SSLContext._msg_callback`` (CPython's debugging hook, present since 3.8, private).
    :returns: False if this Python has no such hook (then only the error text is used).
    """
    try:
        context._msg_callback = _on_message  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - other Pythons
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
