"""TLS to the lease port with Python's ``ssl``: a throwaway CA and certificates made with the
``openssl`` CLI per test module."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Tuple

import pytest

from snowlease import Client, ConfigError, TLSError, TLSOptions, Unavailable

from conftest import Server, assert_unique_and_increasing

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key, self.ca = root / "ca.key", root / "ca.pem"
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                  "-subj", "/CN=snowlease test CA")

    def _run(self, *args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, cwd=self.root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leaf(self, name: str, sans: str, client: bool = False) -> Tuple[Path, Path]:
        key, csr, cert = (self.root / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        ext = self.root / f"{name}.ext"
        usage = "clientAuth" if client else "serverAuth"
        ext.write_text(f"subjectAltName={sans}\nextendedKeyUsage={usage}\n"
                       "basicConstraints=CA:FALSE\n")
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        self._run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                  "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext)
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield Pki(tmp_path_factory.mktemp("pki"))


def tls_server(servers: Callable[..., Server], pki: Pki, sans: str, *extra: str) -> Server:
    cert, key = pki.leaf("server-" + sans.replace(":", "_").replace(",", "_"), sans)
    return servers(7, "--tls-cert", str(cert), "--tls-key", str(key), *extra)


def test_a_client_over_tls_hands_out_unique_ids(servers: Callable[..., Server], pki: Pki) -> None:
    srv = tls_server(servers, pki, "IP:127.0.0.1,DNS:localhost")
    with Client(srv.lease_addr, tls=TLSOptions(ca_file=str(pki.ca))) as client:
        ids = [client.next_id() for _ in range(200_000)]
        assert client.decode(ids[0]).worker == 7
    assert_unique_and_increasing([ids])


def test_a_ready_ssl_context_works_too(servers: Callable[..., Server], pki: Pki) -> None:
    srv = tls_server(servers, pki, "IP:127.0.0.1,DNS:localhost")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with Client(srv.lease_addr, tls=ctx) as client:
        assert client.decode(client.next_id()).worker == 7


def test_the_name_checked_is_the_endpoint_host_unless_overridden(
        servers: Callable[..., Server], pki: Pki) -> None:
    srv = tls_server(servers, pki, "DNS:snowlease.test")
    start = time.monotonic()
    with pytest.raises(TLSError, match="certificate"):
        Client(srv.lease_addr, tls=TLSOptions(ca_file=str(pki.ca)), timeout=5.0)
    assert time.monotonic() - start < 4.0, "a misnamed certificate fails fast"
    tls = TLSOptions(ca_file=str(pki.ca), server_name="snowlease.test")
    with Client(srv.lease_addr, tls=tls) as client:
        assert client.decode(client.next_id()).worker == 7


def test_an_untrusted_certificate_is_refused(servers: Callable[..., Server], pki: Pki,
                                             tmp_path: Path) -> None:
    other = Pki(tmp_path)
    srv = tls_server(servers, pki, "IP:127.0.0.1")
    with pytest.raises(TLSError):
        Client(srv.lease_addr, tls=TLSOptions(ca_file=str(other.ca)), timeout=5.0)


def test_a_tls_client_against_a_plaintext_server_fails_fast_and_says_so(
        servers: Callable[..., Server], pki: Pki) -> None:
    srv = servers(8)
    with pytest.raises((TLSError, Unavailable)) as info:
        Client(srv.lease_addr, tls=TLSOptions(ca_file=str(pki.ca)), timeout=2.0)
    err = info.value
    assert "TLS" in f"{err} {getattr(err, 'cause', '')}"


def test_unusable_tls_files_are_a_configuration_error_naming_the_file(
        pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="junk.pem"):
        Client("127.0.0.1:1", tls=TLSOptions(ca_file=str(junk)))
    with pytest.raises(ConfigError, match="go together"):
        Client("127.0.0.1:1", tls=TLSOptions(ca_file=str(pki.ca), cert_file=str(pki.ca)))


def test_mutual_tls_works_with_a_client_identity_and_refuses_without_one(
        servers: Callable[..., Server], pki: Pki) -> None:
    srv = tls_server(servers, pki, "IP:127.0.0.1", "--tls-client-ca", str(pki.ca))
    cert, key = pki.leaf("client", "DNS:client", client=True)
    tls = TLSOptions(ca_file=str(pki.ca), cert_file=str(cert), key_file=str(key))
    with Client(srv.lease_addr, tls=tls) as client:
        assert client.decode(client.next_id()).worker == 7
    with pytest.raises((TLSError, Unavailable)) as info:
        Client(srv.lease_addr, tls=TLSOptions(ca_file=str(pki.ca)), timeout=2.0)
    err = info.value
    assert "TLS" in f"{err} {getattr(err, 'cause', '')}"
