"""A CT phantom in Hounsfield units with its ground-truth label map. Pure numpy.

Axes everywhere: (slice, row, column) = (z, y, x) in LPS patient coordinates; slice 0 is the
most cranial slice (largest z), rows run anterior -> posterior, columns right -> left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU, SOFT_HU, LUNG_HU, BONE_HU = -1000.0, 40.0, -850.0, 700.0
BACKGROUND, BODY, LUNGS, BONE = 0, 1, 2, 3        # exclusive labels of the truth map


@dataclass(frozen=True, slots=True)
class Phantom:
    hu: np.ndarray                 # float32 (slices, rows, columns)
    truth: np.ndarray              # uint8 labels, same shape
    pixel_spacing_mm: float        # row and column spacing
    slice_spacing_mm: float
    origin_mm: tuple[float, float, float]    # LPS position of voxel (0, 0, 0)

    @property
    def voxel_ml(self) -> float:
        return self.pixel_spacing_mm**2 * self.slice_spacing_mm / 1000.0

    def volume_ml(self, label: int) -> float:
        return float(np.count_nonzero(self.truth == label)) * self.voxel_ml


def make_phantom(slices: int = 120, rows: int = 256, columns: int | None = None, *,
                 fov_mm: float = 400.0, slice_spacing_mm: float = 2.5, noise_hu: float = 12.0,
                 seed: int = 0) -> Phantom:
    """Body (elliptic cylinder), two lungs (ellipsoids) and a spine (cylinder) in air."""
    if slices < 1 or rows < 16:
        raise ValueError(f"phantom needs >= 1 slice and >= 16 rows, got {slices} x {rows}")
    columns = columns or rows
    spacing = fov_mm / max(rows, columns)
    z = (np.arange(slices) - (slices - 1) / 2.0)[::-1] * slice_spacing_mm   # cranial first
    y = (np.arange(rows) - (rows - 1) / 2.0) * spacing
    x = (np.arange(columns) - (columns - 1) / 2.0) * spacing
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    half_length = slices * slice_spacing_mm / 2.0

    body = (xx / 150.0) ** 2 + (yy / 110.0) ** 2 <= 1.0
    lung_z = 0.8 * half_length
    lungs = np.zeros_like(body)
    for cx in (-70.0, 70.0):
        lungs |= ((xx - cx) / 50.0) ** 2 + ((yy + 5.0) / 65.0) ** 2 + ((zz - 0.1 * half_length) / lung_z) ** 2 <= 1.0
    spine = (xx / 16.0) ** 2 + ((yy - 72.0) / 16.0) ** 2 <= 1.0
    lungs &= body & ~spine
    spine &= body

    truth = np.zeros(body.shape, np.uint8)
    truth[body] = BODY
    truth[lungs] = LUNGS
    truth[spine] = BONE
    hu = np.full(body.shape, AIR_HU, np.float32)
    hu[truth == BODY] = SOFT_HU
    hu[truth == LUNGS] = LUNG_HU
    hu[truth == BONE] = BONE_HU
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, noise_hu, hu.shape).astype(np.float32)
    origin = (float(x[0]), float(y[0]), float(z[0]))
    return Phantom(hu=hu, truth=truth, pixel_spacing_mm=spacing, slice_spacing_mm=slice_spacing_mm,
                   origin_mm=origin)
