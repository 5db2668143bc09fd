"""Where results go: `[[destinations]]` in config, validated on construction."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.config_keys import check_keys
from node.errors import ConfigError
from node.security import client_context

_TLS_KEYS = ("ca_file", "certificate", "private_key", "key_password_env", "server_name")
_KEYS = {"name", "kind", "host", "port", "ae_title", "url", "username", "password_env", "tls", *_TLS_KEYS}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Destination:
    """One `[[destinations]]` entry: a DICOM peer (C-STORE) or an Orthanc REST URL; valid once constructed."""

    name: str
    kind: str                       # "dicom" (C-STORE SCU) | "orthanc-rest"
    host: str = ""
    port: int = 0
    ae_title: str = ""              # the called AE title of a DICOM destination
    url: str = ""                   # orthanc-rest: http://host:8042
    username: str = ""
    password_env: str = ""          # the environment variable that holds the password (never the password)
    tls: bool = False               # dicom: DICOM TLS (PS3.15 B.1); never falls back to plain
    ca_file: str = ""               # PEM: the CAs the PACS's certificate must chain to
    certificate: str = ""           # PEM: the client certificate Segnode presents (leaf first)
    private_key: str = ""           # PEM: its key
    key_password_env: str = ""      # the environment variable that holds an encrypted key's password
    server_name: str = ""           # the name the PACS's certificate must carry; "" = host

    def __post_init__(self) -> None:
        where = f"[[destinations]] {self.name!r}"
        if not self.name:
            raise ConfigError("every [[destinations]] entry needs a name")
        if self.kind == "dicom":
            if not self.host or not 1 <= self.port <= 65535:
                raise ConfigError(f"{where}: a dicom destination needs host and port (1-65535)")
            if not 1 <= len(self.ae_title) <= 16:
                raise ConfigError(f"{where}: ae_title (the PACS's AE title) must be 1-16 characters")
        elif self.kind == "orthanc-rest":
            if not self.url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: an orthanc-rest destination needs url = \"http://host:8042\"")
        else:
            raise ConfigError(f"{where}: kind must be 'dicom' or 'orthanc-rest', got {self.kind!r}")
        if self.password_env and not self.username:
            raise ConfigError(f"{where}: password_env is set but username is empty")
        self._check_tls(where)

    def _check_tls(self, where: str) -> None:
        stray = [k for k in _TLS_KEYS if getattr(self, k)]
        if self.kind != "dicom" and (self.tls or stray):
            raise ConfigError(f"{where}: {', '.join(['tls', *stray] if self.tls else stray)} apply to kind = "
                              "\"dicom\" only; an orthanc-rest destination uses TLS through an https:// url")
        if not self.tls:
            if stray:
                raise ConfigError(f"{where}: {', '.join(stray)} only apply with tls = true; set tls = true "
                                  "or remove them")
            return
        if not self.ca_file:
            raise ConfigError(f"{where}: tls = true needs ca_file (PEM: the CAs that issued the PACS's certificate)")
        if bool(self.certificate) != bool(self.private_key):
            raise ConfigError(f"{where}: certificate and private_key go together (the client certificate "
                              "Segnode presents and its key): set both or neither")
        if self.key_password_env and not self.private_key:
            raise ConfigError(f"{where}: key_password_env is set but private_key is empty")
        if self.key_password_env and not _ENV_NAME.fullmatch(self.key_password_env):
            raise ConfigError(f"{where}: key_password_env must be the NAME of an environment variable that "
                              "holds the key's password (e.g. PACS_KEY_PASSWORD), never the password itself")
        if self.server_name and (len(self.server_name) > 253 or not self.server_name.isascii()
                                 or any(c.isspace() or c in "/:@" for c in self.server_name)):
            raise ConfigError(f"{where}: server_name must be a host name or IP address as written in the PACS's "
                              f"certificate, got {self.server_name!r}")
        for key in ("ca_file", "certificate", "private_key"):
            path = getattr(self, key)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{where}: {key} {path} cannot be read")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], index: int) -> Destination:
        raw = check_keys(raw, _KEYS, f"[[destinations]] entry {index}",
                         "passwords come from password_env and key_password_env")
        if "tls" in raw and not isinstance(raw["tls"], bool):
            raise ConfigError(f"[[destinations]] entry {index}: tls must be true or false, got {raw['tls']!r}")
        try:
            return cls(**{k: (int(v) if k == "port" else v if k == "tls" else str(v)) for k, v in raw.items()})
        except ValueError as exc:
            raise ConfigError(f"[[destinations]] entry {index}: {exc}") from None

    def password(self) -> str:
        if not self.password_env:
            return ""
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"[[destinations]] {self.name!r}: environment variable {self.password_env} is not set")
        return value

    @property
    def tls_server_name(self) -> str:
        """The name checked against the PACS's certificate (and sent as SNI unless it is an IP address)."""
        return self.server_name or self.host

    def tls_context(self) -> ssl.SSLContext:
        """A new client context for this TLS destination (its files read now, so a renewed certificate is
        used from the next association on). ConfigError on a file that does not load or a missing password."""
        password = ""
        if self.key_password_env:
            value = os.environ.get(self.key_password_env)
            if value is None:
                raise ConfigError(f"[[destinations]] {self.name!r}: environment variable {self.key_password_env} "
                                  "(key_password_env, the private key's password) is not set")
            password = value
        elif self.private_key and _encrypted(self.private_key):     # else OpenSSL would prompt on a terminal
            raise ConfigError(f"[[destinations]] {self.name!r}: private_key {self.private_key} is encrypted: set "
                              "key_password_env to the name of the environment variable that holds its password")
        try:
            return client_context(self.ca_file, self.certificate, self.private_key, password)
        except ConfigError as exc:
            raise ConfigError(f"[[destinations]] {self.name!r}: {exc}") from None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "dicom":
            out.update(host=self.host, port=self.port, ae_title=self.ae_title, tls=self.tls)
            if self.tls:
                out.update(ca_file=self.ca_file, certificate=self.certificate, private_key=self.private_key,
                           key_password=f"from ${self.key_password_env}" if self.key_password_env else "",
                           server_name=self.tls_server_name)
        else:
            out.update(url=self.url, username=self.username,
                       password=f"from ${self.password_env}" if self.password_env else "")
        return out


def _encrypted(pem_path: str) -> bool:
    """Whether a PEM private key is encrypted (PKCS#8 "ENCRYPTED PRIVATE KEY" or an old Proc-Type header)."""
    try:
        with open(pem_path, errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return False                    # client_context says what is wrong with the file
    return any(("ENCRYPTED" in line and line.startswith("-----BEGIN")) or line.startswith("Proc-Type: 4,ENCRYPTED")
               for line in lines)
