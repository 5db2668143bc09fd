"""DIMSE statuses, SOP classes and transfer syntaxes the Storage SCP speaks (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

from enum import IntEnum

from pydicom import uid
from pydicom.dataset import Dataset


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    COERCED = 0xB000                         # warning: stored with data elements changed
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000


def store_response(status: StoreStatus, comment: str = "") -> Dataset:
    """A C-STORE response status dataset; ErrorComment is LO, at most 64 characters."""
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


# Image storage a PACS routes to an AI node, plus SEG and SR so results can be looped back.
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
}
SR_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
}
STORAGE_SOP_CLASSES: dict[str, str] = {**IMAGE_SOP_CLASSES, **SR_SOP_CLASSES}

# Stored exactly as received; decoding happens later, in ai/, with the pydicom pixel plugins.
TRANSFER_SYNTAXES: list[str] = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def dataset_mismatch(ds: Dataset, sop_class_uid: str) -> str | None:
    """Why a dataset does not match the SOP class it was sent under, or None when it does."""
    if str(ds.get("SOPClassUID", "")) != sop_class_uid:
        return "SOPClassUID differs from the negotiated SOP class"
    if sop_class_uid in IMAGE_SOP_CLASSES:
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            return "image without Pixel Data"
        if not ds.get("Rows") or not ds.get("Columns"):
            return "image without Rows/Columns"
    elif sop_class_uid in SR_SOP_CLASSES and "ContentSequence" not in ds and "ValueType" not in ds:
        return "SR without a content tree"
    return None
