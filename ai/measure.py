"""Per-segment measurements, pure numpy: volume (mL), intensity statistics and extent."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ai.segmenter import ModelCard


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


def measure(labels: np.ndarray, intensities: np.ndarray, spacing_mm: tuple[float, float, float],
            card: ModelCard) -> list[SegmentMeasurement]:
    """One measurement per label of the card that is present in `labels` (absent labels are skipped)."""
    if labels.shape != intensities.shape:
        raise ValueError(f"labels {labels.shape} and intensities {intensities.shape} differ in shape")
    if any(s <= 0 for s in spacing_mm):
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    # one C pass per statistic for all labels at once: a model with 100+ labels must not cost 100+ volume passes
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=256)
    wanted = [spec for spec in card.labels if spec.number < counts.size and counts[spec.number]]
    if not wanted:
        return []
    values = intensities.ravel().astype(np.float64)
    sums = np.bincount(flat, weights=values, minlength=256)
    squares = np.bincount(flat, weights=values * values, minlength=256)
    numbers = [spec.number for spec in wanted]
    lows = ndimage.minimum(intensities, labels, numbers)
    highs = ndimage.maximum(intensities, labels, numbers)
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
