"""The door's fast path (node/intake/door/header_scan.py) against the full pydicom checks it stands in for.

The rule it is held to: for any bytes, it either declines (None) or the full checks accept the instance
unchanged and build the same record. Each plain case must also take the fast path, or it wins nothing.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from node.intake.door.door import Refused, StoreRequest, checked, coerced
from node.intake.door.header_scan import clean_header
from node.intake.door.image_check import ImageLimits
from node.intake.door.records import clean_record, instance_record
from node.intake.wire import encoders
from node.jobs.records import InstanceRecord
from node.synth.series import write_datasets
from tests.builders.mutants import dataset_offset, mutants

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LIMITS = ImageLimits()
CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def request(body: bytes, *, syntax: str = uid.ExplicitVRLittleEndian, sop_class: str = CT,
            affected: object = None) -> StoreRequest:
    """A C-STORE as a receiver hands it to the door: our file meta + the dataset bytes as sent."""
    meta = encoders.file_meta(sop_class, str(affected or "1.2.3"), syntax)
    assert meta is not None
    return StoreRequest(b"\x00" * 128 + b"DICM" + meta + body, sop_class, syntax, affected, "SCANNER")


def encoded(ds: Dataset, syntax: str = uid.ExplicitVRLittleEndian) -> StoreRequest:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, syntax == uid.ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return request(fp.getvalue(), syntax=syntax, sop_class=str(ds.SOPClassUID), affected=ds.SOPInstanceUID)


def full_checks(req: StoreRequest) -> tuple[str, InstanceRecord | None]:
    """What the door's pydicom path answers: ("accepted", record), ("coerced", None) or ("refused", None)."""
    try:
        data, ds, uids = checked(req, LIMITS)
        data, ds, warning = coerced(data, ds, uids, req.calling_ae)
        record = instance_record(ds, uids, path=Path(), size=0, calling_ae=req.calling_ae,
                                 transfer_syntax_uid=req.transfer_syntax_uid)
    except Refused:
        return "refused", None
    except Exception:                        # what Door._accepted turns into "cannot decode the dataset"
        return "refused", None
    return ("coerced", None) if warning else ("accepted", record)


def fast(req: StoreRequest) -> InstanceRecord | None:
    header = clean_header(req.data, req.sop_class_uid, req.transfer_syntax_uid, req.affected_sop_instance_uid,
                          LIMITS)
    if header is None:
        return None
    return clean_record(header, calling_ae=req.calling_ae, transfer_syntax_uid=req.transfer_syntax_uid)


def same(a: InstanceRecord, b: InstanceRecord) -> bool:
    keep = [k for k in InstanceRecord.__dataclass_fields__ if k != "path"]
    return all(getattr(a, k) == getattr(b, k) for k in keep)


def assert_agrees(req: StoreRequest) -> InstanceRecord | None:
    """The fast path declines, or the full checks accept unchanged with the same record."""
    got = fast(req)
    if got is not None:
        verdict, record = full_checks(req)
        assert verdict == "accepted", f"fast path accepted what the full checks answer {verdict}"
        assert record is not None and same(got, record), (got, record)
    return got


def with_sequences(ds: Dataset) -> Dataset:
    """The slice with what real scanners add: nested sequences (both lengths), private and long text."""
    ds = copy.deepcopy(ds)
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D4000", "SRT", "Abdomen"
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    ds.ReferencedImageSequence = Sequence([item, copy.deepcopy(item)])
    ds.ProcedureCodeSequence = Sequence([copy.deepcopy(code)])
    ds.ProcedureCodeSequence.is_undefined_length = True
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = True
    ds.add_new(0x00090010, "LO", "SEGNODE TEST")
    ds.add_new(0x00091001, "LO", "private value")
    ds.ImageComments = "line one\r\nline two" * 300            # LT, 5 KB: free text may hold CR LF
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesDescription = "Abd 1.0 B30f"
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


@pytest.mark.parametrize("syntax", [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])
def test_plain_ct_takes_the_fast_path_with_the_full_checks_record(ct_series: list[Dataset], syntax: str) -> None:
    for ds in (ct_series[0], with_sequences(ct_series[1])):
        got = assert_agrees(encoded(ds, syntax))
        assert got is not None, "a plain CT slice should not need the full checks"
        assert got.sop_instance_uid == ds.SOPInstanceUID and got.series_description == str(ds.SeriesDescription)
        assert got.patient_name == str(ds.PatientName) and got.modality == "CT"


def test_sr_with_a_content_tree_takes_the_fast_path(ct_series: list[Dataset]) -> None:
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = COMPREHENSIVE_SR, "1.2.826.0.1.3680043.8.498.1"
    sr.StudyInstanceUID, sr.SeriesInstanceUID = ct_series[0].StudyInstanceUID, "1.2.826.0.1.3680043.8.498.2"
    sr.Modality, sr.ValueType = "SR", "CONTAINER"
    sr.ContentSequence = Sequence([Dataset()])
    assert assert_agrees(encoded(sr)) is not None
    del sr.ContentSequence, sr.ValueType
    assert fast(encoded(sr)) is None and full_checks(encoded(sr))[0] == "refused"


def variant(ds: Dataset, change: str) -> tuple[Dataset, str]:
    """One thing a sender gets wrong or does unusually, and the transfer syntax to send it in."""
    ds, syntax = copy.deepcopy(ds), uid.ExplicitVRLittleEndian
    if change == "control character in a name":
        ds.PatientName = "Doe^John\x07"
    elif change == "control character in a value the door does not read":
        ds.StudyDescription = "abdomen\x07"
    elif change == "ESC outside ISO 2022":
        ds.SeriesDescription = "abd\x1b(B"
    elif change == "ISO 2022 character set":
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    elif change == "Latin-1 name":
        ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 100", "Müller^Jürgen"
    elif change == "name with component groups":
        ds.PatientName = "Doe^John^^^"                     # patched to "Doe^John==" in the bytes (below)
    elif change == "multi-valued modality":
        ds.Modality = ["CT", "PT"]
    elif change == "invalid study UID":
        ds.StudyInstanceUID = "1.2.abc"
    elif change == "UID of 65 characters":
        ds.SeriesInstanceUID = "1." + "2" * 63
    elif change == "wrong SOP class":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    elif change == "no pixel data":
        del ds.PixelData
    elif change == "pixel data one row short":
        ds.PixelData = ds.PixelData[:-2 * ds.Columns]
    elif change == "zero rows":
        ds.Rows = 0
    elif change == "bits stored above bits allocated":
        ds.BitsStored = 17
    elif change == "unknown photometric interpretation":
        ds.PhotometricInterpretation = "MONOCHROME3"
    elif change == "RGB with one sample":
        ds.PhotometricInterpretation = "RGB"
    elif change == "frames as text":
        ds.NumberOfFrames = "1.5"
    elif change == "matrix over the limit":
        ds.Rows = LIMITS.max_matrix + 1
    elif change == "big endian":
        syntax = uid.ExplicitVRBigEndian
    elif change == "deflated":
        syntax = uid.DeflatedExplicitVRLittleEndian
    elif change == "Rows as SS":
        ds["Rows"].VR = "SS"
    else:
        raise AssertionError(change)
    return ds, syntax


VARIANTS = ["control character in a name", "control character in a value the door does not read",
            "ESC outside ISO 2022", "ISO 2022 character set", "Latin-1 name", "name with component groups",
            "multi-valued modality",
            "invalid study UID", "UID of 65 characters", "wrong SOP class", "no pixel data", "pixel data one row short",
            "zero rows", "bits stored above bits allocated", "unknown photometric interpretation",
            "RGB with one sample",
            "frames as text", "matrix over the limit", "big endian", "deflated", "Rows as SS"]


@pytest.mark.parametrize("change", VARIANTS)
def test_anything_unusual_goes_to_the_full_checks(ct_series: list[Dataset], change: str) -> None:
    ds, syntax = variant(ct_series[0], change)
    if syntax in (uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian):   # declined by its syntax alone
        req = encoded(ds)
        req = StoreRequest(req.data, CT, syntax, req.affected_sop_instance_uid, req.calling_ae)
    else:
        req = encoded(ds, syntax)
        data = req.data.replace(b"Doe^John^^^ ", b"Doe^John==  ")   # pydicom would not write empty groups
        req = StoreRequest(data, CT, syntax, req.affected_sop_instance_uid, req.calling_ae)   # sent as CT
    assert fast(req) is None
    if change in ("Latin-1 name", "name with component groups"):
        assert full_checks(req)[0] == "accepted"         # the full path reads it; fast only declines


def test_an_instance_the_sender_named_differently_goes_to_the_full_checks(ct_series: list[Dataset]) -> None:
    req = encoded(ct_series[0])
    req = StoreRequest(req.data, req.sop_class_uid, req.transfer_syntax_uid, "1.2.3.999", req.calling_ae)
    assert fast(req) is None and full_checks(req)[0] == "refused"


@pytest.mark.parametrize("cut", [8, 100, 1000, 20000])
def test_truncated_datasets_go_to_the_full_checks(ct_series: list[Dataset], cut: int) -> None:
    req = encoded(with_sequences(ct_series[0]))
    short = StoreRequest(req.data[:-cut], req.sop_class_uid, req.transfer_syntax_uid,
                         req.affected_sop_instance_uid, req.calling_ae)
    assert fast(short) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_instances_never_pass_where_the_full_checks_would_not(ct_series: list[Dataset], tmp_path: Path,
                                                                    seed: int) -> None:
    for syntax in (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian):
        ds = with_sequences(ct_series[seed])
        ds.file_meta.TransferSyntaxUID = syntax
        source = write_datasets(tmp_path / f"source-{syntax}", [ds])[0]
        taken = 0
        for _kind, path in mutants(source, tmp_path / f"mutants-{syntax}", count=150, seed=seed):
            data = path.read_bytes()
            body = data[dataset_offset(data):]
            try:
                affected = dcmread(BytesIO(data), stop_before_pixels=True, force=True).get("SOPInstanceUID")
            except Exception:
                affected = None
            got = assert_agrees(request(body, syntax=syntax, affected=affected))
            taken += got is not None
        assert taken > 0, "no mutant left the header intact enough for the fast path"
