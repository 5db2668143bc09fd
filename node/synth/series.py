"""The phantom as a CT series of single-frame DICOM instances, in any common transfer syntax."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from node.fsutil import make_dirs
from node.synth.phantom import Phantom, make_phantom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0

TRANSFER_SYNTAXES = {
    "explicit": uid.ExplicitVRLittleEndian,
    "implicit": uid.ImplicitVRLittleEndian,
    "deflated": uid.DeflatedExplicitVRLittleEndian,
    "rle": uid.RLELossless,
    "jpeg-ls": uid.JPEGLSLossless,
    "jpeg2000": uid.JPEG2000Lossless,
}


@dataclass(frozen=True, slots=True)
class SeriesIds:
    study_instance_uid: str = field(default_factory=uid.generate_uid)
    series_instance_uid: str = field(default_factory=uid.generate_uid)
    frame_of_reference_uid: str = field(default_factory=uid.generate_uid)
    patient_name: str = "Phantom^Segnode"
    patient_id: str = "SEGNODE-PHANTOM"
    series_description: str = "Synthetic chest CT"
    body_part_examined: str = "CHEST"
    modality: str = "CT"


@dataclass(frozen=True, slots=True)
class SliceGeometry:
    """Where one axial CT slice lies: ImagePositionPatient, ImageOrientationPatient, spacings (mm)."""

    position: tuple[float, float, float]
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)     # between rows, between columns
    thickness: float = 1.0
    slice_location: float = 0.0


def ct_slice(ids: SeriesIds, index: int, stored: np.ndarray, where: SliceGeometry, *,
             study_description: str, model_name: str, derived: bool) -> Dataset:
    """One CT Image Storage dataset: `stored` holds uint16 values of HU - RESCALE_INTERCEPT (12 bits)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = ids.patient_name, ids.patient_id, "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = ids.study_instance_uid, "20260101", "120000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.StudyDescription, ds.Modality = study_description, ids.modality
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = ids.series_instance_uid, 1, ids.series_description
    ds.BodyPartExamined, ds.PatientPosition = ids.body_part_examined, "HFS"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = ids.frame_of_reference_uid, ""
    ds.Manufacturer, ds.ManufacturerModelName = "Segnode", model_name
    ds.InstanceNumber, ds.AcquisitionNumber = index + 1, 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"] if derived else ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContentDate, ds.ContentTime, ds.KVP = "20260101", "120000", 120
    ds.PixelSpacing = [round(v, 6) for v in where.pixel_spacing]
    ds.SliceThickness = round(where.thickness, 6)
    ds.ImageOrientationPatient = [round(v, 6) for v in where.orientation]
    ds.ImagePositionPatient = [round(v, 4) for v in where.position]
    ds.SliceLocation = round(where.slice_location, 4)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored.tobytes()
    return ds


def phantom_datasets(phantom: Phantom, ids: SeriesIds | None = None,
                     transfer_syntax: str = uid.ExplicitVRLittleEndian) -> list[Dataset]:
    """One CT Image Storage dataset per slice, in slice order, with file meta for `transfer_syntax`."""
    ids = ids or SeriesIds()
    stored = np.clip(np.rint(phantom.hu - RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)
    out = []
    x0, y0, z0 = phantom.origin_mm
    for i in range(stored.shape[0]):
        z = z0 - i * phantom.slice_spacing_mm
        where = SliceGeometry(position=(x0, y0, z), pixel_spacing=(phantom.pixel_spacing_mm,) * 2,
                              thickness=phantom.slice_spacing_mm, slice_location=z)
        ds = ct_slice(ids, i, stored[i], where, study_description="Segnode synthetic phantom",
                      model_name="Phantom", derived=False)
        encode_pixels(ds, stored[i], transfer_syntax)
        out.append(ds)
    return out


def encode_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    if transfer_syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian,
                           uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        ds.compress(transfer_syntax, pixels)


def write_datasets(out: Path, datasets: Sequence[Dataset]) -> list[Path]:
    make_dirs(out)
    paths = []
    for i, ds in enumerate(datasets):
        path = out / f"CT{i + 1:05d}.dcm"
        ts = ds.file_meta.TransferSyntaxUID
        ds.save_as(path, enforce_file_format=True, implicit_vr=ts == uid.ImplicitVRLittleEndian,
                   little_endian=True)
        paths.append(path)
    return paths


def write_series(out: Path, *, slices: int = 120, rows: int = 256, columns: int | None = None,
                 transfer_syntax: str = "explicit", seed: int = 0, ids: SeriesIds | None = None) -> list[Path]:
    """Generate the phantom and write it as files CT00001.dcm... in `out`."""
    ts = TRANSFER_SYNTAXES.get(transfer_syntax, transfer_syntax)
    phantom = make_phantom(slices, rows, columns, seed=seed)
    return write_datasets(out, phantom_datasets(phantom, ids, ts))
