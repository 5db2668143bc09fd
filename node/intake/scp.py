"""The DICOM Storage SCP: checks, a durable spool write, a store row, then the status (in that order)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from node.errors import InvalidUID, SpoolFull
from node.intake.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StoreStatus, dataset_mismatch, store_response
from node.intake.records import instance_record
from node.intake.spool import Spool, SpoolWrite
from node.intake.uids import InstanceUIDs, check_uid
from node.jobs.records import InstanceRecord, RecordOutcome
from node.settings import DicomSettings
from node.tcp import on_conn_open

logger = logging.getLogger(__name__)

Recorder = Callable[[InstanceRecord], RecordOutcome]


class StorageSCP:
    """Owns the DICOM port: Verification + Storage on pynetdicom association threads. A C-STORE is checked,
    spooled durably and recorded (`record`, a blocking call that commits the row) before Success."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder) -> None:
        self.settings = settings
        self._spool = spool
        self._record = record
        self._server: ThreadedAssociationServer | None = None
        self._stopping = threading.Event()
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
        """EVT_C_STORE: check, make durable, record, and only then answer Success."""
        calling_ae = event.assoc.requestor.ae_title
        try:
            data, ds, uids = _checked(event, calling_ae)
            if self._stopping.is_set():
                raise _Refused(StoreStatus.OUT_OF_RESOURCES, "node is shutting down; send again later")
            written = self._write(uids, data, calling_ae)
        except _Refused as refusal:
            return store_response(refusal.status, refusal.comment)
        record = instance_record(ds, uids, path=written.path, size=written.size, calling_ae=calling_ae,
                                 transfer_syntax_uid=str(event.context.transfer_syntax))
        try:
            outcome = self._record(record)
        except Exception:                              # edge: the file is safe, but unrecorded: no Success
            logger.exception("C-STORE %s: could not record the instance", uids.sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "job store unavailable; send again later")
        if outcome.duplicate or written.duplicate:
            logger.debug("C-STORE %s from %s: duplicate, first copy kept", uids.sop_instance_uid, calling_ae)
        return store_response(StoreStatus.SUCCESS)

    def _write(self, uids: InstanceUIDs, data: bytes, calling_ae: str) -> SpoolWrite:
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


def _checked(event: Event, calling_ae: str) -> tuple[bytes, Dataset, InstanceUIDs]:
    """Decode the dataset and check its UIDs and its match to the SOP class; raise _Refused if unfit."""
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
    try:
        mismatch = dataset_mismatch(ds, str(event.context.abstract_syntax))
    except Exception as exc:
        mismatch = f"unreadable header ({type(exc).__name__})"
    if mismatch:
        logger.warning("C-STORE %s from %s refused: %s", uids.sop_instance_uid, calling_ae, mismatch)
        raise _Refused(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, mismatch)
    return data, ds, uids
