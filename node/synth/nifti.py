"""NIfTI volumes as CT Image Storage series: try the node on a real scan, or test it on one.

NIfTI stores voxels with an affine to RAS millimetres; DICOM places pixels in LPS. The array is
first brought to the closest canonical RAS order (nibabel), then its first two axes are flipped so
that column index grows toward patient left and row index toward posterior, which is how a viewer
expects an axial slice. The result uses ai/'s axis order (slice, row, column), slices ascending
along the slice normal (feet to head for an axial scan).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from pydicom import uid
from pydicom.dataset import Dataset

from node.synth.series import RESCALE_INTERCEPT, SeriesIds, SliceGeometry, ct_slice, encode_pixels

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
HU_MIN, HU_MAX = int(RESCALE_INTERCEPT), 3071          # what 12 stored bits with intercept -1024 can hold


@dataclass(frozen=True, slots=True)
class LpsImage:
    array: np.ndarray                                 # (slice, row, column)
    spacing_mm: tuple[float, float, float]            # along (slice, row, column)
    origin_mm: tuple[float, float, float]             # LPS position of voxel (0, 0, 0)
    row_direction: tuple[float, float, float]         # LPS direction in which the column index grows
    column_direction: tuple[float, float, float]      # LPS direction in which the row index grows
    normal: tuple[float, float, float]                # LPS direction in which the slice index grows

    def position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice `k`."""
        p = np.array(self.origin_mm) + k * self.spacing_mm[0] * np.array(self.normal)
        return (float(p[0]), float(p[1]), float(p[2]))


def read_lps(path: Path, dtype: type = np.float32) -> LpsImage:
    """Read a 3-D NIfTI file into (slice, row, column) LPS order with its geometry."""
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
    except (ImageFileError, OSError, EOFError) as exc:
        raise ValueError(f"{path.name} is not a readable NIfTI volume ({exc})") from None
    if len(img.shape) != 3:
        raise ValueError(f"{path.name}: expected a 3-D volume, got shape {img.shape}")
    data = np.asarray(img.dataobj, dtype=dtype)
    nx, ny, _ = data.shape
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    affine = _RAS_TO_LPS @ img.affine @ flip           # voxel (x', y', z) of the flipped array -> LPS
    data = data[::-1, ::-1, :]
    cols = [affine[:3, i] for i in range(3)]
    norms = [float(np.linalg.norm(c)) for c in cols]
    unit = [tuple(float(v) for v in c / n) for c, n in zip(cols, norms, strict=True)]
    return LpsImage(array=np.ascontiguousarray(data.transpose(2, 1, 0)),
                    spacing_mm=(norms[2], norms[1], norms[0]),
                    origin_mm=tuple(float(v) for v in affine[:3, 3]),   # type: ignore[arg-type]
                    row_direction=unit[0], column_direction=unit[1],     # type: ignore[arg-type]
                    normal=unit[2])                                      # type: ignore[arg-type]


def nifti_datasets(path: Path, ids: SeriesIds | None = None,
                   transfer_syntax: str = uid.ExplicitVRLittleEndian) -> list[Dataset]:
    """One CT Image Storage dataset per slice of the NIfTI volume at `path` (values in HU)."""
    ids = ids or SeriesIds(patient_name="Anonymous^Nifti", patient_id="NIFTI",
                           series_description=f"CT from {path.name}"[:64], body_part_examined="ABDOMEN")
    image = read_lps(path)
    stored = (np.clip(np.rint(image.array), HU_MIN, HU_MAX) - HU_MIN).astype(np.uint16)
    out = []
    for k in range(stored.shape[0]):
        pos = image.position(k)
        where = SliceGeometry(position=pos, orientation=(*image.row_direction, *image.column_direction),
                              pixel_spacing=(image.spacing_mm[1], image.spacing_mm[2]), thickness=image.spacing_mm[0],
                              slice_location=float(np.dot(pos, image.normal)))
        ds = ct_slice(ids, k, stored[k], where, study_description="Converted from NIfTI", model_name="NIfTI converter",
                      derived=True)
        encode_pixels(ds, stored[k], transfer_syntax)
        out.append(ds)
    return out
