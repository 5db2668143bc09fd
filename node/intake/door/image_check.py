"""At the door: can this image be decoded into the pixels its header declares? Pure, no I/O.

Cheap enough for the receive path: it reads header attributes and the Pixel Data length (native
syntaxes) or the item structure and frame markers (encapsulated syntaxes), never decodes pixels.
A sender told the truth while it still holds the data can fix or re-send it; a job that fails
minutes later cannot.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pydicom import uid
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from rle.utils import decode_frame as rle_decode_frame

_NATIVE = {uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
           uid.ExplicitVRBigEndian}
_JPEG = {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
         uid.JPEGLSLossless, uid.JPEGLSNearLossless}
_J2K = {uid.JPEG2000Lossless, uid.JPEG2000}
_SOI, _EOI, _SOC = b"\xff\xd8", b"\xff\xd9", b"\xff\x4f"
_ITEM, _SEQ_END = 0xE000, 0xE0DD

SAMPLES_PER_PIXEL = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
            "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}


class ImageProblem(ValueError):
    """The image cannot become the pixels its header declares. `dataset_mismatch`: header vs IOD (0xA900),
    else the stream itself is broken (0xC000)."""

    def __init__(self, message: str, *, dataset_mismatch: bool) -> None:
        super().__init__(message)
        self.dataset_mismatch = dataset_mismatch


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_matrix: int = 8192        # Rows and Columns above this are refused
    max_frames: int = 5000        # NumberOfFrames above this is refused


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise ImageProblem(f"{keyword} is missing", dataset_mismatch=True)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ImageProblem(f"{keyword} is not a number", dataset_mismatch=True) from None


def _pixel_module(ds: Dataset, limits: ImageLimits) -> tuple[int, int, int, int, int, str]:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", 1)
    check_matrix(rows, cols, frames, limits)
    # Type 1 in the Image Pixel module: a decoder needs each of them, so none has a default here
    spp, allocated = _int(ds, "SamplesPerPixel"), _int(ds, "BitsAllocated")
    stored, high = _int(ds, "BitsStored"), _int(ds, "HighBit")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    check_samples(spp, allocated, stored, high, _int(ds, "PixelRepresentation"), photometric)
    return rows, cols, frames, spp, allocated, photometric


def check_matrix(rows: int, cols: int, frames: int, limits: ImageLimits) -> None:
    """Raise ImageProblem for a matrix or frame count outside the limits."""
    if not (0 < rows <= limits.max_matrix and 0 < cols <= limits.max_matrix):
        raise ImageProblem(f"Rows x Columns {rows} x {cols} outside 1..{limits.max_matrix}", dataset_mismatch=True)
    if not 0 < frames <= limits.max_frames:
        raise ImageProblem(f"NumberOfFrames {frames} outside 1..{limits.max_frames}", dataset_mismatch=True)


def check_samples(spp: int, allocated: int, stored: int, high: int, representation: int, photometric: str) -> None:
    """Raise ImageProblem for an Image Pixel module a decoder cannot follow."""
    if allocated not in (1, 8, 16, 32, 64):
        raise ImageProblem(f"BitsAllocated {allocated} is not 1, 8, 16, 32 or 64", dataset_mismatch=True)
    if not 0 < stored <= allocated or high != stored - 1:
        raise ImageProblem(f"BitsStored {stored} / HighBit {high} inconsistent with BitsAllocated {allocated}",
                           dataset_mismatch=True)
    if representation not in (0, 1):
        raise ImageProblem("PixelRepresentation is not 0 or 1", dataset_mismatch=True)
    if photometric not in SAMPLES_PER_PIXEL:
        raise ImageProblem(f"PhotometricInterpretation {photometric[:16]!r} unknown", dataset_mismatch=True)
    if SAMPLES_PER_PIXEL[photometric] != spp:
        raise ImageProblem(f"{photometric} needs SamplesPerPixel {SAMPLES_PER_PIXEL[photometric]}, got {spp}",
                           dataset_mismatch=True)


def native_length(rows: int, cols: int, frames: int, spp: int, allocated: int, photometric: str) -> int:
    if photometric == "YBR_FULL_422":
        return rows * cols * 2 * frames * allocated // 8
    bits = rows * cols * spp * frames * allocated
    return (bits + 7) // 8


def _fragments(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the items of an encapsulated Pixel Data value, Basic Offset Table first."""
    items, pos, end = [], 0, len(data)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHL", data, pos)
        if group != 0xFFFE:
            raise ImageProblem("encapsulated Pixel Data: an item tag is missing", dataset_mismatch=False)
        if element == _SEQ_END:
            return items
        if element != _ITEM or length == 0xFFFFFFFF:
            raise ImageProblem("encapsulated Pixel Data: malformed item", dataset_mismatch=False)
        if pos + 8 + length > end:
            raise ImageProblem("encapsulated Pixel Data ends inside a fragment (truncated)", dataset_mismatch=False)
        items.append((pos + 8, length))
        pos += 8 + length
    if pos != end:
        raise ImageProblem("encapsulated Pixel Data ends inside an item header (truncated)", dataset_mismatch=False)
    return items


def _frame_ok(data: bytes, start: int, stop: int, transfer_syntax: str, pixels: int, bits: int) -> bool:
    """Does the frame's codestream begin and end with its markers (padding allowed at the end)?"""
    head, tail = data[start:start + 2], data[max(start, stop - 4):stop].rstrip(b"\x00")
    if transfer_syntax in _JPEG:
        return head == _SOI and tail.endswith(_EOI)
    if transfer_syntax in _J2K:
        is_jp2 = data[start + 4:start + 8] == b"jP  "
        return (head == _SOC and tail.endswith(_EOI)) or is_jp2
    if transfer_syntax == uid.RLELossless:         # no end marker: decode it (about 0.3 ms for 512 x 512)
        try:
            rle_decode_frame(data[start:stop], pixels, bits, "<")
        except ValueError:
            return False
    return True


def _check_encapsulated(data: bytes, frames: int, transfer_syntax: str, pixels: int, bits: int) -> None:
    items = _fragments(data)
    if len(items) < 2:
        raise ImageProblem("encapsulated Pixel Data has no fragment", dataset_mismatch=False)
    bot, fragments = items[0], items[1:]
    if bot[1] % 4 or (bot[1] and bot[1] // 4 != frames):
        raise ImageProblem(f"Basic Offset Table has {bot[1] // 4} entries for {frames} frame(s)",
                           dataset_mismatch=False)
    if len(fragments) < frames:
        raise ImageProblem(f"encapsulated Pixel Data: {len(fragments)} fragment(s) for {frames} frame(s)",
                           dataset_mismatch=False)
    if len(fragments) == frames:
        bad = [i for i, (o, n) in enumerate(fragments) if not _frame_ok(data, o, o + n, transfer_syntax, pixels, bits)]
        if bad:
            raise ImageProblem(f"frame {bad[0] + 1}: compressed stream incomplete (truncated or corrupt)",
                               dataset_mismatch=False)
    elif transfer_syntax in _JPEG and sum(data[o:o + 2] == _SOI for o, _n in fragments) != frames:
        raise ImageProblem(f"encapsulated Pixel Data does not hold {frames} JPEG frame(s)", dataset_mismatch=False)


def check_image(ds: Dataset, transfer_syntax: str, limits: ImageLimits) -> None:
    """Raise ImageProblem when `ds` (an image) cannot be decoded into the pixels its header declares."""
    rows, cols, frames, spp, allocated, photometric = _pixel_module(ds, limits)
    try:
        data = ds.PixelData
    except Exception as exc:          # a deferred read past the end of the received stream
        raise ImageProblem(f"Pixel Data unreadable ({type(exc).__name__}: truncated?)", dataset_mismatch=False) \
            from None
    if not isinstance(data, bytes | bytearray):
        raise ImageProblem("Pixel Data has no value", dataset_mismatch=False)
    if transfer_syntax in _NATIVE:
        expected = native_length(rows, cols, frames, spp, allocated, photometric)
        if len(data) not in (expected, expected + (expected & 1)):
            raise ImageProblem(f"Pixel Data holds {len(data)} bytes; the header declares {expected}",
                               dataset_mismatch=False)
    else:
        _check_encapsulated(bytes(data), frames, transfer_syntax, rows * cols, allocated)


# -- text values -------------------------------------------------------------------------------------
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT", "UR"}
FREE_TEXT_VRS = {"LT", "ST", "UT"}                     # may hold CR, LF, FF and TAB
BAD_STRICT = re.compile(rb"[\x00-\x1a\x1c-\x1f\x7f]")
BAD_FREE = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_ESC = b"\x1b"


def _vr(elem: object) -> str | None:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    try:
        return dictionary_VR(elem.tag)      # type: ignore[attr-defined]
    except KeyError:
        return None


def _code_extensions(ds: Dataset) -> bool:
    """Does the Specific Character Set use ISO 2022 code extensions (where ESC is legal)? One value or several."""
    charsets = ds.get("SpecificCharacterSet") or []
    if isinstance(charsets, str):
        charsets = [charsets]
    return any("2022" in str(cs) for cs in charsets)


def control_character_tags(ds: Dataset) -> list[int]:
    """Tags of top-level text elements holding control characters (ESC only outside ISO 2022)."""
    iso2022 = _code_extensions(ds)
    found = []
    for elem in ds.elements():
        vr = _vr(elem)
        if vr not in TEXT_VRS:
            continue
        value = _text_bytes(elem)
        if not value:
            continue
        pattern = BAD_FREE if vr in FREE_TEXT_VRS else BAD_STRICT
        value = value.rstrip(b"\x00 ")              # NUL padding is a common vendor quirk, not content
        if pattern.search(value) or (_ESC in value and not iso2022):
            found.append(int(elem.tag))
    return found


def _text_bytes(elem: DataElement | RawDataElement) -> bytes:
    """A text element's bytes as received. A value above the reader's defer size comes back from pydicom
    already decoded: it is encoded again as UTF-8, which keeps every control character (all below 0x80)
    and adds none."""
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"")
    values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
    return "\\".join("" if v is None else str(v) for v in values).encode("utf-8", "surrogatepass")


def scrub_control_characters(ds: Dataset, tags: list[int]) -> None:
    """Replace the control characters of `tags` in place: trailing NUL padding dropped, others become '?'."""
    iso2022 = _code_extensions(ds)
    for tag in tags:
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement):
            continue
        vr = _vr(raw)
        pattern = BAD_FREE if vr in FREE_TEXT_VRS else BAD_STRICT
        value = bytes(raw.value).rstrip(b"\x00")
        value = pattern.sub(b"?", value)
        if not iso2022:
            value = value.replace(_ESC, b"?")
        if len(value) % 2:
            value += b" "
        ds[tag] = raw._replace(value=value, length=len(value))
