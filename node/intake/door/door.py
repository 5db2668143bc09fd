"""At the door, for either receiver: check a received C-STORE and make it durable (everything before
the store commit). Pure of any network code: a receiver hands in a StoreRequest, on the association's thread."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from node.errors import InvalidUID, SpoolFull
from node.intake.door.header_scan import clean_header
from node.intake.door.image_check import (
    ImageLimits,
    ImageProblem,
    check_image,
    control_character_tags,
    scrub_control_characters,
)
from node.intake.door.records import clean_record, instance_record
from node.intake.door.spool import Spool, SpoolWrite
from node.intake.door.uids import InstanceUIDs, check_uid
from node.intake.wire.dimse import IMAGE_SOP_CLASSES, StoreStatus, dataset_mismatch, store_response
from node.jobs.records import InstanceRecord, RecordOutcome

logger = logging.getLogger(__name__)

Recorder = Callable[[InstanceRecord], RecordOutcome]


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """One C-STORE as received: `data` is the DICOM file (preamble, file meta, dataset as sent)."""
    data: bytes
    sop_class_uid: str                    # the negotiated abstract syntax
    transfer_syntax_uid: str              # the negotiated transfer syntax
    affected_sop_instance_uid: object     # from the command set, unchecked
    calling_ae: str


@dataclass(frozen=True, slots=True)
class Admitted:
    """A spooled instance: the record to commit (path and size set), its spool write and any warning."""
    record: InstanceRecord
    written: SpoolWrite
    warning: str


class Refused(Exception):
    """A C-STORE answered with `status` and an ErrorComment, instead of being stored."""

    def __init__(self, status: StoreStatus, comment: str) -> None:
        super().__init__(comment)
        self.status, self.comment = status, comment


class Door:
    """Owns the checks and the spool write of every received instance; thread-safe, blocking."""

    def __init__(self, spool: Spool, limits: ImageLimits) -> None:
        self.spool = spool
        self.limits = limits
        self.stopping = threading.Event()     # set at shutdown: new instances are refused with 0xA700

    def admit(self, req: StoreRequest) -> Admitted:
        """Check, coerce and spool `req` durably (fsync + rename); raise Refused if it cannot be stored."""
        data, record, warning = self._accepted(req)
        written = self._write(record, data, req.calling_ae)
        return Admitted(dataclasses.replace(record, path=str(written.path), size=written.size), written, warning)

    def store(self, req: StoreRequest, record: Recorder) -> Dataset:
        """The whole C-STORE, blocking: check, make durable, commit the row, and only then the status
        (Success, or 0xB000 when values were coerced); a refusal or failure is its named status."""
        try:
            admitted = self.admit(req)
        except Refused as refusal:
            return store_response(refusal.status, refusal.comment)
        rec = admitted.record
        try:
            outcome = record(rec)
        except Exception:                              # edge: the file is safe, but unrecorded: no Success
            logger.exception("C-STORE %s: could not record the instance", rec.sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "job store unavailable; send again later")
        if outcome.duplicate or admitted.written.duplicate:
            logger.debug("C-STORE %s from %s: duplicate, first copy kept", rec.sop_instance_uid, req.calling_ae)
        if admitted.warning:
            return store_response(StoreStatus.COERCED, admitted.warning)
        return store_response(StoreStatus.SUCCESS)

    def _accepted(self, req: StoreRequest) -> tuple[bytes, InstanceRecord, str]:
        """The bytes to store, the record and any warning; Refused with the reason (the instance's own
        problems first, then a shutdown in progress)."""
        data, record, warning = self._checked(req)
        if self.stopping.is_set():
            raise Refused(StoreStatus.OUT_OF_RESOURCES, "node is shutting down; send again later")
        return data, record, warning

    def _checked(self, req: StoreRequest) -> tuple[bytes, InstanceRecord, str]:
        clean = clean_header(req.data, req.sop_class_uid, req.transfer_syntax_uid, req.affected_sop_instance_uid,
                             self.limits)
        if clean is not None:                        # the common case, confirmed without pydicom
            return req.data, clean_record(clean, calling_ae=req.calling_ae,
                                          transfer_syntax_uid=req.transfer_syntax_uid), ""
        try:
            data, ds, uids = checked(req, self.limits)
            data, ds, warning = coerced(data, ds, uids, req.calling_ae)
            record = instance_record(ds, uids, path=Path(), size=0, calling_ae=req.calling_ae,
                                     transfer_syntax_uid=req.transfer_syntax_uid)
        except Refused:
            raise
        except Exception as exc:                     # edge: a header element that cannot be decoded
            logger.warning("C-STORE from %s refused: header not decodable (%s)", req.calling_ae,
                           type(exc).__name__)
            raise Refused(StoreStatus.CANNOT_UNDERSTAND, f"cannot decode the dataset ({type(exc).__name__})") \
                from None
        return data, record, warning

    def _write(self, record: InstanceRecord, data: bytes, calling_ae: str) -> SpoolWrite:
        uids = InstanceUIDs(study_instance_uid=record.study_instance_uid,
                            series_instance_uid=record.series_instance_uid,
                            sop_instance_uid=record.sop_instance_uid, sop_class_uid=record.sop_class_uid)
        try:
            return self.spool.write_instance(uids, data)
        except SpoolFull as exc:
            logger.error("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, exc)
            raise Refused(StoreStatus.OUT_OF_RESOURCES, "out of disk space on the receiving node") from None
        except OSError as exc:
            logger.error("C-STORE %s: spool write failed: %s", uids.sop_instance_uid, exc.strerror)
            raise Refused(StoreStatus.OUT_OF_RESOURCES, "spool not writable on the receiving node") from None


def checked(req: StoreRequest, limits: ImageLimits) -> tuple[bytes, Dataset, InstanceUIDs]:
    """Decode the dataset, check its UIDs, its match to the SOP class and that an image can become the pixels
    its header declares; raise Refused if unfit."""
    try:
        ds = dcmread(BytesIO(req.data), defer_size=4096)
    except Exception as exc:                     # edge: an undecodable dataset becomes a status
        logger.warning("C-STORE from %s refused: cannot decode dataset (%s)", req.calling_ae, type(exc).__name__)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, "cannot decode the dataset") from None
    try:
        uids = InstanceUIDs.from_dataset(ds)
        if uids.sop_instance_uid != check_uid(req.affected_sop_instance_uid, "AffectedSOPInstanceUID"):
            raise InvalidUID("SOPInstanceUID differs from the C-STORE request")
    except InvalidUID as exc:
        logger.warning("C-STORE from %s refused: %s", req.calling_ae, exc)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from None
    except Exception as exc:
        logger.warning("C-STORE from %s refused: unreadable UIDs (%s)", req.calling_ae, type(exc).__name__)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, "cannot read study/series/SOP UIDs") from None
    try:
        mismatch = dataset_mismatch(ds, req.sop_class_uid)
    except Exception as exc:
        mismatch = f"unreadable header ({type(exc).__name__})"
    if mismatch:
        logger.warning("C-STORE %s from %s refused: %s", uids.sop_instance_uid, req.calling_ae, mismatch)
        raise Refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, mismatch)
    if req.sop_class_uid in IMAGE_SOP_CLASSES:
        check_pixels(ds, req.transfer_syntax_uid, limits, uids, req.calling_ae)
    return req.data, ds, uids


def check_pixels(ds: Dataset, transfer_syntax: str, limits: ImageLimits, uids: InstanceUIDs,
                 calling_ae: str) -> None:
    try:
        check_image(ds, transfer_syntax, limits)
    except ImageProblem as exc:
        logger.warning("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, exc)
        status = StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS if exc.dataset_mismatch else StoreStatus.CANNOT_UNDERSTAND
        raise Refused(status, str(exc)) from None
    except Exception as exc:                     # edge: a header too broken to even check
        logger.warning("C-STORE %s from %s refused: pixel module unreadable (%s)", uids.sop_instance_uid,
                       calling_ae, type(exc).__name__)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, "image pixel module unreadable") from None


def coerced(data: bytes, ds: Dataset, uids: InstanceUIDs, calling_ae: str) -> tuple[bytes, Dataset, str]:
    """Text values with control characters: the bytes (and dataset) to store with them replaced, and the
    warning to send back (empty when nothing was changed). Values are never logged, only attribute names."""
    tags = control_character_tags(ds)
    if not tags:
        return data, ds, ""
    names = ", ".join(keyword_for_tag(t) or f"({t >> 16:04X},{t & 0xFFFF:04X})" for t in tags)
    try:
        full = dcmread(BytesIO(data))
        scrub_control_characters(full, tags)
        out = BytesIO()
        full.save_as(out, enforce_file_format=True)
    except Exception as exc:                     # edge: cannot re-encode it, so cannot store it clean
        logger.warning("C-STORE %s from %s refused: control characters in %s, not re-encodable (%s)",
                       uids.sop_instance_uid, calling_ae, names, type(exc).__name__)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, f"control characters in {names}") from None
    logger.warning("C-STORE %s from %s: control characters replaced in %s", uids.sop_instance_uid, calling_ae, names)
    clean = out.getvalue()
    return clean, dcmread(BytesIO(clean), defer_size=4096), f"control characters replaced in {names}"
