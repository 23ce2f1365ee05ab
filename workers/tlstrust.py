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
(serverAuth EKU, a SAN, AKI, CA/B Forum key and signature algorithms, at most
:data:`MAX_INTERMEDIATES` intermediates, validity at the observation time) with only the
name match neutralised.

Bounds, whatever the server sends (issue 8):

* the presented chain is deduplicated (byte-identical copies count once) and at most
  :data:`MAX_PRESENTED` further certificates are parsed and considered;
* certificates whose key makes one signature check expensive (an RSA public exponent above
  2^256, which CA/B Forum BR 6.1.6 forbids anyway; DSA) are not considered;
* the library stops after 128 signature checks and :data:`MAX_INTERMEDIATES` (its own
  budget, verified against hostile chains in tests/unit/test_tlstrust.py);
* naming a failure is a depth-first search over the considered certificates with at most
  :data:`MAX_SIGNATURE_CHECKS` signature checks (each pair checked once) and
  :data:`MAX_STEPS` path extensions.

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
``path-too-long``          a path needs more than :data:`MAX_INTERMEDIATES` intermediates,
                           or breaks a pathLenConstraint
``expired``                a certificate on the path has expired
``not-yet-valid``          a certificate on the path is not valid yet
``wrong-purpose``          the leaf's extendedKeyUsage does not allow serverAuth
``no-subject-alt-name``    the leaf has no DNS or IP subjectAltName a server could match
``policy-violation``       the path is sound by name, signature, CA flags and dates, but the
                           Web PKI profile refuses it (e.g. no authorityKeyIdentifier, an
                           Ed25519 or 1024-bit RSA key, SHA-1, a CA certificate as the leaf)
``too-many-certificates``  more than :data:`MAX_PRESENTED` distinct certificates were sent,
                           and no path was found among those considered
``unsupported-key``        a presented certificate was left out for its key (see above),
                           and no path was found without it
``budget-exceeded``        naming the failure needed more signature checks or search steps
                           than allowed (the chain is built to be expensive)
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
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

__all__ = [
    "MAX_INTERMEDIATES",
    "MAX_PRESENTED",
    "MAX_SIGNATURE_CHECKS",
    "MAX_STEPS",
    "RootStore",
    "load_der",
    "system_roots",
    "trust_of",
    "verify_chain",
]

MAX_PRESENTED = 16  # distinct certificates after the leaf that are parsed and considered
MAX_INTERMEDIATES = 8  # the verifier's max_chain_depth; also where naming stops a path
MAX_SIGNATURE_CHECKS = 64  # naming's budget (the library's own is 128)
MAX_STEPS = 256  # naming's budget of path extensions
MAX_SUBJECTS = 4  # subjectAltName entries tried as the verifier's subject
MAX_RSA_EXPONENT = (1 << 256) - 1  # CA/B Forum BR 6.1.6
TRUST_CACHE_SIZE = 4096  # verdicts kept per store

_SHA256 = SHA256()
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----",
                       re.DOTALL)


def load_der(der: bytes) -> x509.Certificate | None:
    """Parse DER, or None. Negative serials warn in cryptography: still load them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return x509.load_der_x509_certificate(der)
    except Exception:
        return None


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Do ``issuer``'s name and key account for ``cert``'s issuer and signature?"""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    except Exception:
        return False
    return True


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
    3072-bit modulus with a 3072-bit exponent still costs ~5 ms a check. DSA is not Web PKI.
    """
    try:
        key = cert.public_key()
    except Exception:  # an algorithm nobody can check: refused at once, cheaply
        return True
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_numbers().e <= MAX_RSA_EXPONENT
    return not isinstance(key, dsa.DSAPublicKey)


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


# --- naming a failure ------------------------------------------------------------------------


class _OutOfBudget(Exception):
    pass


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


def _self_issued(cert: x509.Certificate) -> bool:
    try:
        return cert.issuer == cert.subject
    except Exception:
        return False


# Failures of path building, most telling first: when several paths fail, report this one.
_RANK = ["expired", "not-yet-valid", "not-a-ca", "path-too-long", "bad-signature",
         "self-signed-in-chain", "self-signed", "unknown-issuer"]


@dataclass
class _Namer:
    """Why no path? A depth-first search over the considered certificates, bounded.

    Each (certificate, issuer) signature is checked at most once; the search stops with
    :class:`_OutOfBudget` after :data:`MAX_SIGNATURE_CHECKS` checks or
    :data:`MAX_STEPS` extensions. ``complete`` is set when a path reaches an anchor with
    every name, signature, CA flag and date in order (then the library's refusal is a
    matter of policy).
    """

    roots: RootStore
    presented: list[x509.Certificate]
    now: datetime
    errors: set[str] = field(default_factory=set)
    complete: bool = False
    signatures: int = MAX_SIGNATURE_CHECKS
    steps: int = MAX_STEPS
    by_subject: dict[x509.Name, list[x509.Certificate]] = field(default_factory=dict)
    _checked: dict[tuple[int, int], bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cert in self.presented:
            try:
                self.by_subject.setdefault(cert.subject, []).append(cert)
            except Exception:
                continue

    def signed(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        pair = (id(cert), id(issuer))  # every certificate here lives as long as the search
        known = self._checked.get(pair)
        if known is None:
            if self.signatures <= 0:
                raise _OutOfBudget
            self.signatures -= 1
            known = self._checked[pair] = signed_by(cert, issuer)
        return known

    def self_signed(self, cert: x509.Certificate) -> bool:
        return _self_issued(cert) and self.signed(cert, cert)

    def extend(self, path: list[x509.Certificate]) -> bool:
        """Can ``path`` (leaf first) be completed up to a trust anchor?"""
        self.steps -= 1
        if self.steps < 0:
            raise _OutOfBudget
        child = path[-1]
        if len(path) - 1 > MAX_INTERMEDIATES:
            self.errors.add("path-too-long")
            return False
        below = sum(1 for c in path[1:] if not _self_issued(c))  # for pathLenConstraint
        try:
            wanted = child.issuer
        except Exception:
            self.errors.add("unknown-issuer")
            return False
        named = False
        for root in self.roots.by_subject.get(wanted, ()):
            named = True
            if not self.signed(child, root):
                self.errors.add("bad-signature")
                continue
            problem = _can_issue(root, below, anchor=True) or self._times([*path, root])
            if problem is None:
                self.complete = True
                return True
            self.errors.add(problem)
        for cand in self.by_subject.get(wanted, ()):
            if any(cand is c for c in path):
                continue
            named = True
            if not self.signed(child, cand):
                self.errors.add("bad-signature")
                continue
            problem = _can_issue(cand, below, anchor=False)
            if problem is not None:
                self.errors.add(problem)
                continue
            if self.extend([*path, cand]):
                return True
        if not named:
            if self.self_signed(child):
                self.errors.add("self-signed" if len(path) == 1 else "self-signed-in-chain")
            else:
                self.errors.add("unknown-issuer")
        return False

    def _times(self, path: list[x509.Certificate]) -> str | None:
        for cert in path:
            problem = _valid_at(cert, self.now)
            if problem is not None:
                return problem
        return None

    def reason(self, leaf: x509.Certificate) -> str:
        """The most telling reason no path exists ("" when one does, by these checks)."""
        try:
            if any(leaf == root for root in self.roots.by_subject.get(leaf.subject, ())):
                problem = _valid_at(leaf, self.now)
                if problem is not None:
                    return problem
                self.complete = True
                return ""
            if self.extend([leaf]):
                return ""
        except _OutOfBudget:
            return "budget-exceeded"
        return min(self.errors or {"unknown-issuer"},
                   key=lambda e: _RANK.index(e) if e in _RANK else len(_RANK))


def _policy_reason(leaf: x509.Certificate, asked: bool) -> str:
    """Why the library refused a path that is sound by our checks."""
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    except Exception:
        return "policy-violation"
    if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku \
            and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
        return "wrong-purpose"
    return "policy-violation" if asked else "no-subject-alt-name"


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
        reason = _Namer(roots, presented, now).reason(leaf)
    except Exception:  # belt and braces: odd certificates must not break a scan
        return _Verdict(False, "unparseable", since, until)
    if not reason:
        reason = _policy_reason(leaf, asked is not None)
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
