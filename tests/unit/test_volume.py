import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from ai.errors import UnsuitableSeries
from ai.volume import volume_from_datasets
from node.synth.phantom import Phantom
from node.synth.series import phantom_datasets


def series(p: Phantom) -> list[Dataset]:
    return phantom_datasets(p)


def test_slices_are_sorted_along_the_normal_and_rescaled_to_hu(small_phantom: Phantom) -> None:
    ds = series(small_phantom)
    shuffled = [ds[i] for i in np.random.default_rng(0).permutation(len(ds))]
    v = volume_from_datasets(shuffled)
    assert v.voxels.shape == small_phantom.hu.shape
    # the phantom is written cranial-first (z descending); the volume runs along +normal (z ascending)
    assert np.allclose(v.voxels, np.clip(np.rint(small_phantom.hu + 1024), 0, 4095)[::-1] - 1024)
    assert v.spacing_mm == pytest.approx((small_phantom.slice_spacing_mm, small_phantom.pixel_spacing_mm,
                                          small_phantom.pixel_spacing_mm))
    assert v.source_uids == tuple(d.SOPInstanceUID for d in ds[::-1])
    assert v.affine[2, 0] == pytest.approx(small_phantom.slice_spacing_mm)


def _mutate(ds: list[Dataset], index: int, **changes: object) -> list[Dataset]:
    out = [copy.deepcopy(d) for d in ds]
    for k, v in changes.items():
        setattr(out[index], k, v)
    return out


@pytest.mark.parametrize(("build", "reason"), [
    (lambda ds: ds[:1], "has 1 image(s); a volume needs at least 3"),
    (lambda ds: ds[:5] + ds[6:], "slice spacing is irregular: 5.00 mm between slices"),
    (lambda ds: _mutate(ds, 3, ImageOrientationPatient=[0, 1, 0, 0, 0, -1]), "different orientations"),
    (lambda ds: _mutate(ds, 2, ImagePositionPatient=ds[1].ImagePositionPatient), "share the same position"),
    (lambda ds: [_mutate(ds, i, ImagePositionPatient=[d.ImagePositionPatient[0],
                                                       d.ImagePositionPatient[1] + 2.0 * i,
                                                       d.ImagePositionPatient[2]])[i]
                 for i, d in enumerate(ds)], "tilted gantry"),
    (lambda ds: _mutate(ds, 0, Rows=32), "images differ in size"),
])
def test_series_that_cannot_make_a_volume_say_why(small_phantom: Phantom, build, reason: str) -> None:
    with pytest.raises(UnsuitableSeries, match=reason.replace("(", r"\(").replace(")", r"\)")):
        volume_from_datasets(build(series(small_phantom)))


def test_undecodable_pixels_name_the_transfer_syntax(small_phantom: Phantom) -> None:
    ds = series(small_phantom)[:3]
    for d in ds:
        d.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        d.PixelData = b"\xff\xd8 not a jpeg" + b"\x00" * 100
    with pytest.raises(UnsuitableSeries, match=r"pixel data in JPEG Baseline.*could not be decoded"):
        volume_from_datasets(ds)


def test_enhanced_multiframe_uses_per_frame_positions(small_phantom: Phantom) -> None:
    frames = series(small_phantom)
    mf = copy.deepcopy(frames[0])
    mf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    mf.SOPInstanceUID = generate_uid()
    mf.NumberOfFrames = len(frames)
    mf.PixelData = b"".join(f.PixelData for f in frames[::-1])      # stored caudal-first
    per_frame = []
    for f in frames[::-1]:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = f.ImagePositionPatient
        item.PlanePositionSequence = Sequence([pos])
        tr = Dataset()
        tr.RescaleSlope, tr.RescaleIntercept = 1, -1024
        item.PixelValueTransformationSequence = Sequence([tr])
        per_frame.append(item)
    shared = Dataset()
    o, m = Dataset(), Dataset()
    o.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    m.PixelSpacing, m.SliceThickness = frames[0].PixelSpacing, frames[0].SliceThickness
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([o]), Sequence([m])
    mf.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    mf.SharedFunctionalGroupsSequence = Sequence([shared])
    for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(mf, k)
    v = volume_from_datasets([mf])
    single = volume_from_datasets(frames)
    assert np.array_equal(v.voxels, single.voxels)
    assert v.frame_numbers[0] == 1 and v.spacing_mm == pytest.approx(single.spacing_mm)
