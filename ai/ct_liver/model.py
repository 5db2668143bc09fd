"""CtLiver: the Segmenter for a converted ct-liver model folder (card.json + model.pt)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.sr.coding import Code

from ai.ct_liver.convert import CARD_FILE, KIND, LIVER_LABEL
from ai.ct_liver.lean import lean_forward
from ai.ct_liver.network import INPUT_MULTIPLE, SHRINK, LiverUNet
from ai.ct_liver.preprocess import (
    MEDIAN_GRID_MM,
    RasPlan,
    extract,
    largest_component,
    mask_on_source,
    tile_starts,
    volume_network_input,
)
from ai.errors import ModelUnavailable, UnsuitableSeries
from ai.segmenter import LabelSpec, MemoryProfile, ModelCard, Progress, check_suitable
from ai.volume import Volume

logger = logging.getLogger(__name__)

TILE = (189, 162, 162)            # the package's input segment (x, y, z) at 3 mm: 567 x 486 x 486 mm
MIN_OVERLAP = 16                  # voxels (48 mm) shared by neighbouring output windows
MIN_LIVER_ML = 100.0              # a smaller largest component is not a liver in this field of view


def _code(raw: dict[str, str]) -> Code:
    return Code(raw["value"], raw["scheme"], raw["meaning"])


def liver_card(version: str, raw: dict[str, Any] | None = None) -> ModelCard:
    """The card of a folder: its label codes and modalities from card.json, the rest fixed by this port."""
    label = (raw or {}).get("labels", [LIVER_LABEL])[0]
    return ModelCard(
        name=KIND, version=version,
        description=("Whole liver, 3D U-Net of pyliverlesionseg 0.3 (KU Leuven, Apache-2.0; Tang et al., "
                     "EJNMMI 2020), converted to torch"),
        modalities=tuple((raw or {}).get("modalities", ["CT"])), min_slices=3, intensity_unit="HU",
        labels=(LabelSpec(int(label["number"]), str(label["name"]), _code(label["category"]), _code(label["type"])),))


def is_liver_folder(path: Path) -> bool:
    """A native ct-liver folder (as `segnode models install ct-liver` writes it)."""
    try:
        return json.loads((path / CARD_FILE).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def read_liver_card(path: Path) -> tuple[ModelCard, dict[str, object]]:
    """The ModelCard and raw card.json of a folder; ModelUnavailable when either is unreadable."""
    try:
        raw = json.loads((path / CARD_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path / CARD_FILE} cannot be read ({type(exc).__name__}); "
                               "run `segnode models install ct-liver` again") from exc
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise ModelUnavailable(f"{path / CARD_FILE} is not a {KIND} card")
    try:
        return liver_card(str(raw.get("version", "?")), raw), raw
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelUnavailable(f"{path / CARD_FILE} has a malformed label or modality ({exc}); "
                               "run `segnode models install ct-liver` again") from exc


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(path: Path) -> Path:
    """The weight file, after checking it exists and matches the card's sha256; else ModelUnavailable."""
    _, raw = read_liver_card(path)
    weights = path / str(raw.get("weights", "model.pt"))
    fix = "run `segnode models install ct-liver` again"
    if not weights.is_file():
        raise ModelUnavailable(f"weight file {weights.name} is missing from {path}; {fix}")
    if file_sha256(weights) != raw.get("weights_sha256"):
        raise ModelUnavailable(f"weight file {weights.name} in {path} is corrupt (sha256 differs from the "
                               f"card); {fix}")
    return weights


def load_network(path: Path, device: torch.device) -> LiverUNet:
    weights = check_weights(path)
    net = LiverUNet()
    try:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except (RuntimeError, ValueError, OSError, EOFError) as exc:
        raise ModelUnavailable(f"weight file {weights.name} in {path} cannot be loaded "
                               f"({type(exc).__name__}); run `segnode models install ct-liver` again") from exc
    return net.to(device).eval()


def predict_probability(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        progress: Progress | None = None) -> torch.Tensor:
    """Liver probability on the whole 3 mm RAS array `x`, tile by tile (tiles of TILE, averaged overlaps);
    `forward` maps one TILE-sized tile to the network's output window (TILE - SHRINK)."""
    out_size = tuple(t - SHRINK for t in TILE)
    margin = SHRINK // 2
    starts = [tile_starts(n, o, MIN_OVERLAP) for n, o in zip(x.shape, out_size, strict=True)]
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    count = torch.zeros_like(total)
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    amp = torch.autocast("cuda", dtype=torch.float16) if x.device.type == "cuda" else contextlib.nullcontext()
    for k, corner in enumerate(corners):
        tile = extract(x, tuple(s - margin for s in corner), TILE)      # type: ignore[arg-type]
        with amp:
            prob = forward(tile).float()
        # the part of the output window inside x
        src, dst = [], []
        for s, o, n in zip(corner, out_size, x.shape, strict=True):
            lo, hi = max(s, 0), min(s + o, n)
            src.append(slice(lo - s, hi - s))
            dst.append(slice(lo, hi))
        total[tuple(dst)] += prob[tuple(src)]
        count[tuple(dst)] += 1
        if progress:
            progress(0.2 + 0.6 * (k + 1) / len(corners), f"liver network, tile {k + 1}/{len(corners)}")
    return total / count.clamp_(min=1)


class CtLiver:
    """Satisfies ai.segmenter.Segmenter."""

    def __init__(self, path: Path, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.card, self.raw_card = read_liver_card(path)
        self.net = load_network(path, self.device)
        assert all(t % INPUT_MULTIPLE == 0 for t in TILE)

    def memory_profile(self, spacing_mm: tuple[float, float, float]) -> MemoryProfile:
        """One tile's working set (0.6 GiB, whatever the study) on top of the process, then the volume and the
        1.5 mm median grid (two float32 copies of it at once; r = its voxels per source voxel): measured
        1.0 GiB + 1.14 x the volume at 0.78 x 0.78 x 1 mm (r = 0.18; 32-1,600 slices of 512 x 512,
        bench/RESULTS.md); the 1.5 mm step alone grows by about 2 x the volume at 5 mm slices (r = 0.9)."""
        r = float(np.prod(spacing_mm)) / MEDIAN_GRID_MM ** 3
        return MemoryProfile(fixed_mb=1152, volume_factor=max(1.25, 1.0 + 2.5 * r))

    def predict(self, volume: Volume, progress: Progress | None = None) -> np.ndarray:
        check_suitable(self.card, volume)
        report = progress or (lambda _f, _s: None)
        try:
            plan = RasPlan.of(volume)
        except ValueError as exc:
            raise UnsuitableSeries(f"model {self.card.name}: {exc}") from exc
        spacing = plan.spacing(volume)
        extent_mm = [n * s for n, s in zip(plan.ras_shape(volume.voxels.shape), spacing, strict=True)]
        if extent_mm[2] < 30.0:
            raise UnsuitableSeries(f"model {self.card.name} needs at least 3 cm of body along the head-foot axis; "
                                   f"this series covers {extent_mm[2]:.0f} mm")
        with torch.inference_mode():
            report(0.05, "resampling to 3 mm")
            x = volume_network_input(volume.voxels, plan, spacing, self.device)
            prob = predict_probability(lambda tile: lean_forward(self.net, tile), x, report)
            del x
            report(0.85, "largest connected component")
            mask = largest_component(prob.cpu().numpy() > 0.5)
            del prob
            voxel_ml = float(np.prod([e / n for e, n in zip(extent_mm, mask.shape, strict=True)])) / 1000.0
            found_ml = float(mask.sum()) * voxel_ml
            if found_ml < MIN_LIVER_ML:
                raise UnsuitableSeries(f"no liver found in this series (largest candidate {found_ml:.0f} mL); "
                                       "it may not cover the upper abdomen")
            report(0.9, "back to the source grid")
            out = mask_on_source(torch.from_numpy(mask).to(self.device), plan, volume.voxels.shape)
        report(1.0, "segmentation finished")
        return out
