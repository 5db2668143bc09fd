"""A test PKI made with the `openssl` CLI: two CAs, the node's server certificate, scanner and PACS client
certificates, and the bad ones a security review tries (expired, not yet valid, another CA, revoked, a
certificate for another AE). Keys are unencrypted except `encrypted_key`, whose password is PASSWORD."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers.helpers import scaled

PASSWORD = "test-key-password"

_CA_CONFIG = """
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
crlnumber = {dir}/crlnumber
certificate = {dir}/ca.crt
private_key = {dir}/ca.key
default_md = sha256
default_crl_days = 30
policy = anything
copy_extensions = copy
unique_subject = no
[ anything ]
commonName = supplied
organizationName = optional
"""


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as PEM files."""
    cert: Path
    key: Path

    @property
    def subject_cn(self) -> str:
        return self.cert.stem


def _openssl(*args: str, cwd: Path | None = None) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=scaled(30))
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr[-1000:]}")


class TestCA:
    """One certification authority in `folder`, issuing leaf certificates with `openssl ca` (which can set
    any validity period and keeps the index a CRL is made from)."""
    __test__ = False                 # a builder, not a test class

    def __init__(self, folder: Path, name: str) -> None:
        self.dir = folder
        (folder / "issued").mkdir(parents=True)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("1000\n")
        (folder / "crlnumber").write_text("1000\n")
        self.config = folder / "ca.cnf"
        self.config.write_text(_CA_CONFIG.format(dir=folder))
        self.cert, self.key = folder / "ca.crt", folder / "ca.key"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
                 "-subj", f"/CN={name}", "-days", "30", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, cn: str, *, sans: tuple[str, ...] = (), start: str = "", end: str = "", days: int = 30,
              password: str = "") -> Identity:
        """A leaf certificate for `cn` (its SANs: "DNS:..." / "IP:..." entries; none: DNS:<cn lowercased>),
        valid `days` from now, or from `start` to `end` (YYYYMMDDHHMMSSZ)."""
        key, csr, cert = self.dir / f"{cn}.key", self.dir / f"{cn}.csr", self.dir / f"{cn}.crt"
        names = ",".join(sans or (f"DNS:{cn.lower()}",))
        _openssl("req", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
                 "-addext", f"subjectAltName={names}",
                 *(["-passout", f"pass:{password}"] if password else ["-nodes"]))
        period = ["-startdate", start, "-enddate", end] if start else ["-days", str(days)]
        _openssl("ca", "-batch", "-config", str(self.config), "-in", str(csr), "-out", str(cert), "-notext",
                 *period)
        return Identity(cert, key)

    def revoke(self, identity: Identity) -> Path:
        """Revoke `identity` and write the CA's CRL; its path."""
        _openssl("ca", "-config", str(self.config), "-revoke", str(identity.cert))
        crl = self.dir / "ca.crl"
        _openssl("ca", "-config", str(self.config), "-gencrl", "-out", str(crl))
        return crl

    def empty_crl(self) -> Path:
        crl = self.dir / "ca.crl"
        _openssl("ca", "-config", str(self.config), "-gencrl", "-out", str(crl))
        return crl


@dataclass(frozen=True)
class TestPKI:
    __test__ = False
    ca: TestCA
    other_ca: TestCA
    node: Identity                 # the node's server certificate (localhost, 127.0.0.1)
    scanner: Identity              # CN=SCANNER: the scanner's client certificate
    pacs: Identity                 # CN=ORTHANC, SAN localhost: Orthanc's, as a server and as a client
    expired: Identity
    not_yet_valid: Identity
    stranger: Identity             # CN=SCANNER, issued by the other CA
    revoked: Identity
    crl: Path
    encrypted_key: Identity        # the node's certificate again, its key encrypted with PASSWORD


def make_pki(folder: Path) -> TestPKI:
    ca = TestCA(folder / "ca", "Segnode Test CA")
    other = TestCA(folder / "other-ca", "Someone Else's CA")
    node = ca.issue("segnode", sans=("DNS:localhost", "IP:127.0.0.1"))
    revoked = ca.issue("REVOKED")
    crl = ca.revoke(revoked)
    return TestPKI(
        ca=ca, other_ca=other, node=node,
        scanner=ca.issue("SCANNER"),
        pacs=ca.issue("ORTHANC", sans=("DNS:localhost", "IP:127.0.0.1")),
        expired=ca.issue("EXPIRED", start="20200101000000Z", end="20200201000000Z"),
        not_yet_valid=ca.issue("FUTURE", start="20991201000000Z", end="20991231000000Z"),
        stranger=other.issue("SCANNER"),
        revoked=revoked, crl=crl,
        encrypted_key=ca.issue("segnode-locked", sans=("DNS:localhost", "IP:127.0.0.1"), password=PASSWORD),
    )
