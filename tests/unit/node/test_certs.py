"""Tests for node/ops/certs.py: CA and node certificates, mutual TLS, the dev PKI on disk.

The handshakes run two ``ssl.SSLObject`` ends over in-memory BIOs: real TLS, no sockets.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from shardline.node.ops.certs import make_ca, make_node_cert, parse_san, write_dev_pki


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return make_ca("test CA", days=30)


@pytest.fixture(scope="module")
def other_ca() -> tuple[bytes, bytes]:
    return make_ca("someone else's CA", days=30)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# --------------------------------------------------------------------------- certificates


def test_ca_is_a_self_signed_ca(ca: tuple[bytes, bytes]) -> None:
    key_pem, cert_pem = ca
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = _cert(cert_pem)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_node_cert_for_mutual_tls(ca: tuple[bytes, bytes]) -> None:
    key_pem, cert_pem = make_node_cert(*ca, "node-1", ["node-1", "localhost", "10.1.2.3", "::1"])
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = _cert(cert_pem)
    cert.verify_directly_issued_by(_cert(ca[1]))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-1", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.not_valid_after_utc <= _cert(ca[1]).not_valid_after_utc


def test_node_cert_verifies_as_server_and_client_against_the_ca(
    ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes]
) -> None:
    _, cert_pem = make_node_cert(*ca, "node-1", ["node-1.peers.svc", "10.0.0.7"])
    leaf = _cert(cert_pem)
    policy = PolicyBuilder().store(Store([_cert(ca[1])]))
    policy.build_server_verifier(x509.DNSName("node-1.peers.svc")).verify(leaf, [])
    policy.build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.7"))).verify(leaf, [])
    policy.build_client_verifier().verify(leaf, [])
    with pytest.raises(VerificationError):
        policy.build_server_verifier(x509.DNSName("node-2.peers.svc")).verify(leaf, [])
    stranger = PolicyBuilder().store(Store([_cert(other_ca[1])]))
    with pytest.raises(VerificationError):
        stranger.build_client_verifier().verify(leaf, [])


def test_wildcard_san_covers_every_pod_of_a_headless_service(ca: tuple[bytes, bytes]) -> None:
    _, cert_pem = make_node_cert(*ca, "shardline", ["*.shardline-peers.shardline.svc"])
    policy = PolicyBuilder().store(Store([_cert(ca[1])]))
    name = x509.DNSName("shardline-2.shardline-peers.shardline.svc")
    policy.build_server_verifier(name).verify(_cert(cert_pem), [])


@pytest.mark.parametrize("bad", ["", "  ", "a b", "http://x", "nodé", "user@host"])
def test_bad_sans_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_san(bad)


def test_bad_arguments_are_refused(ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="days"):
        make_ca("x", days=0)
    with pytest.raises(ValueError, match="common_name"):
        make_ca("", days=1)
    with pytest.raises(TypeError):
        make_node_cert(*ca, "n", "localhost")
    leaf_key, leaf_cert = make_node_cert(*ca, "n", ["n"])
    with pytest.raises(ValueError, match="not a CA"):
        make_node_cert(leaf_key, leaf_cert, "m", ["m"])
    other_key, _ = make_ca("other", days=1)
    with pytest.raises(ValueError, match="does not belong"):
        make_node_cert(other_key, ca[1], "m", ["m"])


# --------------------------------------------------------------------------- mutual TLS


def _files(tmp_path: Path, name: str, key_pem: bytes, cert_pem: bytes) -> tuple[str, str]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return str(cert), str(key)


def _server_context(tmp_path: Path, ca: tuple[bytes, bytes]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*_files(tmp_path, "server", *make_node_cert(*ca, "node-1", ["node-1"])))
    ctx.load_verify_locations(cadata=ca[1].decode())
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a client must show a certificate
    return ctx


def _client_context(
    tmp_path: Path, trust: tuple[bytes, bytes], identity: tuple[bytes, bytes] | None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trust[1].decode())
    if identity is not None:
        ctx.load_cert_chain(*_files(tmp_path, "client", *identity))
    return ctx


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> bytes:
    """Run a TLS handshake and one round trip in memory; return what the server read."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), f"handshake stalled: {done}"
    client.write(b"ping")
    s_in.write(c_out.read())
    data = server.read(4)  # TLS 1.3: the server checks the client certificate here at the latest
    c_in.write(s_out.read())
    return data


def test_mutual_tls_accepts_a_client_signed_by_the_ca(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    client = _client_context(tmp_path, ca, make_node_cert(*ca, "node-2", ["node-2"]))
    assert _handshake(_server_context(tmp_path, ca), client, "node-1") == b"ping"


def test_mutual_tls_refuses_a_client_from_another_ca(
    tmp_path: Path, ca: tuple[bytes, bytes], other_ca: tuple[bytes, bytes]
) -> None:
    intruder = make_node_cert(*other_ca, "node-9", ["node-9"])
    client = _client_context(tmp_path, ca, intruder)
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        _handshake(_server_context(tmp_path, ca), client, "node-1")


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    client = _client_context(tmp_path, ca, None)
    with pytest.raises(ssl.SSLError):
        _handshake(_server_context(tmp_path, ca), client, "node-1")


def test_client_refuses_a_server_whose_name_is_not_in_its_sans(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    client = _client_context(tmp_path, ca, make_node_cert(*ca, "node-2", ["node-2"]))
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(_server_context(tmp_path, ca), client, "node-7")


# --------------------------------------------------------------------------- dev PKI on disk


def test_write_dev_pki(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    pki = write_dev_pki(out, ["node-1", "node-2"], ["localhost", "127.0.0.1"], days=7)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["ca.pem", "ca-key.pem", "node-1.pem", "node-1-key.pem", "node-2.pem", "node-2-key.pem"]
    )
    assert sorted(p.name for p in pki.paths()) == names
    for key in (pki.ca_key, *pki.node_keys.values()):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for cert in (pki.ca_cert, *pki.node_certs.values()):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    ca_cert = _cert(pki.ca_cert.read_bytes())
    policy = PolicyBuilder().store(Store([ca_cert]))
    for node, path in pki.node_certs.items():
        leaf = _cert(path.read_bytes())
        for name in (node, "localhost"):
            policy.build_server_verifier(x509.DNSName(name)).verify(leaf, [])
        ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        policy.build_server_verifier(ip).verify(leaf, [])
        # each key file holds the key of its certificate: TLS can load the pair
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path, pki.node_keys[node])


def test_write_dev_pki_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    first = write_dev_pki(tmp_path, ["node-1"])
    before = first.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.pem"):
        write_dev_pki(tmp_path, ["node-1"])
    assert first.ca_cert.read_bytes() == before
    first.ca_key.chmod(0o644)
    second = write_dev_pki(tmp_path, ["node-1"], overwrite=True)
    assert second.ca_cert.read_bytes() != before
    assert stat.S_IMODE(second.ca_key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("nodes", "sans"),
    [([], []), (["ca"], []), (["../x"], []), ([".hidden"], []), (["a", "a"], []), (["a"], [""])],
)
def test_write_dev_pki_refuses_bad_names_before_writing(
    tmp_path: Path, nodes: list[str], sans: list[str]
) -> None:
    with pytest.raises(ValueError):
        write_dev_pki(tmp_path, nodes, sans)
    assert list(tmp_path.iterdir()) == []
