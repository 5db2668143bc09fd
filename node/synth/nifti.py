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
from pydicom.dataset import Dataset, FileMetaDataset

from node.synth.series import CT_IMAGE_STORAGE, SeriesIds, encode_pixels

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
HU_MIN, HU_MAX = -1024, 3071          # what 12 stored bits with intercept -1024 can hold


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


def _slice_dataset(image: LpsImage, k: int, stored: np.ndarray, ids: SeriesIds) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = ids.patient_name, ids.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID = ids.study_instance_uid
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.StudyDescription = "Converted from NIfTI"
    ds.Modality = ids.modality
    ds.SeriesInstanceUID = ids.series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = ids.series_description
    ds.BodyPartExamined = ids.body_part_examined
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = ids.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = "Segnode", "NIfTI converter"
    ds.InstanceNumber = k + 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.PixelSpacing = [round(image.spacing_mm[1], 6), round(image.spacing_mm[2], 6)]
    ds.SliceThickness = round(image.spacing_mm[0], 6)
    ds.ImageOrientationPatient = [round(v, 6) for v in (*image.row_direction, *image.column_direction)]
    pos = image.position(k)
    ds.ImagePositionPatient = [round(v, 4) for v in pos]
    ds.SliceLocation = round(float(np.dot(pos, image.normal)), 4)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = HU_MIN, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored[k].tobytes()
    return ds


def nifti_datasets(path: Path, ids: SeriesIds | None = None,
                   transfer_syntax: str = uid.ExplicitVRLittleEndian) -> list[Dataset]:
    """One CT Image Storage dataset per slice of the NIfTI volume at `path` (values in HU)."""
    ids = ids or SeriesIds(patient_name="Anonymous^Nifti", patient_id="NIFTI",
                           series_description=f"CT from {path.name}"[:64], body_part_examined="ABDOMEN")
    image = read_lps(path)
    stored = (np.clip(np.rint(image.array), HU_MIN, HU_MAX) - HU_MIN).astype(np.uint16)
    out = []
    for k in range(stored.shape[0]):
        ds = _slice_dataset(image, k, stored, ids)
        encode_pixels(ds, stored[k], transfer_syntax)
        out.append(ds)
    return out
