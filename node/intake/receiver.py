"""The Storage SCP on the event loop (`[dicom] receiver = "asyncio"`, the default): one coroutine per
association, no polling threads. Each C-STORE's checks, durable spool write and row commit run in one call on
a thread pool (`Door.store`; with PostgreSQL the row joins the loop's group commit). Success is sent only
after the file is fsynced and renamed and its row committed, exactly as on the pynetdicom path."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from node.intake import upper_layer as ul
from node.intake.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StoreStatus, store_response
from node.intake.door import Door, Recorder, Refused, StoreRequest
from node.intake.image_check import ImageLimits
from node.intake.spool import Spool
from node.settings import DicomSettings
from node.tcp import set_nodelay

logger = logging.getLogger(__name__)

_NO_LIMIT = 2**31 - 1


class AsyncStorageSCP:
    """Owns the DICOM port on the event loop: Verification + Storage, named refusals, timeouts, limits."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder) -> None:
        self.settings = settings
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self._record = record
        self._server: asyncio.base_events.Server | None = None
        self._pool = ThreadPoolExecutor(max_workers=min(16, settings.max_associations + 2),
                                        thread_name_prefix="dicom-door")
        self._associations: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._established: set[asyncio.Task[None]] = set()
        self._supported: list[PresentationContext] = [build_context(Verification)] + [
            build_context(sop, TRANSFER_SYNTAXES) for sop in STORAGE_SOP_CLASSES]
        self._max_body = settings.max_pdu_bytes + 6 if settings.max_pdu_bytes else _NO_LIMIT

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SCP is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        self._server = await asyncio.start_server(self._connection, s.bind_address, s.port, limit=2**20,
                                                  reuse_address=True, backlog=128)
        logger.info("DICOM SCP %s listening on %s:%d (asyncio receiver)", s.ae_title, s.bind_address, self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._server is None:
            return
        self.door.stopping.set()
        server, self._server = self._server, None
        server.close()
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while self._associations and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task, writer in list(self._associations.items()):
            logger.warning("shutdown: aborting an association after the grace period")
            writer.write(ul.abort())
            task.cancel()
        if self._associations:
            await asyncio.wait(list(self._associations), timeout=5)
        await asyncio.to_thread(self._pool.shutdown, True)   # its threads may be waiting on this loop
        logger.info("DICOM SCP stopped")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        set_nodelay(writer.get_extra_info("socket"))
        task = asyncio.current_task()
        assert task is not None
        self._associations[task] = writer
        peer = writer.get_extra_info("peername")
        try:
            assoc = await self._associate(reader, writer)
            if assoc is not None:
                await self._serve(assoc, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            logger.info("association from %s: the peer closed the connection", peer)
        except TimeoutError:
            logger.warning("association from %s: timed out waiting for the peer; aborted", peer)
            writer.write(ul.abort())
        except ul.ProtocolError as exc:
            logger.warning("association from %s aborted: %s", peer, exc)
            writer.write(ul.abort(2))
        except Exception:                              # edge: a bug ends this association, not the server
            logger.exception("association from %s aborted on an internal error", peer)
            writer.write(ul.abort())
        finally:
            del self._associations[task]
            writer.close()

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ul.Negotiated | None:
        """ARTIM: the A-ASSOCIATE-RQ must arrive within acse_timeout_s. Answer AC or RJ."""
        s = self.settings
        async with asyncio.timeout(s.acse_timeout_s):
            pdu_type, body = await ul.read_pdu(reader, ul.MAX_ASSOCIATE_RQ_BYTES)
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type}")
        rq = ul.requested(body)
        reason = ul.reject_reason(rq, s.ae_title, s.allowed_calling_aes, s.require_called_ae)
        if not reason and len(self._established) >= s.max_associations:
            reason = ul.REJECT_TOO_MANY
        if reason:
            logger.info("association from %s to %s rejected %s", rq.calling_ae_title, rq.called_ae_title, reason)
            writer.write(ul.reject(rq, reason))
            await writer.drain()
            return None
        reply, assoc = ul.accept(rq, self._supported, s.max_pdu_bytes)
        writer.write(reply)
        return assoc

    async def _serve(self, assoc: ul.Negotiated, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """P-DATA until release or abort: idle for network_timeout_s at most, dimse_timeout_s inside a message."""
        task = asyncio.current_task()
        assert task is not None
        self._established.add(task)
        try:
            while True:
                partial = assoc.message.encoded_command_set.tell() > 0
                async with asyncio.timeout(self.settings.dimse_timeout_s if partial
                                           else self.settings.network_timeout_s):
                    pdu_type, body = await ul.read_pdu(reader, self._max_body)
                if pdu_type == ul.DATA_TF:
                    for context_id, primitive in ul.feed(assoc, body):
                        writer.write(await self._answer(assoc, context_id, primitive))
                elif pdu_type == ul.RELEASE_RQ:
                    writer.write(ul.release_reply())
                    await writer.drain()
                    return
                elif pdu_type == ul.ABORT:
                    logger.info("association from %s aborted by the peer", assoc.calling_ae)
                    return
                else:
                    raise ul.ProtocolError(f"unexpected PDU type {pdu_type} on an established association")
        finally:
            self._established.discard(task)

    async def _answer(self, assoc: ul.Negotiated, context_id: int, primitive: object) -> bytes:
        if isinstance(primitive, C_ECHO):
            return ul.echo_reply(primitive, context_id, assoc.peer_max_pdu)
        if not isinstance(primitive, C_STORE):
            raise ul.ProtocolError(f"{type(primitive).__name__} is not a service this node provides")
        context = assoc.contexts[context_id]
        try:
            data = ul.stored_file(primitive, str(context.transfer_syntax[0]))
            request = StoreRequest(data, str(context.abstract_syntax), str(context.transfer_syntax[0]),
                                   primitive.AffectedSOPInstanceUID, assoc.calling_ae)
        except Refused as refusal:
            status = store_response(refusal.status, refusal.comment)
        else:
            # One hop: checks, the durable write and the row commit all on one pool thread (SQLite commits
            # there; PostgreSQL hands the row to the loop's group commit), then the status.
            status = await asyncio.get_running_loop().run_in_executor(self._pool, self._store, request)
        return ul.store_reply(primitive, status, context_id, assoc.peer_max_pdu)

    def _store(self, request: StoreRequest) -> Dataset:
        try:
            return self.door.store(request, self._record)
        except Exception:                              # edge: a bug or I/O surprise becomes a failure status
            logger.exception("C-STORE %s: could not be stored", request.affected_sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "spool not writable on the receiving node")
