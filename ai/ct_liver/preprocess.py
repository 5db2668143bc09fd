"""Bring a CT volume to the network's grid and back, and cut it into tiles.

The network was trained on arrays (a0, a1, a2) = (x toward patient right, y toward anterior, z toward
head), i.e. RAS index order, at 3 mm. ai/'s volumes are (slice, row, column) in LPS (column index toward
patient left, row index toward posterior, slice index along the normal). `RasPlan` records the axis
permutation and flips between the two, found from the volume's direction cosines, so any axis-aligned
acquisition (axial, coronal, sagittal) lands the same way.

All resampling uses the voxel-edge convention (torch `align_corners=False`): a grid of n voxels spans
the same extent as the source at any size, so going to 3 mm and back needs no origin bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai.volume import Volume

MEDIAN_GRID_MM = 1.5
NET_GRID_MM = 3.0
HU_SCALE = 1000.0
CLIP = 0.2
GAIN = 2.5
_RAS_SIGN = (-1.0, -1.0, 1.0)        # LPS sign of the direction in which each RAS index grows


@dataclass(frozen=True, slots=True)
class RasPlan:
    """volume axes -> RAS array axes: `to_ras(a) = flip(transpose(a, perm), flips)`."""
    perm: tuple[int, int, int]              # RAS axis t takes volume axis perm[t]
    flips: tuple[bool, bool, bool]          # flip RAS axis t after the transpose

    @classmethod
    def of(cls, volume: Volume) -> RasPlan:
        axes = (volume.normal, np.array(volume.column_direction), np.array(volume.row_direction))
        world = [int(np.argmax(np.abs(a))) for a in axes]            # LPS axis each volume axis runs along
        if sorted(world) != [0, 1, 2]:
            raise ValueError("the image axes are too oblique to tell left-right, front-back and head-foot apart")
        perm = tuple(world.index(t) for t in range(3))
        flips = tuple(bool(np.sign(axes[perm[t]][t]) != _RAS_SIGN[t]) for t in range(3))
        return cls(perm, flips)                                     # type: ignore[arg-type]

    def to_ras(self, a: torch.Tensor) -> torch.Tensor:
        a = a.permute(*self.perm)
        dims = [t for t in range(3) if self.flips[t]]
        return a.flip(dims) if dims else a

    def from_ras(self, a: torch.Tensor) -> torch.Tensor:
        dims = [t for t in range(3) if self.flips[t]]
        a = a.flip(dims) if dims else a
        return a.permute(*np.argsort(self.perm).tolist())

    def spacing(self, volume: Volume) -> tuple[float, float, float]:
        return tuple(volume.spacing_mm[p] for p in self.perm)       # type: ignore[return-value]


def grid_size(shape: tuple[int, ...], spacing_mm: tuple[float, ...], target_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, round(n * s / target_mm)) for n, s in zip(shape, spacing_mm, strict=True))  # type: ignore[return-value]


def resample(a: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear, voxel-edge aligned, on a 3-D tensor."""
    if tuple(a.shape) == tuple(size):
        return a
    return F.interpolate(a[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def network_input(ras_hu: torch.Tensor, spacing_mm: tuple[float, float, float]) -> torch.Tensor:
    """HU in RAS order -> the network's 3 mm intensities: 1.5 mm, median 3x3x3, 3 mm, clip(HU/1000) * 2.5."""
    fine = resample(ras_hu.float(), grid_size(tuple(ras_hu.shape), spacing_mm, MEDIAN_GRID_MM))
    fine_np = ndimage.median_filter(fine.cpu().numpy(), size=3, mode="nearest")
    fine = torch.from_numpy(fine_np).to(ras_hu.device)
    coarse = resample(fine, grid_size(tuple(ras_hu.shape), spacing_mm, NET_GRID_MM))
    return (coarse / HU_SCALE).clamp_(-CLIP, CLIP).mul_(GAIN)


def tile_starts(n: int, out: int, min_overlap: int) -> list[int]:
    """Starts of output windows of size `out` covering [0, n); one centred window when n <= out."""
    if n <= out:
        return [-((out - n) // 2)]
    count = math.ceil((n - min_overlap) / (out - min_overlap))
    return sorted({round(i * (n - out) / (count - 1)) for i in range(count)})


def extract(x: torch.Tensor, start: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
    """x[start : start + size] with zeros outside x (zero is water, the package's padding value too)."""
    tile = x.new_zeros(size)
    src, dst = [], []
    for s, n, full in zip(start, size, x.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, full)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    tile[tuple(dst)] = x[tuple(src)]
    return tile


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The package's clean-up on the 3 mm grid: erode (18-neighbourhood), keep the largest 6-connected
    component, dilate back."""
    ball = ndimage.generate_binary_structure(3, 2)
    core = ndimage.binary_erosion(mask, structure=ball)
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_dilation(labels == int(np.argmax(sizes)), structure=ball)
