"""ct-basic: body soft tissue, lungs and bone from Hounsfield units. No weights, deterministic.

What it is: a rule-based model that is right on real CT for three coarse structures.
- Lungs are the air-filled regions inside the body whose core holds lung tissue: aerated lung
  parenchyma sits near -850 HU, while gas in the bowel or stomach is pure air (below -950 HU).
  A component whose interior is mostly pure air is gas, not lung.
- Bone is dense bone (cortex) together with what it encloses: the cortical shell is closed in
  plane, the cancellous marrow inside it filled, and only regions that contain dense bone are kept.
What it is not: an organ model. Iodine-enhanced vessels touching bone can be called bone, and
severely emphysematous lung whose core is mostly below -950 HU is not called lung.

Thresholds and morphology run in torch on the chosen device (CUDA when present). Connected
components and hole filling run in scipy.ndimage on a CPU copy of the mask: torch has no labelling
operator, and an exact O(N) labelling beats iterative label propagation by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.sr.codedict import codes
from scipy import ndimage

from ai import slabs
from ai.device import to_device
from ai.segmenter import LabelSpec, MemoryProfile, ModelCard, Progress, check_suitable
from ai.volume import Volume

BODY_HU = -350.0          # above: not air (skin, fat at -100, soft tissue, bone)
LUNG_HU = -400.0          # inside the body and below: aerated lung
BONE_HU = 120.0           # above: bone, cortical and cancellous (and, honestly, iodine-enhanced vessels)
DENSE_BONE_HU = 250.0     # a bone region must hold dense (cortical) bone
PURE_AIR_HU = -950.0      # gas in bowel or stomach; lung parenchyma is denser
MAX_LUNG_AIR_FRACTION = 0.5   # above: the component's core is pure air, i.e. gas, not lung
MIN_LUNG_ML = 5.0
MIN_BONE_ML = 0.05

SOFT_TISSUE, LUNGS, BONE = 1, 2, 3
CT_BASIC_CARD = ModelCard(
    name="ct-basic", version="1.0.0",
    description="Threshold model: body soft tissue, lungs and bone from Hounsfield units (no weights)",
    modalities=("CT",), min_slices=3, intensity_unit="HU",
    labels=(
        LabelSpec(SOFT_TISSUE, "Body soft tissue", codes.SCT.Tissue, codes.SCT.SoftTissue),
        LabelSpec(LUNGS, "Lungs", codes.SCT.AnatomicalStructure, codes.SCT.Lung),
        LabelSpec(BONE, "Bone", codes.SCT.Tissue, codes.SCT.Bone),
    ))


def _dilate2d(mask: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=k // 2)[:, 0] > 0.5


def _erode2d(mask: torch.Tensor, k: int = 3) -> torch.Tensor:
    return ~_dilate2d(~mask, k)


def fill_enclosed(mask: torch.Tensor) -> torch.Tensor:
    """Per slice, add pixels enclosed by the mask along both their row and their column.

    Scan-line filling: exact for holes in a body outline (lungs, airways, bowel gas) and O(N) on any
    device; a concavity open along a row or a column (between arm and torso) stays open.
    """
    m = mask.to(torch.uint8)
    left = torch.cummax(m, dim=2).values
    right = torch.cummax(m.flip(2), dim=2).values.flip(2)
    up = torch.cummax(m, dim=1).values
    down = torch.cummax(m.flip(1), dim=1).values.flip(1)
    return mask | ((left & right & up & down) > 0)


def _lung_like(candidates: torch.Tensor, hu: torch.Tensor) -> torch.Tensor:
    """Keep the air components whose core (eroded by one voxel) is lung tissue, not pure air."""
    cpu = candidates.cpu().numpy()
    labels, n = slabs.label(cpu)
    if n == 0:
        return candidates
    core = ndimage.binary_erosion(cpu, structure=slabs.FULL)
    core_n = slabs.counts(labels, n, lambda z: core[z])
    air_n = slabs.counts(labels, n, lambda z: core[z] & (hu[z].cpu().numpy() < PURE_AIR_HU))
    keep = (core_n > 0) & (air_n <= MAX_LUNG_AIR_FRACTION * core_n)
    keep[0] = False
    return torch.from_numpy(slabs.keep_labels(labels, keep)).to(candidates.device)


def _bone(candidates: torch.Tensor, hu: torch.Tensor, min_voxels: int) -> torch.Tensor:
    """Close cortical shells in plane, fill the marrow they enclose, keep regions holding dense bone."""
    closed = slabs.slabwise(lambda c: _erode2d(_dilate2d(c, 5), 5), candidates)
    filled = slabs.fill_holes_in_plane(closed.cpu().numpy())
    del closed
    labels, n = slabs.label(filled)
    del filled
    if n == 0:
        return candidates & False
    dense = slabs.counts(labels, n, lambda z: hu[z].cpu().numpy() > DENSE_BONE_HU)
    sizes = slabs.counts(labels, n)
    keep = (dense >= 3) & (sizes >= min_voxels)
    keep[0] = False
    return torch.from_numpy(slabs.keep_labels(labels, keep)).to(candidates.device)


def _components(mask: torch.Tensor, min_voxels: int, keep_fraction: float = 0.0,
                largest_only: bool = False) -> torch.Tensor:
    """Keep connected components (26-connected) by size, on a CPU copy; result back on the mask's device."""
    labels, n = slabs.label(mask.cpu().numpy())
    if n == 0:
        return mask
    sizes = slabs.counts(labels, n)
    sizes[0] = 0
    if largest_only:
        keep = np.zeros_like(sizes, dtype=bool)
        keep[int(np.argmax(sizes))] = True
    else:
        keep = (sizes >= min_voxels) & (sizes >= keep_fraction * sizes.max())
        keep[0] = False
    return torch.from_numpy(slabs.keep_labels(labels, keep)).to(mask.device)


class CtBasic:
    """Satisfies ai.segmenter.Segmenter."""

    card = CT_BASIC_CARD

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def memory_profile(self, spacing_mm: tuple[float, float, float]) -> MemoryProfile:
        """Measured: 0.4 GiB + 2.5 x the volume (60-1,600 slices of 512 x 512; bench/RESULTS.md)."""
        return MemoryProfile(fixed_mb=640, volume_factor=2.6)

    def predict(self, volume: Volume, progress: Progress | None = None) -> np.ndarray:
        check_suitable(self.card, volume)
        report = progress or (lambda _f, _s: None)
        voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
        with torch.inference_mode():
            hu = to_device(torch.from_numpy(volume.voxels), self.device)
            report(0.1, "body outline")
            # an opening drops noise specks and thin table edges, then restores the outline (in slabs:
            # no whole-volume float temporaries)
            body = slabs.slabwise(lambda h: _dilate2d(_erode2d(h > BODY_HU)), hu)
            body = _components(body, 1, largest_only=True)
            body = slabs.slabwise(fill_enclosed, body)
            report(0.4, "lungs")
            lungs = _lung_like(slabs.slabwise(lambda b, h: b & (h < LUNG_HU), body, hu), hu)
            lungs = _components(lungs, max(1, round(MIN_LUNG_ML / voxel_ml)), keep_fraction=0.25)
            report(0.7, "bone")
            bone = _bone(slabs.slabwise(lambda b, h, lu: b & (h > BONE_HU) & ~lu, body, hu, lungs), hu,
                         max(1, round(MIN_BONE_ML / voxel_ml)))
            bone &= body
            bone &= ~lungs
            labels = torch.zeros(hu.shape, dtype=torch.uint8, device=self.device)
            labels.masked_fill_(body, SOFT_TISSUE)     # masked_fill: indexing with a mask would list its voxels
            labels.masked_fill_(lungs, LUNGS)
            labels.masked_fill_(bone, BONE)
            report(1.0, "segmentation finished")
            return labels.cpu().numpy()
