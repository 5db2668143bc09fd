"""TLS for every door of the node: the `[tls]` settings, the server and client `ssl` contexts built from them
(the standard library's `ssl`, i.e. OpenSSL, does the cryptography), certificate files picked up again when
they change on disk, and the binding of a DICOM peer's AE title to its certificate. No network I/O here."""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node.errors import ConfigError

# BCP 195 (RFC 7525 section 4.2) for TLS 1.2, as DCMTK's "Non-downgrading BCP 195 TLS Profile": AEAD
# ciphers with forward secrecy only. TLS 1.3's own suites are all acceptable and stay OpenSSL's.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))
CLIENT_CERTIFICATE = ("required", "optional", "none")
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_RELOAD_CHECK_S = 1.0                 # how often the files' modification times are looked at, at most


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who may present itself as a calling AE title on the TLS port: a certificate with this subject common
    name (`CN:name`), this DNS subject alternative name (`DNS:name`), or this SHA-256 fingerprint
    (`sha256:hex`, colons allowed)."""
    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> PeerIdentity:
        kind, sep, value = text.strip().partition(":")
        kind = kind.lower()
        if not sep or not value or kind not in ("cn", "dns", "sha256"):
            raise ConfigError(f"[tls] peers: {text!r} must be CN:<subject name>, DNS:<name> or sha256:<fingerprint>")
        if kind == "sha256":
            value = value.replace(":", "").lower()
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ConfigError(f"[tls] peers: {text!r} is not a SHA-256 fingerprint (64 hex digits)")
        return cls(kind, value)

    def matches(self, cert: Mapping[str, Any], der: bytes) -> bool:
        if self.kind == "sha256":
            return hashlib.sha256(der).hexdigest() == self.value
        if self.kind == "cn":
            return self.value in subject_names(cert)
        return any(k == "DNS" and v.lower() == self.value.lower() for k, v in cert.get("subjectAltName", ()))

    def __str__(self) -> str:
        return f"{self.kind.upper() if self.kind != 'sha256' else 'sha256'}:{self.value}"


def subject_names(cert: Mapping[str, Any]) -> list[str]:
    """The commonName values of a certificate as `ssl.SSLSocket.getpeercert()` gives it."""
    return [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]


def describe(cert: Mapping[str, Any] | None) -> str:
    """A certificate for a log line or an audit entry: its subject CN and issuer CN (no patient data)."""
    if not cert:
        return "no certificate"
    issuer = [v for rdn in cert.get("issuer", ()) for k, v in rdn if k == "commonName"]
    return f"CN={','.join(subject_names(cert)) or '?'} (issuer CN={','.join(issuer) or '?'})"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certificate: str = ""                 # PEM: the node's certificate chain (leaf first)
    private_key: str = ""                 # PEM; if encrypted, its password only from SEGNODE_TLS__KEY_PASSWORD
    key_password: str = ""
    ca_file: str = ""                     # PEM: the CAs whose client certificates the DICOM TLS port trusts
    crl_file: str = ""                    # PEM: revoked client certificates (checked for the leaf)
    client_certificate: str = "required"  # the DICOM TLS port: "required", "optional" or "none"
    min_version: str = "1.2"              # "1.2" (BCP 195: 1.2 and 1.3) or "1.3"
    ciphers: str = BCP195_CIPHERS         # TLS 1.2 ciphers (OpenSSL names)
    handshake_timeout_s: float = 10.0     # a TLS handshake must end within this (like ARTIM for A-ASSOCIATE)
    peers: tuple[str, ...] = ()           # "AE=CN:name" | "AE=DNS:name" | "AE=sha256:hex": who may be that AE
    identities: Mapping[str, tuple[PeerIdentity, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.client_certificate not in CLIENT_CERTIFICATE:
            raise ConfigError(f"[tls] client_certificate must be one of {', '.join(CLIENT_CERTIFICATE)}, "
                              f"got {self.client_certificate!r}")
        if self.min_version not in _VERSIONS:
            raise ConfigError(f"[tls] min_version must be \"1.2\" or \"1.3\", got {self.min_version!r}")
        if not 0 < self.handshake_timeout_s <= 600:
            raise ConfigError(f"[tls] handshake_timeout_s must be in (0, 600], got {self.handshake_timeout_s}")
        if bool(self.certificate) != bool(self.private_key):
            raise ConfigError("[tls] certificate and private_key go together: set both or neither")
        identities: dict[str, list[PeerIdentity]] = {}
        for entry in self.peers:
            ae, sep, who = entry.partition("=")
            if not sep or not ae.strip() or len(ae.strip()) > 16:
                raise ConfigError(f"[tls] peers: {entry!r} must be \"AE_TITLE=CN:name\" (or DNS:, sha256:)")
            identities.setdefault(ae.strip(), []).append(PeerIdentity.parse(who))
        object.__setattr__(self, "identities", {k: tuple(v) for k, v in identities.items()})
        try:
            ssl.create_default_context().set_ciphers(self.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"[tls] ciphers: OpenSSL knows none of {self.ciphers!r}") from None

    @property
    def configured(self) -> bool:
        return bool(self.certificate)

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.certificate, self.private_key, self.ca_file, self.crl_file) if f)

    def check_files(self, section: str) -> None:
        """ConfigError naming the first file that `section`'s TLS needs and cannot be read."""
        if not self.configured:
            raise ConfigError(f"[{section}] TLS needs [tls] certificate and private_key (PEM files)")
        for path in self.files():
            if not os.access(path, os.R_OK):
                raise ConfigError(f"[tls] {path} cannot be read")


def server_context(tls: TlsSettings, *, client_certificate: str | None = None) -> ssl.SSLContext:
    """A server context: the node's certificate, TLS 1.2+ (or 1.3), BCP 195 ciphers, client certificates
    verified against `ca_file` (and `crl_file`) as `client_certificate` asks. ConfigError on a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_ciphers(tls.ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(tls.certificate, tls.private_key, password=_password(tls.key_password))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls] cannot load the certificate {tls.certificate} with its key {tls.private_key}: "
                          f"{_reason(exc)} (an encrypted key needs SEGNODE_TLS__KEY_PASSWORD)") from None
    mode = client_certificate or tls.client_certificate
    ctx.verify_mode = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[mode]
    if mode != "none":
        if not tls.ca_file:
            raise ConfigError(f"[tls] client_certificate = \"{mode}\" needs ca_file (the CAs to trust)")
        _load_trust(ctx, tls)
    return ctx


def client_context(ca_file: str, certificate: str = "", private_key: str = "", key_password: str = "",
                   min_version: str = "1.2", ciphers: str = BCP195_CIPHERS) -> ssl.SSLContext:
    """A client context: the peer's certificate verified against `ca_file` (hostname checked), our own
    certificate presented when given. ConfigError on a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_ciphers(ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION
    try:
        ctx.load_verify_locations(cafile=ca_file)
        if certificate:
            ctx.load_cert_chain(certificate, private_key or None, password=_password(key_password))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS client files ({ca_file}, {certificate or 'no certificate'}): {_reason(exc)}") from None
    return ctx


def _password(value: str) -> Callable[[], str]:
    """What OpenSSL calls for an encrypted key: the password, or an error (never a prompt at a terminal)."""
    def supply() -> str:
        if not value:
            raise ConfigError("the private key is encrypted and no password was given (an encrypted key's password "
                              "comes from the environment: SEGNODE_TLS__KEY_PASSWORD, or a destination's "
                              "key_password_env)")
        return value
    return supply


def _load_trust(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    try:
        ctx.load_verify_locations(cafile=tls.ca_file)
        if tls.crl_file:
            ctx.load_verify_locations(cafile=tls.crl_file)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls] cannot load ca_file {tls.ca_file} / crl_file {tls.crl_file or '-'}: "
                          f"{_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__


class ReloadingContext:
    """The current server context, built again when one of its files changes on disk (checked at most once a
    second, when a connection asks for it) or when `reload()` is called (SIGHUP). Connections already open
    keep the context they were made with. A rotation that fails to load keeps the last good context and says
    why, once, through `on_error`."""

    def __init__(self, tls: TlsSettings, *, client_certificate: str | None = None,
                 on_error: Any = None) -> None:
        self._tls = tls
        self._mode = client_certificate
        self._on_error = on_error
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = server_context(tls, client_certificate=client_certificate)
        self._checked = time.monotonic()
        self._failed_stamp: tuple[tuple[str, float, int], ...] | None = None

    def _stamps(self) -> tuple[tuple[str, float, int], ...]:
        out = []
        for path in self._tls.files():
            try:
                st = os.stat(path)
                out.append((path, st.st_mtime, st.st_size))
            except OSError:
                out.append((path, -1.0, -1))
        return tuple(out)

    def get(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked >= _RELOAD_CHECK_S:
            self._checked = now
            if self._stamps() != self._stamp:
                self.reload()
        return self._context

    def reload(self) -> bool:
        """Build the context again from the files; True if the new one is in use."""
        with self._lock:
            stamp = self._stamps()
            try:
                context = server_context(self._tls, client_certificate=self._mode)
            except ConfigError as exc:
                if stamp != self._failed_stamp and self._on_error is not None:
                    self._on_error(str(exc))
                self._failed_stamp = stamp
                return False
            self._context, self._stamp, self._failed_stamp = context, stamp, None
            return True
