"""The DICOM upper layer for an acceptor (PS3.8), on blocking streams: PDU framing, association
negotiation and DIMSE messages. The PDUs, presentation-context negotiation and DIMSE encoders and
decoders are pynetdicom's (imported, not copied); only the reading loop is ours, with no polling."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    A_P_ABORT,
    A_RELEASE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from node.intake.wire import encoders
from node.intake.wire.messages import ProtocolError, StoreRQ

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7
MAX_ASSOCIATE_RQ_BYTES = 2**20               # an A-ASSOCIATE-RQ is a few KB; more is not a peer we talk to

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLING_AE = (1, 1, 3)
REJECT_CALLED_AE = (1, 1, 7)
REJECT_APPLICATION_CONTEXT = (1, 1, 2)
REJECT_PROTOCOL_VERSION = (1, 2, 2)
REJECT_TOO_MANY = (2, 3, 2)                  # transient, service provider (presentation), local limit exceeded


_READ_AHEAD = 256 * 1024
_TLS_HANDSHAKE_RECORD = 0x16                 # a TLS record's first byte; no PDU type is 0x16


class PeerClosed(ConnectionError):
    """The peer closed the connection, between PDUs or inside one."""


class SocketTimeout:
    """The one holder of a socket's timeout, for its reader and its sender alike (each sets the one it needs
    before each use); set on the socket only when it changes, as each change is a system call."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._current = sock.gettimeout()

    def set(self, timeout_s: float) -> None:
        if timeout_s != self._current:
            self._sock.settimeout(timeout_s)
            self._current = timeout_s


class PduReader:
    """Reads whole PDUs from a blocking socket through one read-ahead buffer (a receive often brings a header,
    its body and the next header). A PDU must be complete within its timeout: each receive waits at most
    the timeout, and one that ends past the deadline with the PDU still incomplete ends it, so a peer that
    trickles bytes is cut off within twice the timeout."""

    def __init__(self, sock: socket.socket, timeout: SocketTimeout) -> None:
        self._sock = sock
        self._timeout = timeout
        self._buffer = bytearray(_READ_AHEAD)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def read_pdu(self, max_body: int, timeout_s: float) -> tuple[int, bytes | bytearray]:
        """One PDU: its type and body. ProtocolError above `max_body`, PeerClosed at EOF, TimeoutError when
        the whole PDU has not arrived within `timeout_s`."""
        self._timeout.set(timeout_s)
        deadline = time.monotonic() + timeout_s
        header = self._read(6, deadline, first=True)
        if header[0] == _TLS_HANDSHAKE_RECORD and header[1] == 3:
            raise ProtocolError("a TLS handshake on the plain DICOM port (TLS goes to [dicom] tls_port)")
        length = int.from_bytes(header[2:6], "big")
        if length > max_body:
            raise ProtocolError(f"PDU type {header[0]} of {length} bytes exceeds the {max_body} byte limit")
        return header[0], self._read(length, deadline, first=False)

    def _read(self, n: int, deadline: float, *, first: bool) -> bytes | bytearray:
        available = self._end - self._start
        if available >= n:
            out = bytes(self._view[self._start:self._start + n])
            self._start += n
            return out
        if n > len(self._buffer) // 2:              # a large body: straight into its own buffer
            large = bytearray(n)
            large[:available] = self._view[self._start:self._end]
            self._start = self._end = 0
            view, got = memoryview(large), available
            while got < n:
                got += self._receive(view[got:], deadline, first and got == 0)
            return large
        if self._start:                              # keep what is left at the front
            rest = bytes(self._view[self._start:self._end])
            self._buffer[:available] = rest
            self._start, self._end = 0, available
        while self._end < n:
            self._end += self._receive(self._view[self._end:], deadline, first and self._end == 0)
        self._start = n
        return bytes(self._view[:n])

    def _receive(self, into: memoryview, deadline: float, nothing_yet: bool) -> int:
        received = self._sock.recv_into(into)
        if not received:
            raise PeerClosed("connection closed" if nothing_yet else "connection closed inside a PDU")
        if time.monotonic() > deadline:
            raise TimeoutError("the peer did not send the whole PDU in time")
        return received


def whole(pdu_type: int, body: bytes | bytearray) -> bytes:
    return bytes((pdu_type, 0)) + len(body).to_bytes(4, "big") + body


@dataclass(frozen=True, slots=True)
class Negotiated:
    """An accepted association: who called, the accepted contexts by ID, the peer's max PDU. Read-only:
    the receiver shares one among the associations of a sender that asks the same (its negotiation cache)."""
    calling_ae: str
    contexts: Mapping[int, PresentationContext]
    peer_max_pdu: int


def requested(body: bytes | bytearray) -> A_ASSOCIATE:
    """Decode an A-ASSOCIATE-RQ body with pynetdicom's PDU decoder; ProtocolError if it cannot."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(whole(ASSOCIATE_RQ, body))
        primitive = pdu.to_primitive()
    except Exception as exc:
        raise ProtocolError(f"undecodable A-ASSOCIATE-RQ ({type(exc).__name__})") from None
    if not pdu.protocol_version & 1:
        raise ProtocolError("protocol version 1 not offered")
    return primitive


def reject_reason(rq: A_ASSOCIATE, ae_title: str, allowed: Sequence[str], require_called: bool) -> tuple[int, ...]:
    if str(rq.application_context_name) != APPLICATION_CONTEXT:
        return REJECT_APPLICATION_CONTEXT
    if allowed and rq.calling_ae_title.strip() not in [a.strip() for a in allowed]:
        return REJECT_CALLING_AE
    if require_called and rq.called_ae_title.strip() != ae_title.strip():
        return REJECT_CALLED_AE
    return ()


def reject(rq: A_ASSOCIATE, reason: tuple[int, ...]) -> bytes:
    rsp = A_ASSOCIATE()
    rsp.result, rsp.result_source, rsp.diagnostic = reason
    return A_ASSOCIATE_RJ(rsp).encode()


def accept(rq: A_ASSOCIATE, supported: list[PresentationContext], max_pdu: int) -> tuple[bytes, Negotiated]:
    """Negotiate the contexts (pynetdicom's rules) and encode the A-ASSOCIATE-AC."""
    roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in rq.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    result, ac_roles = negotiate_as_acceptor(rq.presentation_context_definition_list, supported, roles or None)
    peer_max = next((item.maximum_length_received for item in rq.user_information
                     if isinstance(item, MaximumLengthNotification)), 0) or 0
    rsp = A_ASSOCIATE()
    rsp.application_context_name = APPLICATION_CONTEXT
    rsp.calling_ae_title, rsp.called_ae_title = rq.calling_ae_title, rq.called_ae_title
    rsp.result, rsp.result_source = 0, 1
    rsp.presentation_context_definition_results_list = result
    length, impl_uid, impl_name = (MaximumLengthNotification(), ImplementationClassUIDNotification(),
                                   ImplementationVersionNameNotification())
    length.maximum_length_received = max_pdu
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_name.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    rsp.user_information = [length, impl_uid, impl_name, *ac_roles]
    contexts = {int(cx.context_id): cx for cx in result if cx.result == 0}
    return A_ASSOCIATE_AC(rsp).encode(), Negotiated(rq.calling_ae_title.strip(), MappingProxyType(contexts),
                                                    int(peer_max))


def abort(reason: int = 0) -> bytes:
    """An A-ABORT from the service provider: 0 not specified, 2 unexpected PDU (PS3.8 9.3.8)."""
    primitive = A_P_ABORT()
    primitive.provider_reason = reason
    return A_ABORT_RQ(primitive).encode()


def release_reply() -> bytes:
    primitive = A_RELEASE()
    primitive.result = "affirmative"
    return A_RELEASE_RP(primitive).encode()


def stored_file(request: StoreRQ, transfer_syntax: str) -> bytes:
    """The DICOM file of a C-STORE request: preamble, file meta (as pynetdicom builds it), dataset as sent."""
    meta = encoders.file_meta(request.sop_class_uid, request.sop_instance_uid, transfer_syntax)
    if meta is None:
        meta = encode_file_meta(create_file_meta(sop_class_uid=request.sop_class_uid,
                                                 sop_instance_uid=request.sop_instance_uid,
                                                 transfer_syntax=transfer_syntax))
    return b"".join((b"\x00" * 128, b"DICM", meta, request.dataset))


def store_reply(request: StoreRQ, status: Dataset, context_id: int, peer_max_pdu: int) -> bytes:
    comment = str(status.ErrorComment) if "ErrorComment" in status else None
    fast = encoders.store_rsp(request.message_id, request.sop_class_uid, request.sop_instance_uid,
                          int(status.Status), comment, context_id, peer_max_pdu)
    if fast is not None:
        return fast
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = request.message_id
    rsp.AffectedSOPClassUID = request.sop_class_uid
    rsp.AffectedSOPInstanceUID = request.sop_instance_uid
    rsp.Status = int(status.Status)
    if comment is not None:
        rsp.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return _encoded(message, context_id, peer_max_pdu)


def echo_reply(request: C_ECHO, context_id: int, peer_max_pdu: int) -> bytes:
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
    rsp.Status = 0x0000
    message = C_ECHO_RSP()
    message.primitive_to_message(rsp)
    return _encoded(message, context_id, peer_max_pdu)


def _encoded(message: DIMSEMessage, context_id: int, peer_max_pdu: int) -> bytes:
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, peer_max_pdu))
