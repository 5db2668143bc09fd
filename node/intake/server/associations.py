"""One association, served on the calling thread, from its A-ASSOCIATE-RQ to its release or abort: blocking reads,
the door run on that thread, each status sent by it. The `Lease` (the StorageSCP) counts the association and
commits the rows."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from node.intake.door.door import Door, Refused, StoreRequest
from node.intake.server.tls import PeerCertificate, certificate_refusal
from node.intake.wire import upper_layer as ul
from node.intake.wire.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, StoreStatus, store_response
from node.intake.wire.messages import Incoming, StoreRQ, feed, let_the_door_judge_uids
from node.jobs.records import InstanceRecord, RecordOutcome
from node.jobs.security_log import SecurityEvent
from node.security import TlsSettings
from node.settings import DicomSettings
from node.tcp import set_nodelay

logger = logging.getLogger(__name__)

_NO_LIMIT = 2**31 - 1
_LAST_WORD_S = 5.0               # after A-ASSOCIATE-RJ / A-RELEASE-RP: how long the requestor may take to close
_CACHED_NEGOTIATIONS = 32        # distinct accepted A-ASSOCIATE-RQs (senders) whose answer is kept
_CACHED_REQUEST_BYTES = 64 * 1024


class Lease(Protocol):
    """An association's standing with whoever counts associations and commits rows."""

    def establish(self) -> bool:
        """Count this association as established; False when max_associations are already."""

    def record(self, rec: InstanceRecord) -> RecordOutcome:
        """Commit the instance's row (blocking); raise if it could not be committed."""

    def release(self) -> None:
        """The established association has ended (called once, only after establish() returned True)."""


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection and who may write to it."""
    sock: socket.socket
    peer: object
    send_timeout_s: float
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    tls: bool = False                              # accepted on the TLS port (the handshake comes first)
    certificate: PeerCertificate | None = None     # the TLS peer's verified certificate, after the handshake
    timeout: ul.SocketTimeout = field(init=False)

    def __post_init__(self) -> None:
        self.timeout = ul.SocketTimeout(self.sock)

    def secured(self, sock: ssl.SSLSocket, certificate: PeerCertificate | None) -> None:
        """The TLS socket replaces the accepted one once the handshake has ended."""
        self.sock, self.certificate = sock, certificate
        self.timeout = ul.SocketTimeout(sock)

    @property
    def remote(self) -> str:
        host, port = (self.peer if isinstance(self.peer, tuple) else (self.peer, ""))[:2]
        return f"{host}:{port}"

    def send(self, data: bytes) -> None:
        """All of `data`, within the DIMSE timeout; the reader sets its own timeout again before it reads."""
        with self.send_lock:
            self.timeout.set(self.send_timeout_s)
            self.sock.sendall(data)

    def await_peer_close(self, timeout_s: float) -> None:
        """After the last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP) the requestor closes the connection (PS3.8 Sta13):
        wait for that, up to `timeout_s`, instead of closing first. Closing first can make the peer's stack
        see the connection end before its association code has read the answer (pynetdicom then reports an
        abort instead of the rejection). On plain TCP our side is half-closed first, so a peer that reads to
        the end sees it at once; on TLS the session stays until the peer closes."""
        with contextlib.suppress(OSError):
            if not isinstance(self.sock, ssl.SSLSocket):
                self.sock.shutdown(socket.SHUT_WR)
            self.timeout.set(timeout_s)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.sock.recv(4096):
                pass

    def abort(self) -> None:
        """A-ABORT, then shut the socket: the association thread's next read ends (from any thread). On TLS the
        socket is only shut: the TLS session belongs to the association's thread."""
        if isinstance(self.sock, ssl.SSLSocket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            return
        if self.send_lock.acquire(timeout=1.0):
            try:
                self.sock.send(ul.abort(), socket.MSG_DONTWAIT)    # a peer that reads nothing is just cut off
            except OSError:
                pass
            finally:
                self.send_lock.release()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class AssociationServer:
    """Verification + Storage for one association at a time per calling thread: named refusals, timeouts, the
    door's checks and durable writes, and the status only after the lease committed the row."""

    def __init__(self, settings: DicomSettings, door: Door, *, tls: TlsSettings | None = None,
                 on_security_event: Callable[[SecurityEvent], None] | None = None) -> None:
        self.settings = settings
        self.door = door
        self._tls = tls or TlsSettings()
        self._on_security_event = on_security_event
        let_the_door_judge_uids()
        self._lock = threading.Lock()
        self._supported: list[PresentationContext] = [build_context(Verification)] + [
            build_context(sop, TRANSFER_SYNTAXES) for sop in STORAGE_SOP_CLASSES]
        self._max_body = settings.max_pdu_bytes + 6 if settings.max_pdu_bytes else _NO_LIMIT
        self._negotiations: OrderedDict[bytes, tuple[A_ASSOCIATE, bytes, ul.Negotiated]] = OrderedDict()

    def connection(self, sock: socket.socket, peer: object) -> Connection:
        """An accepted socket made ready for its association thread: blocking reads, TCP_NODELAY."""
        sock.setblocking(True)
        set_nodelay(sock)
        return Connection(sock, peer, self.settings.dimse_timeout_s)

    def serve(self, conn: Connection, lease: Lease) -> None:
        """The whole association on this thread; every error ends in a log line (and an A-ABORT where due).
        The caller closes the socket."""
        reader = ul.PduReader(conn.sock, conn.timeout)
        try:
            assoc = self._associate(conn, reader, lease)
            if assoc is not None:
                self._serve(conn, assoc, reader, lease)
        except ConnectionError:                        # ul.PeerClosed, a reset, or shut by a stop
            logger.info("association from %s: the peer closed the connection", conn.peer)
        except TimeoutError:
            logger.warning("association from %s: timed out waiting for the peer; aborted", conn.peer)
            self._try_send(conn, ul.abort())
        except ul.ProtocolError as exc:
            logger.warning("association from %s aborted: %s", conn.peer, exc)
            self._try_send(conn, ul.abort(2))
        except OSError as exc:                         # the socket shut by a stop, or a network error
            logger.info("association from %s ended: %s", conn.peer, exc.strerror or type(exc).__name__)
        except Exception:                              # edge: a bug ends this association, not the server
            logger.exception("association from %s aborted on an internal error", conn.peer)
            self._try_send(conn, ul.abort())

    def security_event(self, event: SecurityEvent) -> None:
        if self._on_security_event is not None:
            self._on_security_event(event)
        else:
            logger.warning("security: %s from %s (%s): %s", event.kind, event.remote, event.actor, event.detail)

    @staticmethod
    def _try_send(conn: Connection, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.send(data)

    def _associate(self, conn: Connection, reader: ul.PduReader, lease: Lease) -> ul.Negotiated | None:
        """ARTIM: the A-ASSOCIATE-RQ must arrive within acse_timeout_s. Answer AC or RJ."""
        s = self.settings
        pdu_type, received = reader.read_pdu(ul.MAX_ASSOCIATE_RQ_BYTES, s.acse_timeout_s)
        body = bytes(received)                         # the negotiation cache's key
        if pdu_type != ul.ASSOCIATE_RQ:
            raise ul.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type}")
        rq, reason, reply, assoc = self._negotiated(body)
        if not reason and conn.tls:
            refusal = certificate_refusal(rq.calling_ae_title, conn.certificate, self._tls)
            if refusal is not None:
                reason = ul.REJECT_CALLING_AE
                self.security_event(SecurityEvent("refused ae/certificate", rq.calling_ae_title.strip() or "unknown",
                                                  conn.remote, refusal))
        if not reason and not lease.establish():
            reason = ul.REJECT_TOO_MANY
        if reason or assoc is None:
            logger.info("association from %s to %s rejected %s", rq.calling_ae_title, rq.called_ae_title, reason)
            conn.send(ul.reject(rq, reason))
            conn.await_peer_close(min(s.acse_timeout_s, _LAST_WORD_S))
            return None
        try:
            conn.send(reply)
        except BaseException:
            lease.release()
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

    def _serve(self, conn: Connection, assoc: ul.Negotiated, reader: ul.PduReader, lease: Lease) -> None:
        """P-DATA until release or abort: idle for network_timeout_s at most, dimse_timeout_s inside a message."""
        s = self.settings
        incoming = Incoming()
        try:
            while True:
                pdu_type, body = reader.read_pdu(self._max_body, s.dimse_timeout_s if incoming.started
                                                 else s.network_timeout_s)
                if pdu_type == ul.DATA_TF:
                    for context_id, message in feed(assoc.contexts, incoming, body):
                        conn.send(self._answer(assoc, context_id, message, lease))
                elif pdu_type == ul.RELEASE_RQ:
                    conn.send(ul.release_reply())
                    conn.await_peer_close(min(s.acse_timeout_s, _LAST_WORD_S))
                    return
                elif pdu_type == ul.ABORT:
                    logger.info("association from %s aborted by the peer", assoc.calling_ae)
                    return
                else:
                    raise ul.ProtocolError(f"unexpected PDU type {pdu_type} on an established association")
        finally:
            lease.release()

    def _answer(self, assoc: ul.Negotiated, context_id: int, message: object, lease: Lease) -> bytes:
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
            status = self._store(request, lease)
        return ul.store_reply(message, status, context_id, assoc.peer_max_pdu)

    def _store(self, request: StoreRequest, lease: Lease) -> Dataset:
        try:
            return self.door.store(request, lease.record)
        except Exception:                              # edge: a bug or I/O surprise becomes a failure status
            logger.exception("C-STORE %s: could not be stored", request.affected_sop_instance_uid)
            return store_response(StoreStatus.OUT_OF_RESOURCES, "spool not writable on the receiving node")
