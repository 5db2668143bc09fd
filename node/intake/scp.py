"""The DICOM Storage SCP: checks, a durable spool write, a store row, then the status (in that order)."""

from __future__ import annotations

import asyncio
import logging
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from node.intake.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StoreStatus, store_response
from node.intake.door import Door, Recorder, Refused, StoreRequest
from node.intake.image_check import ImageLimits
from node.intake.spool import Spool
from node.settings import DicomSettings
from node.tcp import on_conn_open

logger = logging.getLogger(__name__)


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
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self._record = record
        self._server: ThreadedAssociationServer | None = None
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

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop)    # the loop keeps running so in-flight records commit

    def _start(self) -> None:
        handlers = [(evt.EVT_CONN_OPEN, on_conn_open), (evt.EVT_C_ECHO, self.handle_echo),
                    (evt.EVT_C_STORE, self.handle_store)]
        self._server = self.ae.start_server((self.settings.bind_address, self.settings.port), block=False,
                                            evt_handlers=handlers)
        logger.info("DICOM SCP %s listening on %s:%d", self.settings.ae_title, self.settings.bind_address,
                    self.port)

    def _stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._server is None:
            return
        self.door.stopping.set()
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
        try:
            request = _request(event, event.assoc.requestor.ae_title)
        except Refused as refusal:
            return store_response(refusal.status, refusal.comment)
        return self.door.store(request, self._record)


def _request(event: Event, calling_ae: str) -> StoreRequest:
    try:
        data = event.encoded_dataset(include_meta=True)
    except Exception as exc:                     # edge: an undecodable dataset becomes a status
        logger.warning("C-STORE from %s refused: cannot encode file meta (%s)", calling_ae, type(exc).__name__)
        raise Refused(StoreStatus.CANNOT_UNDERSTAND, "cannot decode the dataset") from None
    return StoreRequest(data, str(event.context.abstract_syntax), str(event.context.transfer_syntax),
                        event.request.AffectedSOPInstanceUID, calling_ae)
