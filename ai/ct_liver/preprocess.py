"""Bring a CT volume to the network's grid and back, and cut it into tiles.

The network was trained on arrays (a0, a1, a2) = (x toward patient right, y toward anterior, z toward
head), i.e. RAS index order, at 3 mm. ai/'s volumes are (slice, row, column) in LPS (column index toward
patient left, row index toward posterior, slice index along the normal). `RasPlan` records the axis
permutation and flips between the two, found from the volume's direction cosines, so any axis-aligned
acquisition (axial, coronal, sagittal) lands the same way.

All resampling uses the voxel-edge convention (torch `align_corners=False`): a grid of n voxels spans
the same extent as the source at any size, so going to 3 mm and back needs no origin bookkeeping.
Between the source grid and the 1.5 mm one, the resampling runs a few planes at a time (`fine_grid`,
`mask_on_source`): trilinear interpolation is linear along the slice axis, then bilinear in plane, so no
whole-volume copy (RAS-ordered, float, or of the full-size mask) is ever made.
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

    def ras_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        return tuple(shape[p] for p in self.perm)                   # type: ignore[return-value]

    @property
    def slice_axis(self) -> int:
        """The RAS axis along which the volume's slices lie."""
        return self.perm.index(0)


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
    return _from_fine(fine, tuple(ras_hu.shape), spacing_mm)


def volume_network_input(voxels: np.ndarray, plan: RasPlan, spacing_mm: tuple[float, float, float],
                         device: torch.device) -> torch.Tensor:
    """`network_input(plan.to_ras(voxels), spacing_mm)` without a RAS copy of the volume (`fine_grid`)."""
    full = plan.ras_shape(voxels.shape)
    fine = fine_grid(voxels, plan, grid_size(full, spacing_mm, MEDIAN_GRID_MM), device)
    return _from_fine(fine, full, spacing_mm)


def _from_fine(fine: torch.Tensor, full: tuple[int, ...], spacing_mm: tuple[float, float, float]) -> torch.Tensor:
    fine_np = ndimage.median_filter(fine.cpu().numpy(), size=3, mode="nearest")
    fine = torch.from_numpy(fine_np).to(fine.device)
    del fine_np
    coarse = resample(fine, grid_size(full, spacing_mm, NET_GRID_MM))
    return (coarse / HU_SCALE).clamp_(-CLIP, CLIP).mul_(GAIN)


PLANES = 16                      # output planes per step of the plane-wise resampling


def linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation along one axis as torch's (align_corners=False): per output index, the two input
    indices and the weight of the second."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    first = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return first, np.minimum(first + 1, n_in - 1), src - first


def _ras_planes(voxels: np.ndarray, plan: RasPlan, lo: int, hi: int) -> torch.Tensor:
    """Planes [lo, hi) along the RAS axis of the slices, in RAS order: a copy of those slices only."""
    n = voxels.shape[0]
    k0, k1 = (n - hi, n - lo) if plan.flips[plan.slice_axis] else (lo, hi)
    return plan.to_ras(torch.from_numpy(voxels[k0:k1]))


def _along(planes: torch.Tensor, taps: tuple[np.ndarray, np.ndarray, np.ndarray], o: int, e: int,
           base: int) -> torch.Tensor:
    """Output planes [o, e) interpolated between the input planes of `planes` (axis 0; first is `base`)."""
    first, second, weight = (t[o:e] for t in taps)
    w = torch.as_tensor(weight, dtype=planes.dtype, device=planes.device)[:, None, None]
    return planes[torch.as_tensor(first - base)] * (1 - w) + planes[torch.as_tensor(second - base)] * w


def fine_grid(voxels: np.ndarray, plan: RasPlan, size: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """The volume trilinearly resampled to `size` in RAS order, PLANES output planes at a time."""
    t = plan.slice_axis
    taps = linear_taps(voxels.shape[0], size[t])
    in_plane = tuple(n for a, n in enumerate(size) if a != t)
    out = torch.empty(size, dtype=torch.float32, device=device)
    for o in range(0, size[t], PLANES):
        e = min(o + PLANES, size[t])
        lo, hi = int(taps[0][o]), int(taps[1][e - 1]) + 1
        planes = _ras_planes(voxels, plan, lo, hi).to(device, torch.float32).movedim(t, 0)
        rows = _along(planes, taps, o, e, lo)
        del planes
        out.movedim(t, 0)[o:e] = F.interpolate(rows[:, None], size=in_plane, mode="bilinear",
                                               align_corners=False)[:, 0]
    return out


def mask_on_source(mask: torch.Tensor, plan: RasPlan, shape: tuple[int, ...]) -> np.ndarray:
    """A RAS mask on a coarse grid -> uint8 on the volume's grid (`shape`, volume axes): trilinear, >= 0.5,
    PLANES slices at a time."""
    t = plan.slice_axis
    full = plan.ras_shape(shape)
    taps = linear_taps(mask.shape[t], full[t])
    in_plane = tuple(n for a, n in enumerate(full) if a != t)
    coarse = mask.float().movedim(t, 0)
    out = np.empty(shape, np.uint8)
    n = shape[0]
    for o in range(0, full[t], PLANES):
        e = min(o + PLANES, full[t])
        rows = F.interpolate(_along(coarse, taps, o, e, 0)[:, None], size=in_plane, mode="bilinear",
                             align_corners=False)[:, 0]
        planes = (rows >= 0.5).to(torch.uint8).movedim(0, t)
        k0, k1 = (n - e, n - o) if plan.flips[t] else (o, e)
        out[k0:k1] = plan.from_ras(planes).cpu().numpy()
    return out


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
