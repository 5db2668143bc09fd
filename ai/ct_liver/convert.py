"""Keras HDF5 weights of the liver network -> a torch state dict, and the model folder around it.

File to file, no network: node/models_install.py fetches the wheel and calls `write_model_folder`.
Keras stores a Conv3D kernel as (kx, ky, kz, in, out); torch wants (out, in, kx, ky, kz).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.ct_liver.network import CONVS, LiverUNet

WEIGHTS_FILE = "model.pt"
CARD_FILE = "card.json"
KIND = "ct-liver"
LIVER_LABEL = {"number": 1, "name": "Liver",
               "category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
               "type": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}
PREPROCESSING = {"axes": "RAS (x right, y anterior, z head); slice axis z", "resample_mm": 1.5,
                 "median_filter": 3, "network_grid_mm": 3.0, "intensity": "clip(HU / 1000, -0.2, 0.2) * 2.5",
                 "tile_input": [189, 162, 162], "tile_output": [163, 136, 136],
                 "postprocessing": "sigmoid > 0.5, erosion, largest 6-connected component, dilation"}


def keras_kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """(kx, ky, kz, in, out) -> (out, in, kx, ky, kz)."""
    if kernel.ndim != 5:
        raise ValueError(f"a Conv3D kernel has 5 axes, got shape {kernel.shape}")
    return torch.from_numpy(np.ascontiguousarray(kernel)).permute(4, 3, 0, 1, 2).contiguous()


def _weights_group(f: Any) -> Any:
    return f.get("model_weights", f)     # model.save() vs model.save_weights()


def state_dict_from_hdf5(path: Path) -> dict[str, torch.Tensor]:
    """Read conv3d_1..conv3d_15 and return LiverUNet's state dict; ValueError if they do not fit."""
    import h5py  # only the install step reads HDF5; the node itself never needs it

    state: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        group = _weights_group(f)
        for k, (name, cin, cout, kernel_size) in enumerate(CONVS, start=1):
            layer = f"conv3d_{k}"
            if layer not in group:
                raise ValueError(f"{path.name}: layer {layer} is missing")
            g = group[layer][layer] if layer in group[layer] else group[layer]
            kernel = np.asarray(g["kernel:0"], dtype=np.float32)
            bias = np.asarray(g["bias:0"], dtype=np.float32)
            if kernel.shape != (*kernel_size, cin, cout) or bias.shape != (cout,):
                raise ValueError(f"{path.name}: {layer} has kernel {kernel.shape} and bias {bias.shape}, "
                                 f"expected {(*kernel_size, cin, cout)} and {(cout,)}")
            state[f"convs.{name}.weight"] = keras_kernel_to_torch(kernel)
            state[f"convs.{name}.bias"] = torch.from_numpy(bias)
    LiverUNet().load_state_dict(state, strict=True)     # every tensor has its place
    return state


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_model_folder(hdf5: Path, folder: Path, *, source: dict[str, str], license_text: str,
                       notice: str) -> Path:
    """Convert `hdf5` and write `folder`: model.pt, card.json, LICENSE, NOTICE. The card goes last, so a
    folder with a card is complete."""
    state = state_dict_from_hdf5(hdf5)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    _write_atomic(folder / WEIGHTS_FILE, weights)
    _write_atomic(folder / "LICENSE", license_text.encode())
    _write_atomic(folder / "NOTICE", notice.encode())
    card = {"kind": KIND, "version": f"{source.get('version', '?')}-torch1",
            "weights": WEIGHTS_FILE, "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "modalities": ["CT"], "labels": [LIVER_LABEL], "preprocessing": PREPROCESSING,
            "source": source, "license": "Apache-2.0", "attribution": "see NOTICE"}
    _write_atomic(folder / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    return folder
