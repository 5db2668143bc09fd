"""Settings: `config/segnode.toml` defaults < `--config FILE` < `SEGNODE_<SECTION>__<KEY>` environment.

Built once at start-up into frozen dataclasses and passed down; a bad value stops the node with one
sentence naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.config_keys import check_keys
from node.delivery.destinations import Destination
from node.errors import ConfigError
from node.jobs.routing import Rule
from node.security import TlsSettings

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "config" / "segnode.toml"
ENV_PREFIX = "SEGNODE_"


def _is_ae_title(value: str) -> bool:
    return 1 <= len(value.strip()) <= 16 and value.isascii() and value.isprintable() and "\\" not in value


# keys an older config may still hold, and what became of them
_REMOVED_KEYS = {
    ("dicom", "receiver"): "the node has one receiver since 2026-12 (a thread per association); delete the line",
    ("dicom", "receiver_processes"): "receiver processes were removed in 2026-12 (they never paid; see "
                                     "bench/RESULTS.md); delete the line",
}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    data_dir: str = "./data"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"[node] log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()


@dataclass(frozen=True, slots=True)
class DicomSettings:
    ae_title: str = "SEGNODE"
    bind_address: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    require_called_ae: bool = True
    max_associations: int = 16
    max_pdu_bytes: int = 1048576
    min_free_disk_mb: int = 1024
    study_quiet_period_s: float = 10.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    record_timeout_s: float = 30.0
    shutdown_grace_s: float = 30.0
    max_matrix: int = 8192
    max_frames: int = 5000
    plain_enabled: bool = True              # the plain port (`port`); turn it off when every peer speaks TLS
    tls_enabled: bool = False               # DICOM over TLS on `tls_port`, with the [tls] certificate
    tls_port: int = 2762                    # the IANA port for DICOM over TLS

    def __post_init__(self) -> None:
        if not _is_ae_title(self.ae_title):
            raise ConfigError(f"[dicom] ae_title must be 1-16 printable ASCII characters without '\\', got "
                              f"{self.ae_title!r}; set it in the --config file or SEGNODE_DICOM__AE_TITLE")
        for ae in self.allowed_calling_aes:
            if not _is_ae_title(ae):
                raise ConfigError(f"[dicom] allowed_calling_aes holds {ae!r}, which is not a valid AE title "
                                  "(1-16 printable ASCII characters without '\\')")
        _check_port("dicom", "port", self.port, allow_zero=True)
        _check_port("dicom", "tls_port", self.tls_port, allow_zero=True)
        if not self.plain_enabled and not self.tls_enabled:
            raise ConfigError("[dicom] plain_enabled and tls_enabled are both false: the node would receive nothing")
        if not 1 <= self.max_associations <= 1000:
            raise ConfigError(f"[dicom] max_associations must be 1-1000, got {self.max_associations}")
        if self.max_pdu_bytes != 0 and not 4096 <= self.max_pdu_bytes <= 2**31 - 1:
            raise ConfigError(f"[dicom] max_pdu_bytes must be 0 (unlimited) or 4096-2147483647, "
                              f"got {self.max_pdu_bytes}")
        if self.min_free_disk_mb < 0:
            raise ConfigError(f"[dicom] min_free_disk_mb must be >= 0, got {self.min_free_disk_mb}")
        if not 1 <= self.max_matrix <= 65535 or not 1 <= self.max_frames <= 1_000_000:
            raise ConfigError(f"[dicom] max_matrix must be 1-65535 and max_frames 1-1000000, got "
                              f"{self.max_matrix} and {self.max_frames}")
        for key in ("study_quiet_period_s", "acse_timeout_s", "dimse_timeout_s", "network_timeout_s",
                    "record_timeout_s", "shutdown_grace_s"):
            value = getattr(self, key)
            if not 0 < value <= 86400:
                raise ConfigError(f"[dicom] {key} must be a number of seconds in (0, 86400], got {value}")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_tokens: tuple[str, ...] = ()       # "name=token" entries; from SEGNODE_HTTP__ADMIN_TOKENS, not from git
    viewer_tokens: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()       # origins (scheme://host:port) allowed to call the API / WebSocket
    ws_queue_size: int = 1000                # events buffered per WebSocket client before it must resync
    ws_heartbeat_s: float = 20.0
    https: bool = False                      # HTTPS/WSS only, with the [tls] certificate (needed beyond loopback)

    def __post_init__(self) -> None:
        for t in (*self.admin_tokens, *self.viewer_tokens):
            if len(t.partition("=")[2] or t) < 16:
                raise ConfigError("[http] every token must be at least 16 characters (\"name=token\" or \"token\")")
        if not 1 <= self.ws_queue_size <= 1_000_000 or self.ws_heartbeat_s <= 0:
            raise ConfigError("[http] ws_queue_size must be 1-1000000 and ws_heartbeat_s > 0")
        _check_port("http", "port", self.port, allow_zero=True)
        if not self.host:
            raise ConfigError("[http] host must not be empty (use 127.0.0.1 for loopback only)")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = ""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigError(f"[store] url must start with sqlite+aiosqlite:// or postgresql+asyncpg://, "
                              f"got {mask_url(self.url)!r}; leave it empty for the embedded SQLite store")


@dataclass(frozen=True, slots=True)
class ComputeSettings:
    backend: str = "local"
    device: str = "auto"
    workers: int = 1                  # jobs at once; with ray: the number of actors (0: one per GPU of the cluster)
    ray_address: str = ""             # empty: start a local Ray; else the cluster's GCS "head-host:6379"
    ray_num_cpus: int = 2             # CPUs of the local Ray (ignored with an address)
    ray_gpus_per_actor: float = 0.0   # 1.0 puts each actor on its own GPU
    ray_cpus_per_actor: int = 0       # also the actor's torch threads; 0: ray_num_cpus // workers, or 1 on a cluster
    max_attempts: int = 2             # runs of a job whose model process (or the node) died before it ends failed
    max_job_memory_mb: int = 0        # a job estimated to need more fails up front; 0: the machine's memory / workers

    def actor_cpus(self) -> int:
        """CPUs (and so torch threads: Ray sets OMP_NUM_THREADS to it) reserved by each inference actor."""
        if self.ray_cpus_per_actor:
            return self.ray_cpus_per_actor
        return 1 if self.ray_address or not self.workers else max(1, self.ray_num_cpus // self.workers)

    def __post_init__(self) -> None:
        if self.backend not in {"local", "ray"}:
            raise ConfigError(f"[compute] backend must be 'local' or 'ray', got {self.backend!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"[compute] device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.workers == 0 and not (self.backend == "ray" and self.ray_gpus_per_actor > 0):
            raise ConfigError("[compute] workers = 0 (one actor per GPU) needs backend = \"ray\" and "
                              "ray_gpus_per_actor > 0; otherwise set workers to 1-64")
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"[compute] workers must be 1-64 (or 0 with Ray GPUs), got {self.workers}")
        if self.ray_address:
            ray_address_parts(self.ray_address)
        if not 1 <= self.max_attempts <= 20:
            raise ConfigError(f"[compute] max_attempts must be 1-20, got {self.max_attempts}")
        if self.max_job_memory_mb < 0:
            raise ConfigError(f"[compute] max_job_memory_mb must be 0 (automatic) or more, "
                              f"got {self.max_job_memory_mb}")
        if not 0 <= self.ray_cpus_per_actor <= 256:
            raise ConfigError(f"[compute] ray_cpus_per_actor must be 0 (automatic) to 256, "
                              f"got {self.ray_cpus_per_actor}")
        if self.backend == "ray" and not self.ray_address and self.actor_cpus() * self.workers > self.ray_num_cpus:
            raise ConfigError(f"[compute] {self.workers} workers x {self.actor_cpus()} ray_cpus_per_actor do not fit "
                              f"in ray_num_cpus = {self.ray_num_cpus}; the extra actors would never start")


def ray_address_parts(address: str) -> tuple[str, int]:
    """Split a Ray cluster address "host:port" (the head's GCS port, 6379 by default); ConfigError otherwise."""
    if address.startswith("ray://"):
        raise ConfigError(f"[compute] ray_address {address!r} is a Ray Client address, which Segnode does not use: "
                          "make this host a Ray node (`ray start --address=HEAD:6379 --num-cpus=0`) and set "
                          "ray_address = \"HEAD:6379\"")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"[compute] ray_address must be the Ray head's \"host:port\" (e.g. \"ray-head:6379\"), "
                          f"got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class ModelsSettings:
    dir: str = "./models"
    sw_roi_size: tuple[int, ...] = ()        # empty = each bundle's own inferer setting
    sw_overlap: float = -1.0                 # < 0 = the bundle's own
    sw_batch_size: int = 0                   # 0 = the bundle's own

    def __post_init__(self) -> None:
        if self.sw_roi_size and (len(self.sw_roi_size) != 3 or min(self.sw_roi_size) < 8):
            raise ConfigError(f"[models] sw_roi_size must be empty or three sizes >= 8, got {list(self.sw_roi_size)}")
        if self.sw_overlap >= 1.0:
            raise ConfigError(f"[models] sw_overlap must be below 1 (or negative for the bundle's own), "
                              f"got {self.sw_overlap}")
        if self.sw_batch_size < 0:
            raise ConfigError(f"[models] sw_batch_size must be >= 0, got {self.sw_batch_size}")

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser().resolve()


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    retry_initial_s: float = 5.0
    retry_max_s: float = 300.0
    retry_deadline_s: float = 86400.0
    send_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for key in ("retry_initial_s", "retry_max_s", "retry_deadline_s", "send_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"[outbox] {key} must be > 0, got {getattr(self, key)}")
        if self.retry_max_s < self.retry_initial_s:
            raise ConfigError(f"[outbox] retry_max_s ({self.retry_max_s}) is below retry_initial_s "
                              f"({self.retry_initial_s})")


@dataclass(frozen=True, slots=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    rules: tuple[Rule, ...] = ()
    destinations: tuple[Destination, ...] = ()

    def __post_init__(self) -> None:
        if self.dicom.tls_enabled:
            self.tls.check_files("dicom")
        if self.http.https:
            self.tls.check_files("http")

    def destination(self, name: str) -> Destination:
        return next(d for d in self.destinations if d.name == name)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.node.data_path / 'segnode.db'}"

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets masked (for `segnode check-config`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("rules", "destinations"):
                out[f.name] = [r.describe() for r in value]
            else:
                out[f.name] = {k: v for k, v in dataclasses.asdict(value).items() if k != "identities"}
        out["store"]["url"] = mask_url(self.store_url)
        if out["tls"]["key_password"]:
            out["tls"]["key_password"] = "***"
        for key in ("admin_tokens", "viewer_tokens"):
            out["http"][key] = [f"{t.partition('=')[0] if '=' in t else 'token'}=***" for t in out["http"][key]]
        return out


_SECTIONS: dict[str, type] = {
    "node": NodeSettings, "dicom": DicomSettings, "http": HttpSettings,
    "store": StoreSettings, "compute": ComputeSettings, "models": ModelsSettings,
    "outbox": OutboxSettings, "tls": TlsSettings,
}


def _check_port(section: str, key: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"[{section}] {key} must be a TCP port {low}-65535, got {value}")


def mask_url(url: str) -> str:
    """`url` with its password (if any, also a `password=` query parameter) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, host = rest.split("/", 1)[0].rsplit("@", 1), rest[len(rest.split("/", 1)[0]):]
        user, has_password = creds[0].partition(":")[0], ":" in creds[0]
        url = f"{scheme}://{user}{':***' if has_password else ''}@{creds[1]}{host}"
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)


def url_has_password(url: str) -> bool:
    return mask_url(url) != url


def _coerce(section: str, key: str, hint: Any, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or say what was expected."""
    origin = typing.get_origin(hint)
    where = f"[{section}] {key}"
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.strip().lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is tuple and typing.get_args(hint)[0] is int:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of integers, got {value!r}") from None
    if origin is tuple:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else [v.strip() for v in value.split(",")]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        return tuple(v for v in value if v)
    if isinstance(hint, types.UnionType):
        return value
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _build_section(name: str, cls: type, raw: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    for key in raw:
        if (name, key) in _REMOVED_KEYS:
            raise ConfigError(f"[{name}] {key}: {_REMOVED_KEYS[name, key]}")
    check_keys(raw, {f.name for f in dataclasses.fields(cls) if f.init}, f"[{name}]")
    return cls(**{k: _coerce(name, k, hints[k], v) for k, v in raw.items()})


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX):].partition("__")
        section, key = section.lower(), key.lower()
        if section not in _SECTIONS:
            raise ConfigError(f"environment variable {name} names an unknown section [{section}]; "
                              f"known sections: {', '.join(_SECTIONS)}")
        out.setdefault(section, {})[key] = value
    return out


def _refuse_password_in_file(raw: Mapping[str, Any], path: Path) -> None:
    """Credentials come from the environment only: a [store] url with a password, or a [tls] key_password, in a
    TOML file is refused."""
    if raw.get("tls", {}).get("key_password"):
        raise ConfigError(f"[tls] key_password in {path}: a key's password comes from the environment only "
                          "(SEGNODE_TLS__KEY_PASSWORD); remove it from the file")
    url = raw.get("store", {}).get("url", "")
    if isinstance(url, str) and url_has_password(url):
        raise ConfigError(f"[store] url in {path} holds a password ({mask_url(url)}); put the whole URL in "
                          "SEGNODE_STORE__URL, or only the password in PGPASSWORD, and keep it out of files")


def load_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None,
                  defaults_file: Path = DEFAULTS_FILE) -> Settings:
    """Read defaults, the optional config file and the environment; validate; return frozen Settings."""
    raw = _read_toml(defaults_file) if defaults_file.exists() else {}
    if config_file is not None:
        override = _read_toml(config_file)
        for key in ("rules", "destinations"):   # a config file's lists replace the defaults, not add to them
            if key in override:
                raw.pop(key, None)
        raw = _merge(raw, override)
    _refuse_password_in_file(raw, config_file or defaults_file)
    raw = _merge(raw, _env_overrides(os.environ if env is None else env))
    unknown = sorted(set(raw) - set(_SECTIONS) - {"rules", "destinations"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; "
                          f"known: {', '.join([*_SECTIONS, 'rules', 'destinations'])}")
    sections = {name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise ConfigError("rules must be a list of [[rules]] tables")
    rules = tuple(Rule.from_mapping(r, index=i) for i, r in enumerate(rules_raw))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigError(f"rule names must be unique, got {names}")
    dest_raw = raw.get("destinations", [])
    if not isinstance(dest_raw, list):
        raise ConfigError("destinations must be a list of [[destinations]] tables")
    destinations = tuple(Destination.from_mapping(d, i) for i, d in enumerate(dest_raw))
    known = {d.name for d in destinations}
    if len(known) != len(destinations):
        raise ConfigError(f"destination names must be unique, got {[d.name for d in destinations]}")
    for rule in rules:
        missing = [d for d in rule.destinations if d not in known]
        if missing:
            raise ConfigError(f"[[rules]] {rule.name!r} sends to {', '.join(missing)}, which no [[destinations]] "
                              f"entry defines (defined: {', '.join(sorted(known)) or 'none'})")
    return Settings(rules=rules, destinations=destinations, **sections)
