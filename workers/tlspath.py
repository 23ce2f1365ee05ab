"""Why does no path lead from a leaf to a trust anchor? A bounded search that names it.

:mod:`workers.tlstrust` lets ``cryptography.x509.verification`` decide whether a chain is
trusted; when it says no, :class:`FailureNamer` looks for the most telling reason with the
same certificates: a depth-first search from the leaf through the presented certificates
(those :mod:`workers.tlstrust` considered: deduplicated, at most 16) to an anchor, checking
names, signatures, CA flags (basicConstraints, pathLenConstraint, keyUsage) and validity.
It is bounded for hostile chains: each (certificate, issuer) signature is checked at most
once, at most :data:`MAX_SIGNATURE_CHECKS` checks and :data:`MAX_STEPS` path extensions in
all, paths of at most :data:`MAX_INTERMEDIATES` intermediates. The reasons it gives are in
the table of :mod:`workers.tlstrust`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = [
    "MAX_INTERMEDIATES",
    "MAX_SIGNATURE_CHECKS",
    "MAX_STEPS",
    "FailureNamer",
    "OutOfBudget",
    "load_der",
    "policy_reason",
    "signed_by",
]

MAX_INTERMEDIATES = 8  # the verifier's max_chain_depth too: where a path is too long
MAX_SIGNATURE_CHECKS = 64  # the search's budget (cryptography's own is 128)
MAX_STEPS = 256  # the search's budget of path extensions


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


class OutOfBudget(Exception):
    """The search used up its signature checks or steps."""


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
class FailureNamer:
    """Why no path? A depth-first search over the considered certificates, bounded.

    Each (certificate, issuer) signature is checked at most once; the search stops with
    :class:`OutOfBudget` after :data:`MAX_SIGNATURE_CHECKS` checks or
    :data:`MAX_STEPS` extensions. :meth:`reason` is ``""`` when a path reaches an anchor
    with every name, signature, CA flag and date in order: then the library's refusal is a
    matter of policy (:func:`policy_reason`).
    """

    anchors: Mapping[x509.Name, list[x509.Certificate]]  # trust anchors by subject
    presented: list[x509.Certificate]
    now: datetime
    errors: set[str] = field(default_factory=set)
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
                raise OutOfBudget
            self.signatures -= 1
            known = self._checked[pair] = signed_by(cert, issuer)
        return known

    def self_signed(self, cert: x509.Certificate) -> bool:
        return _self_issued(cert) and self.signed(cert, cert)

    def extend(self, path: list[x509.Certificate]) -> bool:
        """Can ``path`` (leaf first) be completed up to a trust anchor?"""
        self.steps -= 1
        if self.steps < 0:
            raise OutOfBudget
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
        for root in self.anchors.get(wanted, ()):
            named = True
            if not self.signed(child, root):
                self.errors.add("bad-signature")
                continue
            problem = _can_issue(root, below, anchor=True) or self._times([*path, root])
            if problem is None:
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
            if any(leaf == root for root in self.anchors.get(leaf.subject, ())):
                problem = _valid_at(leaf, self.now)
                return problem or ""
            if self.extend([leaf]):
                return ""
        except OutOfBudget:
            return "budget-exceeded"
        return min(self.errors or {"unknown-issuer"},
                   key=lambda e: _RANK.index(e) if e in _RANK else len(_RANK))


def policy_reason(leaf: x509.Certificate, asked: bool) -> str:
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
