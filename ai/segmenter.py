"""The port the worker depends on, and the model description that feeds both SEG and SR."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydicom.sr.coding import Code

from ai.volume import Volume

Progress = Callable[[float, str], None]       # fraction 0..1, what is happening


@dataclass(frozen=True, slots=True)
class LabelSpec:
    number: int                  # value in the label map and SEG segment number
    name: str                    # SEG SegmentLabel
    category: Code               # SegmentedPropertyCategoryCodeSequence
    type: Code                   # SegmentedPropertyTypeCodeSequence
    modifier: Code | None = None  # SegmentedPropertyTypeModifierCodeSequence, e.g. laterality (SCT Left/Right)

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 255:
            raise ValueError(f"label {self.name!r}: number must be 1-255, got {self.number}")
        if not self.name or len(self.name) > 64:
            raise ValueError(f"label number {self.number}: name must be 1-64 characters, got {self.name!r}")


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    version: str
    description: str
    modalities: tuple[str, ...]          # modalities the model accepts; empty = any
    labels: tuple[LabelSpec, ...]
    intensity_unit: str = "HU"           # unit of the voxel values the measurements report
    min_slices: int = 3
    notes: tuple[str, ...] = ()          # what an admin should know (e.g. labels coded in the local scheme)

    def __post_init__(self) -> None:
        numbers = [label.number for label in self.labels]
        if not numbers or len(set(numbers)) != len(numbers):
            raise ValueError(f"model {self.name}: labels must be non-empty and have unique numbers, got {numbers}")

    def label(self, number: int) -> LabelSpec:
        return next(lb for lb in self.labels if lb.number == number)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "modalities": list(self.modalities), "min_slices": self.min_slices,
                "labels": [{"number": lb.number, "name": lb.name, "category": lb.category.meaning,
                            "type": lb.type.meaning, "type_code": f"{lb.type.scheme_designator}:{lb.type.value}",
                            "modifier": lb.modifier.meaning if lb.modifier else None}
                           for lb in self.labels], "notes": list(self.notes)}


@dataclass(frozen=True, slots=True)
class MemoryProfile:
    """Peak memory of one job with a model (a model process: reading, segmenting, measuring, writing SEG and
    SR): about `fixed_mb` + `volume_factor` x the study's float32 volume, as bench/memory.py measures it."""

    fixed_mb: int = 1024
    volume_factor: float = 2.5

    def need_mb(self, voxels: int) -> int:
        return int(self.volume_factor * voxels * 4 / 2**20) + self.fixed_mb


class Segmenter(Protocol):
    card: ModelCard

    def memory_profile(self, spacing_mm: tuple[float, float, float]) -> MemoryProfile:
        """The job's memory with this model on a study of this voxel spacing (slice, row, column)."""
        ...

    def predict(self, volume: Volume, progress: Progress | None = None) -> np.ndarray:
        """Return a uint8 label map with the shape and axes of `volume.voxels` (0 = background).

        Raises
        ------
        UnsuitableSeries
            If the model cannot take this volume (wrong modality, too few slices...).
        """
        ...


def check_suitable(card: ModelCard, volume: Volume) -> None:
    """Refuse, with a reason, a volume the model was not made for."""
    from ai.errors import UnsuitableSeries
    if card.modalities and volume.modality.upper() not in card.modalities:
        raise UnsuitableSeries(f"model {card.name} segments {'/'.join(card.modalities)}; "
                               f"this series is {volume.modality or 'of unknown modality'}")
    if volume.voxels.shape[0] < card.min_slices:
        raise UnsuitableSeries(f"model {card.name} needs at least {card.min_slices} slices; "
                               f"this series has {volume.voxels.shape[0]}")
