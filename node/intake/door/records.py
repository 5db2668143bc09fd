"""The one builder of InstanceRecord, for a C-STORE and for a spool file found at start-up alike."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.intake.door.header_scan import CleanHeader
from node.intake.door.uids import InstanceUIDs
from node.jobs.records import InstanceRecord

logger = logging.getLogger(__name__)


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = getattr(ds, keyword, "")
    return str(value if value is not None else "")[:limit]


def instance_record(ds: Dataset, uids: InstanceUIDs, *, path: Path, size: int, calling_ae: str,
                    transfer_syntax_uid: str) -> InstanceRecord:
    """What the store keeps of a spooled instance: its UIDs, file, sender and the header values routing
    reads; patient name and ID go on the job for the admin view only."""
    header = CleanHeader(uids, modality=_text(ds, "Modality", 16), body_part_examined=_text(ds, "BodyPartExamined", 64),
                         series_description=_text(ds, "SeriesDescription", 64),
                         patient_name=_text(ds, "PatientName", 200), patient_id=_text(ds, "PatientID", 64))
    return clean_record(header, calling_ae=calling_ae, transfer_syntax_uid=transfer_syntax_uid, path=path, size=size)


def clean_record(header: CleanHeader, *, calling_ae: str, transfer_syntax_uid: str, path: Path = Path(),
                 size: int = 0) -> InstanceRecord:
    """The record of a header's values, whether the door's fast path or pydicom read them."""
    uids = header.uids
    return InstanceRecord(
        sop_instance_uid=uids.sop_instance_uid, study_instance_uid=uids.study_instance_uid,
        series_instance_uid=uids.series_instance_uid, sop_class_uid=uids.sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid, path=str(path), size=size, calling_ae=calling_ae,
        modality=header.modality, body_part_examined=header.body_part_examined,
        series_description=header.series_description, patient_name=header.patient_name,
        patient_id=header.patient_id)


def record_from_file(path: Path) -> InstanceRecord | None:
    """A spool file that has no store row (a crash between the rename and the commit), or None if unreadable."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        uids = InstanceUIDs.from_dataset(ds)
    except Exception as exc:            # edge: an unreadable leftover is reported, not fatal
        logger.error("recovery: cannot read %s (%s); left in place", path.name, type(exc).__name__)
        return None
    calling_ae = str(ds.file_meta.get("SourceApplicationEntityTitle", "")) or "(recovered)"
    return instance_record(ds, uids, path=path, size=path.stat().st_size, calling_ae=calling_ae,
                           transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")))
