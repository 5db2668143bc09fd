"""The checks run on encoded SEG/SR bytes before they leave pass on good objects and catch broken encodings."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.volume import volume_from_datasets
from node.results.checks import EncodingCheckFailed, check_seg, check_sr
from node.results.dicom import encode, encode_checked
from node.results.ids import ResultIds
from node.results.seg import build_segmentation
from node.results.sr import build_report
from node.synth.phantom import Phantom
from node.synth.series import phantom_datasets

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def results(small_phantom: Phantom):
    datasets = phantom_datasets(small_phantom)
    volume = volume_from_datasets(datasets)
    labels = CtBasic().predict(volume)
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    card = CtBasic.card
    ids = ResultIds.for_series("job", 1, sources[0].SeriesInstanceUID, 1)
    seg = build_segmentation(sources, labels, card, ids)
    measurements = measure(labels, volume.voxels, volume.spacing_mm, card)
    sr = build_report(seg, sources, measurements, card, ids, "job", 1)
    return seg, sr, str(sources[0].SeriesInstanceUID), len(measurements)


def _reencoded(data: bytes, change) -> bytes:
    ds = dcmread(BytesIO(data))
    change(ds)
    return encode(ds)


def test_good_objects_pass(results) -> None:
    seg, sr, series, groups = results
    seg_data, sr_data = encode_checked(seg, sr, series, groups)
    assert seg_data[128:132] == b"DICM" and sr_data[128:132] == b"DICM"


def _drop_last_frame_item(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[-1]


def _segment_without_frames(ds: Dataset) -> None:
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = 1


@pytest.mark.parametrize(("change", "message"), [
    (_drop_last_frame_item, "frame segment references"),
    (_segment_without_frames, "without a frame"),
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[:-2]), "pixel data"),
    (lambda ds: setattr(ds.SegmentSequence[0], "SegmentNumber", 7), "segment numbers"),
    (lambda ds: setattr(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", "1.2.3"), "source series"),
])
def test_a_broken_seg_is_caught(results, change, message: str) -> None:
    seg, _sr, series, _ = results
    data = _reencoded(encode(seg), change)
    with pytest.raises(EncodingCheckFailed, match=message):
        check_seg(data, seg.SOPInstanceUID, len(seg.SegmentSequence), series)
    with pytest.raises(EncodingCheckFailed, match="SOP instance"):
        check_seg(encode(seg), "1.2.3.4", len(seg.SegmentSequence), series)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_other_transfer_syntaxes_are_checked_too(results, syntax: str) -> None:
    """Implicit VR is read from the bytes with its own tag pattern; deflated bytes by decoding each item."""
    seg, _sr, series, _ = results

    def recode(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = syntax

    check_seg(_reencoded(encode(seg), recode), seg.SOPInstanceUID, len(seg.SegmentSequence), series)
    broken = _reencoded(encode(seg), lambda ds: (recode(ds), _segment_without_frames(ds)))
    with pytest.raises(EncodingCheckFailed, match="without a frame"):
        check_seg(broken, seg.SOPInstanceUID, len(seg.SegmentSequence), series)


def _measurements(ds: Dataset) -> Dataset:
    return next(it for it in ds.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "126010")


def _point_group_at_segment_9(ds: Dataset) -> None:
    group = _measurements(ds).ContentSequence[0]
    ref = next(it for it in group.ContentSequence if it.ValueType == "IMAGE")
    ref.ReferencedSOPSequence[0].ReferencedSegmentNumber = 9


def test_a_broken_sr_is_caught(results) -> None:
    seg, sr, _series, groups = results
    data = encode(sr)
    segments = len(seg.SegmentSequence)
    check_sr(data, sr.SOPInstanceUID, groups, seg.SOPInstanceUID, segments)
    with pytest.raises(EncodingCheckFailed, match="measurement groups"):
        check_sr(data, sr.SOPInstanceUID, groups + 1, seg.SOPInstanceUID, segments)
    with pytest.raises(EncodingCheckFailed, match="references segments"):
        check_sr(_reencoded(data, _point_group_at_segment_9), sr.SOPInstanceUID, groups, seg.SOPInstanceUID,
                 segments)
    with pytest.raises(EncodingCheckFailed, match="references segments"):
        check_sr(data, sr.SOPInstanceUID, groups, "1.2.3.4", segments)
    assert np.all([g.ValueType == "CONTAINER" for g in _measurements(dcmread(BytesIO(data))).ContentSequence])
