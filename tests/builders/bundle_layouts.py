"""Bundles in each layout the MONAI model zoo publishes, built on disk by the tests (nothing from a hub).

The network lives in the bundle's own `scripts` package (as in pediatric_abdominal_ct_segmentation) and
labels the phantom from intensity: soft tissue, lung and bone land on three of its output channels, so
the geometry and the label coding are checked independently of any training.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch
import yaml

from tests.builders.bundles import INFERENCE, build_threshold_bundle

WHOLE_BODY_LABELS = [
    "background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left",
    "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
    "lung_lower_lobe_right", *[f"vertebrae_{v}" for v in ["L5", "L4", "L3", "L2", "L1"]],
    *[f"vertebrae_T{i}" for i in range(12, 0, -1)], *[f"vertebrae_C{i}" for i in range(7, 0, -1)],
    "esophagus", "trachea", "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
    "heart_ventricle_right", "pulmonary_artery", "brain", "iliac_artery_left", "iliac_artery_right",
    "iliac_vena_left", "iliac_vena_right", "small_bowel", "duodenum", "colon",
    *[f"rib_left_{i}" for i in range(1, 13)], *[f"rib_right_{i}" for i in range(1, 13)],
    "humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left", "clavicula_right",
    "femur_left", "femur_right", "hip_left", "hip_right", "sacrum", "face", "gluteus_maximus_left",
    "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left",
    "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right",
    "urinary_bladder"]
BTCV_LABELS = ["background", "spleen", "Right Kidney", "Left Kideny", "Gallbladder", "Esophagus", "Liver", "Stomach",
               "Aorta", "IVC", "Portal and Splenic Veins", "Pancreas", "Right adrenal gland", "Left adrenal gland"]

NETS = '''
import torch


class PhantomNet(torch.nn.Module):
    """Scores from intensity (input scaled 0..1 from -1000..1000 HU): soft tissue, lung, bone -> 3 channels."""

    def __init__(self, out_channels: int, soft: int, lung: int, bone: int) -> None:
        super().__init__()
        self.out_channels, self.soft, self.lung, self.bone = out_channels, soft, lung, bone
        self.scale = torch.nn.Parameter(torch.tensor(0.0))      # the weights file must set it to 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, 0] * 2000.0 - 1000.0
        lung = (hu > -925.0) & (hu <= -400.0)
        soft = (hu > -400.0) & (hu <= 200.0)
        bone = hu > 200.0
        out = x.new_zeros((x.shape[0], self.out_channels, x.shape[2], x.shape[3], x.shape[4]))
        out[:, 0] = (~(lung | soft | bone)).to(x.dtype)
        out[:, self.soft] += soft.to(x.dtype)
        out[:, self.lung] += lung.to(x.dtype)
        out[:, self.bone] += bone.to(x.dtype)
        return out * self.scale


class BlocksNet(torch.nn.Module):
    """Every channel but background on 2-voxel blocks inside the body (soft tissue and bone), in turn: one
    phantom gives a segment per label, like a whole-body CT. Block positions count from the window's corner,
    so the bundle's window must hold the whole resampled volume."""

    def __init__(self, out_channels: int, soft: int, lung: int, bone: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.scale = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = x[:, 0] * 2000.0 - 1000.0 > -400.0
        n = [(size + 1) // 2 | 1 for size in x.shape[2:]]     # odd strides: every label, whatever the padding
        i, j, k = (torch.arange(size, device=x.device) // 2 for size in x.shape[2:])
        block = (i[:, None, None] * n[1] + j[None, :, None]) * n[2] + k[None, None, :]
        labels = torch.where(body, block % (self.out_channels - 1) + 1, 0)
        one_hot = torch.nn.functional.one_hot(labels, self.out_channels).permute(0, 4, 1, 2, 3)
        return one_hot.to(x.dtype) * self.scale
'''


def build_layout_bundle(root: Path, *, names: list[str], soft: int, lung: int, bone: int, config: str = "json",
                        labels: str = "channel_def", weights: str = "state_dict", net: str = "PhantomNet") -> Path:
    """config: json|yaml; labels: channel_def|label_def|config; weights: state_dict|checkpoint|torchscript|named;
    net: PhantomNet (soft tissue, lung, bone on three channels) or BlocksNet (every channel, on an 8 mm grid
    in one 64-voxel window: phantoms up to 500 mm across and 500 mm long)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    (root / "scripts").mkdir(exist_ok=True)
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "nets.py").write_text(NETS)
    inference = json.loads(json.dumps(INFERENCE))
    inference["preprocessing"]["transforms"][3]["pixdim"] = [4.0, 4.0, 4.0]
    inference["imports"] = ["$import scripts.nets"]
    if net == "BlocksNet":
        inference["preprocessing"]["transforms"][3]["pixdim"] = [8.0, 8.0, 8.0]
        inference["inferer"]["roi_size"] = [64, 64, 64]
    inference["network_def"] = {"_target_": f"scripts.nets.{net}", "out_channels": len(names),
                                "soft": soft, "lung": lung, "bone": bone}
    if labels == "config":
        inference["labels"] = {name: i for i, name in enumerate(names)}
    if weights == "named":         # the pediatric layout: the file its CheckpointLoader handler names
        inference["handlers"] = [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/net_FT.pt'",
                                  "load_dict": {"model": "@network_def"}}]
    text = yaml.safe_dump(inference) if config == "yaml" else json.dumps(inference, indent=1)
    (root / "configs" / f"inference.{config}").write_text(text)
    table = {str(i): name for i, name in enumerate(names)}
    outputs = {} if labels == "config" else {"pred": {"num_channels": len(names), labels: table}}
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "version": "0.2.0", "name": root.name, "description": f"phantom bundle ({config}, {labels}, {weights})",
        "network_data_format": {"inputs": {"image": {"modality": "CT", "num_channels": 1}}, "outputs": outputs}}))
    module = _phantom_net(root, net, len(names), soft, lung, bone)
    state = module.state_dict()
    if weights == "torchscript":
        torch.jit.script(module).save(str(root / "models" / "model.ts"))
    elif weights == "checkpoint":
        torch.save({"model": state, "epoch": 3, "best_metric": 0.9}, root / "models" / "model.pt")
    elif weights == "named":
        torch.save({"model": state}, root / "models" / "net_FT.pt")
    else:
        torch.save(state, root / "models" / "model.pt")
    return root


def _phantom_net(root: Path, net: str, channels: int, soft: int, lung: int, bone: int) -> torch.nn.Module:
    module_name = "phantom_nets_" + re.sub(r"\W", "_", root.name)      # TorchScript names must be identifiers
    spec = importlib.util.spec_from_file_location(module_name, root / "scripts" / "nets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = getattr(module, net)(channels, soft, lung, bone)
    with torch.no_grad():
        made.scale.fill_(10.0)
    return made


def build_btcv_on_old_monai(root: Path) -> Path:
    """The BTCV bundle's network_def as published (SwinUNETR(img_size=96)), which MONAI 1.6 cannot build."""
    build_threshold_bundle(root)
    (root / "models" / "model.ts").unlink()
    torch.save({}, root / "models" / "model.pt")
    inference = json.loads((root / "configs" / "inference.json").read_text())
    inference["network_def"] = {"_target_": "SwinUNETR", "spatial_dims": 3, "img_size": 96, "in_channels": 1,
                                "out_channels": 14, "feature_size": 48, "use_checkpoint": False}
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {str(i): n for i, n in enumerate(BTCV_LABELS)}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root
