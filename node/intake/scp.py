"""The DICOM Storage SCP: checks, a durable spool write, a store row, then the status (in that order)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from node.errors import InvalidUID, SpoolFull
from node.intake.dimse import (
    IMAGE_SOP_CLASSES,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    StoreStatus,
    dataset_mismatch,
    store_response,
)
from node.intake.image_check import (
    ImageLimits,
    ImageProblem,
    check_image,
    control_character_tags,
    scrub_control_characters,
)
from node.intake.records import instance_record
from node.intake.spool import Spool, SpoolWrite
from node.intake.uids import InstanceUIDs, check_uid
from node.jobs.records import InstanceRecord, RecordOutcome
from node.settings import DicomSettings
from node.tcp import on_conn_open

logger = logging.getLogger(__name__)

Recorder = Callable[[InstanceRecord], RecordOutcome]


def _any_uid(_value: object) -> tuple[bool, str]:
    return True, ""


# pynetdicom validates the UIDs of a DIMSE command while decoding it, and on one longer than 64
# characters it aborts the association: the sender gets no answer and retries forever. We let the
# command through and refuse the instance ourselves with a named 0xC000 (node.intake.uids.check_uid).
_config.VALIDATORS["UI"] = _any_uid


class StorageSCP:
    """Owns the DICOM port: Verification + Storage on pynetdicom association threads. A C-STORE is checked,
    spooled durably and recorded (`record`, a blocking call that commits the row) before Success."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder) -> None:
        self.settings = settings
        self._spool = spool
        self._record = record
        self._server: ThreadedAssociationServer | None = None
        self._stopping = threading.Event()
        self._limits = ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames)
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.add_supported_context(Verification)
        for sop_class_uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class_uid, TRANSFER_SYNTAXES)
        ae.require_calling_aet = list(s.allowed_calling_aes)
        ae.require_called_aet = s.require_called_ae
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_bytes
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        return ae

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SCP is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers = [(evt.EVT_CONN_OPEN, on_conn_open), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_C_STORE, self.handle_store)]
        self._server = self.ae.start_server((self.settings.bind_address, self.settings.port), block=False,
                                            evt_handlers=handlers)
        logger.info("DICOM SCP %s listening on %s:%d", self.settings.ae_title, self.settings.bind_address,
                    self.port)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._server is None:
            return
        self._stopping.set()
        server, self._server = self._server, None
        server.shutdown()        # no new associations from here on
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            logger.warning("shutdown: aborting association from %s after the grace period",
                           assoc.requestor.ae_title)
            assoc.abort()
        logger.info("DICOM SCP stopped")

    # -- handlers (association threads) --------------------------------------------------------
    def handle_echo(self, event: Event) -> int:
        return 0x0000

    def handle_store(self, event: Event) -> Dataset:
        """EVT_C_STORE: check, make durable, record, and only then answer Success (or 0xB000, coerced)."""
        calling_ae = event.assoc.requestor.ae_title
        try:
            data, record, warning = self._accepted(event, calling_ae)
            written = self._write(record, data, calling_ae)
        except _Refused as refusal:
            return store_response(refusal.status, refusal.comment)
        record = dataclasses.replace(record, path=str(written.path), size=written.size)
        try:
            outcome = self._record(record)
        except Exception:                              # edge: the file is safe, but unrecorded: no Success
            logger.exception("C-STORE %s: could not record the instance", record.sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "job store unavailable; send again later")
        if outcome.duplicate or written.duplicate:
            logger.debug("C-STORE %s from %s: duplicate, first copy kept", record.sop_instance_uid, calling_ae)
        return store_response(StoreStatus.COERCED, warning) if warning else store_response(StoreStatus.SUCCESS)

    def _accepted(self, event: Event, calling_ae: str) -> tuple[bytes, InstanceRecord, str]:
        """The bytes to spool, the record to commit (path and size still empty) and any coercion warning;
        raises _Refused for anything that cannot be stored. Nothing here has touched the disk yet."""
        try:
            data, ds, uids = _checked(event, calling_ae, self._limits)
            data, ds, warning = _coerced(data, ds, uids, calling_ae)
            if self._stopping.is_set():
                raise _Refused(StoreStatus.OUT_OF_RESOURCES, "node is shutting down; send again later")
            record = instance_record(ds, uids, path=Path(), size=0, calling_ae=calling_ae,
                                     transfer_syntax_uid=str(event.context.transfer_syntax))
        except _Refused:
            raise
        except Exception as exc:                     # edge: a header element that cannot be decoded
            logger.warning("C-STORE from %s refused: header not decodable (%s)", calling_ae, type(exc).__name__)
            raise _Refused(StoreStatus.CANNOT_UNDERSTAND, f"cannot decode the dataset ({type(exc).__name__})") \
                from None
        return data, record, warning

    def _write(self, record: InstanceRecord, data: bytes, calling_ae: str) -> SpoolWrite:
        uids = InstanceUIDs(study_instance_uid=record.study_instance_uid,
                            series_instance_uid=record.series_instance_uid,
                            sop_instance_uid=record.sop_instance_uid, sop_class_uid=record.sop_class_uid)
        try:
            return self._spool.write_instance(uids, data)
        except SpoolFull as exc:
            logger.error("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, exc)
            raise _Refused(StoreStatus.OUT_OF_RESOURCES, "out of disk space on the receiving node") from None
        except OSError as exc:
            logger.error("C-STORE %s: spool write failed: %s", uids.sop_instance_uid, exc.strerror)
            raise _Refused(StoreStatus.OUT_OF_RESOURCES, "spool not writable on the receiving node") from None


class _Refused(Exception):
    """A C-STORE the handler answers with `status` and an ErrorComment, instead of storing it."""

    def __init__(self, status: StoreStatus, comment: str) -> None:
        super().__init__(comment)
        self.status, self.comment = status, comment


def _checked(event: Event, calling_ae: str, limits: ImageLimits) -> tuple[bytes, Dataset, InstanceUIDs]:
    """Decode the dataset, check its UIDs, its match to the SOP class and that an image can become the pixels
    its header declares; raise _Refused if unfit."""
    try:
        data = event.encoded_dataset(include_meta=True)
        ds = dcmread(BytesIO(data), defer_size=4096)
    except Exception as exc:                     # edge: an undecodable dataset becomes a status
        logger.warning("C-STORE from %s refused: cannot decode dataset (%s)", calling_ae, type(exc).__name__)
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, "cannot decode the dataset") from None
    try:
        uids = InstanceUIDs.from_dataset(ds)
        if uids.sop_instance_uid != check_uid(event.request.AffectedSOPInstanceUID, "AffectedSOPInstanceUID"):
            raise InvalidUID("SOPInstanceUID differs from the C-STORE request")
    except InvalidUID as exc:
        logger.warning("C-STORE from %s refused: %s", calling_ae, exc)
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, str(exc)) from None
    except Exception as exc:
        logger.warning("C-STORE from %s refused: unreadable UIDs (%s)", calling_ae, type(exc).__name__)
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, "cannot read study/series/SOP UIDs") from None
    sop_class = str(event.context.abstract_syntax)
    try:
        mismatch = dataset_mismatch(ds, sop_class)
    except Exception as exc:
        mismatch = f"unreadable header ({type(exc).__name__})"
    if mismatch:
        logger.warning("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, mismatch)
        raise _Refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, mismatch)
    if sop_class in IMAGE_SOP_CLASSES:
        _check_pixels(ds, str(event.context.transfer_syntax), limits, uids, calling_ae)
    return data, ds, uids


def _check_pixels(ds: Dataset, transfer_syntax: str, limits: ImageLimits, uids: InstanceUIDs,
                  calling_ae: str) -> None:
    try:
        check_image(ds, transfer_syntax, limits)
    except ImageProblem as exc:
        logger.warning("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, exc)
        status = StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS if exc.dataset_mismatch else StoreStatus.CANNOT_UNDERSTAND
        raise _Refused(status, str(exc)) from None
    except Exception as exc:                     # edge: a header too broken to even check
        logger.warning("C-STORE %s from %s refused: pixel module unreadable (%s)", uids.sop_instance_uid,
                       calling_ae, type(exc).__name__)
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, "image pixel module unreadable") from None


def _coerced(data: bytes, ds: Dataset, uids: InstanceUIDs, calling_ae: str) -> tuple[bytes, Dataset, str]:
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
        raise _Refused(StoreStatus.CANNOT_UNDERSTAND, f"control characters in {names}") from None
    logger.warning("C-STORE %s from %s: control characters replaced in %s", uids.sop_instance_uid, calling_ae, names)
    clean = out.getvalue()
    return clean, dcmread(BytesIO(clean), defer_size=4096), f"control characters replaced in {names}"
