"""The Storage SCP with one thread per association (`[dicom] receiver = "threads"`, the default).

The event loop only accepts connections. Each association then runs on its own thread with blocking
socket reads (no polling): it reads its PDUs, and for each C-STORE runs the checks, the durable spool
write and the row commit (`Door.store`) and sends the status itself, with no hand-over to another
thread in between. With PostgreSQL the row joins the loop's group commit. Success is sent only after
the file is fsynced and renamed and its row committed, as on the other receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from node.intake import upper_layer as ul
from node.intake.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StoreStatus, store_response
from node.intake.door import Door, Recorder, Refused, StoreRequest
from node.intake.image_check import ImageLimits
from node.intake.messages import Incoming, StoreRQ, feed
from node.intake.spool import Spool
from node.settings import DicomSettings
from node.tcp import set_nodelay

logger = logging.getLogger(__name__)

_NO_LIMIT = 2**31 - 1
_EXTRA_CONNECTIONS = 16          # connections still negotiating, beyond max_associations
_CACHED_NEGOTIATIONS = 32        # distinct accepted A-ASSOCIATE-RQs (senders) whose answer is kept
_CACHED_REQUEST_BYTES = 64 * 1024


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    peer: object
    send_timeout_s: float
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    timeout: ul.SocketTimeout = field(init=False)

    def __post_init__(self) -> None:
        self.timeout = ul.SocketTimeout(self.sock)

    def send(self, data: bytes) -> None:
        """All of `data`, within the DIMSE timeout; the reader sets its own timeout again before it reads."""
        with self.send_lock:
            self.timeout.set(self.send_timeout_s)
            self.sock.sendall(data)


class ThreadedStorageSCP:
    """Owns the DICOM port: Verification + Storage, named refusals, timeouts and limits, one thread per
    association doing its own reads, checks, durable writes and replies."""

    def __init__(self, settings: DicomSettings, spool: Spool, record: Recorder) -> None:
        self.settings = settings
        self.door = Door(spool, ImageLimits(max_matrix=settings.max_matrix, max_frames=settings.max_frames))
        self._record = record
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()             # guarded by _lock
        self._established = 0                                    # guarded by _lock
        self._supported: list[PresentationContext] = [build_context(Verification)] + [
            build_context(sop, TRANSFER_SYNTAXES) for sop in STORAGE_SOP_CLASSES]
        self._max_body = settings.max_pdu_bytes + 6 if settings.max_pdu_bytes else _NO_LIMIT
        self._negotiations: OrderedDict[bytes, tuple[A_ASSOCIATE, bytes, ul.Negotiated]] = OrderedDict()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("SCP is not running")
        return int(self._listener.getsockname()[1])

    async def start(self) -> None:
        s = self.settings
        family = socket.getaddrinfo(s.bind_address or None, s.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        listener = socket.create_server((s.bind_address, s.port), family=family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._accepting = asyncio.create_task(self._accept(listener), name="dicom-accept")
        logger.info("DICOM SCP %s listening on %s:%d (a thread per association)", s.ae_title, s.bind_address,
                    self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish up to the grace period, then abort the rest."""
        if self._listener is None or self._accepting is None:
            return
        self.door.stopping.set()
        self._accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        self._listener.close()
        self._listener = None
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while self._open() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in self._open():
            logger.warning("shutdown: aborting an association after the grace period")
            await asyncio.to_thread(self._abort, conn)
        for conn in self._open():
            if conn.thread is not None and conn.thread.ident is not None:
                await asyncio.to_thread(conn.thread.join, 5)
        logger.info("DICOM SCP stopped")

    def _open(self) -> list[_Connection]:
        with self._lock:
            return list(self._connections)

    @staticmethod
    def _abort(conn: _Connection) -> None:
        """A-ABORT, then shut the socket: the association thread's next read ends."""
        if conn.send_lock.acquire(timeout=1.0):
            try:
                conn.sock.sendall(ul.abort())
            except OSError:
                pass
            finally:
                conn.send_lock.release()
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_associations + _EXTRA_CONNECTIONS
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:                     # e.g. out of file descriptors: keep listening
                logger.error("DICOM SCP: accept failed (%s)", exc.strerror)
                await asyncio.sleep(0.5)
                continue
            try:
                self._open_association(sock, peer, limit)
            except Exception:                          # edge: one connection's failure, not the port's
                logger.exception("connection from %s could not be served", peer)
                sock.close()

    def _open_association(self, sock: socket.socket, peer: object, limit: int) -> None:
        conn = _Connection(sock, peer, self.settings.dimse_timeout_s)
        with self._lock:
            crowded = len(self._connections) >= limit
            if not crowded:
                self._connections.add(conn)
        if crowded:
            logger.warning("connection from %s closed: %d connections already open", peer, limit)
            sock.close()
            return
        try:
            sock.setblocking(True)
            set_nodelay(sock)
            conn.thread = threading.Thread(target=self._association, args=(conn,), name="dicom-association",
                                           daemon=True)
            conn.thread.start()
        except BaseException:
            with self._lock:
                self._connections.discard(conn)
            conn.thread = None
            raise

    # -- one association, on its own thread ----------------------------------------------------------
    def _association(self, conn: _Connection) -> None:
        reader = ul.PduReader(conn.sock, conn.timeout)
        try:
            assoc = self._associate(conn, reader)
            if assoc is not None:
                self._serve(conn, assoc, reader)
        except ConnectionError:                        # ul.PeerClosed, a reset, or shut by stop()
            logger.info("association from %s: the peer closed the connection", conn.peer)
        except TimeoutError:
            logger.warning("association from %s: timed out waiting for the peer; aborted", conn.peer)
            self._try_send(conn, ul.abort())
        except ul.ProtocolError as exc:
            logger.warning("association from %s aborted: %s", conn.peer, exc)
            self._try_send(conn, ul.abort(2))
        except OSError as exc:                         # the socket shut by stop(), or a network error
            logger.info("association from %s ended: %s", conn.peer, exc.strerror or type(exc).__name__)
        except Exception:                              # edge: a bug ends this association, not the server
            logger.exception("association from %s aborted on an internal error", conn.peer)
            self._try_send(conn, ul.abort())
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.sock.close()

    @staticmethod
    def _try_send(conn: _Connection, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.send(data)

    def _associate(self, conn: _Connection, reader: ul.PduReader) -> ul.Negotiated | None:
        """ARTIM: the A-ASSOCIATE-RQ must arrive within acse_timeout_s. Answer AC or RJ."""
        s = self.settings
        pdu_type, received = reader.read_pdu(ul.MAX_ASSOCIATE_RQ_BYTES, s.acse_timeout_s)
        body = bytes(received)                         # the negotiation cache's key
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type}")
        rq, reason, reply, assoc = self._negotiated(body)
        with self._lock:
            if not reason and self._established >= s.max_associations:
                reason = ul.REJECT_TOO_MANY
            if not reason:
                self._established += 1
        if reason or assoc is None:
            logger.info("association from %s to %s rejected %s", rq.calling_ae_title, rq.called_ae_title, reason)
            conn.send(ul.reject(rq, reason))
            return None
        try:
            conn.send(reply)
        except BaseException:
            self._released()
            raise
        return assoc

    def _negotiated(self, body: bytes) -> tuple[A_ASSOCIATE, tuple[int, ...], bytes, ul.Negotiated | None]:
        """The answer to an A-ASSOCIATE-RQ: the request, a reject reason (none: accepted), the A-ASSOCIATE-AC
        and the accepted association. It depends on nothing but `body` and the settings, so accepted ones
        are kept (the last few distinct requests, up to 64 KB each): decoding and negotiating the 128
        contexts storescu offers costs ~8 ms, and a sender offers the same ones every time."""
        with self._lock:
            cached = self._negotiations.get(body)
            if cached is not None:
                self._negotiations.move_to_end(body)
        if cached is not None:
            rq, reply, assoc = cached
            return rq, (), reply, assoc
        s = self.settings
        rq = ul.requested(body)
        reason = ul.reject_reason(rq, s.ae_title, s.allowed_calling_aes, s.require_called_ae)
        if reason:
            return rq, reason, b"", None
        reply, assoc = ul.accept(rq, self._supported, s.max_pdu_bytes)
        if len(body) <= _CACHED_REQUEST_BYTES:
            with self._lock:
                self._negotiations[body] = (rq, reply, assoc)
                if len(self._negotiations) > _CACHED_NEGOTIATIONS:
                    self._negotiations.popitem(last=False)
        return rq, (), reply, assoc

    def _released(self) -> None:
        with self._lock:
            self._established -= 1

    def _serve(self, conn: _Connection, assoc: ul.Negotiated, reader: ul.PduReader) -> None:
        """P-DATA until release or abort: idle for network_timeout_s at most, dimse_timeout_s inside a message."""
        s = self.settings
        incoming = Incoming()
        try:
            while True:
                pdu_type, body = reader.read_pdu(self._max_body, s.dimse_timeout_s if incoming.started
                                                 else s.network_timeout_s)
                if pdu_type == ul.DATA_TF:
                    for context_id, message in feed(assoc.contexts, incoming, body):
                        conn.send(self._answer(assoc, context_id, message))
                elif pdu_type == ul.RELEASE_RQ:
                    conn.send(ul.release_reply())
                    return
                elif pdu_type == ul.ABORT:
                    logger.info("association from %s aborted by the peer", assoc.calling_ae)
                    return
                else:
                    raise ul.ProtocolError(f"unexpected PDU type {pdu_type} on an established association")
        finally:
            self._released()

    def _answer(self, assoc: ul.Negotiated, context_id: int, message: object) -> bytes:
        if isinstance(message, C_ECHO):
            return ul.echo_reply(message, context_id, assoc.peer_max_pdu)
        if isinstance(message, C_STORE):
            message = StoreRQ.from_primitive(message)
        if not isinstance(message, StoreRQ):
            raise ul.ProtocolError(f"{type(message).__name__} is not a service this node provides")
        context = assoc.contexts[context_id]
        syntax = str(context.transfer_syntax[0])
        try:
            data = ul.stored_file(message, syntax)
            request = StoreRequest(data, str(context.abstract_syntax), syntax, message.sop_instance_uid,
                                   assoc.calling_ae)
        except Refused as refusal:
            status = store_response(refusal.status, refusal.comment)
        else:
            status = self._store(request)
        return ul.store_reply(message, status, context_id, assoc.peer_max_pdu)

    def _store(self, request: StoreRequest) -> Dataset:
        try:
            return self.door.store(request, self._record)
        except Exception:                              # edge: a bug or I/O surprise becomes a failure status
            logger.exception("C-STORE %s: could not be stored", request.affected_sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "spool not writable on the receiving node")
