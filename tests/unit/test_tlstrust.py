"""Trust verdicts under hostile input (workers/tlstrust.py), no network.

Every hostile chain of tests/certs.py must end, fast, with a named verdict. The time bound
is generous on purpose (:data:`BOUND`): bench/tls_trust.py measures the real figures
(a few milliseconds, at most ~25 ms for a signature-check mesh); before the bounds, the
same chains took seconds to hours.
"""

from __future__ import annotations

import gc
import ipaddress
import math
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, VerificationError

from tests import certs
from tests.certs import Hostile, Issued, Pki, issue, make_ca, make_pki, name
from workers.tlstrust import MAX_PRESENTED, RootStore, system_roots, trust_of, verify_chain

NOW = datetime.now(UTC)
BOUND = 0.5  # seconds per verdict: 20x the worst measured, so a slow CI box does not flake


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tlstrust-pki"))


@pytest.fixture(scope="module")
def hostile() -> dict[str, Hostile]:
    chains = [certs.duplicated_leaf(20), certs.duplicated_leaf(100), certs.duplicated_ca(9),
              certs.duplicated_ca(20), certs.long_chain(50), certs.loop_chain(),
              certs.mesh_chain(16), certs.mesh_chain(100), certs.many_sans(5000)]
    return {chain.name: chain for chain in chains}


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _timed(chain: list[bytes], roots: RootStore) -> tuple[tuple[bool, str | None], float]:
    started = time.perf_counter()
    verdict = verify_chain(chain, roots, NOW)
    return verdict, time.perf_counter() - started


@pytest.mark.parametrize(("chain", "expected"), [
    ("duplicated-20", "self-signed"),
    ("duplicated-100", "self-signed"),
    ("duplicated-ca-9", "self-signed"),  # issue 8: 2.8 s before
    ("duplicated-ca-20", "self-signed"),  # issue 8: >100 s before
    ("long-50", "path-too-long"),
    ("loop", "unknown-issuer"),  # A signs B signs A: no anchor anywhere on the loop
    ("mesh-16", "budget-exceeded"),  # 16 CAs, one name, one key: every pair is a path
    ("mesh-100", "budget-exceeded"),
    ("sans-5000", "self-signed"),
])
def test_hostile_chain_ends_fast_with_a_named_verdict(hostile: dict[str, Hostile], chain: str,
                                                      expected: str) -> None:
    verdict, elapsed = _timed(hostile[chain].ders, system_roots())
    assert verdict == (False, expected)
    assert elapsed < BOUND, f"{chain}: {elapsed:.3f} s"


@pytest.mark.parametrize("chain", ["mesh-100", "duplicated-100", "long-50", "loop"])
def test_the_library_itself_is_bounded_on_raw_hostile_input(hostile: dict[str, Hostile],
                                                            chain: str) -> None:
    """cryptography (>= 49) stops after 128 signature checks and 8 intermediates even when
    handed the whole chain, copies included: our own caps are a second line, not the only
    one. (cryptography 48 ran mesh-6 for more than two minutes.)"""
    leaf, *rest = hostile[chain].certs
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    subject = san.get_values_for_type(x509.DNSName)[0]
    roots = system_roots()
    assert roots.store is not None
    verifier = PolicyBuilder().store(roots.store).time(NOW).build_server_verifier(
        x509.DNSName(subject))
    started = time.perf_counter()
    with pytest.raises(VerificationError) as refused:
        verifier.verify(leaf, rest)
    assert time.perf_counter() - started < BOUND
    if chain.startswith("mesh"):
        assert "signature check limit" in str(refused.value)


# --- the caps, one by one ---------------------------------------------------------------------


def test_copies_count_once(pki: Pki) -> None:
    # a sound chain sent with its intermediate 50 times over is still trusted, and no
    # copy counts against MAX_PRESENTED
    roots = RootStore([pki.ca.cert])
    chain = [pki.chained.der, *[pki.intermediate.der] * 50]
    assert verify_chain(chain, roots, NOW) == (True, None)


def test_certificates_past_the_cap_are_not_considered(pki: Pki) -> None:
    roots = RootStore([pki.ca.cert])
    junk = [_der(c) for c in certs.mesh_chain(MAX_PRESENTED).certs[1:]]  # distinct, unrelated
    assert len(set(junk)) == MAX_PRESENTED
    late = [pki.chained.der, *junk, pki.intermediate.der]
    early = [pki.chained.der, pki.intermediate.der, *junk]
    assert verify_chain(late, roots, NOW) == (False, "too-many-certificates")
    assert verify_chain(early, roots, NOW) == (True, None)
    # the cap does not hide a verdict the leaf decides on its own
    assert verify_chain([pki.selfsigned.der, *junk, pki.intermediate.der], roots, NOW) == (
        False, "self-signed")


def _rsa_with_exponent(exponent: int) -> rsa.RSAPrivateKey:
    """An RSA key whose public exponent is ``exponent`` (or the next odd one that works)."""
    base = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    p, q = base.p, base.q
    phi = (p - 1) * (q - 1)
    while math.gcd(exponent, phi) != 1:
        exponent += 2
    d = pow(exponent, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(exponent, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def test_an_issuer_with_an_expensive_key_is_left_out(pki: Pki) -> None:
    # A 2048-bit exponent makes each check with that key a full modular exponentiation:
    # CA/B Forum BR 6.1.6 forbids exponents above 2^256, and so do we.
    key = _rsa_with_exponent((1 << 2047) + 1)
    cert, _ = make_ca("expensive CA", key=key, parent=pki.ca)
    expensive = Issued(cert, key, Path("/nonexistent"), Path("/nonexistent"))
    leaf, _ = issue("expensive.test", expensive)
    assert verify_chain([_der(leaf), _der(cert)], RootStore([pki.ca.cert]), NOW) == (
        False, "unsupported-key")


def test_a_dsa_issuer_is_left_out_without_a_warning(pki: Pki) -> None:
    # DSA is not Web PKI: the intermediate is left out by its algorithm identifier, before
    # its key is loaded (cryptography >= 51 warns on every DSA load; warnings are errors here)
    key = certs.dsa_key()
    cert, _ = make_ca("DSA CA", key=key, parent=pki.ca)
    dsa_ca = Issued(cert, key, Path("/nonexistent"), Path("/nonexistent"))
    with warnings.catch_warnings():  # signing the leaf with the DSA key is test set-up
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        leaf, _ = issue("dsa-issued.test", dsa_ca)
    assert verify_chain([_der(leaf), _der(cert)], RootStore([pki.ca.cert]), NOW) == (
        False, "unsupported-key")


# --- naming what the library refused ----------------------------------------------------------


def test_policy_refusals_are_named(pki: Pki) -> None:
    roots = RootStore([pki.ca.cert])
    no_san, _ = issue("nosan.test", pki.ca, sans=[])
    assert verify_chain([_der(no_san)], roots, NOW) == (False, "no-subject-alt-name")
    assert verify_chain([pki.client.der], roots, NOW) == (False, "wrong-purpose")
    # sound by name, signature, CA flag and date, but without the authorityKeyIdentifier
    # the Web PKI profile requires of a leaf
    no_aki = (x509.CertificateBuilder().subject_name(name("noaki.test"))
              .issuer_name(pki.ca.cert.subject).public_key(pki.ec.key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=9))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("noaki.test")]), False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
              .sign(pki.ca.key, hashes.SHA256()))
    assert verify_chain([_der(no_aki)], roots, NOW) == (False, "policy-violation")


def test_an_ip_or_wildcard_name_is_enough_to_ask(pki: Pki) -> None:
    roots = RootStore([pki.ca.cert])
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                                      x509.DNSName("*.broker.test")]
    for one in names:
        leaf, _ = issue("named.test", pki.ca, sans=[one])
        assert verify_chain([_der(leaf)], roots, NOW) == (True, None), one


# --- the verdict cache ------------------------------------------------------------------------


def test_verdicts_belong_to_their_store(pki: Pki) -> None:
    """Stores come and go; a new one must never see a dropped one's verdicts (the cache
    used to be keyed by ``id(store)``, and CPython hands ids out again)."""
    chain = [pki.server.der]
    for round_ in range(12):
        trusting = round_ % 2 == 0
        store = RootStore([pki.ca.cert] if trusting else [pki.other_ca.cert])
        expected = (True, None) if trusting else (False, "unknown-issuer")
        assert trust_of(chain, NOW, store) == expected, round_
        del store
        gc.collect()
