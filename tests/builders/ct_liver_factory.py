"""A ct-liver model folder with random weights, for tests that need the folder but not the real weights."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ai.ct_liver.convert import write_model_folder
from ai.ct_liver.network import CONVS


def fake_hdf5(path: Path, bad_layer: int | None = None) -> Path:
    """An HDF5 laid out like the package's (layer/layer/kernel:0), random values."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k, (_name, cin, cout, kernel) in enumerate(CONVS, start=1):
            g = f.create_group(f"conv3d_{k}/conv3d_{k}")
            shape = (*kernel, cin, cout) if k != bad_layer else (*kernel, cin + 1, cout)
            g["kernel:0"] = rng.normal(0, 0.05, shape).astype(np.float32)
            g["bias:0"] = np.zeros(cout, np.float32)
    return path


def fake_liver_folder(models_dir: Path) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    return write_model_folder(fake_hdf5(models_dir / "w.hdf5"), models_dir / "ct-liver",
                              source={"version": "0.3"}, license_text="Apache", notice="test")
