"""Per-segment measurements, pure numpy: volume (mL), intensity statistics and extent."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

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
    out = []
    for spec in card.labels:
        mask = labels == spec.number
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        values = intensities[mask].astype(np.float64)
        idx = np.nonzero(mask)
        extent = tuple(float((int(i.max()) - int(i.min()) + 1) * s) for i, s in zip(idx, spacing_mm, strict=True))
        out.append(SegmentMeasurement(number=spec.number, name=spec.name, voxel_count=n, volume_ml=n * voxel_ml,
                                      mean=float(values.mean()), std=float(values.std()), min=float(values.min()),
                                      max=float(values.max()), extent_mm=extent,       # type: ignore[arg-type]
                                      unit=card.intensity_unit))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
