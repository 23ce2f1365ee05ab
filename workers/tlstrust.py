"""Would a server's certificate chain verify against the system roots, host name aside?

``cryptography.x509.verification`` decides; this module bounds what it is given and, when
it says no, names the reason. Nothing here opens a socket or fetches anything (no AIA
chasing, no OCSP, no CRL); every function is safe to call from a worker thread.

How the verifier is asked. We dial IPs, so there is no name to check, and the library has
no "any name" mode (checked on cryptography 50): ``build_server_verifier`` always matches
its subject against the leaf's subjectAltName, even with custom extension policies (it
refuses an EE policy that does not require the SAN); ``build_client_verifier`` skips names
but demands the clientAuth EKU of the leaf and of every CA. So we build a ServerVerifier
whose subject is one of the leaf's *own* DNS/IP subjectAltNames: the question becomes "is
this chain valid for one of the names it carries?", i.e. the Web PKI server profile
(serverAuth EKU, a SAN, AKI, CA/B Forum key and signature algorithms, at most 8
intermediates, validity at the observation time) with only the name match neutralised.
That is stricter than OpenSSL's default chain check (which takes a CN-only or AKI-less
leaf): fitting, since the anchors are the Web PKI roots of the system store.

Bounds, whatever the server sends (issue 8); bench/tls_trust.py has the figures:

* the presented chain is deduplicated (byte-identical copies count once) and at most
  :data:`MAX_PRESENTED` further certificates are parsed and considered;
* certificates whose key makes one signature check expensive (an RSA public exponent above
  2^256, which CA/B Forum BR 6.1.6 forbids anyway; DSA) are not considered;
* the library (cryptography >= 49) stops by itself after 128 signature checks and 8
  intermediates; tests/unit/test_tlstrust.py holds it to that on raw hostile chains;
* naming a failure (:class:`workers.tlspath.FailureNamer`) is a search with its own budget
  of signature checks and steps.

``trust_error`` values (``docs/results.md`` has the same list):

=========================  =================================================================
``no-certificate``         the server sent none
``unparseable``            the leaf does not parse
``no-roots``               the trust store is empty
``self-signed``            the leaf signed itself and is not a trust anchor
``self-signed-in-chain``   the path ends in a self-signed CA that is not a trust anchor
``unknown-issuer``         no presented certificate or anchor is named as the issuer
``bad-signature``          an issuer by name, but its key did not make the signature
``not-a-ca``               an issuer that may not issue (basicConstraints, keyUsage)
``path-too-long``          a path needs more than 8 intermediates, or breaks a
                           pathLenConstraint
``expired``                a certificate on the path has expired
``not-yet-valid``          a certificate on the path is not valid yet
``wrong-purpose``          the leaf's extendedKeyUsage does not allow serverAuth
``no-subject-alt-name``    the leaf has no DNS or IP subjectAltName a server could match
``policy-violation``       the path is sound by name, signature, CA flags and dates, but the
                           Web PKI profile refuses it (e.g. no authorityKeyIdentifier, a
                           1024-bit RSA key, a SHA-1 signature, a CA certificate as leaf)
``too-many-certificates``  more than :data:`MAX_PRESENTED` distinct certificates were sent,
                           and the search among those considered ended at an unknown issuer
``unsupported-key``        a presented certificate was left out for its key (see above),
                           and the search without it ended at an unknown issuer
``budget-exceeded``        naming the failure needed more signature checks or search steps
                           than allowed (the chain is built to be expensive)
``verdict-timeout``        (set by :class:`workers.tlsinfo.Describer`) no verdict within the
                           transport's wait; ``trusted`` is then null
=========================  =================================================================
"""

from __future__ import annotations

import hashlib
import re
import ssl
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import PublicKeyAlgorithmOID
from cryptography.x509.verification import PolicyBuilder, Store

from workers.tlspath import MAX_INTERMEDIATES, FailureNamer, load_der, policy_reason

__all__ = [
    "MAX_PRESENTED",
    "RootStore",
    "system_roots",
    "trust_of",
    "verify_chain",
]

MAX_PRESENTED = 16  # distinct certificates after the leaf that are parsed and considered
MAX_SUBJECTS = 4  # subjectAltName entries tried as the verifier's subject
MAX_RSA_EXPONENT = (1 << 256) - 1  # CA/B Forum BR 6.1.6
TRUST_CACHE_SIZE = 4096  # verdicts kept per store

_SHA256 = SHA256()
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----",
                       re.DOTALL)


# --- the store and its verdicts --------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    trusted: bool
    error: str | None
    since: datetime | None  # the verdict holds for since <= now < until
    until: datetime | None


class _VerdictCache:
    """LRU of verdicts by chain, each with the time span in which it holds. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, _Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, now: datetime) -> _Verdict | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or (hit.since is not None and now < hit.since) or (
                    hit.until is not None and now >= hit.until):
                return None
            self._items.move_to_end(key)
            return hit

    def put(self, key: bytes, verdict: _Verdict) -> None:
        with self._lock:
            self._items[key] = verdict
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class RootStore(tuple[x509.Certificate, ...]):
    """Trust anchors (a tuple, so any Sequence works too), indexed by subject name, with the
    library's :class:`~cryptography.x509.verification.Store` and the cache of verdicts made
    against them (on the store, so a new store never sees another's verdicts)."""

    by_subject: dict[x509.Name, list[x509.Certificate]]
    store: Store | None
    verdicts: _VerdictCache

    def __new__(cls, certs: Iterable[x509.Certificate]) -> RootStore:
        self = super().__new__(cls, certs)
        self.by_subject = {}
        for cert in self:
            try:
                self.by_subject.setdefault(cert.subject, []).append(cert)
            except Exception:  # a root whose name does not parse anchors nothing
                continue
        self.store = Store(list(self)) if self else None
        self.verdicts = _VerdictCache(TRUST_CACHE_SIZE)
        return self


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


# --- what is considered ----------------------------------------------------------------------


def _cheap_to_check(cert: x509.Certificate) -> bool:
    """Is a signature check with this certificate's key bounded in cost?

    OpenSSL caps RSA moduli at 16384 bits and, above 3072 bits, exponents at 64 bits; a
    3072-bit modulus with a 3072-bit exponent still costs ~5 ms a check. DSA is not Web PKI:
    it is left out by its algorithm identifier, before its key is loaded (cryptography >= 51
    deprecates DSA and warns on every load).
    """
    try:
        if cert.public_key_algorithm_oid == PublicKeyAlgorithmOID.DSA:
            return False
        key = cert.public_key()
    except Exception:  # an algorithm nobody can check: refused at once, cheaply
        return True
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_numbers().e <= MAX_RSA_EXPONENT
    return True


def _considered(chain_der: Sequence[bytes]) -> tuple[list[x509.Certificate], str | None]:
    """The presented certificates after the leaf that take part, and why any were left out.

    Byte-identical copies (and copies of the leaf) count once; at most
    :data:`MAX_PRESENTED` distinct ones are parsed; junk is skipped.
    """
    seen = {chain_der[0]}
    out: list[x509.Certificate] = []
    left_out: str | None = None
    for der in chain_der[1:]:
        if der in seen:
            continue
        if len(seen) > MAX_PRESENTED:
            return out, "too-many-certificates"
        seen.add(der)
        cert = load_der(der)
        if cert is None:
            continue
        if not _cheap_to_check(cert):
            left_out = "unsupported-key"
            continue
        out.append(cert)
    return out, left_out


def _subjects(leaf: x509.Certificate) -> list[x509.DNSName | x509.IPAddress]:
    """Up to :data:`MAX_SUBJECTS` of the leaf's own DNS/IP names, as verifier subjects."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:
        return []
    out: list[x509.DNSName | x509.IPAddress] = []
    for gn in san:
        if isinstance(gn, x509.IPAddress) and isinstance(gn.value, IPv4Address | IPv6Address):
            out.append(x509.IPAddress(gn.value))
        elif isinstance(gn, x509.DNSName):
            # "*.example.com" is a pattern, not a name: ask for a name it matches
            value = "wildcard" + gn.value[1:] if gn.value.startswith("*.") else gn.value
            out.append(x509.DNSName(value))
        if len(out) >= MAX_SUBJECTS:
            break
    return out


def _library_trusts(leaf: x509.Certificate, presented: list[x509.Certificate],
                    roots: RootStore, now: datetime) -> bool | None:
    """The library's verdict; None when the leaf names nothing it can be asked about."""
    assert roots.store is not None
    for subject in _subjects(leaf):
        try:
            verifier = (PolicyBuilder().store(roots.store).time(now)
                        .max_chain_depth(MAX_INTERMEDIATES).build_server_verifier(subject))
        except ValueError:  # not a name the library accepts ("under_score.local")
            continue
        try:
            verifier.verify(leaf, presented)
        except Exception:  # VerificationError; anything else is a refusal too
            return False
        return True
    return None


# --- the verdict -----------------------------------------------------------------------------


def _window(certs: list[x509.Certificate], roots: RootStore,
            now: datetime) -> tuple[datetime | None, datetime | None]:
    """The span around ``now`` in which no certificate involved changes validity."""
    bounds: list[datetime] = []
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


def _judge(chain_der: Sequence[bytes], roots: RootStore, now: datetime) -> _Verdict:
    if not chain_der:
        return _Verdict(False, "no-certificate", None, None)
    leaf = load_der(chain_der[0])
    if leaf is None:
        return _Verdict(False, "unparseable", None, None)
    if not roots:
        return _Verdict(False, "no-roots", None, None)
    presented, left_out = _considered(chain_der)
    since, until = _window([leaf, *presented], roots, now)
    try:
        asked = _library_trusts(leaf, presented, roots, now)
        if asked:
            return _Verdict(True, None, since, until)
        reason = FailureNamer(roots.by_subject, presented, now).reason(leaf)
    except Exception:  # belt and braces: odd certificates must not break a scan
        return _Verdict(False, "unparseable", since, until)
    if not reason:
        reason = policy_reason(leaf, asked is not None)
    if left_out is not None and reason == "unknown-issuer":
        reason = left_out  # the missing link may be among those left out
    return _Verdict(False, reason, since, until)


def verify_chain(chain_der: Sequence[bytes], roots: Sequence[x509.Certificate],
                 now: datetime) -> tuple[bool, str | None]:
    """Would this chain verify against ``roots`` at ``now``, host name aside?

    The library decides (see the module docstring for how it is asked and for the bounds);
    a failure is named by :class:`_Namer`. Never raises.

    :param chain_der: the certificates as the server sent them, leaf first.
    :param roots: the trust anchors (a :class:`RootStore` saves re-indexing them).
    :param now: the time to judge validity at (tz-aware).
    :returns: ``(True, None)`` or ``(False, reason)``; reasons as in the module docstring.
    """
    store = roots if isinstance(roots, RootStore) else RootStore(roots)
    verdict = _judge(chain_der, store, now)
    return verdict.trusted, verdict.error


def trust_of(chain_der: Sequence[bytes], now: datetime,
             roots: RootStore | None = None) -> tuple[bool, str | None]:
    """:func:`verify_chain` against the system store, cached per presented chain.

    Scans see the same certificate again and again; the store's cache (LRU, at most
    :data:`TRUST_CACHE_SIZE` chains) keeps each verdict together with the time span in
    which it holds, so an expiry in the middle of a sweep is still noticed.

    :param chain_der: leaf first.
    :param now: the observation time (tz-aware).
    :param roots: another store instead of the system one (tests).
    """
    store = system_roots() if roots is None else roots
    key = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in chain_der)).digest()
    hit = store.verdicts.get(key, now)
    if hit is None:
        hit = _judge(chain_der, store, now)
        store.verdicts.put(key, hit)
    return hit.trusted, hit.error
