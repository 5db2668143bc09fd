"""One series' part of a job, run by the JobPipeline in a model process or Ray actor: read the series, build
its volume, segment, measure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from ai.errors import UnsuitableSeries
from ai.measure import SegmentMeasurement, measure
from ai.segmenter import Segmenter
from ai.volume import Volume, volume_from_datasets
from node.compute.memory import check_fits

Progress = Callable[[float, str], None]
DEFER = "64 KB"              # elements larger than this (pixel data) are read from the file when used


@dataclass(frozen=True, slots=True)
class SeriesResult:
    series_instance_uid: str
    volume: Volume
    labels: np.ndarray                      # uint8, axes and shape of volume.voxels
    measurements: list[SegmentMeasurement]
    sources: list[Dataset]                  # the series' datasets, in the volume's slice order


def read_series(items: Sequence[str | Path | bytes]) -> list[Dataset]:
    """Datasets from spool paths, or from the files' bytes (what a Ray actor on another host gets)."""
    out = []
    for i, item in enumerate(items):
        try:
            # from a path, pixel data is read when decoded (and then dropped): one slice at a time in memory
            out.append(dcmread(BytesIO(item)) if isinstance(item, bytes) else dcmread(item, defer_size=DEFER))
        except Exception as exc:        # a stored file we cannot parse: say which, not the parser's words
            name = f"#{i + 1}" if isinstance(item, bytes) else Path(item).name
            raise UnsuitableSeries(f"stored image {name} cannot be read ({type(exc).__name__})") from exc
    return out


def header_spacing(datasets: Sequence[Dataset]) -> tuple[float, float, float]:
    """Voxel spacing (slice, row, column) in mm from the headers alone, for the memory estimate: PixelSpacing,
    and the extent of ImagePositionPatient along the first image's normal over the slices (SliceThickness,
    then the pixel spacing, where that is missing)."""
    first = datasets[0]
    try:
        row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        row_mm = col_mm = 1.0
    try:
        iop = np.array([float(v) for v in first.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        along = [float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in datasets]
        slice_mm = (max(along) - min(along)) / (len(along) - 1) if len(along) > 1 else 0.0
    except (AttributeError, TypeError, ValueError):
        slice_mm = 0.0
    if not slice_mm > 0:
        slice_mm = float(first.get("SliceThickness", 0) or 0) or min(row_mm, col_mm)
    return slice_mm, row_mm, col_mm


def check_memory(datasets: Sequence[Dataset], limit_mb: int, model: Segmenter) -> None:
    """Refuse, up front and with the figures, a series that would need more memory than a job may have
    with this model."""
    if not datasets or not limit_mb:
        return
    first = datasets[0]
    slices = int(first.get("NumberOfFrames", 1) or 1) if len(datasets) == 1 else len(datasets)
    check_fits(slices, int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0), limit_mb,
               model.memory_profile(header_spacing(datasets)), model.card.name)


def segment_series(series_instance_uid: str, paths: Sequence[str | Path | bytes], model: Segmenter,
                   progress: Progress, max_memory_mb: int = 0) -> SeriesResult:
    progress(0.02, "loading images")
    datasets = read_series(paths)
    check_memory(datasets, max_memory_mb, model)
    # the sources keep only their headers once the volume holds the voxels (what SEG and SR reference)
    volume = volume_from_datasets(datasets, min_slices=model.card.min_slices, release_pixels=True)
    by_uid = {str(d.SOPInstanceUID): d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    progress(0.1, f"volume {'x'.join(map(str, volume.voxels.shape))}")

    def model_progress(fraction: float, stage: str) -> None:
        progress(0.1 + 0.8 * fraction, stage)
    labels = model.predict(volume, model_progress)
    if labels.shape != volume.voxels.shape:
        raise RuntimeError(f"model {model.card.name} returned {labels.shape} for a {volume.voxels.shape} volume")
    progress(0.92, "measuring")
    return SeriesResult(series_instance_uid, volume, labels,
                        measure(labels, volume.voxels, volume.spacing_mm, model.card), sources)
