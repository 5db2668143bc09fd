"""Settings for a Node under test: free ports, a short quiet period, data in a temporary folder."""

from __future__ import annotations

from pathlib import Path

from node.settings import Settings, load_settings


def node_settings(tmp_path: Path, config: str | None = None, **env: str) -> Settings:
    """`env` keys are `section__key` (e.g. `compute__backend="ray"`), as in SEGNODE_<SECTION>__<KEY>."""
    base = {"SEGNODE_NODE__DATA_DIR": str(tmp_path / "data"), "SEGNODE_DICOM__PORT": "0",
            "SEGNODE_HTTP__PORT": "0", "SEGNODE_DICOM__TLS_PORT": "0", "SEGNODE_DICOM__STUDY_QUIET_PERIOD_S": "0.5",
            "SEGNODE_DICOM__MIN_FREE_DISK_MB": "1", "SEGNODE_DICOM__BIND_ADDRESS": "127.0.0.1"}
    base.update({f"SEGNODE_{k.upper()}": v for k, v in env.items()})
    config_file = None
    if config is not None:
        config_file = tmp_path / "segnode-test.toml"
        config_file.write_text(config)
    return load_settings(config_file, env=base)
