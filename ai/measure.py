"""Per-segment measurements, pure numpy: volume (mL), intensity statistics and extent."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ai.segmenter import ModelCard
from ai.slabs import SLAB


@dataclass(frozen=True, slots=True)
class SegmentMeasurement:
    number: int
    name: str
    voxel_count: int
    volume_ml: float
    mean: float
    std: float
    min: float
    max: float
    extent_mm: tuple[float, float, float]      # bounding box size along (slice, row, column)
    unit: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _label_stats(labels: np.ndarray, intensities: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per label value 0..255: count, sum, sum of squares, min and max, one C pass each, slab by slab (a
    float64 copy of a whole study would be twice its float32 volume; a model with 100+ labels must not
    cost 100+ passes)."""
    count, sums, squares = np.zeros(256, np.int64), np.zeros(256), np.zeros(256)
    dtype = intensities.dtype if intensities.dtype.kind == "f" else np.float64
    lows, highs = np.full(256, np.inf, dtype), np.full(256, -np.inf, dtype)   # ufunc.at is fast without casts
    for s in range(0, labels.shape[0], SLAB):
        lab = np.ascontiguousarray(labels[s:s + SLAB]).ravel()
        if lab.dtype != np.uint8:
            lab = lab.astype(np.intp)
        values = intensities[s:s + SLAB].ravel().astype(np.float64)
        count += np.bincount(lab, minlength=256)[:256]
        sums += np.bincount(lab, weights=values, minlength=256)[:256]
        values *= values
        squares += np.bincount(lab, weights=values, minlength=256)[:256]
        part = intensities[s:s + SLAB].ravel().astype(dtype, copy=False)
        np.minimum.at(lows, lab, part)
        np.maximum.at(highs, lab, part)
    return count, sums, squares, lows, highs


def measure(labels: np.ndarray, intensities: np.ndarray, spacing_mm: tuple[float, float, float],
            card: ModelCard) -> list[SegmentMeasurement]:
    """One measurement per label of the card that is present in `labels` (absent labels are skipped)."""
    if labels.shape != intensities.shape:
        raise ValueError(f"labels {labels.shape} and intensities {intensities.shape} differ in shape")
    if any(s <= 0 for s in spacing_mm):
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    stats = _label_stats(labels, intensities)
    counts = stats[0]
    wanted = [spec for spec in card.labels if spec.number < counts.size and counts[spec.number]]
    if not wanted:
        return []
    _, sums, squares, lows_all, highs_all = stats
    numbers = [spec.number for spec in wanted]
    lows, highs = lows_all[numbers], highs_all[numbers]
    boxes = ndimage.find_objects(labels, max_label=max(numbers))
    out = []
    for spec, low, high in zip(wanted, lows, highs, strict=True):
        n = int(counts[spec.number])
        mean = sums[spec.number] / n
        std = float(np.sqrt(max(squares[spec.number] / n - mean * mean, 0.0)))
        box = boxes[spec.number - 1]
        extent = tuple(float((b.stop - b.start) * s) for b, s in zip(box, spacing_mm, strict=True))
        out.append(SegmentMeasurement(number=spec.number, name=spec.name, voxel_count=n, volume_ml=n * voxel_ml,
                                      mean=float(mean), std=std, min=float(low), max=float(high),
                                      extent_mm=extent, unit=card.intensity_unit))  # type: ignore[arg-type]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
