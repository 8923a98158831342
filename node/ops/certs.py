"""X.509 material for mutual TLS between shardline nodes, clients and operators.

Pure library functions over ``cryptography`` (no sockets, no global state):

- :func:`make_ca` creates a self-signed certificate authority;
- :func:`make_node_cert` issues a certificate signed by that CA, valid for both ends of a
  mutual-TLS connection (``serverAuth`` and ``clientAuth``), with DNS and IP SANs;
- :func:`write_dev_pki` writes a development PKI to a directory: ``ca.pem``, ``ca-key.pem``,
  ``<node>.pem`` and ``<node>-key.pem`` (keys readable by the owner only, mode 0600).

Keys are ECDSA P-256, PEM-encoded PKCS#8 without a passphrase; certificates are PEM. A
development CA is for test clusters: production clusters should issue certificates from
their own PKI (cert-manager, Vault, …) with the same extensions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevPki", "make_ca", "make_node_cert", "parse_san", "write_dev_pki"]

CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates become valid this long before they are made (peers' clocks differ)."""

_NODE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_NAMES = frozenset({"ca"})


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a whole number >= 1, not {days!r}")


def _check_common_name(common_name: str) -> None:
    if not isinstance(common_name, str) or not common_name.strip():
        raise ValueError("common_name must not be empty")
    if len(common_name) > 64:  # RFC 5280 upper bound for CN
        raise ValueError(f"common_name must be at most 64 characters: {common_name!r}")


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - CLOCK_SKEW, now + datetime.timedelta(days=days)


def parse_san(value: str) -> x509.GeneralName:
    """``"10.0.0.7"`` / ``"::1"`` -> an IP SAN; ``"node-1"``, ``"*.peers.svc"`` -> a DNS SAN."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError(f"subject alternative name must not be empty: {value!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text.isascii() or any(c.isspace() or c in "/:@" for c in text):
        raise ValueError(
            f"subject alternative name {value!r} is neither an IP address nor an ASCII DNS name"
        )
    return x509.DNSName(text.lower())


def make_ca(common_name: str = "shardline dev CA", days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed CA that may sign leaf certificates only: ``(key_pem, cert_pem)``."""
    _check_common_name(common_name)
    _check_days(days)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(
    ca_key_pem: bytes, ca_cert_pem: bytes
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC private key (as made by make_ca)")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("the CA certificate has no basicConstraints: not a CA") from None
    if not constraints.ca:
        raise ValueError("the CA certificate is not a CA (basicConstraints ca=false)")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if ca_key.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
        raise ValueError("the CA key does not belong to the CA certificate")
    return ca_key, ca_cert


def make_node_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    common_name: str,
    sans: Sequence[str],
    days: int = 365,
) -> tuple[bytes, bytes]:
    """A leaf certificate for mutual TLS, signed by the CA: ``(key_pem, cert_pem)``.

    ``sans`` are DNS names (wildcards allowed in the first label) and IP addresses the
    certificate is valid for; peers verify the address they dial against them. With no
    SANs the certificate is only good as a client certificate.
    """
    _check_common_name(common_name)
    _check_days(days)
    if isinstance(sans, str):
        raise TypeError("sans must be a list of names, not one string")
    names = list(dict.fromkeys(parse_san(s) for s in sans))
    ca_key, ca_cert = _load_ca(ca_key_pem, ca_cert_pem)
    key = _new_key()
    public = key.public_key()
    not_before, not_after = _validity(days)
    not_after = min(not_after, ca_cert.not_valid_after_utc)  # never outlive the issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class DevPki:
    """Where :func:`write_dev_pki` put its files."""

    ca_cert: Path
    ca_key: Path
    node_certs: dict[str, Path]
    node_keys: dict[str, Path]

    def paths(self) -> Iterator[Path]:
        """Every file written, CA first, then each node's certificate and key."""
        yield self.ca_cert
        yield self.ca_key
        for node, cert in self.node_certs.items():
            yield cert
            yield self.node_keys[node]


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through os.open
        os.write(fd, data)
    finally:
        os.close(fd)


def write_dev_pki(
    out_dir: Path | str,
    nodes: Sequence[str],
    sans: Sequence[str] = (),
    *,
    days: int = 365,
    overwrite: bool = False,
) -> DevPki:
    """Write a development CA and one certificate per node into ``out_dir``.

    Each node's certificate is valid for the node's own name (a DNS SAN) plus ``sans``
    (shared names: ``localhost``, ``127.0.0.1``, a Service name, a wildcard for a headless
    Service). Files: ``ca.pem``, ``ca-key.pem``, ``<node>.pem``, ``<node>-key.pem``; keys
    are mode 0600, certificates 0644. Existing files are an error unless ``overwrite``.
    """
    if isinstance(nodes, str) or isinstance(sans, str):
        raise TypeError("nodes and sans must be lists of names, not one string")
    if not nodes:
        raise ValueError("give at least one node name")
    for node in nodes:
        if not _NODE_FILE_NAME.match(node) or node.lower() in _RESERVED_NAMES:
            raise ValueError(
                f"node name {node!r} cannot name a file: use letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit, at most 128 characters, not 'ca')"
            )
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"node names must be unique: {list(nodes)}")
    for san in sans:
        parse_san(san)  # fail before anything is written
    _check_days(days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pki = DevPki(
        ca_cert=out / "ca.pem",
        ca_key=out / "ca-key.pem",
        node_certs={n: out / f"{n}.pem" for n in nodes},
        node_keys={n: out / f"{n}-key.pem" for n in nodes},
    )
    if not overwrite:
        existing = [str(p) for p in pki.paths() if p.exists()]
        if existing:
            raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    ca_key, ca_cert = make_ca(days=days)
    _write(pki.ca_key, ca_key, 0o600, overwrite)
    _write(pki.ca_cert, ca_cert, 0o644, overwrite)
    for node in nodes:
        key, cert = make_node_cert(ca_key, ca_cert, node, [node, *sans], days)
        _write(pki.node_keys[node], key, 0o600, overwrite)
        _write(pki.node_certs[node], cert, 0o644, overwrite)
    return pki
