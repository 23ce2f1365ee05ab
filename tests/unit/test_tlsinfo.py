"""Certificate description, offline chain verification and the private-hook self-check
(workers/tlsinfo.py, tlstrust.py, tlshooks.py), no network."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from brokerscan.model import TlsInfo
from tests.certs import Issued, Pki, dsa_key, issue, make_ca, make_pki, name
from workers.tlshooks import HandshakeWatch, TlsSelfCheckError, check_hooks, peer_chain
from workers.tlsinfo import (
    Describer,
    HandshakeFacts,
    describe_certificate,
    describe_tls,
    failed_handshake_info,
    late_handshake_failure,
)
from workers.tlstrust import RootStore, system_roots, trust_of, verify_chain

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tlsinfo-pki"))


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issued(cert_key: tuple[x509.Certificate, object]) -> Issued:
    cert, key = cert_key
    return Issued(cert, key, Path("/nonexistent"), Path("/nonexistent"))  # type: ignore[arg-type]


# --- describe_certificate -----------------------------------------------------------------


def test_server_certificate_facts(tls_pki: Pki) -> None:
    cert = tls_pki.server.cert
    desc = describe_certificate(tls_pki.server.der, NOW)
    assert desc is not None
    assert desc.subject == "O=brokerscan tests,CN=broker.test"
    assert desc.issuer == "O=brokerscan tests,CN=brokerscan test root CA"
    assert desc.subject_cn == "broker.test"
    assert desc.sans == ["DNS:broker.test", "DNS:localhost", "IP:127.0.0.1", "IP:127.44.0.1",
                         "URI:mqtts://broker.test", "email:ops@broker.test"]
    assert desc.serial == format(cert.serial_number, "x")
    assert desc.not_before == cert.not_valid_before_utc
    assert desc.not_after == cert.not_valid_after_utc
    assert desc.not_before.tzinfo is not None
    assert (desc.key_type, desc.key_bits, desc.key_curve) == ("RSA", 2048, None)
    assert desc.signature_algorithm == "sha256WithRSAEncryption"
    assert desc.sha256 == hashlib.sha256(tls_pki.server.der).hexdigest()
    assert (desc.self_signed, desc.expired, desc.not_yet_valid) == (False, False, False)


def test_self_signed_and_ca(tls_pki: Pki) -> None:
    for issued in (tls_pki.selfsigned, tls_pki.ca, tls_pki.other_ca):
        desc = describe_certificate(issued.der, NOW)
        assert desc is not None and desc.self_signed, issued.cert_path.name
    inter = describe_certificate(tls_pki.intermediate.der, NOW)
    assert inter is not None and not inter.self_signed


def test_same_names_but_signed_by_another_key_is_not_self_signed(tls_pki: Pki) -> None:
    # issuer == subject, yet the CA's key signed it: the name alone must not decide.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(name("loop")).issuer_name(name("loop"))
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .sign(tls_pki.ca.key, hashes.SHA256()))
    desc = describe_certificate(_der(cert), NOW)
    assert desc is not None and not desc.self_signed
    assert verify_chain([_der(cert)], [tls_pki.ca.cert], NOW) == (False, "unknown-issuer")


def test_expired_and_not_yet_valid(tls_pki: Pki) -> None:
    expired = describe_certificate(tls_pki.expired.der, NOW)
    notyet = describe_certificate(tls_pki.notyet.der, NOW)
    assert expired is not None and expired.expired and not expired.not_yet_valid
    assert notyet is not None and notyet.not_yet_valid and not notyet.expired
    # judged at the observation time given, not the wall clock
    later = describe_certificate(tls_pki.server.der, NOW + timedelta(days=3650))
    assert later is not None and later.expired


def test_ec_and_ed25519_keys(tls_pki: Pki) -> None:
    ec_desc = describe_certificate(tls_pki.ec.der, NOW)
    ed_desc = describe_certificate(tls_pki.ed25519.der, NOW)
    assert ec_desc is not None and ed_desc is not None
    assert (ec_desc.key_type, ec_desc.key_bits, ec_desc.key_curve) == ("EC", 256, "secp256r1")
    assert (ed_desc.key_type, ed_desc.key_bits) == ("Ed25519", 256)
    # both are signed by the RSA root
    assert ec_desc.signature_algorithm == ed_desc.signature_algorithm == "sha256WithRSAEncryption"
    ed_self = _issued(issue("ed-self", None, key=tls_pki.ed25519.key))
    desc = describe_certificate(ed_self.der, NOW)
    assert desc is not None and desc.signature_algorithm == "ed25519" and desc.self_signed


def test_dsa_key_is_recorded_without_a_warning(tls_pki: Pki) -> None:
    # cryptography >= 51 warns on every DSA load; the suite turns warnings into errors
    dsa_leaf = _issued(issue("dsa.test", tls_pki.ca, key=dsa_key()))
    desc = describe_certificate(dsa_leaf.der, NOW)
    assert desc is not None
    assert (desc.key_type, desc.key_bits, desc.key_curve) == ("DSA", 2048, None)


def test_client_certificate_without_sans(tls_pki: Pki) -> None:
    desc = describe_certificate(tls_pki.client.der, NOW)
    assert desc is not None
    assert desc.subject_cn == "brokerscan-client" and desc.sans == []


@pytest.mark.parametrize("der", [b"", b"\x30\x03abc", b"not a certificate at all",
                                 b"\x30\x82\xff\xff" + b"\x00" * 40])
def test_garbage_der_does_not_raise(der: bytes) -> None:
    assert describe_certificate(der, NOW) is None
    assert verify_chain([der], [], NOW) == (False, "unparseable")


def test_truncated_der_does_not_raise(tls_pki: Pki) -> None:
    der = tls_pki.server.der
    for cut in (10, 100, len(der) // 2, len(der) - 1):
        assert describe_certificate(der[:cut], NOW) is None
        assert verify_chain([der[:cut]], [tls_pki.ca.cert], NOW)[0] is False


def _one_byte_serial_cert(tls_pki: Pki, cn: str) -> bytes:
    cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(tls_pki.ec.key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .sign(tls_pki.ec.key, hashes.SHA256()))
    return _der(cert)


def test_negative_serial_is_recorded(tls_pki: Pki) -> None:
    der = _one_byte_serial_cert(tls_pki, "negative.test")
    marker = b"\xa0\x03\x02\x01\x02\x02\x01\x01"  # version v3, then INTEGER serial 1
    assert der.count(marker) == 1
    patched = der.replace(marker, marker[:-1] + b"\xff")  # serial -1 (signature now bad)
    desc = describe_certificate(patched, NOW)
    assert desc is not None and desc.serial == "-1"
    assert not desc.self_signed  # the signature no longer verifies
    assert verify_chain([patched], [tls_pki.ca.cert], NOW)[0] is False


def test_non_utf8_name_does_not_raise(tls_pki: Pki) -> None:
    der = _one_byte_serial_cert(tls_pki, "zzzzzzzz.test")
    patched = der.replace(b"zzzzzzzz", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8")
    assert patched != der
    desc = describe_certificate(patched, NOW)  # None or a description: never an exception
    if desc is not None:
        assert desc.sha256 == hashlib.sha256(patched).hexdigest()
    assert verify_chain([patched], [tls_pki.ca.cert], NOW)[0] is False


# --- verify_chain -------------------------------------------------------------------------


def test_ca_as_root_trusts_its_leaves(tls_pki: Pki) -> None:
    roots = [tls_pki.ca.cert]
    for issued in (tls_pki.server, tls_pki.ec, tls_pki.ed25519):
        assert verify_chain([issued.der], roots, NOW) == (True, None), issued.cert_path.name
    # a clientAuth-only certificate is no server certificate (OpenSSL's purpose check and
    # every Web PKI verifier refuse it; the path builder before cryptography's took it)
    assert verify_chain([tls_pki.client.der], roots, NOW) == (False, "wrong-purpose")
    # the root sent along by the server changes nothing
    assert verify_chain([tls_pki.server.der, tls_pki.ca.der], roots, NOW) == (True, None)


def test_intermediate_must_be_presented(tls_pki: Pki) -> None:
    roots = [tls_pki.ca.cert]
    chain = [tls_pki.chained.der, tls_pki.intermediate.der]
    assert verify_chain(chain, roots, NOW) == (True, None)
    assert verify_chain(chain[:1], roots, NOW) == (False, "unknown-issuer")
    # order of the presented intermediates does not matter, junk among them is skipped
    assert verify_chain([chain[0], b"junk", tls_pki.server.der, chain[1]], roots,
                        NOW) == (True, None)


def test_self_signed_is_not_trusted(tls_pki: Pki) -> None:
    assert verify_chain([tls_pki.selfsigned.der], [tls_pki.ca.cert], NOW) == (
        False, "self-signed")
    # unless the store holds that very certificate
    assert verify_chain([tls_pki.selfsigned.der], [tls_pki.selfsigned.cert], NOW) == (
        True, None)


def test_untrusted_root_in_chain(tls_pki: Pki) -> None:
    chain = [tls_pki.stranger.der, tls_pki.other_ca.der]
    assert verify_chain(chain, [tls_pki.ca.cert], NOW) == (False, "self-signed-in-chain")


def test_wrong_issuer(tls_pki: Pki) -> None:
    assert verify_chain([tls_pki.server.der], [tls_pki.other_ca.cert], NOW) == (
        False, "unknown-issuer")
    assert verify_chain([tls_pki.stranger.der], [tls_pki.ca.cert], NOW) == (
        False, "unknown-issuer")


def test_forged_issuer_name_is_a_bad_signature(tls_pki: Pki) -> None:
    # a CA named like the trusted root, with its own key: its leaves must not verify
    impostor = _issued(make_ca("brokerscan test root CA"))
    leaf = _issued(issue("forged.test", impostor))
    assert verify_chain([leaf.der], [tls_pki.ca.cert], NOW) == (False, "bad-signature")


def test_expired_and_not_yet_valid_chains(tls_pki: Pki) -> None:
    roots = [tls_pki.ca.cert]
    assert verify_chain([tls_pki.expired.der], roots, NOW) == (False, "expired")
    assert verify_chain([tls_pki.notyet.der], roots, NOW) == (False, "not-yet-valid")
    assert verify_chain([tls_pki.server.der], roots, NOW + timedelta(days=400)) == (
        False, "expired")


def test_leaf_cannot_issue(tls_pki: Pki) -> None:
    sub = _issued(issue("sub.test", tls_pki.server))  # signed by a non-CA server cert
    assert verify_chain([sub.der, tls_pki.server.der], [tls_pki.ca.cert], NOW) == (
        False, "not-a-ca")


def test_path_length_is_enforced(tls_pki: Pki) -> None:
    deeper = _issued(make_ca("deeper CA", parent=tls_pki.intermediate))  # pathlen 0 broken
    leaf = _issued(issue("deep.test", deeper))
    chain = [leaf.der, deeper.der, tls_pki.intermediate.der]
    assert verify_chain(chain, [tls_pki.ca.cert], NOW) == (False, "path-too-long")


def test_depth_limit(tls_pki: Pki) -> None:
    parent = tls_pki.ca
    chain: list[bytes] = []
    for i in range(10):
        parent = _issued(make_ca(f"level {i}", parent=parent))
        chain.insert(0, parent.der)
    leaf = _issued(issue("deep.test", parent))
    assert verify_chain([leaf.der, *chain], [tls_pki.ca.cert], NOW) == (False, "path-too-long")


def test_empty_inputs() -> None:
    assert verify_chain([], [], NOW) == (False, "no-certificate")


def test_no_roots(tls_pki: Pki) -> None:
    assert verify_chain([tls_pki.server.der], [], NOW) == (False, "no-roots")


# --- trust_of, system roots, describe_tls ------------------------------------------------


def test_trust_of_caches_but_notices_expiry(tls_pki: Pki) -> None:
    store = RootStore([tls_pki.ca.cert])
    chain = [tls_pki.server.der]
    assert trust_of(chain, NOW, store) == (True, None)
    assert trust_of(chain, NOW + timedelta(seconds=1), store) == (True, None)
    after = tls_pki.server.cert.not_valid_after_utc + timedelta(seconds=1)
    assert trust_of(chain, after, store) == (False, "expired")
    assert trust_of(chain, NOW, store) == (True, None)


def test_system_roots_load_and_do_not_trust_the_test_pki(tls_pki: Pki) -> None:
    roots = system_roots()
    assert roots is system_roots()  # loaded once
    assert len(roots) > 10  # Debian ca-certificates
    assert trust_of([tls_pki.server.der], NOW) == (False, "unknown-issuer")
    assert trust_of([tls_pki.selfsigned.der], NOW) == (False, "self-signed")


def test_a_system_root_as_the_leaf_is_found_in_the_system_store() -> None:
    # The root is found (no "unknown-issuer"), but a CA certificate without a
    # subjectAltName is no server certificate under the Web PKI profile cryptography applies
    # (the path builder before it called this trusted).
    root = system_roots()[0]
    assert trust_of([_der(root)], NOW) in ((False, "no-subject-alt-name"),
                                           (False, "policy-violation"), (False, "expired"))


def test_describe_tls_without_ssl_object() -> None:
    info = describe_tls(None, NOW)
    assert info.handshake_completed and info.certificate is None
    assert peer_chain(None) == []


# --- client certificate verdicts ----------------------------------------------------------


def test_failed_handshake_after_certificate_request() -> None:
    watch = HandshakeWatch(certificate_requested=True, alert="handshake-failure")
    info = failed_handshake_info("sslv3-alert-handshake-failure", watch)
    assert info.client_certificate_required and not info.handshake_completed
    assert info.error == "sslv3-alert-handshake-failure"
    # the same alert without a CertificateRequest is a cipher/version mismatch
    plain = failed_handshake_info("sslv3-alert-handshake-failure",
                                  HandshakeWatch(alert="handshake-failure"))
    assert not plain.client_certificate_required
    assert failed_handshake_info("tlsv13-alert-certificate-required",
                                 None).client_certificate_required
    assert not failed_handshake_info("wrong-version-number", None).client_certificate_required


def test_late_alert_turns_into_failed_handshake() -> None:
    done = TlsInfo(handshake_completed=True, version="TLSv1.3", chain_length=1)
    late = late_handshake_failure(done, "tls: tlsv13-alert-certificate-required")
    assert late is not None
    assert late.client_certificate_required and not late.handshake_completed
    assert late.version == "TLSv1.3" and late.error == "tlsv13-alert-certificate-required"
    other = late_handshake_failure(done, "sslv3-alert-bad-record-mac")
    assert other is not None and not other.client_certificate_required
    assert late_handshake_failure(done, "ECONNRESET") is None
    assert late_handshake_failure(done, ConnectionResetError()) is None
    assert late_handshake_failure(None, "tlsv13-alert-certificate-required") is None


# --- the private ssl hooks and their self-check ---------------------------------------------


def test_hook_self_check_passes_on_this_python() -> None:
    check_hooks()  # a real handshake in memory: CertificateRequest seen, both certs read


@pytest.mark.parametrize(("seam", "says"), [
    ({"attribute": "_msg_callback_gone"}, "did not report the server's CertificateRequest"),
    ({"method": "get_unverified_chain_gone"}, "gave 1 of the 2 certificates"),
])
def test_hook_self_check_fails_in_one_line_when_a_hook_is_gone(seam: dict[str, str],
                                                               says: str) -> None:
    # A renamed hook is what a future Python would look like: setting an unknown attribute
    # on an SSLContext succeeds and does nothing, a missing getter leaves the leaf alone.
    with pytest.raises(TlsSelfCheckError) as failed:
        check_hooks(**seam)
    message = str(failed.value)
    assert says in message and "\n" not in message
    assert next(iter(seam.values())) in message


# --- off the event loop ----------------------------------------------------------------------


async def test_describer_gives_up_after_its_timeout(tls_pki: Pki) -> None:
    facts = HandshakeFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", None, (tls_pki.server.der,))
    done = await Describer(timeout=5).describe(facts, NOW)
    assert done.certificate is not None and done.trust_error == "unknown-issuer"
    release = threading.Event()
    busy = Describer.pool().submit(release.wait, 10)  # the one worker thread is taken
    try:
        late = await Describer(timeout=0.2).describe(facts, NOW)
    finally:
        release.set()
        busy.result(timeout=10)
    assert late.trust_error == "verdict-timeout" and late.trusted is None
    assert late.certificate is None and late.chain_length == 1 and late.version == "TLSv1.3"
