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


def phantom_datasets(phantom: Phantom, ids: SeriesIds | None = None,
                     transfer_syntax: str = uid.ExplicitVRLittleEndian) -> list[Dataset]:
    """One CT Image Storage dataset per slice, in slice order, with file meta for `transfer_syntax`."""
    ids = ids or SeriesIds()
    stored = np.clip(np.rint(phantom.hu - RESCALE_INTERCEPT), 0, 4095).astype(np.uint16)
    out = []
    x0, y0, z0 = phantom.origin_mm
    for i in range(stored.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = ids.patient_name
        ds.PatientID = ids.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = ids.study_instance_uid
        ds.StudyDate, ds.StudyTime = "20260101", "120000"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = "SYNTH0001"
        ds.StudyDescription = "Segnode synthetic phantom"
        ds.Modality = ids.modality
        ds.SeriesInstanceUID = ids.series_instance_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = ids.series_description
        ds.BodyPartExamined = ids.body_part_examined
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = ids.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "Segnode"
        ds.ManufacturerModelName = "Phantom"
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.AcquisitionNumber = 1
        ds.ContentDate, ds.ContentTime = "20260101", "120000"
        ds.KVP = 120
        ds.PixelSpacing = [round(phantom.pixel_spacing_mm, 6)] * 2
        ds.SliceThickness = phantom.slice_spacing_mm
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = z0 - i * phantom.slice_spacing_mm
        ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z, 4)]
        ds.SliceLocation = round(z, 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = stored[i].tobytes()
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
