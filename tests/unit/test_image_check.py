"""The door check: images whose pixels cannot match their header, and text with control characters."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from node.intake.door.image_check import (
    ImageLimits,
    ImageProblem,
    check_image,
    control_character_tags,
    scrub_control_characters,
)

LIMITS = ImageLimits(max_matrix=4096, max_frames=100)


def received(ds: Dataset) -> Dataset:
    """`ds` as the SCP sees it: encoded, then read back lazily from the bytes."""
    buf = BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(buf, enforce_file_format=True, implicit_vr=ts == uid.ImplicitVRLittleEndian, little_endian=True)
    return dcmread(BytesIO(buf.getvalue()), defer_size=4096)


def test_a_valid_slice_passes(ct_series: list[Dataset]) -> None:
    ds = received(ct_series[0])
    check_image(ds, ds.file_meta.TransferSyntaxUID, LIMITS)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]), "holds"),
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[:-4000]), "holds"),
    (lambda ds: (setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)), "outside"),
    (lambda ds: setattr(ds, "BitsStored", 20), "inconsistent"),
    (lambda ds: setattr(ds, "HighBit", 3), "inconsistent"),
    (lambda ds: setattr(ds, "BitsAllocated", 12), "BitsAllocated"),
    (lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"), "SamplesPerPixel"),
    (lambda ds: setattr(ds, "PhotometricInterpretation", "WEIRD"), "unknown"),
    (lambda ds: setattr(ds, "NumberOfFrames", 1000), "NumberOfFrames"),
    (lambda ds: delattr(ds, "Rows"), "Rows is missing"),
    (lambda ds: delattr(ds, "PixelRepresentation"), "PixelRepresentation is missing"),
    (lambda ds: delattr(ds, "SamplesPerPixel"), "SamplesPerPixel is missing"),
    (lambda ds: delattr(ds, "PhotometricInterpretation"), "PhotometricInterpretation"),
])
def test_native_images_that_cannot_be_their_header_are_refused(ct_series: list[Dataset], change, expected) -> None:
    ds = ct_series[0]
    change(ds)
    with pytest.raises(ImageProblem, match=expected):
        check_image(received(ds), uid.ExplicitVRLittleEndian, LIMITS)


def _compressed(ct_series: list[Dataset], syntax: str) -> Dataset:
    ds = ct_series[0]
    ds.compress(syntax, ds.pixel_array)
    return ds


@pytest.mark.parametrize("syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless])
def test_encapsulated_images_pass_and_their_truncations_do_not(ct_series: list[Dataset], syntax: str) -> None:
    ds = _compressed(ct_series, syntax)
    check_image(received(ds), syntax, LIMITS)
    frame = next(iter(_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    with pytest.raises(ImageProblem, match=r"incomplete|truncated"):
        check_image(received(ds), syntax, LIMITS)


def _frames(data: bytes):
    from pydicom.encaps import generate_frames
    return generate_frames(data, number_of_frames=1)


def test_an_encapsulated_stream_cut_inside_a_fragment_is_refused(ct_series: list[Dataset]) -> None:
    ds = received(_compressed(ct_series, uid.RLELossless))
    with pytest.raises(ImageProblem, match="truncated"):
        check_image(_with_pixel_bytes(ds, bytes(ds.PixelData)[:-100]), uid.RLELossless, LIMITS)


def test_more_frames_than_fragments_is_refused(ct_series: list[Dataset]) -> None:
    ds = received(_compressed(ct_series, uid.JPEGLSLossless))
    ds.NumberOfFrames = 3
    with pytest.raises(ImageProblem, match="Basic Offset Table has 1 entries for 3 frame"):
        check_image(ds, uid.JPEGLSLossless, LIMITS)
    frame = next(iter(_frames(ds.PixelData)))
    ds.PixelData = encapsulate([frame], has_bot=False)
    with pytest.raises(ImageProblem, match="1 fragment"):
        check_image(ds, uid.JPEGLSLossless, LIMITS)


def _with_pixel_bytes(ds: Dataset, data: bytes) -> Dataset:
    ds.PixelData = data
    return ds


def test_control_characters_are_found_and_scrubbed(ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.PatientName = "Evil\x1b[31m^Name\x07\r\n"
    ds.StudyDescription = "fine"
    ds.ImageComments = "line one\r\nline two"          # LT: CR LF are allowed
    seen = received(ds)
    tags = control_character_tags(seen)
    assert tags == [0x00100010]
    scrub_control_characters(seen, tags)
    assert str(seen.PatientName) == "Evil?[31m^Name???"
    assert control_character_tags(received(seen)) == []
    assert seen.ImageComments == "line one\r\nline two"


def test_iso2022_escape_sequences_are_not_control_characters(ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    assert control_character_tags(received(ds)) == []


def test_a_single_iso2022_character_set_allows_escape_sequences_too(ct_series: list[Dataset]) -> None:
    ds = ct_series[0]
    ds.SpecificCharacterSet = "ISO 2022 IR 100"             # one value: pydicom gives a str, not a list
    ds.PatientName = "M\x1b-A\xfcller^J\xfcrgen"            # ESC - A: G1 = Latin-1, then its bytes
    assert control_character_tags(received(ds)) == []


def test_trailing_nul_padding_is_tolerated(ct_series: list[Dataset]) -> None:
    ds = received(ct_series[0])
    raw = ds.get_item(0x00081030)
    ds[0x00081030] = raw._replace(value=b"Abdomen\x00", length=8)
    assert control_character_tags(ds) == []


def test_limits_are_the_configured_ones(ct_series: list[Dataset]) -> None:
    ds = received(ct_series[0])
    with pytest.raises(ImageProblem, match=r"outside 1\.\.32"):
        check_image(ds, uid.ExplicitVRLittleEndian, ImageLimits(max_matrix=32))
    assert np.prod([ds.Rows, ds.Columns]) > 32


def test_control_characters_in_a_long_text_value_are_found_too(ct_series: list[Dataset]) -> None:
    """A text value above the reader's 4 KB defer size is read for the check, not skipped."""
    ds = ct_series[0]
    ds.ImageComments = "x" * 5000 + "\x1b[31m\x07"          # LT, 5 KB: deferred by the reader
    tags = control_character_tags(received(ds))
    assert tags == [0x00204000]
    buf = BytesIO()                                         # the door scrubs a full read of the same bytes
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    full = dcmread(BytesIO(buf.getvalue()))
    scrub_control_characters(full, tags)
    assert full.ImageComments == "x" * 5000 + "?[31m?"
