"""Test PKI: certificates made with ``cryptography`` on the spot, written as PEM files.

Nothing is fetched and nothing is shared between runs: :func:`make_pki` builds a fresh
root CA, an intermediate CA and a set of leaves in a directory of your choice, e.g. for a
Mosquitto TLS listener::

    pki = make_pki(tmp_path)
    conf = f"user root\\ncafile {pki.ca.cert_path}\\ncertfile {pki.server.cert_path}\\n" \\
           f"keyfile {pki.server.key_path}\\nrequire_certificate true\\n"

Mosquitto started as root drops to the ``mosquitto`` user, which cannot read a pytest
``tmp_path`` (mode 0700): put ``user root`` in its configuration.

Files written (all PEM, keys unencrypted PKCS#8):

============================  ===========================================================
``ca.pem`` / ``ca.key``        root CA "brokerscan test root CA" (RSA 2048)
``intermediate.pem``/``.key``  intermediate CA signed by the root (path length 0)
``server.pem`` / ``.key``      RSA 2048 server cert from the root; CN ``broker.test``,
                               SANs DNS:broker.test, DNS:localhost, IP:127.0.0.1,
                               IP:127.44.0.1, URI:mqtts://broker.test, email:ops@broker.test
``chained.pem`` / ``.key``     server cert from the intermediate, the file holding leaf
                               then intermediate (a two-certificate chain on the wire)
``client.pem`` / ``.key``      client cert from the root (clientAuth), CN ``brokerscan-client``
``selfsigned.pem`` / ``.key``  self-signed RSA 2048 cert, CN ``selfsigned.test``
``expired.pem`` / ``.key``     root-signed, valid 2020-01-01 .. 2021-01-01
``notyet.pem`` / ``.key``      root-signed, valid from 2099-01-01
``ec.pem`` / ``.key``          root-signed, ECDSA P-256 key
``ed25519.pem`` / ``.key``     root-signed, Ed25519 key
``other-ca.pem`` / ``.key``    an unrelated root CA (for "unknown issuer" cases)
``stranger.pem`` / ``.key``    server cert from ``other-ca``
============================  ===========================================================
"""

from __future__ import annotations

import ipaddress
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Issued", "Pki", "issue", "make_ca", "make_pki", "name", "write_issued"]

PrivateKey = CertificateIssuerPrivateKeyTypes

# Fixed so that expired/not-yet-valid certificates stay so whatever the test clock says.
NOW = datetime.now(UTC).replace(microsecond=0)
_LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
_FAR_AHEAD = datetime(2099, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key, and where both were written (if they were)."""

    cert: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        """The certificate in DER form."""
        return self.cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Pki:
    """Every certificate :func:`make_pki` wrote; see the module docstring for the files."""

    dir: Path
    ca: Issued
    intermediate: Issued
    server: Issued
    chained: Issued
    client: Issued
    selfsigned: Issued
    expired: Issued
    notyet: Issued
    ec: Issued
    ed25519: Issued
    other_ca: Issued
    stranger: Issued


def name(cn: str, org: str | None = "brokerscan tests") -> x509.Name:
    """A subject/issuer name with a common name (and an organisation unless None)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def dsa_key() -> PrivateKey:
    """A 2048-bit DSA key: no Web PKI algorithm, still met on old brokers. cryptography >= 51
    deprecates DSA and warns on every use: the warning is silenced for this call only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        from cryptography.hazmat.primitives.asymmetric import dsa
        return dsa.generate_private_key(key_size=2048)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _aki(signer: PrivateKey) -> x509.AuthorityKeyIdentifier:
    # Web PKI validators (cryptography's among them) require it in end-entity certificates.
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(
        signer.public_key())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes,
             not_before: datetime, not_after: datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after))


def make_ca(cn: str, *, key: PrivateKey | None = None, parent: Issued | None = None,
            path_length: int | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """A CA certificate: self-signed when ``parent`` is None, else signed by it.

    :param cn: the CA's common name.
    :param key: its key (a fresh RSA 2048 key if None).
    :param parent: the issuing CA, for an intermediate.
    :param path_length: the basicConstraints path length.
    :returns: (certificate, private key), not yet written anywhere.
    """
    key = key or _rsa()
    issuer_name = parent.cert.subject if parent else name(cn)
    signer = parent.key if parent else key
    builder = (_builder(name(cn), issuer_name, key.public_key(), NOW - timedelta(days=1),
                        NOW + timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                              critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                   key.public_key()), critical=False))
    if parent is not None:
        builder = builder.add_extension(_aki(parent.key), critical=False)
    return builder.sign(signer, _hash_for(signer)), key


def issue(cn: str, issuer: Issued | None, *, key: PrivateKey | None = None,
          sans: list[x509.GeneralName] | None = None, client: bool = False,
          not_before: datetime | None = None,
          not_after: datetime | None = None) -> tuple[x509.Certificate, PrivateKey]:
    """An end-entity certificate signed by ``issuer`` (self-signed when None).

    :param cn: the subject common name.
    :param issuer: the signing CA, or None for a self-signed certificate.
    :param key: the subject's key (a fresh RSA 2048 key if None).
    :param sans: subjectAltName entries (default: ``DNS:<cn>``; ``[]``: no extension).
    :param client: mark it for clientAuth instead of serverAuth.
    :param not_before: start of validity (default: a day ago).
    :param not_after: end of validity (default: a year from now).
    :returns: (certificate, private key).
    """
    key = key or _rsa()
    subject = name(cn)
    signer = issuer.key if issuer else key
    builder = _builder(subject, issuer.cert.subject if issuer else subject, key.public_key(),
                       not_before or NOW - timedelta(days=1),
                       not_after or NOW + timedelta(days=365))
    names = sans if sans is not None else [x509.DNSName(cn)]
    if names:  # no names at all: no extension (an empty SAN is not valid DER, RFC 5280 4.2.1.6)
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                    critical=True)
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    builder = builder.add_extension(_aki(signer), critical=False)
    return builder.sign(signer, _hash_for(signer)), key


def write_issued(dirpath: Path, stem: str, cert: x509.Certificate, key: PrivateKey,
                 extra: list[x509.Certificate] | None = None) -> Issued:
    """Write ``<stem>.pem`` (cert, then ``extra`` certs) and ``<stem>.key`` (PKCS#8)."""
    cert_path = dirpath / f"{stem}.pem"
    key_path = dirpath / f"{stem}.key"
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *(extra or [])])
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(cert, key, cert_path, key_path)


def make_pki(dirpath: Path | str) -> Pki:
    """Generate the whole test PKI into ``dirpath`` (created if missing).

    :param dirpath: where the PEM files go.
    :returns: a :class:`Pki` with every certificate, key and path.
    """
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    ca = write_issued(d, "ca", *make_ca("brokerscan test root CA"))
    inter = write_issued(d, "intermediate", *make_ca("brokerscan test intermediate CA",
                                                     parent=ca, path_length=0))
    server_sans: list[x509.GeneralName] = [
        x509.DNSName("broker.test"), x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv4Address("127.44.0.1")),
        x509.UniformResourceIdentifier("mqtts://broker.test"),
        x509.RFC822Name("ops@broker.test"),
    ]
    server = write_issued(d, "server", *issue("broker.test", ca, sans=server_sans))
    chained_cert, chained_key = issue("chained.test", inter)
    chained = write_issued(d, "chained", chained_cert, chained_key, extra=[inter.cert])
    client = write_issued(d, "client", *issue("brokerscan-client", ca, client=True,
                                              sans=[]))
    selfsigned = write_issued(d, "selfsigned", *issue("selfsigned.test", None))
    expired = write_issued(d, "expired", *issue("expired.test", ca, not_before=_LONG_AGO,
                                                not_after=_LONG_AGO + timedelta(days=366)))
    notyet = write_issued(d, "notyet", *issue("notyet.test", ca, not_before=_FAR_AHEAD,
                                              not_after=_FAR_AHEAD + timedelta(days=365)))
    ec_leaf = write_issued(d, "ec", *issue("ec.test", ca,
                                           key=ec.generate_private_key(ec.SECP256R1())))
    ed_leaf = write_issued(d, "ed25519", *issue("ed25519.test", ca,
                                                key=ed25519.Ed25519PrivateKey.generate()))
    other_ca = write_issued(d, "other-ca", *make_ca("some other root CA"))
    stranger = write_issued(d, "stranger", *issue("stranger.test", other_ca))
    return Pki(d, ca, inter, server, chained, client, selfsigned, expired, notyet, ec_leaf,
               ed_leaf, other_ca, stranger)


# --- hostile chains: what a server may send to make a path search work hard ---------------


@dataclass(frozen=True)
class Hostile:
    """A chain built to make trust evaluation expensive, as a server would send it.

    :ivar name: what it is (``"duplicated-20"``, ``"long-50"``, ...).
    :ivar certs: the certificates in the order sent, leaf first.
    :ivar key: the leaf's private key (a server needs it to handshake).
    """

    name: str
    certs: list[x509.Certificate]
    key: PrivateKey

    @property
    def ders(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.certs]

    def write(self, dirpath: Path) -> tuple[Path, Path, Path]:
        """Write ``<name>-leaf.pem``, ``<name>-chain.pem`` (the rest) and ``<name>.key``.

        :returns: (leaf path, chain path, key path), as ``openssl s_server -cert -cert_chain
            -key`` take them.
        """
        issued = write_issued(dirpath, self.name, self.certs[0], self.key)
        leaf = dirpath / f"{self.name}-leaf.pem"
        issued.cert_path.rename(leaf)
        chain = dirpath / f"{self.name}-chain.pem"
        chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM)
                                   for c in self.certs[1:]))
        return leaf, chain, issued.key_path


def _ec() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to make, small on the wire (100 copies stay under OpenSSL's 100 KiB limit).
    return ec.generate_private_key(ec.SECP256R1())


def _ca_cert(subject: x509.Name, issuer: x509.Name, key: PrivateKey,
             signer: PrivateKey) -> x509.Certificate:
    builder = (_builder(subject, issuer, key.public_key(), NOW - timedelta(days=1),
                        NOW + timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(_aki(signer), critical=False))
    return builder.sign(signer, _hash_for(signer))


def _leaf_under(cn: str, issuer_name: x509.Name, signer: PrivateKey, *,
                key: PrivateKey | None = None,
                sans: list[x509.GeneralName] | None = None
                ) -> tuple[x509.Certificate, PrivateKey]:
    """A Web PKI shaped server leaf (SAN, AKI, serverAuth); self-signed when ``signer`` is
    ``key``."""
    key = key or _ec()
    builder = (_builder(name(cn), issuer_name, key.public_key(), NOW - timedelta(days=1),
                        NOW + timedelta(days=365))
               .add_extension(x509.SubjectAlternativeName(sans or [x509.DNSName(cn)]),
                              critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .add_extension(_aki(signer), critical=False))
    return builder.sign(signer, _hash_for(signer)), key


def duplicated_leaf(copies: int) -> Hostile:
    """A self-signed leaf that also sends itself ``copies`` times as its chain."""
    key = _ec()
    leaf, _ = _leaf_under("duplicated.test", name("duplicated.test"), key, key=key)
    return Hostile(f"duplicated-{copies}", [leaf] * (copies + 1), key)


def duplicated_ca(copies: int) -> Hostile:
    """A self-signed CA certificate used as the leaf, sent ``copies`` more times."""
    key = _ec()
    cert = _ca_cert(name("duplicated CA"), name("duplicated CA"), key, key)
    return Hostile(f"duplicated-ca-{copies}", [cert] * (copies + 1), key)


def long_chain(length: int) -> Hostile:
    """A leaf under ``length`` distinct intermediates, the last issued by an absent root."""
    root_key = _ec()
    issuer_name, signer = name("hostile absent root"), root_key
    above: list[x509.Certificate] = []
    for level in range(length, 0, -1):
        key = _ec()
        subject = name(f"hostile intermediate {level}")
        above.insert(0, _ca_cert(subject, issuer_name, key, signer))
        issuer_name, signer = subject, key
    leaf, leaf_key = _leaf_under("long.test", issuer_name, signer)
    return Hostile(f"long-{length}", [leaf, *above], leaf_key)


def loop_chain() -> Hostile:
    """A signs B signs A: two CA certificates with swapped issuers, and a leaf under A."""
    key_a, key_b = _ec(), _ec()
    name_a, name_b = name("loop CA A"), name("loop CA B")
    ca_a = _ca_cert(name_a, name_b, key_a, key_b)
    ca_b = _ca_cert(name_b, name_a, key_b, key_a)
    leaf, leaf_key = _leaf_under("loop.test", name_a, key_a)
    return Hostile("loop", [leaf, ca_a, ca_b], leaf_key)


def mesh_chain(size: int) -> Hostile:
    """``size`` distinct CA certificates with one name and one key (each signs every other),
    and a leaf under that name: the worst case for a path search that dedupes by content."""
    key = _ec()
    mesh_name = name("mesh CA")
    cas = [_ca_cert(mesh_name, mesh_name, key, key) for _ in range(size)]
    leaf, leaf_key = _leaf_under("mesh.test", mesh_name, key)
    return Hostile(f"mesh-{size}", [leaf, *cas], leaf_key)


def many_sans(count: int) -> Hostile:
    """A self-signed leaf naming ``count`` hosts in its subjectAltName."""
    key = _ec()
    sans: list[x509.GeneralName] = [x509.DNSName(f"h{i}.t") for i in range(count)]
    leaf, _ = _leaf_under("sans.test", name("sans.test"), key, key=key, sans=sans)
    return Hostile(f"sans-{count}", [leaf], key)
