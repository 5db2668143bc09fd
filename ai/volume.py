"""A 3D volume from the datasets of one series. numpy + pydicom pixel decoding; no file or network I/O.

Axis order everywhere in ai/: (slice, row, column). Slices are sorted by their position along the
slice normal n = row_direction x column_direction, ascending, so slice k+1 lies at +spacing along n.
`row_direction` is ImageOrientationPatient[:3] (the direction in which column index grows along a
row), `column_direction` is ImageOrientationPatient[3:] (the direction in which the row index grows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from ai.errors import UnsuitableSeries

MIN_SLICES = 3
_ORIENTATION_TOL = 1e-3
_GAP_TOL = 0.1         # a step may differ from the median by 10 % before it counts as a gap


@dataclass(frozen=True, slots=True)
class Volume:
    voxels: np.ndarray                          # float32 (slice, row, column), rescaled (HU for CT)
    spacing_mm: tuple[float, float, float]      # along (slice, row, column)
    origin_mm: tuple[float, float, float]       # LPS position of voxel (0, 0, 0)
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    modality: str
    source_uids: tuple[str, ...]                # SOP Instance UID of each slice (single-frame), in slice order
    frame_numbers: tuple[int, ...] = ()         # 1-based frame of each slice for a multi-frame source

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.array(self.row_direction), np.array(self.column_direction))

    @property
    def affine(self) -> np.ndarray:
        """4x4 from (slice, row, column) index to LPS mm."""
        a = np.eye(4)
        a[:3, 0] = self.normal * self.spacing_mm[0]
        a[:3, 1] = np.array(self.column_direction) * self.spacing_mm[1]
        a[:3, 2] = np.array(self.row_direction) * self.spacing_mm[2]
        a[:3, 3] = self.origin_mm
        return a


def _floats(value: object, n: int, what: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)   # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UnsuitableSeries(f"{what} is missing or not numeric") from None
    if arr.shape != (n,):
        raise UnsuitableSeries(f"{what} must have {n} values, got {arr.size}")
    return arr


def _decode(ds: Dataset) -> np.ndarray:
    """The stored values, decoded without caching them on `ds` (a cached copy per slice doubles a study)."""
    try:
        return pixel_array(ds)
    except Exception as exc:         # pydicom raises several types; the reason is what matters
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts)) if ts else "unknown transfer syntax"
        raise UnsuitableSeries(f"pixel data in {name} could not be decoded ({type(exc).__name__})") from exc


def _rescale(pixels: np.ndarray, slope: object, intercept: object) -> np.ndarray:
    out = pixels.astype(np.float32)
    s = float(slope) if slope not in (None, "") else 1.0        # type: ignore[arg-type]
    i = float(intercept) if intercept not in (None, "") else 0.0  # type: ignore[arg-type]
    if s != 1.0:
        out *= np.float32(s)
    if i != 0.0:
        out += np.float32(i)
    return out


def _check_steps(positions: np.ndarray, normal: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray) -> float:
    """Return the slice spacing; refuse duplicates, gaps and sheared (tilted gantry) stacks."""
    along = positions @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3):
        k = int(np.argmin(np.abs(steps)))
        raise UnsuitableSeries(f"two images share the same position (slices {k + 1} and {k + 2}); "
                               "the series may hold repeated or overlapping acquisitions")
    spacing = float(np.median(steps))
    off = np.abs(steps - spacing) > _GAP_TOL * spacing
    if np.any(off):
        k = int(np.argmax(off))
        raise UnsuitableSeries(f"slice spacing is irregular: {steps[k]:.2f} mm between slices {k + 1} and {k + 2} "
                               f"where the series otherwise has {spacing:.2f} mm (missing slices?)")
    in_plane = positions - positions[0]
    drift = np.abs(in_plane @ row_dir) + np.abs(in_plane @ col_dir)
    if np.max(drift) > 0.05 * spacing * len(positions):
        raise UnsuitableSeries("slices are shifted in-plane from one to the next (tilted gantry or sheared "
                               "acquisition), which this node does not resample")
    return spacing


def volume_from_datasets(datasets: Sequence[Dataset], *, min_slices: int = MIN_SLICES,
                         release_pixels: bool = False) -> Volume:
    """Build the volume of one series: single-frame slices, or one enhanced multi-frame instance.

    With `release_pixels`, each dataset's PixelData is deleted once decoded into the volume, so a series
    read with deferred pixel data never holds more than one slice's stored values besides the volume."""
    if not datasets:
        raise UnsuitableSeries("the series has no images")
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        return _from_multiframe(datasets[0], min_slices, release_pixels)
    if len(datasets) < min_slices:
        raise UnsuitableSeries(f"the series has {len(datasets)} image(s); a volume needs at least {min_slices}")
    sizes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(sizes) > 1:
        raise UnsuitableSeries(f"images differ in size ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))})")
    orients = np.stack([_floats(d.get("ImageOrientationPatient"), 6, "ImageOrientationPatient") for d in datasets])
    if np.max(np.abs(orients - orients[0])) > _ORIENTATION_TOL:
        raise UnsuitableSeries("images have different orientations (mixed planes or a localizer in the series)")
    row_dir, col_dir = orients[0][:3], orients[0][3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([_floats(d.get("ImagePositionPatient"), 3, "ImagePositionPatient") for d in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    ordered = [datasets[i] for i in order]
    slice_spacing = _check_steps(positions, normal, row_dir, col_dir)
    pixel_spacing = _floats(ordered[0].get("PixelSpacing"), 2, "PixelSpacing")
    voxels = np.empty((len(ordered), *sizes.pop()), dtype=np.float32)
    for k, ds in enumerate(ordered):
        voxels[k] = _rescale(_decode(ds), ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
        if release_pixels:
            del ds.PixelData
    return Volume(voxels=voxels, spacing_mm=(slice_spacing, float(pixel_spacing[0]), float(pixel_spacing[1])),
                  origin_mm=tuple(float(v) for v in positions[0]),          # type: ignore[arg-type]
                  row_direction=tuple(float(v) for v in row_dir),           # type: ignore[arg-type]
                  column_direction=tuple(float(v) for v in col_dir),        # type: ignore[arg-type]
                  modality=str(ordered[0].get("Modality", "")),
                  source_uids=tuple(str(d.SOPInstanceUID) for d in ordered))


def _frame_item(ds: Dataset, k: int, seq: str) -> Dataset | None:
    """The first item of functional group `seq` for frame k: per-frame first, then shared."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for item in (per[k] if per and k < len(per) else None, shared[0] if shared else None):
        if item is not None and seq in item and item[seq].value:
            return item[seq].value[0]
    return None


def _from_multiframe(ds: Dataset, min_slices: int, release_pixels: bool = False) -> Volume:
    frames = int(ds.NumberOfFrames)
    if frames < min_slices:
        raise UnsuitableSeries(f"the image has {frames} frame(s); a volume needs at least {min_slices}")
    orients, positions, slopes, spacing = [], [], [], None
    for k in range(frames):
        orient, pos = _frame_item(ds, k, "PlaneOrientationSequence"), _frame_item(ds, k, "PlanePositionSequence")
        if orient is None or pos is None:
            raise UnsuitableSeries("the multi-frame image has no plane position/orientation per frame")
        orients.append(_floats(orient.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"))
        positions.append(_floats(pos.get("ImagePositionPatient"), 3, "ImagePositionPatient"))
        tr = _frame_item(ds, k, "PixelValueTransformationSequence")
        slopes.append((tr.get("RescaleSlope") if tr else ds.get("RescaleSlope"),
                       tr.get("RescaleIntercept") if tr else ds.get("RescaleIntercept")))
        measures = _frame_item(ds, k, "PixelMeasuresSequence")
        if spacing is None and measures is not None:
            spacing = _floats(measures.get("PixelSpacing"), 2, "PixelSpacing")
    if spacing is None:
        raise UnsuitableSeries("the multi-frame image has no PixelMeasuresSequence/PixelSpacing")
    o = np.stack(orients)
    if np.max(np.abs(o - o[0])) > _ORIENTATION_TOL:
        raise UnsuitableSeries("frames have different orientations")
    row_dir, col_dir = o[0][:3], o[0][3:]
    normal = np.cross(row_dir, col_dir)
    p = np.stack(positions)
    order = np.argsort(p @ normal, kind="stable")
    slice_spacing = _check_steps(p[order], normal, row_dir, col_dir)
    pixels = _decode(ds)
    if release_pixels:
        del ds.PixelData
    voxels = np.empty(pixels.shape, dtype=np.float32)
    for out_k, k in enumerate(order):
        voxels[out_k] = _rescale(pixels[k], *slopes[k])
    return Volume(voxels=voxels, spacing_mm=(slice_spacing, float(spacing[0]), float(spacing[1])),
                  origin_mm=tuple(float(v) for v in p[order][0]),         # type: ignore[arg-type]
                  row_direction=tuple(float(v) for v in row_dir),         # type: ignore[arg-type]
                  column_direction=tuple(float(v) for v in col_dir),      # type: ignore[arg-type]
                  modality=str(ds.get("Modality", "")), source_uids=(str(ds.SOPInstanceUID),),
                  frame_numbers=tuple(int(k) + 1 for k in order))
