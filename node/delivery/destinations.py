"""Where results go: `[[destinations]]` in config, validated on construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.config_keys import check_keys
from node.errors import ConfigError

_KEYS = {"name", "kind", "host", "port", "ae_title", "url", "username", "password_env"}


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

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], index: int) -> Destination:
        raw = check_keys(raw, _KEYS, f"[[destinations]] entry {index}", "passwords come from password_env")
        try:
            return cls(**{k: (int(v) if k == "port" else str(v)) for k, v in raw.items()})
        except ValueError as exc:
            raise ConfigError(f"[[destinations]] entry {index}: {exc}") from None

    def password(self) -> str:
        if not self.password_env:
            return ""
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"[[destinations]] {self.name!r}: environment variable {self.password_env} is not set")
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "dicom":
            out.update(host=self.host, port=self.port, ae_title=self.ae_title)
        else:
            out.update(url=self.url, username=self.username,
                       password=f"from ${self.password_env}" if self.password_env else "")
        return out
