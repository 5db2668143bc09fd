"""Builds a tiny MONAI bundle on disk: a small UNet trained for a few steps on the phantom.

The test suite makes its own model this way; nothing comes from a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet

from node.synth.phantom import make_phantom

NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4,
           "channels": [8, 16], "strides": [2], "num_res_units": 1}
INFERENCE = {
    "network_def": NETWORK,
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [8.0, 8.0, 8.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 4, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "/nonexistent"}]},
}
METADATA = {
    "version": "0.1.0", "name": "Phantom UNet", "description": "Tiny UNet trained on the Segnode phantom",
    "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "background", "1": "soft tissue",
                                                                 "2": "lung", "3": "bone"}}}},
    "segnode": {"modalities": ["CT"], "labels": {"1": {"category": "SCT:85756007:Tissue"},
                                                 "3": {"category": "SCT:85756007:Tissue"}}},
}


def train_unet(steps: int = 40, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    big = make_phantom(slices=16, rows=52, fov_mm=416, slice_spacing_mm=8.0, seed=seed + 1)  # the bundle's 8 mm grid
    x = torch.from_numpy(np.clip((big.hu + 1000) / 2000, 0, 1)).float()[None, None]
    y = torch.from_numpy(big.truth.astype(np.int64))[None]
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return net.eval()


def build_bundle(root: Path, *, torchscript: bool = False, steps: int = 40) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
    net = train_unet(steps)
    if torchscript:
        torch.jit.script(net).save(str(root / "models" / "model.ts"))
    else:
        torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


class ThresholdNet(torch.nn.Module):
    """A weightless 'network' that labels the phantom exactly from intensity: it checks the bundle path's
    geometry (orientation, spacing, inversion) independently of how well anything was trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x * 2000.0 - 1000.0
        lung = (hu > -925.0) & (hu <= -400.0)
        soft = (hu > -400.0) & (hu <= 200.0)
        bone = hu > 200.0
        background = ~(lung | soft | bone)
        return torch.cat([background, soft, lung, bone], dim=1).float() * 10.0


def build_threshold_bundle(root: Path, pixdim: float = 2.0) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    inference = json.loads(json.dumps(INFERENCE))
    inference["preprocessing"]["transforms"][3]["pixdim"] = [pixdim] * 3
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=1))
    torch.jit.script(ThresholdNet()).save(str(root / "models" / "model.ts"))
    return root
