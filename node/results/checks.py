"""Checks on the encoded bytes of a SEG and an SR before they leave: decoded again, cheaply but for real.

highdicom validated each object when it was built; what can still go wrong is the encoding, and a SEG
whose frames, segments and pixel data disagree, or an SR whose measurements point elsewhere. Decoding
the whole SEG with highdicom (`Segmentation.from_dataset`) builds its frame look-up tables and costs
more than encoding it with 100+ segments, so the checks read the bytes with pydicom and compare what a
receiver relies on. dciodvfy checks the full IOD in the tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

IMAGING_MEASUREMENTS = "126010"          # DCM: the TID 1500 container holding the measurement groups
MEASUREMENT_GROUP = "125007"


class EncodingCheckFailed(ValueError):
    """The encoded object does not decode to what was built: a bug, never a property of the input."""


def _decode(data: bytes, sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    ds = dcmread(BytesIO(data))
    if ds.file_meta.MediaStorageSOPClassUID != sop_class_uid or ds.SOPClassUID != sop_class_uid:
        raise EncodingCheckFailed(f"SOP class {ds.SOPClassUID} decoded, {sop_class_uid} expected")
    if ds.SOPInstanceUID != sop_instance_uid or ds.file_meta.MediaStorageSOPInstanceUID != sop_instance_uid:
        raise EncodingCheckFailed(f"SOP instance {ds.SOPInstanceUID} decoded, {sop_instance_uid} expected")
    return ds


def _frame_segment_numbers(ds: Dataset, data: bytes) -> list[int] | None:
    """Every ReferencedSegmentNumber (0062,000B) encoded before the pixel data, read from the bytes: decoding
    the per-frame functional groups item by item costs ~0.15 ms a frame (0.7 s for 4,800 frames). None when
    the transfer syntax is not native little endian (then the caller decodes the items)."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed or syntax.is_deflated or not syntax.is_little_endian:
        return None
    raw = ds.get_item(0x7FE00010)
    header = data[:raw.value_tell] if raw is not None and raw.value_tell else data
    tag = b"\x62\x00\x0b\x00" + (b"\x02\x00\x00\x00" if syntax.is_implicit_VR else b"US\x02\x00")
    return [int.from_bytes(m.group(1), "little") for m in re.finditer(re.escape(tag) + b"(..)", header, re.S)]


def check_seg(data: bytes, sop_instance_uid: str, segments: int, source_series_instance_uid: str) -> None:
    """Decode an encoded SEG and check its segments 1..`segments`, that every frame names one of them and
    each has a frame, the pixel data length for its frame count, and the referenced source series."""
    ds = _decode(data, SegmentationStorage, sop_instance_uid)
    numbers = [int(item.SegmentNumber) for item in ds.SegmentSequence]
    if numbers != list(range(1, segments + 1)):
        raise EncodingCheckFailed(f"segment numbers {numbers[:5]}... decoded, 1..{segments} expected")
    frames = int(ds.NumberOfFrames)
    referenced = _frame_segment_numbers(ds, data)
    if referenced is None:
        shared = ds.SharedFunctionalGroupsSequence[0]
        items = [shared] if "SegmentIdentificationSequence" in shared else ds.PerFrameFunctionalGroupsSequence
        referenced = [int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for item in items]
    if len(referenced) not in (frames, 1) or (len(referenced) == 1 and segments != 1):
        raise EncodingCheckFailed(f"{len(referenced)} frame segment references for {frames} frames")
    if set(referenced) != set(numbers):
        raise EncodingCheckFailed(f"frames reference segments {sorted(set(referenced) - set(numbers))[:5]} that do "
                                  f"not exist or leave {sorted(set(numbers) - set(referenced))[:5]} without a frame")
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        bits = frames * int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated)
        expected = (bits + 7) // 8
        if len(ds.PixelData) != expected + expected % 2:
            raise EncodingCheckFailed(f"pixel data of {len(ds.PixelData)} bytes for {frames} frames "
                                      f"({expected + expected % 2} expected)")
    series = {str(item.SeriesInstanceUID) for item in ds.ReferencedSeriesSequence}
    if series != {source_series_instance_uid}:
        raise EncodingCheckFailed(f"the SEG references series {sorted(series)}, not the source series")


def _items(ds: Dataset) -> Iterator[Dataset]:
    yield from ds.get("ContentSequence", [])


def _values(value: object) -> list[object]:
    """A multi-valued element's values: pydicom gives a single value unwrapped."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | MultiValue) else [value]


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item else ""


def check_sr(data: bytes, sop_instance_uid: str, groups: int, seg_sop_instance_uid: str, segments: int) -> None:
    """Decode an encoded TID 1500 report and check that it holds `groups` measurement groups, each referencing
    a segment 1..`segments` of the SEG once, with numeric measurements, and that the SEG is in its evidence."""
    ds = _decode(data, Comprehensive3DSRStorage, sop_instance_uid)
    containers = [item for item in _items(ds) if _code(item) == IMAGING_MEASUREMENTS]
    if len(containers) != 1:
        raise EncodingCheckFailed(f"{len(containers)} Imaging Measurements containers decoded, 1 expected")
    found = [item for item in _items(containers[0]) if _code(item) == MEASUREMENT_GROUP]
    if len(found) != groups:
        raise EncodingCheckFailed(f"{len(found)} measurement groups decoded, {groups} expected")
    seen: set[int] = set()
    for group in found:
        refs = [item.ReferencedSOPSequence[0] for item in _items(group) if item.ValueType in ("IMAGE", "COMPOSITE")]
        numbers = [int(n) for r in refs if r.ReferencedSOPInstanceUID == seg_sop_instance_uid
                   for n in _values(r.get("ReferencedSegmentNumber"))]
        if len(numbers) != 1 or not 1 <= numbers[0] <= segments or numbers[0] in seen:
            raise EncodingCheckFailed(f"a measurement group references segments {numbers} of the SEG")
        seen.add(numbers[0])
        if not any(item.ValueType == "NUM" and "MeasuredValueSequence" in item for item in _items(group)):
            raise EncodingCheckFailed(f"the group of segment {numbers[0]} holds no measured value")
    evidence = {str(ref.ReferencedSOPInstanceUID) for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    if seg_sop_instance_uid not in evidence:
        raise EncodingCheckFailed("the SEG is missing from the SR's evidence")
